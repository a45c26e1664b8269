"""The admin dashboard: a login, one page with charts, and the JSON/CSV API behind it.

GET  /dashboard                          the page (redirects to /dashboard/login without a session)
GET  /dashboard/login, POST (form token)  sign in with ADMIN_TOKEN -> signed session cookie
POST /dashboard/logout
GET  /api/dashboard/stages|flow|performance|faq   ?period=today|7d|30d|90d|custom&from=&to=
GET  /api/dashboard/faq/suggestions.yaml          draft FAQ entries for unanswered questions
GET  /api/conversations                           ?stage&channel&status&language&limit&offset
GET  /api/dashboard/conversations/{id}            transcript, stage history, escalations
GET  /api/dashboard/staff                         per person and team: taken, replied, times, CSAT
POST /api/dashboard/conversations/{id}/actions    the desk without Slack (bot/dashboard_desk.py)
GET  /api/dashboard/waiting                       customers waiting for a person now
Every /api route answers JSON, or CSV with ?format=csv, and takes either the admin bearer token
or the session cookie. The cookie holds an expiry and an HMAC keyed by the admin token, never the
token itself, so the token stays out of URLs, cookies and logs; changing the token ends sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot import dashboard_desk, kpis, rollups
from bot import metrics_queries as mq
from bot.reports import conversation_detail
from bot.web import SERVICE
from channels.edge import form_fields, id_param, read_body
from core.errors import InputError, RateLimited
from core.ratelimit import RateLimiter

if TYPE_CHECKING:
    from bot.app import Service

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"dashboard.js": ("dashboard.js", "application/javascript"),
          "dashboard.css": ("dashboard.css", "text/css"),
          "chart.umd.js": ("vendor/chart.umd.js", "application/javascript")}
SESSION_COOKIE = "storedesk_session"
SESSION_SECONDS = 12 * 3600
PERIODS = {"today": None, "7d": 7, "30d": 30, "90d": 90}
MAX_CUSTOM_DAYS = 366
LOGIN_LIMIT: web.AppKey[RateLimiter] = web.AppKey("dashboard_login_limit")
CACHE: web.AppKey[MetricsCache] = web.AppKey("dashboard_cache")
# how often closed days are rolled up and late rows folded in (bot/rollups.py)
ROLLUP_SECONDS = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- sessions ------------------------------------------------------------------------------

def _session_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"storedesk dashboard session v1", hashlib.sha256).digest()


def make_session(token: str, *, now: float | None = None) -> str:
    """`<expiry>.<nonce>.<hmac>`: proves a login without carrying the token."""
    expires = int((now or time.time()) + SESSION_SECONDS)
    body = f"{expires}.{secrets.token_urlsafe(12)}"
    sig = hmac.new(_session_key(token), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{sig}"


def session_valid(value: str, token: str, *, now: float | None = None) -> bool:
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return False
    body = f"{parts[0]}.{parts[1]}"
    sig = hmac.new(_session_key(token), body.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(sig, parts[2]) and int(parts[0]) > (now or time.time())


def _token(request: web.Request) -> str:
    token = request.app[SERVICE].settings.admin_token
    if token is None:
        raise InputError("the dashboard is disabled: set ADMIN_TOKEN", status=403)
    return token.get_secret_value()


def _signed_in(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if given:
        return hmac.compare_digest(given.encode(), token.encode())
    return session_valid(request.cookies.get(SESSION_COOKIE, ""), token)


def api_auth(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not _signed_in(request, _token(request)):
            raise InputError("sign in at /dashboard/login or send the admin bearer token",
                             status=401)
        return await handler(request)
    return wrapped


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
    token = _token(request)
    if session_valid(request.cookies.get(SESSION_COOKIE, ""), token):
        return _see_other("/dashboard")
    return _login_page()


async def login(request: web.Request) -> web.StreamResponse:
    token = _token(request)
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
    if not _signed_in(request, _token(request)):
        return _see_other("/dashboard/login")
    return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-store"})


async def asset(request: web.Request) -> web.StreamResponse:
    found = ASSETS.get(request.match_info["name"])
    if found is None:
        raise InputError("no such asset", status=404)
    return web.FileResponse(STATIC / found[0], headers={"Content-Type": found[1],
                                                         "Cache-Control": "max-age=300"})


# --- query parameters ----------------------------------------------------------------------

def parse_period(query: Mapping[str, str], *, now: datetime | None = None) -> mq.Period:
    """today, 7d, 30d, 90d (ending now) or custom from/to dates (UTC days, `to` included)."""
    now = now or datetime.now(UTC)
    name = query.get("period", "7d")
    if name == "custom" or (name not in PERIODS and ("from" in query or "to" in query)):
        try:
            first = date.fromisoformat(query["from"])
            last = date.fromisoformat(query.get("to") or now.date().isoformat())
        except (KeyError, ValueError):
            raise InputError("custom period needs from=YYYY-MM-DD (and to=YYYY-MM-DD)") from None
        if last < first or (last - first).days >= MAX_CUSTOM_DAYS:
            raise InputError(f"from must be before to, at most {MAX_CUSTOM_DAYS} days apart")
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        return mq.Period(start, end, "hour" if (end - start).days <= 2 else "day")
    if name not in PERIODS:
        raise InputError(f"period must be one of {', '.join(PERIODS)} or custom")
    days = PERIODS[name]
    if days is None:
        return mq.Period(now.replace(hour=0, minute=0, second=0, microsecond=0), now, "hour")
    return mq.Period(now - timedelta(days=days), now, "day")


def _int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        raise InputError(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise InputError(f"{name} must be between {lo} and {hi}")
    return value


# --- CSV -----------------------------------------------------------------------------------

def _cell(value: Any) -> Any:
    # a cell starting with = + - @ would run as a formula in a spreadsheet
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def csv_response(rows: list[dict[str, Any]], columns: list[str], name: str) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InputError("format must be json or csv")
    return fmt == "csv"


# --- metrics, computed live or kept fresh in the background ----------------------------------

Query = Mapping[str, str]
Compute = Callable[["Service", Query], Awaitable[dict[str, Any]]]


async def compute_stages(service: Service, query: Query) -> dict[str, Any]:
    async with service.db.read() as conn:
        return await mq.stages_over_time(conn, parse_period(query))


async def compute_flow(service: Service, query: Query) -> dict[str, Any]:
    async with service.db.read() as conn:
        return await mq.stage_flow(conn, parse_period(query))


async def compute_performance(service: Service, query: Query) -> dict[str, Any]:
    by = query.get("by", "stage")
    if by not in mq.DIMENSIONS:
        raise InputError(f"by must be one of {', '.join(mq.DIMENSIONS)}")
    async with service.db.read() as conn:
        return await mq.performance(conn, parse_period(query), by)


async def compute_faq(service: Service, query: Query) -> dict[str, Any]:
    from faq.suggest import group_questions, render_yaml

    period = parse_period(query)
    async with service.db.read() as conn:
        hits = await mq.faq_hits(conn, period)
        questions = await mq.unanswered_questions(conn, period)
    groups = await asyncio.to_thread(group_questions, questions)  # CPU work off the loop
    entries: list[dict[str, Any]] = [
        {"id": e.id, "stage": e.stage, "question": e.questions[0] if e.questions else "",
         "escalate": e.escalate, "hits": hits.get(e.id, 0)} for e in service.faq.entries]
    known = {e["id"] for e in entries}
    entries += [{"id": faq_id, "stage": None, "question": "", "escalate": False, "hits": n,
                 "removed": True} for faq_id, n in hits.items() if faq_id not in known]
    entries.sort(key=lambda e: (-e["hits"], e["id"]))
    return {"period": period.as_dict(), "entries": entries,
            "never_hit": [e["id"] for e in entries if e["hits"] == 0 and not e["escalate"]],
            "answered": sum(hits.values()),
            "unanswered": {"questions": len(questions), "groups": [
                {"representative": g.representative, "count": g.count,
                 "questions": g.questions[:8]} for g in groups]},
            "suggestions_yaml": render_yaml(groups) if groups else ""}


COMPUTE: dict[str, Compute] = {"stages": compute_stages, "flow": compute_flow,
                               "performance": compute_performance, "faq": compute_faq}
CacheKey = tuple[str, str, str]
IDLE_SECONDS = 15 * 60


class MetricsCache:
    """Answers for the preset periods (today, 7d, 30d, 90d), refreshed in the background.

    Charts are computed from day rollups plus live SQL (tens to a few hundred milliseconds at a
    million messages, see docs/dashboard.md); an admin opening the page several times a minute
    does not need them recomputed each time. So every chart asked for once
    is served from memory and recomputed by one background task every `ttl` seconds (less often
    if refreshing would take more than a quarter of the time) until nobody asked for it for
    15 minutes; `as_of` in the answer says when it was computed. Custom periods are always
    computed live, and ttl 0 turns all this off.
    """

    def __init__(self, service: Service, ttl: float) -> None:
        self.service = service
        self.ttl = ttl
        self.entries: dict[CacheKey, dict[str, Any]] = {}
        self._asked: dict[CacheKey, float] = {}  # when a request last wanted it
        self._locks: dict[CacheKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def key(name: str, query: Query) -> CacheKey | None:
        extra = set(query) - {"period", "by", "format"}
        period = query.get("period", "7d")
        if extra or period not in PERIODS or query.get("by", "stage") not in mq.DIMENSIONS:
            return None  # computed live (and refused there if wrong)
        return name, period, query.get("by", "stage") if name == "performance" else ""

    async def get(self, name: str, query: Query) -> dict[str, Any]:
        key = self.key(name, query) if self.ttl > 0 else None
        if key is None:
            return await _computed(self.service, name, query)
        if self._task is None:
            self._task = asyncio.create_task(self._refresh(), name="dashboard-cache")
        self._asked[key] = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None:
            return hit
        async with self._locks[key]:  # the first request computes, the others wait for it
            if key not in self.entries:
                self.entries[key] = await _computed(self.service, name, query)
            return self.entries[key]

    async def _refresh(self) -> None:
        spent = 0.0
        while True:
            await asyncio.sleep(max(self.ttl, 3 * spent))
            started = time.monotonic()
            for key in list(self.entries):
                if started - self._asked.get(key, 0.0) > IDLE_SECONDS:
                    del self.entries[key]  # nobody looked for a while: stop refreshing it
                    continue
                name, period, by = key
                query = {"period": period, **({"by": by} if by else {})}
                try:
                    async with self._locks[key]:
                        self.entries[key] = await _computed(self.service, name, query)
                except Exception:  # keep serving the last answer; try again next round
                    log.exception("dashboard refresh of %s %s failed", name, period)
            spent = time.monotonic() - started

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _computed(service: Service, name: str, query: Query) -> dict[str, Any]:
    data = await COMPUTE[name](service, query)
    data["as_of"] = datetime.now(UTC).isoformat()
    return data


# --- API -----------------------------------------------------------------------------------

async def _metric(request: web.Request, name: str) -> dict[str, Any]:
    return await request.app[CACHE].get(name, request.query)


async def api_stages(request: web.Request) -> web.Response:
    csv_wanted = _wants_csv(request)
    data = await _metric(request, "stages")
    if csv_wanted:
        rows = [{"bucket": label, "series": series, "stage": s["stage"], "count": s["counts"][i]}
                for series in ("customers", "conversations") for s in data[series]
                for i, label in enumerate(data["labels"])]
        return csv_response(rows, ["bucket", "series", "stage", "count"], "stages")
    return web.json_response(data)


async def api_flow(request: web.Request) -> web.Response:
    csv_wanted = _wants_csv(request)
    data = await _metric(request, "flow")
    if csv_wanted:
        return csv_response(data["flows"], ["from", "to", "changes", "customers"], "flow")
    return web.json_response(data)


PERFORMANCE_COLUMNS = ["key", "messages", "answered_by_bot", "bot_share", "escalations",
                       "reasons", "first_response_p50_s", "first_response_p90_s",
                       "resolution_p50_s", "resolution_p90_s", "csat_avg", "csat_count",
                       "csat_prev_avg"]


async def api_performance(request: web.Request) -> web.Response:
    csv_wanted = _wants_csv(request)
    data = await _metric(request, "performance")
    if csv_wanted:
        rows = [{**r, "reasons": " ".join(f"{k}={v}" for k, v in sorted(r["reasons"].items()))}
                for r in [*data["rows"], {**data["total"], "key": "all"}]]
        return csv_response(rows, PERFORMANCE_COLUMNS, f"performance-by-{data['by']}")
    return web.json_response(data)


async def api_faq(request: web.Request) -> web.Response:
    csv_wanted = _wants_csv(request)
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
    limit = _int(q, "limit", 50, 1, 500)
    offset = _int(q, "offset", 0, 0, 10_000_000)
    async with request.app[SERVICE].db.read() as conn:
        data = await mq.list_conversations(conn, filters=filters, period=period, limit=limit,
                                           offset=offset)
    if _wants_csv(request):
        rows = [{**c, "customer": c["customer"]["name"]} for c in data["conversations"]]
        return csv_response(rows, ["id", "created_at", "updated_at", "channel", "status",
                                   "stage", "language", "assigned_to", "customer", "messages",
                                   "last_message"], "conversations")
    return web.json_response(data)


async def api_conversation(request: web.Request) -> web.Response:
    conversation_id = id_param(request.match_info["id"], "id")
    async with request.app[SERVICE].db.read() as conn:
        detail = await conversation_detail(conn, conversation_id)
        if detail is None:
            raise InputError("no such conversation", status=404)
        detail["escalations"] = await mq.escalation_details(conn, conversation_id)
    detail["desk"] = await dashboard_desk.conversation_desk(request.app[SERVICE], conversation_id)
    if _wants_csv(request):
        return csv_response(detail["messages"], ["id", "at", "direction", "author", "text",
                                                 "language", "faq_id", "decision", "status"],
                            f"conversation-{conversation_id}")
    return web.json_response(detail)


async def api_staff(request: web.Request) -> web.StreamResponse:
    """Per staff member and team: taken, replied, resolved, first response, resolution, CSAT."""
    period = parse_period(request.query)
    async with request.app[SERVICE].db.read() as conn:
        data = await dashboard_desk.staff_figures(conn, period)
    if _wants_csv(request):
        return csv_response(data["rows"], dashboard_desk.STAFF_COLUMNS, "staff")
    return web.json_response(data)


async def api_kpis(request: web.Request) -> web.StreamResponse:
    """Retention, churn, repeat purchase, lifetime value, NPS and CSAT per stage and cohort."""
    period = parse_period(request.query)
    async with request.app[SERVICE].db.read() as conn:
        data = await kpis.store_kpis(conn, period)
    if _wants_csv(request):
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
    app.router.add_get("/api/dashboard/stages", api_auth(api_stages))
    app.router.add_get("/api/dashboard/flow", api_auth(api_flow))
    app.router.add_get("/api/dashboard/performance", api_auth(api_performance))
    app.router.add_get("/api/dashboard/faq", api_auth(api_faq))
    app.router.add_get("/api/dashboard/faq/suggestions.yaml", api_auth(api_faq_suggestions))
    app.router.add_get("/api/conversations", api_auth(api_conversations))
    app.router.add_get("/api/dashboard/conversations/{id:\\d+}", api_auth(api_conversation))
    app.router.add_get("/api/dashboard/staff", api_auth(api_staff))
    app.router.add_get("/api/dashboard/kpis", api_auth(api_kpis))
    dashboard_desk.add_routes(app, api_auth)
