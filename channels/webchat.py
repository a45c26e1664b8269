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
import logging
import re
import secrets
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy import bindparam, select

from bot.db.engine import Database
from bot.db.models import Conversation, Message
from channels.base import (
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
    StoredMessage,
)
from channels.edge import MAX_ID, has_bad_characters, json_object, read_body
from core.errors import InputError, RateLimited
from core.ratelimit import RateLimiter

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "bot" / "static"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MS = Message.__table__.c
CV = Conversation.__table__.c
#: seconds between safety-net re-reads of an idle long-poll or event stream
RECHECK = 10.0
TRANSCRIPT_LIMIT = 200
#: visitors whose transcript end is kept in memory, and messages kept per visitor
TAIL_VISITORS = 20_000
TAIL_MESSAGES = 20
_CONVERSATIONS = select(CV.id, CV.stage, CV.status).where(
    CV.channel == bindparam("channel"), CV.address == bindparam("address"))
_NEW_MESSAGES = (
    select(MS.id, MS.conversation_id, MS.direction, MS.author, MS.text, MS.created_at,
           MS.status, MS.language)
    .where(MS.conversation_id.in_(bindparam("conversations", expanding=True)),
           MS.id > bindparam("after"), MS.direction.in_(("in", "out")))  # never staff notes
    .order_by(MS.id).limit(TRANSCRIPT_LIMIT))


