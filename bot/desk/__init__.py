"""The staff desk: where a person takes over what the bot cannot answer.

terms.py    statuses, the survey, refusals, notes and snoozes
hooks.py    the pipeline's, the outbox's and the workers' hooks (`DeskHooks`)
actions.py  what staff do, from Slack or the dashboard (`DeskActions`)
slack.py    the Slack side: listeners for threads, buttons, `/inbox`, shortcuts (`Desk`)
inbox.py    the `/inbox` command: the waiting list, today's counts, actions by number
jobs.py     the durable Slack posts (`desk_job` rows) and their delivery (`DeskPoster`)
cards.py    the escalation card's Block Kit
routing.py  which team gets an escalation, their hours and reminders (bot/data/routing.yaml)
drafts.py   FAQ drafts staff save from Slack

The Slack Web API helpers are shared with the Slack channel from `channels/slack_api.py`;
the composition root (bot/app.py) builds the desk and wires it to the Slack channel, the
pipeline, the outbox and the workers.
"""
