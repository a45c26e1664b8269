"""The desk in the dashboard: answer waiting customers without Slack, and staff figures.

POST /api/dashboard/conversations/{id}/actions  {"action", "staff", "text"?, "faq_id"?, "length"?}
POST /api/dashboard/conversations/{id}/typing   staff are writing: the web chat shows "typing"
GET  /api/dashboard/waiting                     how many wait now, and the oldest of them
(`staff_figures` is the dashboard's staff panel: /api/dashboard/staff.)
Actions go through `bot.desk.actions`, the same code as the Slack desk's buttons and threads,
so a reply from here reaches the customer on their channel and, when the Slack desk is on,
shows in the card's thread too. Staff say who they are by name (the dashboard has one admin
token, not accounts); the name is what the figures and the Slack thread show.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy import func, select

from bot.appkeys import SERVICE
from bot.db.models import Conversation, Customer, Escalation, Message
from bot.desk.jobs import answer_options, customer_name
from bot.desk.terms import LIVE, OPEN, DeskRefused
from channels.edge import id_param, json_object, read_body
from core.errors import InputError

if TYPE_CHECKING:
    from bot.admin.queries import Period
    from bot.app import Service

ES, CV, CU = Escalation.__table__.c, Conversation.__table__.c, Customer.__table__.c
MS = Message.__table__.c
ACTIONS = ("take", "release", "reply", "note", "answer", "snooze", "resolve", "back", "reopen",
           "assign")
_NAME = re.compile(r"^[\w .'-]{1,40}$")
MAX_TEXT = 4000
STAFF_COLUMNS = ["who", "kind", "taken", "replied", "resolved", "first_response_p50_s",
                 "resolution_p50_s", "csat", "csat_count"]


def staff_user(value: Any) -> str:
    """The dashboard user's id for the desk: `web:<name>`."""
    name = " ".join(str(value or "").split())
    if not _NAME.match(name):
        raise InputError("say who you are: staff is a name of 1 to 40 letters, digits, spaces "
                         "or .'-")
    return f"web:{name}"


def _desk(service: Service) -> Any:
    if service.desk_actions is None:
        raise InputError("the desk is off", status=404)
    return service.desk_actions


async def api_typing(request: web.Request) -> web.Response:
    """The desk's text box is being written in: the customer's chat shows "typing" a few
    seconds (channels without such a thing ignore it)."""
    if request.content_type != "application/json":  # no cross-site form posts
        raise InputError("send application/json", status=415)
    service = request.app[SERVICE]
    _desk(service)
    conversation_id = id_param(request.match_info["id"], "id")
    async with service.db.read() as conn:
        conv = (await conn.execute(select(CV.channel, CV.address)
                                   .where(CV.id == conversation_id))).first()
    if conv is None:
        raise InputError("no such conversation", status=404)
    service.typing(conv.channel, conv.address)
    return web.json_response({"ok": True})


async def api_action(request: web.Request) -> web.Response:
    """One staff action on a conversation (its live escalation; opened if there is none)."""
    if request.content_type != "application/json":  # no cross-site form posts
        raise InputError("send the action as application/json", status=415)
    service = request.app[SERVICE]
    desk = _desk(service)
    conversation_id = id_param(request.match_info["id"], "id")
    body = json_object(await read_body(request))
    verb = body.get("action")
    if verb not in ACTIONS:
        raise InputError(f"action must be one of {', '.join(ACTIONS)}")
    user = staff_user(body.get("staff"))
    argument = _argument(verb, body)
    try:
        async with service.db.write() as conn:
            esc_id = await _escalation_for(conn, desk, conversation_id, verb, user)
            said = await desk.do(conn, verb, esc_id, user, argument)
    except DeskRefused as exc:
        raise InputError(str(exc), status=409) from exc
    desk.changed()
    return web.json_response({"ok": True, "escalation_id": esc_id, "message": said})


def _argument(verb: str, body: dict[str, Any]) -> str:
    key = {"reply": "text", "note": "text", "answer": "faq_id", "snooze": "length",
           "assign": "to"}.get(verb)
    if key is None:
        return ""
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{verb} needs {key}")
    if len(value) > MAX_TEXT:
        raise InputError(f"{key} is longer than {MAX_TEXT} characters")
    return staff_user(value) if verb == "assign" else value.strip()


async def _escalation_for(conn: Any, desk: Any, conversation_id: int, verb: str,
                          user: str) -> int:
    """The escalation an action is about: the live one; for reopen the latest closed one;
    staff who take or answer a conversation the bot holds open one."""
    if verb == "reopen":
        row = (await conn.execute(select(ES.id).where(ES.conversation_id == conversation_id)
                                  .order_by(ES.id.desc()).limit(1))).first()
        if row is None:
            raise DeskRefused("This conversation was never escalated.")
        return int(row.id)
    if verb in ("take", "reply", "answer", "note", "assign"):
        return int(await desk.for_conversation(conn, conversation_id, user))
    row = (await conn.execute(select(ES.id).where(
        ES.conversation_id == conversation_id, ES.status.in_(LIVE))
        .order_by(ES.id.desc()).limit(1))).first()
    if row is None:
        raise DeskRefused("Nobody is waiting in this conversation.")
    return int(row.id)