class WebChatChannel(Channel):
    name = "webchat"
    delivers_by_storing = True
    vouches_for_contacts = False

    def __init__(self, intake: Intake, db: Database, *, max_text: int, per_minute: int,
                 staffed: bool = False, origins: frozenset[str] = frozenset(),
                 store_name: str = "") -> None:
        super().__init__(intake)
        #: the store's page origins that may embed the widget (CORS, frame-ancestors)
        self.origins = origins
        self.store_name = store_name
        self.db = db
        #: a person can pick escalations up, so the page may say one will reply
        self.staffed = staffed
        self.max_text = max_text
        self.visitor_limit = RateLimiter(per_minute)
        self.ip_limit = RateLimiter(per_minute * 10)
        self._listeners: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.recheck = RECHECK
        #: visitor -> the end of their transcript as far as we know it all (see `_Tail`)
        self._tails: OrderedDict[str, _Tail] = OrderedDict()
        #: visitor -> [reads in flight, notifications seen during them]
        self._reads: dict[str, list[int]] = {}

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> WebChatChannel | None:
        if not ctx.settings.webchat_enabled:
            return None
        return cls(ctx.intake, ctx.db, max_text=ctx.settings.max_text_chars,
                   per_minute=ctx.settings.webchat_rate_per_minute,
                   staffed=ctx.settings.desk_configured,
                   origins=ctx.settings.webchat_origins, store_name=ctx.settings.store_name)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/chat", self.page)
        app.router.add_post("/api/webchat/messages", self.post_message)
        app.router.add_get("/api/webchat/messages", self.get_messages)
        app.router.add_get("/api/webchat/events", self.events)
        app.router.add_get("/widget.js", self.widget)
        app.middlewares.append(self.cross_origin)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Replies are already in the database; wake whoever is waiting for this visitor."""
        self.notify(message.address)
        return SendResult(provider_id=None, status="delivered")

    def replies_stored(self, address: str, messages: Sequence[StoredMessage] = (), *,
                       after: int | None = None) -> None:
        """The core committed messages for this visitor: extend what we know of their
        transcript when these directly follow its end, else forget it; wake the readers."""
        tail = self._tails.get(address)
        if tail is not None and messages and after is not None and after == tail.last:
            tail.extend(_shown(m) for m in messages)
            self._tails.move_to_end(address)
            self._wake(address, keep_tail=True)
        else:
            self.notify(address)

    def notify(self, visitor: str) -> None:
        """Something was committed for `visitor`: forget what we knew, wake its readers."""
        self._wake(visitor)

    def _wake(self, visitor: str, *, keep_tail: bool = False) -> None:
        if not keep_tail:
            self._tails.pop(visitor, None)
        reading = self._reads.get(visitor)
        if reading is not None:
            reading[1] += 1
        for event in self._listeners.get(visitor, ()):
            event.set()

    # --- HTTP handlers ---------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "webchat.html", headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "script-src 'self' 'unsafe-inline'"})

    async def widget(self, request: web.Request) -> web.Response:
        """The embeddable widget: one script, its settings filled in."""
        config = _dumps({"storeName": self.store_name, "staffed": self.staffed})
        script = (STATIC / "widget.js").read_text().replace("__STOREDESK_CONFIG__", config)
        return web.Response(text=script, content_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=300"})

    @web.middleware
    async def cross_origin(self, request: web.Request,
                           handler: Handler) -> web.StreamResponse:
        """The store's pages (WEBCHAT_ALLOWED_ORIGINS) may call the API; other origins are
        refused; the standalone page may be framed by those pages only."""
        origin = request.headers.get("Origin")
        if request.path.startswith("/api/webchat/") and origin and not _same_host(request, origin):
            if origin.lower() not in self.origins:
                log.info("webchat: refused a request from origin %.100s", origin)
                raise InputError("this origin may not use the web chat", status=403)
            allow = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
            if request.method == "OPTIONS":
                return web.Response(status=204, headers={
                    **allow, "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": "Content-Type",
                    "Access-Control-Max-Age": "600"})
            response = await handler(request)
            response.headers.update(allow)
            return response
        response = await handler(request)
        if request.path in ("/", "/chat") and "Content-Security-Policy" in response.headers:
            ancestors = " ".join(["'self'", *sorted(self.origins)])
            response.headers["Content-Security-Policy"] += f"; frame-ancestors {ancestors}"
        return response

    async def post_message(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InputError("'text' must be a non-empty string")
        if len(text) > self.max_text:
            raise InputError(f"'text' is longer than {self.max_text} characters", status=413)
        if has_bad_characters(text):
            raise InputError("'text' contains characters that are not text (NUL or controls)")
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
        messages = await self._new_messages(visitor, after)
        if not messages and wait > 0:
            messages = await self._wait_for(visitor, after, wait)
        return web.json_response({"messages": messages, "staffed": self.staffed}, dumps=_dumps)

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
                await resp.write(f"id: {m['id']}\ndata: {_dumps(m)}\n\n".encode())
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
                woken = True
                try:
                    await asyncio.wait_for(event.wait(), timeout=min(left, self.recheck))
                except TimeoutError:
                    woken = False
                # Not woken: the safety-net read, in case a wake-up from another process
                # got lost; it does not trust what the last read found.
                messages = await self._new_messages(visitor, after, trust=woken)
                if messages:
                    return messages
            return []
        finally:
            self._listeners[visitor].discard(event)
            if not self._listeners[visitor]:
                del self._listeners[visitor]

    async def _new_messages(self, visitor: str, after: int, *,
                            trust: bool = True) -> list[dict[str, Any]]:
        """What is new for `visitor` after `after`. From memory when we know their transcript
        from before `after` on (the common case: the poll right after a reply); otherwise one
        read, which then becomes what we know."""
        tail = self._tails.get(visitor)
        if trust and tail is not None and after >= tail.start:
            return [m for m in tail.messages if m["id"] > after]
        reading = self._reads.setdefault(visitor, [0, 0])
        reading[0] += 1
        notified = reading[1]
        try:
            messages, complete = await self._transcript(visitor, after)
        finally:
            reading[0] -= 1
            if reading[0] == 0:
                del self._reads[visitor]
        if complete and reading[1] == notified:  # nothing was committed meanwhile
            self._tails[visitor] = _Tail(after, messages)
            self._tails.move_to_end(visitor)
            while len(self._tails) > TAIL_VISITORS:
                self._tails.popitem(last=False)
        return messages

    async def _transcript(self, visitor: str, after: int) -> tuple[list[dict[str, Any]], bool]:
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
                return [], True
            rows = (await conn.execute(_NEW_MESSAGES, {
                "conversations": sorted(convs), "after": after})).all()
        out = []
        complete = len(rows) < TRANSCRIPT_LIMIT  # True: `out` is everything there is now
        for r in rows:
            if r.direction == "out" and r.status == "pending":
                complete = False
                break
            if r.direction == "out" and r.status not in ("sent", "delivered"):
                continue
            conv = convs[r.conversation_id]
            out.append(_shown(StoredMessage(r.id, r.direction, r.author, r.text, r.created_at,
                                            r.language, conv.stage, conv.status)))
        return out, complete


class _Tail:
    """The newest messages of one visitor: every message with an id above `start` is in
    `messages` (ascending), as long as nothing was committed for them behind our back."""

    __slots__ = ("messages", "start")

    def __init__(self, start: int, messages: list[dict[str, Any]]) -> None:
        self.start = start
        self.messages = messages

    @property
    def last(self) -> int:
        return int(self.messages[-1]["id"]) if self.messages else self.start

    def extend(self, messages: Iterable[dict[str, Any]]) -> None:
        self.messages.extend(messages)
        if len(self.messages) > TAIL_MESSAGES:
            dropped = self.messages[:-TAIL_MESSAGES]
            del self.messages[:-TAIL_MESSAGES]
            self.start = int(dropped[-1]["id"])


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _shown(m: StoredMessage) -> dict[str, Any]:
    """A message as the page gets it."""
    return {"id": m.id, "from": "you" if m.direction == "in" else m.author, "text": m.text,
            "at": m.created_at.isoformat(), "language": m.language, "stage": m.stage,
            "conversation_status": m.conversation_status}


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise InputError("send JSON with Content-Type: application/json", status=415)
    return json_object(await read_body(request))


def _same_host(request: web.Request, origin: str) -> bool:
    return origin.partition("://")[2].lower() == request.host.lower()


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
    if not 0 <= value <= MAX_ID:
        raise InputError(f"'{name}' must be between 0 and {MAX_ID}")
    return value
