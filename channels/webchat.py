"""The store's own web chat: a small page served by the service and a JSON API behind it.

POST /api/webchat/messages   {"text", "visitor_id"?, "client_message_id"?, "name"?, "email"?}
                             -> 202 {"visitor_id", "client_message_id", "duplicate"}
GET  /api/webchat/messages   ?visitor_id=..&after=<id>&wait=<s>  long-poll for the transcript
GET  /api/webchat/events     ?visitor_id=..  server-sent events, one per new message

The visitor id is an unguessable token created on first contact; whoever holds it can read that
conversation, nobody else. The message is committed to the queue before the 202 goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import bindparam, select

from bot.db.engine import Database
from bot.db.models import Conversation, Message
from bot.errors import InputError, RateLimited
from bot.ratelimit import RateLimiter
from channels.base import (
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "bot" / "static"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MS = Message.__table__.c
CV = Conversation.__table__.c
#: seconds between safety-net re-reads of an idle long-poll or event stream
RECHECK = 10.0
_CONVERSATIONS = select(CV.id, CV.stage, CV.status).where(
    CV.channel == bindparam("channel"), CV.address == bindparam("address"))
_NEW_MESSAGES = (
    select(MS.id, MS.conversation_id, MS.direction, MS.author, MS.text, MS.created_at,
           MS.status, MS.language)
    .where(MS.conversation_id.in_(bindparam("conversations", expanding=True)),
           MS.id > bindparam("after"), MS.direction.in_(("in", "out")))  # never staff notes
    .order_by(MS.id).limit(200))


class WebChatChannel(Channel):
    name = "webchat"
    delivers_by_storing = True

    def __init__(self, intake: Intake, db: Database, *, max_text: int, per_minute: int) -> None:
        super().__init__(intake)
        self.db = db
        self.max_text = max_text
        self.visitor_limit = RateLimiter(per_minute)
        self.ip_limit = RateLimiter(per_minute * 10)
        self._listeners: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.recheck = RECHECK

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> WebChatChannel | None:
        if not ctx.settings.webchat_enabled:
            return None
        return cls(ctx.intake, ctx.db, max_text=ctx.settings.max_text_chars,
                   per_minute=ctx.settings.webchat_rate_per_minute)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/chat", self.page)
        app.router.add_post("/api/webchat/messages", self.post_message)
        app.router.add_get("/api/webchat/messages", self.get_messages)
        app.router.add_get("/api/webchat/events", self.events)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Replies are already in the database; wake whoever is waiting for this visitor."""
        self.notify(message.address)
        return SendResult(provider_id=None, status="delivered")

    def replies_stored(self, address: str) -> None:
        self.notify(address)

    def notify(self, visitor: str) -> None:
        for event in self._listeners.get(visitor, ()):
            event.set()

    # --- HTTP handlers ---------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "webchat.html", headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "script-src 'self' 'unsafe-inline'"})

    async def post_message(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError("'text' must be a non-empty string")
        if len(text) > self.max_text:
            raise InputError(f"'text' is longer than {self.max_text} characters", status=413)
        visitor = body.get("visitor_id") or secrets.token_urlsafe(24)
        client_id = body.get("client_message_id") or uuid.uuid4().hex
        for field, value in (("visitor_id", visitor), ("client_message_id", client_id)):
            if not isinstance(value, str) or not _TOKEN.match(value):
                raise InputError(f"'{field}' must be 16-64 characters of A-Z a-z 0-9 _ -")
        ip = request.remote or "?"
        for limiter, key in ((self.ip_limit, f"ip:{ip}"), (self.visitor_limit, visitor)):
            allowed, wait = limiter.allow(key)
            if not allowed:
                raise RateLimited("too many messages, slow down", retry_after=wait)
        name, email = body.get("name"), body.get("email")
        message = InboundMessage(
            channel=self.name, external_id=f"{visitor}:{client_id}", address=visitor,
            text=text.strip(), display_name=name[:200] if isinstance(name, str) else None,
            email=email if isinstance(email, str) else None, raw_ref=client_id)
        new = await self.intake.put(message)
        return web.json_response({"visitor_id": visitor, "client_message_id": client_id,
                                  "duplicate": not new}, status=202)

    async def get_messages(self, request: web.Request) -> web.Response:
        visitor = _visitor(request)
        after = _int_param(request, "after", 0)
        wait = min(float(_int_param(request, "wait", 0)), 30.0)
        messages = await self._transcript(visitor, after)
        if not messages and wait > 0:
            messages = await self._wait_for(visitor, after, wait)
        return web.json_response({"messages": messages})

    async def events(self, request: web.Request) -> web.StreamResponse:
        visitor = _visitor(request)
        after = _int_param(request, "after", 0)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        while True:
            messages = await self._wait_for(visitor, after, 15.0)
            if not messages:
                await resp.write(b": keep-alive\n\n")
                continue
            for m in messages:
                await resp.write(f"id: {m['id']}\ndata: {json.dumps(m)}\n\n".encode())
                after = m["id"]

    async def _wait_for(self, visitor: str, after: int, wait: float) -> list[dict[str, Any]]:
        """Sleep until a commit concerns this visitor (`notify`: the bot's replies, staff
        replies, and, across processes, the wake-ups the workers publish), then read what is
        new. An idle waiter costs no query; a re-read every `RECHECK` seconds is only the
        safety net for a wake-up that got lost."""
        event = asyncio.Event()
        self._listeners[visitor].add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            while (left := deadline - loop.time()) > 0:
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(left, self.recheck))
                messages = await self._transcript(visitor, after)
                if messages:
                    return messages
            return []
        finally:
            self._listeners[visitor].discard(event)
            if not self._listeners[visitor]:
                del self._listeners[visitor]

    async def _transcript(self, visitor: str, after: int) -> list[dict[str, Any]]:
        """Messages after `after`, stopping before the first reply not sent yet.

        Two indexed reads whatever the history: the visitor's conversations (by channel and
        address), then their messages after the cursor (by conversation and id).
        The client moves its cursor to the last id it got; a staff reply still in the outbox
        has a smaller id than the customer's next message, so showing that message first
        would leave the reply behind the cursor, never shown.
        """
        async with self.db.read() as conn:
            convs = {r.id: r for r in (await conn.execute(_CONVERSATIONS, {
                "channel": self.name, "address": visitor})).all()}
            if not convs:
                return []
            rows = (await conn.execute(_NEW_MESSAGES, {
                "conversations": sorted(convs), "after": after})).all()
        out = []
        for r in rows:
            if r.direction == "out" and r.status == "pending":
                break
            if r.direction == "out" and r.status not in ("sent", "delivered"):
                continue
            conv = convs[r.conversation_id]
            out.append({"id": r.id, "from": "you" if r.direction == "in" else r.author,
                        "text": r.text, "at": r.created_at.isoformat(), "language": r.language,
                        "stage": conv.stage, "conversation_status": conv.status})
        return out


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise InputError("send JSON with Content-Type: application/json", status=415)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InputError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object")
    return body


def _visitor(request: web.Request) -> str:
    visitor = request.query.get("visitor_id", "")
    if not _TOKEN.match(visitor):
        raise InputError("'visitor_id' is missing or malformed")
    return visitor


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"'{name}' must be an integer") from None
    if value < 0:
        raise InputError(f"'{name}' must not be negative")
    return value
