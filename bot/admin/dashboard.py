"""The admin dashboard: a sign-in, one page with charts, and the JSON/CSV API behind it.

GET  /dashboard                          the page (redirects to /dashboard/login without a session)
GET  /dashboard/login, POST (form token)  sign in with ADMIN_TOKEN -> signed session cookie
POST /dashboard/logout
GET  /api/dashboard/stages|flow|performance|faq   ?period=today|7d|30d|90d|custom&from=&to=
GET  /api/dashboard/faq/suggestions.yaml          draft FAQ entries for unanswered questions
GET  /api/conversations                           ?stage&channel&status&language&limit&offset
GET  /api/dashboard/conversations/{id}            transcript, stage history, escalations
GET  /api/dashboard/staff                         per person and team: taken, replied, times, CSAT
POST /api/dashboard/conversations/{id}/actions    the desk without Slack (bot/admin/desk_view.py)
GET  /api/dashboard/waiting                       customers waiting for a person now
Every /api route answers JSON, or CSV with ?format=csv, behind `require_admin` (the admin
bearer token or the session cookie, bot/admin/auth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.admin import desk_view, kpis, rollups
from bot.admin import queries as mq
from bot.admin.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    admin_token,
    make_session,
    require_admin,
    session_valid,
    signed_in,
)
from bot.admin.cache import MetricsCache
from bot.admin.params import csv_response, int_param, parse_period, wants_csv
from bot.appkeys import SERVICE
from bot.reports import conversation_detail
from channels.edge import form_fields, id_param, read_body
from core.errors import InputError, RateLimited
from core.ratelimit import RateLimiter

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"dashboard.js": ("dashboard.js", "application/javascript"),
          "dashboard.css": ("dashboard.css", "text/css"),
          "chart.umd.js": ("vendor/chart.umd.js", "application/javascript")}
LOGIN_LIMIT: web.AppKey[RateLimiter] = web.AppKey("dashboard_login_limit")
CACHE: web.AppKey[MetricsCache] = web.AppKey("dashboard_cache")
# how often closed days are rolled up and late rows folded in (bot/admin/rollups.py)
ROLLUP_SECONDS = 60.0


# --- pages ---------------------------------------------------------------------------------

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>storedesk - sign in</title><link rel="stylesheet" href="/dashboard/assets/dashboard.css">
</head><body class="login"><form method="post" action="/dashboard/login" class="card">
<h1>storedesk dashboard</h1><p class="muted">Sign in with the admin token (ADMIN_TOKEN).</p>
{error}<label>Admin token <input type="password" name="token" autocomplete="current-password"
autofocus required></label><button type="submit">Sign in</button></form></body></html>"""


def _login_page(error: str = "", status: int = 200) -> web.Response:
    block = f'<p class="error" role="alert">{error}</p>' if error else ""
    return web.Response(text=LOGIN_PAGE.format(error=block), status=status,
                        content_type="text/html", headers={"Cache-Control": "no-store"})


async def login_page(request: web.Request) -> web.StreamResponse:
    token = admin_token(request)
    if session_valid(request.cookies.get(SESSION_COOKIE, ""), token):
        return _see_other("/dashboard")
    return _login_page()


async def login(request: web.Request) -> web.StreamResponse:
    token = admin_token(request)
    allowed, wait = request.app[LOGIN_LIMIT].allow(request.remote or "?")
    if not allowed:
        raise RateLimited("too many sign-in attempts", retry_after=wait)
    form = form_fields(await read_body(request), request.content_type)
    given = form.get("token", "").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        log.warning("dashboard sign-in refused from %s", request.remote)
        return _login_page("That is not the admin token.", status=401)
    response = _see_other("/dashboard")
    secure = request.app[SERVICE].settings.public_url.startswith("https://")
    response.set_cookie(SESSION_COOKIE, make_session(token), max_age=SESSION_SECONDS,
                        httponly=True, samesite="Strict", secure=secure, path="/")
    log.info("dashboard sign-in from %s", request.remote)
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location,
                                             "Cache-Control": "no-store"})


async def logout(request: web.Request) -> web.StreamResponse:
    response = _see_other("/dashboard/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def page(request: web.Request) -> web.StreamResponse:
    if not signed_in(request, admin_token(request)):
        return _see_other("/dashboard/login")
    return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})


async def asset(request: web.Request) -> web.StreamResponse:
    found = ASSETS.get(request.match_info["name"])
    if found is None:
        raise InputError("no such asset", status=404)
    return web.FileResponse(STATIC / found[0], headers={"Content-Type": found[1],
                                                         "Cache-Control": "max-age=300"})


# --- API -----------------------------------------------------------------------------------

async def _metric(request: web.Request, name: str) -> dict[str, Any]:
    return await request.app[CACHE].get(name, request.query)


async def api_stages(request: web.Request) -> web.Response:
    csv_wanted = wants_csv(request)
    data = await _metric(request, "stages")
    if csv_wanted:
        rows = [{"bucket": label, "series": series, "stage": s["stage"], "count": s["counts"][i]}
                for series in ("customers", "conversations") for s in data[series]
                for i, label in enumerate(data["labels"])]
        return csv_response(rows, ["bucket", "series", "stage", "count"], "stages")
    return web.json_response(data)


async def api_flow(request: web.Request) -> web.Response:
    csv_wanted = wants_csv(request)
    data = await _metric(request, "flow")
    if csv_wanted:
        return csv_response(data["flows"], ["from", "to", "changes", "customers"], "flow")
    return web.json_response(data)


PERFORMANCE_COLUMNS = ["key", "messages", "answered_by_bot", "bot_share", "escalations",
                       "reasons", "first_response_p50_s", "first_response_p90_s",
                       "resolution_p50_s", "resolution_p90_s", "csat_avg", "csat_count",
                       "csat_prev_avg"]


