"""HTTP for playbooks: one-click unsubscribe, store events, and the dashboard panel.

POST /unsubscribe/{token}        RFC 8058 one-click (mail providers POST
                                 `List-Unsubscribe=One-Click`); records the opt-out
GET  /unsubscribe/{token}        a page with the button (a GET never unsubscribes: link
                                 scanners fetch every URL in a mail)
POST /api/playbooks/events       admin: an event the store's loyalty or survey tool knows
                                 (points_expiring, nps, checkout_abandoned) for one customer
GET  /api/dashboard/playbooks    admin: per step figures (bot/playbook_stats), ?format=csv
"""

from __future__ import annotations

from html import escape
from typing import Any

from aiohttp import web
from sqlalchemy import select

from bot import consent
from bot.admin.auth import require_admin
from bot.admin.params import csv_response, parse_period, wants_csv
from bot.appkeys import SERVICE
from bot.db.models import Customer
from bot.playbook_jobs import Occurrence, fire
from bot.playbook_stats import COLUMNS, playbook_figures
from core.errors import InputError

CU = Customer.__table__.c
MAX_ID = 2**63 - 1
EVENTS = ("points_expiring", "nps", "checkout_abandoned")
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
</head><body><main><h1>{title}</h1><p>{text}</p>{form}</main></body></html>"""


async def _customer(request: web.Request, token: str) -> tuple[int, str]:
    service = request.app[SERVICE]
    secret = await consent.unsubscribe_secret(
        service.db, service.settings.unsubscribe_secret.get_secret_value()
        if service.settings.unsubscribe_secret else None)
    found = consent.read_token(secret, token)
    if found is None:
        raise InputError("this unsubscribe link is not valid", status=404)
    return found


async def unsubscribe(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    customer_id, channel = await _customer(request, request.match_info["token"])
    async with service.db.write() as conn:
        await consent.record_opt_out(conn, customer_id, channel, source="one-click unsubscribe",
                                     now=service.clock())
    return web.Response(text=_PAGE.format(
        title="Unsubscribed", text=f"You will get no more marketing from "
        f"{escape(service.settings.store_name)}.", form=""), content_type="text/html")


async def unsubscribe_page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    await _customer(request, token)
    form = (f'<form method="post" action="/unsubscribe/{escape(token)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>')
    return web.Response(text=_PAGE.format(title="Unsubscribe", text="Stop marketing messages?",
                                          form=form), content_type="text/html")


def _event(body: Any) -> tuple[int, Occurrence]:
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object")
    customer_id, kind, key = body.get("customer_id"), body.get("event"), body.get("id")
    if not isinstance(customer_id, int) or isinstance(customer_id, bool) \
            or not 1 <= customer_id <= MAX_ID:
        raise InputError("customer_id must be a customer's id")
    if kind not in EVENTS:
        raise InputError(f"event must be one of {', '.join(EVENTS)}")
    if not isinstance(key, str) or not key.strip() or len(key) > 120:
        raise InputError("id must name this occurrence (the same id never fires twice)")
    score = body.get("score")
    if score is not None and (not isinstance(score, int) or isinstance(score, bool)
                              or not -1000 <= score <= 1000):
        raise InputError("score must be a whole number (a CSAT or NPS answer)")
    variables = body.get("variables") or {}
    if not isinstance(variables, dict) or not all(
            isinstance(v, (str, int, float)) for v in variables.values()):
        raise InputError("variables must map names to texts or numbers")
    data = {"variables": {str(k)[:40]: str(v)[:200] for k, v in variables.items()}}
    return customer_id, Occurrence(kind, f"{kind}:{key.strip()}", score=score, data=data)


async def post_event(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        body = await request.json()
    except ValueError:
        raise InputError("the body is not valid JSON") from None
    customer_id, occurrence = _event(body)
    async with service.db.write() as conn:
        if (await conn.execute(select(CU.id).where(CU.id == customer_id))).first() is None:
            raise InputError(f"customer {customer_id} does not exist", status=404)
        scheduled = await fire(conn, service.playbooks.playbooks, customer_id, occurrence,
                               now=service.clock())
    return web.json_response({"scheduled": scheduled})


async def api_playbooks(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    period = parse_period(request.query, now=service.clock())
    async with service.db.read() as conn:
        data = await playbook_figures(conn, start=period.start, end=period.end,
                                      days=service.settings.playbook_attribution_days)
    if wants_csv(request):
        return csv_response(data["steps"], COLUMNS, "playbooks")
    return web.json_response(data)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/unsubscribe/{token}", unsubscribe)
    app.router.add_get("/unsubscribe/{token}", unsubscribe_page)
    app.router.add_post("/api/playbooks/events", require_admin(post_event))
    app.router.add_get("/api/dashboard/playbooks", require_admin(api_playbooks))