async def api_waiting(request: web.Request) -> web.Response:
    """Heads the dashboard: how many customers wait for a person now, the oldest first."""
    service = request.app[SERVICE]
    now = datetime.now(UTC)
    async with service.db.read() as conn:
        count = int((await conn.execute(select(func.count()).select_from(
            Escalation.__table__).where(ES.status == OPEN))).scalar_one())
        rows = (await conn.execute(
            select(ES.id, ES.conversation_id, ES.created_at, ES.reason, CV.channel,
                   CV.language, CV.address, CU.display_name, CU.email, CU.phone)
            .join(Conversation.__table__, CV.id == ES.conversation_id)
            .join(Customer.__table__, CU.id == CV.customer_id)
            .where(ES.status == OPEN).order_by(ES.created_at, ES.id).limit(5))).all()
    waiting = [{"escalation_id": r.id, "conversation_id": r.conversation_id,
                "customer": customer_name(r.display_name, r.email, r.phone, r.channel,
                                          r.address),
                "channel": r.channel, "language": r.language, "reason": r.reason,
                "since": r.created_at.isoformat(),
                "waiting_s": round((now - r.created_at).total_seconds())} for r in rows]
    return web.json_response({"waiting": count, "oldest": waiting[0] if waiting else None,
                              "first": waiting})


async def conversation_desk(service: Service, conversation_id: int) -> dict[str, Any]:
    """What the conversation view needs to act: the FAQ answers staff may send, candidates
    of the live escalation first, and whether a person can act at all."""
    desk = service.desk_actions
    if desk is None:
        return {"enabled": False, "answer_options": []}
    async with service.db.read() as conn:
        live = (await conn.execute(select(ES.candidates).where(
            ES.conversation_id == conversation_id, ES.status.in_(LIVE))
            .order_by(ES.id.desc()).limit(1))).first()
    first = [str(c.get("faq_id")) for c in (live.candidates or ()) if c.get("faq_id")] \
        if live is not None else []
    return {"enabled": True, "slack": desk.mirrors,
            "answer_options": [{"id": i, "label": label}
                               for i, label in answer_options(desk.faq, first)]}


async def staff_figures(conn: Any, period: Period) -> dict[str, Any]:
    """Per staff member and per team: escalations taken, replies sent, escalations resolved,
    median first response and resolution times, average CSAT; over escalations opened in the
    period."""
    rows = (await conn.execute(select(
        ES.taken_by, ES.team, ES.staff_channel, ES.status, ES.created_at,
        ES.first_response_at, ES.resolved_at, ES.csat).where(
        ES.created_at >= period.start, ES.created_at < period.end))).all()
    replies = dict((await conn.execute(
        select(MS.author, func.count()).where(
            MS.direction == "out", MS.author.like("staff:%"), MS.created_at >= period.start,
            MS.created_at < period.end).group_by(MS.author))).all())
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in rows:
        if r.taken_by:
            groups[("person", r.taken_by)].append(r)
        groups[("team", r.team or r.staff_channel or "default")].append(r)
    people = {key[1] for key in groups if key[0] == "person"} | {
        str(a).removeprefix("staff:") for a in replies}
    for person in people:
        groups.setdefault(("person", person), [])
    out = []
    for (kind, who), items in sorted(groups.items()):
        first = [(r.first_response_at - r.created_at).total_seconds() for r in items
                 if r.first_response_at]
        resolve = [(r.resolved_at - r.created_at).total_seconds() for r in items
                   if r.resolved_at and r.status == "resolved"]
        csat = [r.csat for r in items if r.csat is not None]
        sent = int(replies.get(f"staff:{who}", 0)) if kind == "person" else sum(
            int(replies.get(f"staff:{r.taken_by}", 0)) for r in {r.taken_by: r for r in items
                                                                 if r.taken_by}.values())
        out.append({
            "who": who.removeprefix("web:"), "kind": kind,
            "taken": sum(1 for r in items if r.taken_by), "replied": sent,
            "resolved": sum(1 for r in items if r.status == "resolved"),
            "first_response_p50_s": round(statistics.median(first)) if first else None,
            "resolution_p50_s": round(statistics.median(resolve)) if resolve else None,
            "csat": round(sum(csat) / len(csat), 2) if csat else None,
            "csat_count": len(csat)})
    return {"period": {"from": period.start.isoformat(), "to": period.end.isoformat()},
            "rows": out}


def add_routes(app: web.Application, auth: Any) -> None:
    """Called from `bot.admin.dashboard.add_routes`, behind the same admin sign-in."""
    app.router.add_post("/api/dashboard/conversations/{id:\\d+}/actions", auth(api_action))
    app.router.add_post("/api/dashboard/conversations/{id:\\d+}/typing", auth(api_typing))
    app.router.add_get("/api/dashboard/waiting", auth(api_waiting))