async def api_performance(request: web.Request) -> web.Response:
    csv_wanted = wants_csv(request)
    data = await _metric(request, "performance")
    if csv_wanted:
        rows = [{**r, "reasons": " ".join(f"{k}={v}" for k, v in sorted(r["reasons"].items()))}
                for r in [*data["rows"], {**data["total"], "key": "all"}]]
        return csv_response(rows, PERFORMANCE_COLUMNS, f"performance-by-{data['by']}")
    return web.json_response(data)


async def api_faq(request: web.Request) -> web.Response:
    csv_wanted = wants_csv(request)
    data = {k: v for k, v in (await _metric(request, "faq")).items() if k != "suggestions_yaml"}
    if csv_wanted:
        rows = [{**e, "never_hit": e["id"] in data["never_hit"]} for e in data["entries"]]
        return csv_response(rows, ["id", "stage", "hits", "never_hit", "escalate", "question"],
                            "faq-hits")
    return web.json_response(data)


async def api_faq_suggestions(request: web.Request) -> web.Response:
    data = await _metric(request, "faq")
    body = data["suggestions_yaml"] or "# no unanswered questions in this period\n"
    return web.Response(text=body, content_type="application/x-yaml", charset="utf-8",
                        headers={"Content-Disposition":
                                 'attachment; filename="faq-suggestions.yaml"'})


async def api_conversations(request: web.Request) -> web.Response:
    q = request.query
    filters = {k: q[k] for k in mq.CONVERSATION_FILTERS if q.get(k)}
    for key, value in filters.items():
        if len(value) > 40:
            raise InputError(f"{key} is too long")
    period = parse_period(q) if ("period" in q or "from" in q) else None
    limit = int_param(q, "limit", 50, 1, 500)
    offset = int_param(q, "offset", 0, 0, 10_000_000)
    async with request.app[SERVICE].db.analytics() as conn:
        data = await mq.list_conversations(conn, filters=filters, period=period, limit=limit,
                                           offset=offset)
    if wants_csv(request):
        rows = [{**c, "customer": c["customer"]["name"]} for c in data["conversations"]]
        return csv_response(rows, ["id", "created_at", "updated_at", "channel", "status",
                                   "stage", "language", "assigned_to", "customer", "messages",
                                   "last_message"], "conversations")
    return web.json_response(data)


async def api_conversation(request: web.Request) -> web.Response:
    conversation_id = id_param(request.match_info["id"], "id")
    async with request.app[SERVICE].db.analytics() as conn:
        detail = await conversation_detail(conn, conversation_id)
        if detail is None:
            raise InputError("no such conversation", status=404)
        detail["escalations"] = await mq.escalation_details(conn, conversation_id)
    detail["desk"] = await desk_view.conversation_desk(request.app[SERVICE], conversation_id)
    if wants_csv(request):
        return csv_response(detail["messages"], ["id", "at", "direction", "author", "text",
                                                 "language", "faq_id", "decision", "status"],
                            f"conversation-{conversation_id}")
    return web.json_response(detail)


async def api_staff(request: web.Request) -> web.StreamResponse:
    """Per staff member and team: taken, replied, resolved, first response, resolution, CSAT."""
    period = parse_period(request.query)
    async with request.app[SERVICE].db.analytics() as conn:
        data = await desk_view.staff_figures(conn, period)
    if wants_csv(request):
        return csv_response(data["rows"], desk_view.STAFF_COLUMNS, "staff")
    return web.json_response(data)


async def api_kpis(request: web.Request) -> web.StreamResponse:
    """Retention, churn, repeat purchase, lifetime value, NPS and CSAT per stage and cohort."""
    period = parse_period(request.query)
    async with request.app[SERVICE].db.analytics() as conn:
        data = await kpis.store_kpis(conn, period)
    if wants_csv(request):
        return csv_response(kpis.rows_for_csv(data), kpis.COLUMNS, "store-figures")
    return web.json_response(data)


def add_routes(app: web.Application) -> None:
    """Called once from `bot.web.build_http_app`."""
    service = app[SERVICE]
    app[LOGIN_LIMIT] = RateLimiter(10, burst=5)
    app[CACHE] = cache = MetricsCache(service, service.settings.dashboard_cache_seconds)

    async def close_cache(_: web.Application) -> None:
        await cache.close()

    rollup_task: list[asyncio.Task[None]] = []

    async def start_rollups(_: web.Application) -> None:
        rollup_task.append(asyncio.create_task(
            rollups.run_forever(service.db, ROLLUP_SECONDS), name="dashboard-rollups"))

    async def stop_rollups(_: web.Application) -> None:
        for task in rollup_task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(start_rollups)
    app.on_cleanup.append(stop_rollups)
    app.on_cleanup.append(close_cache)
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/", page)
    app.router.add_get("/dashboard/login", login_page)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard/assets/{name}", asset)
    app.router.add_get("/api/dashboard/stages", require_admin(api_stages))
    app.router.add_get("/api/dashboard/flow", require_admin(api_flow))
    app.router.add_get("/api/dashboard/performance", require_admin(api_performance))
    app.router.add_get("/api/dashboard/faq", require_admin(api_faq))
    app.router.add_get("/api/dashboard/faq/suggestions.yaml", require_admin(api_faq_suggestions))
    app.router.add_get("/api/conversations", require_admin(api_conversations))
    app.router.add_get("/api/dashboard/conversations/{id:\\d+}", require_admin(api_conversation))
    app.router.add_get("/api/dashboard/staff", require_admin(api_staff))
    app.router.add_get("/api/dashboard/kpis", require_admin(api_kpis))
    desk_view.add_routes(app, require_admin)
