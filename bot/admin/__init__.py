"""The admin side of the service: one sign-in, the admin JSON API and the dashboard.

auth.py       `require_admin`: the admin bearer token or the dashboard's session cookie
api.py        /api/escalations, /api/conversations/{id}, orders, queue, FAQ, customers
dashboard.py  the dashboard's page, sign-in and /api/dashboard/... routes
cache.py      the dashboard's figures, computed live or kept fresh in the background
params.py     periods, whole-number parameters and CSV answers, shared by the admin routes
desk_view.py  the desk in the dashboard (the same actions as the Slack desk) and staff figures
queries.py    the dashboard's SQL, one function per figure
rollups.py    the per-day rollups the queries read for closed days
kpis.py       store figures: retention, churn, repeat purchase, lifetime value, NPS, CSAT

Nothing here is imported by the pipeline or the channels; `bot.web` adds these routes.
"""
