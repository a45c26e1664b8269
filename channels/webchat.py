"""The store's own web chat: a small page served by the service and a JSON API behind it.

POST /api/webchat/messages   {"text", "visitor_id"?, "client_message_id"?, "name"?, "email"?,
                              "customer"?: {"id", "name"?, "email"?, "phone"?},
                              "identity_hash"?, "page"?}
                             -> 202 {"visitor_id", "client_message_id", "duplicate", "verified"}
POST /api/webchat/files      ?visitor_id=..&client_message_id=..&name=..  the file as the body
GET  /api/webchat/messages   ?visitor_id=..&after=<id>&wait=<s>&typing=0|1  long-poll
GET  /api/webchat/events     ?visitor_id=..  server-sent events, one per new message
GET  /api/webchat/welcome    business hours now: open (and the reply time) or when it opens
GET  /webchat/files/<random>.<ext>  a file a visitor sent

The visitor id is an unguessable token created on first contact; whoever holds it can read that
conversation, nobody else. The message is committed to the queue before the 202 goes out.
Contact details are only what the visitor typed, so they never link the visitor to a customer;
only an identity the store signed (`identity_hash`, WEBCHAT_IDENTITY_SECRET) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from channels.base import (
    Attachment,
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
    StoredMessage,
)
from channels.edge import MAX_ID, has_bad_characters, json_object, read_body
from core.clock import Clock, system_clock
from core.contacts import normalise_email, normalise_phone
from core.errors import ConfigError, InputError, QueueError, RateLimited
from core.hours import OpeningHours
from core.ratelimit import RateLimiter
from core.stores import ChannelStore, MissedReply, VisitorContact

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "bot" / "static"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: what a visitor may send, known by its first bytes (never by the client's content type)
FILE_TYPES = (  # (magic, offset of a second magic or -1, extension, MIME type, kind)
    (b"\xff\xd8\xff", None, "jpg", "image/jpeg", "image"),
    (b"\x89PNG\r\n\x1a\n", None, "png", "image/png", "image"),
    (b"GIF87a", None, "gif", "image/gif", "image"),
    (b"GIF89a", None, "gif", "image/gif", "image"),
    (b"RIFF", b"WEBP", "webp", "image/webp", "image"),
    (b"%PDF-", None, "pdf", "application/pdf", "document"),
)
MIME_BY_EXT = {ext: mime for _, _, ext, mime, _ in FILE_TYPES}
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.(jpg|png|gif|webp|pdf)$")
#: how long "typing" shows without news: the bot's answer, or the desk's text box
BOT_TYPING_SECONDS = 10.0
STAFF_TYPING_SECONDS = 6.0
#: visitors whose contact details are kept in memory (saves a read per message)
CONTACT_CACHE = 20_000
#: the mail that carries a staff reply to a visitor who left
CONTINUE = {
    "en": {"subject": "{store}: a reply to your chat",
           "link": "You wrote to {store} in the chat; this is our reply. Continue the chat: "
                   "{link}"},
    "it": {"subject": "{store}: una risposta alla tua chat",
           "link": "Hai scritto a {store} in chat; questa è la nostra risposta. Continua la "
                   "chat: {link}"},
    "th": {"subject": "{store}: คำตอบสำหรับแชทของคุณ",
           "link": "คุณได้ส่งข้อความถึง {store} ทางแชท นี่คือคำตอบของเรา แชทต่อได้ที่: {link}"},
}
#: seconds between safety-net re-reads of an idle long-poll or event stream
RECHECK = 10.0
TRANSCRIPT_LIMIT = 200
#: visitors whose transcript end is kept in memory, and messages kept per visitor
TAIL_VISITORS = 20_000
TAIL_MESSAGES = 20
class WebChatChannel(Channel):
    name = "webchat"
    delivers_by_storing = True
    vouches_for_contacts = False

    def __init__(self, intake: Intake, store: ChannelStore, *, max_text: int, per_minute: int,
                 staffed: bool = False, origins: frozenset[str] = frozenset(),
                 store_name: str = "", identity_secret: bytes | None = None,
                 files_dir: Path | None = None, upload_max: int = 5 * 1024 * 1024,
                 public_url: str = "", hours: OpeningHours | None = None,
                 reply_minutes: int = 10,
                 email_after: timedelta = timedelta(minutes=10),
                 clock: Clock = system_clock) -> None:
        super().__init__(intake)
        #: the key the store's server signs its customer's id with; None = nobody is linked
        self.identity_secret = identity_secret
        self.files_dir = files_dir
        self.upload_max = upload_max
        self.public_url = public_url.rstrip("/")
        #: the store's business hours (None = always open) and the reply time inside them
        self.hours = hours
        self.reply_minutes = reply_minutes
        self.clock = clock
        #: staff replies a visitor was not connected for this long after are emailed
        self.email_after = email_after
        #: sends a plain mail (the email channel's SMTP); None = no continuity by email
        self.mailer: Callable[[str, str, str], Awaitable[None]] | None = None
        self._typing: dict[str, float] = {}
        #: visitor -> what we know of them, and whether the database has it
        self._contacts: OrderedDict[str, tuple[VisitorContact, bool]] = OrderedDict()
        #: visitors seen connected since the last write of `seen_at`, and when
        self._seen: dict[str, datetime] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.seen_every = min(30.0, email_after.total_seconds() / 4)
        #: the store's page origins that may embed the widget (CORS, frame-ancestors)
        self.origins = origins
        self.store_name = store_name
        self.store = store
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
        s = ctx.settings
        files = s.webchat_files_dir
        if files.exists() and not files.is_dir():
            raise ConfigError(f"WEBCHAT_UPLOAD_DIR: {files} is not a directory")
        secret = s.webchat_identity_secret
        hours = OpeningHours(ZoneInfo(s.store_timezone), s.opening_hours)
        if ctx.store is None:
            raise ConfigError("the web chat needs the core's channel store")
        return cls(ctx.intake, ctx.store, max_text=s.max_text_chars,
                   per_minute=s.webchat_rate_per_minute, staffed=s.desk_configured,
                   origins=s.webchat_origins, store_name=s.store_name,
                   identity_secret=secret.get_secret_value().encode() if secret else None,
                   files_dir=files, upload_max=s.webchat_upload_max_bytes,
                   public_url=s.public_url, hours=hours, reply_minutes=s.webchat_reply_minutes,
                   email_after=timedelta(minutes=s.webchat_email_after_minutes),
                   clock=ctx.clock)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/chat", self.page)
        app.router.add_post("/api/webchat/messages", self.post_message)
        app.router.add_get("/api/webchat/messages", self.get_messages)
        app.router.add_get("/api/webchat/events", self.events)
        app.router.add_get("/api/webchat/welcome", self.welcome)
        app.router.add_post("/api/webchat/files", self.post_file)
        app.router.add_get("/webchat/files/{name}", self.get_file)
        app.router.add_get("/widget.js", self.widget)
        app.middlewares.append(self.cross_origin)

    async def send(self, message: OutboundMessage) -> SendResult:
        """Replies are already in the database; wake whoever is waiting for this visitor."""
        self.notify(message.address)
        return SendResult(provider_id=None, status="delivered")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
            self._flusher = None
        await self._write_seen()

    # --- typing ----------------------------------------------------------------------------

    def typing(self, visitor: str, seconds: float = STAFF_TYPING_SECONDS) -> None:
        """Someone prepares an answer for `visitor` (the bot, or staff in the desk's text box):
        their page shows "typing" until a message arrives or `seconds` pass."""
        loop = asyncio.get_running_loop()
        self._typing[visitor] = loop.time() + seconds
        self._wake(visitor, keep_tail=True)
        loop.call_later(seconds + 0.05, self._typing_ended, visitor)

    def is_typing(self, visitor: str) -> bool:
        until = self._typing.get(visitor)
        if until is None:
            return False
        if until <= asyncio.get_running_loop().time():
            del self._typing[visitor]
            return False
        return True

    def _typing_ended(self, visitor: str) -> None:
        until = self._typing.get(visitor)
        if until is not None and until <= asyncio.get_running_loop().time():
            del self._typing[visitor]
            self._wake(visitor, keep_tail=True)

    def replies_stored(self, address: str, messages: Sequence[StoredMessage] = (), *,
                       after: int | None = None) -> None:
        """The core committed messages for this visitor: extend what we know of their
        transcript when these directly follow its end, else forget it; wake the readers."""
        self._typing.pop(address, None)
        tail = self._tails.get(address)
        # `after` None: the messages open a new conversation; what we know of the visitor's
        # others is still all there is, so they follow it (when their ids do)
        if tail is not None and messages and (
                after == tail.last if after is not None else messages[0].id > tail.last):
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
            self._typing.pop(visitor, None)  # a message was committed: the wait is over
        reading = self._reads.get(visitor)
        if reading is not None:
            reading[1] += 1
        for event in self._listeners.get(visitor, ()):
            event.set()

    # --- presence and continuity by email --------------------------------------------------

    def _saw(self, visitor: str) -> None:
        """The visitor is connected now; `seen_at` is written in batches (`_write_seen`)."""
        if visitor not in self._contacts and visitor not in self._seen and \
                len(self._seen) > CONTACT_CACHE:
            return
        self._seen[visitor] = self.clock()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_seen())

    async def _flush_seen(self) -> None:
        while True:
            await asyncio.sleep(self.seen_every)
            try:
                await self._write_seen()
            except Exception:  # noqa: BLE001 - presence is best effort, tried again soon
                log.warning("webchat: could not record which visitors are connected")

    async def _write_seen(self) -> None:
        """Everyone connected now or since the last write: seen now (across processes, the
        emailer reads this rather than our listeners)."""
        seen, self._seen = self._seen, {}
        now = self.clock()
        seen.update(dict.fromkeys(self._listeners, now))
        if not seen:
            return
        await self.store.visitors_seen(seen)

    async def poll(self, stop: asyncio.Event) -> None:
        """In one process: email staff replies to visitors who left an address and have not
        been connected since the reply came (WEBCHAT_EMAIL_AFTER_MINUTES)."""
        if self.mailer is None:
            return
        every = min(30.0, self.email_after.total_seconds() / 2)
        while not stop.is_set():
            try:
                await self.email_missed_replies()
            except Exception:
                log.exception("webchat: emailing missed replies failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    async def email_missed_replies(self) -> int:
        """One mail per visitor with every staff reply they missed; each reply only once."""
        if self.mailer is None:
            return 0
        await self._write_seen()
        now = self.clock()
        cutoff = now - self.email_after
        rows = (await self._missed(cutoff))
        by_visitor: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            if r.visitor in self._listeners:  # connected here right now
                continue
            by_visitor[r.visitor].append(r)
        sent = 0
        for visitor, replies in by_visitor.items():
            first = replies[0]
            lang = first.language if first.language in CONTINUE else "en"
            texts = CONTINUE[lang]
            link = first.page or f"{self.public_url}/"
            body = "\n\n".join(r.text for r in replies) + "\n\n" + texts["link"].format(
                store=self.store_name, link=link) + "\n"
            await self.mailer(first.email, texts["subject"].format(store=self.store_name), body)
            await self.store.emailed_through(visitor, max(r.message_id for r in replies))
            log.info("webchat: %d staff repl%s emailed to a visitor who left", len(replies),
                     "y" if len(replies) == 1 else "ies")
            sent += 1
        return sent

    async def _missed(self, cutoff: datetime) -> Sequence[MissedReply]:
        return await self.store.missed_replies(self.name, before=cutoff,
                                               since=cutoff - timedelta(days=7))

    # --- HTTP handlers ---------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "webchat.html", headers={
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "script-src 'self' 'unsafe-inline'"})

    async def widget(self, request: web.Request) -> web.Response:
        """The embeddable widget: one script, its settings filled in."""
        config = _dumps({"storeName": self.store_name, "staffed": self.staffed,
                         "uploadMax": self.upload_max})
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
        visitor, client_id = _ids(body.get("visitor_id"), body.get("client_message_id"))
        self._limit(request, visitor)
        claim = self._claim(body, request)
        contact = await self._remember(visitor, claim)
        vouched = claim.verified and contact.customer_ref == claim.customer_ref
        message = InboundMessage(
            channel=self.name, external_id=f"{visitor}:{client_id}", address=visitor,
            text=text.strip(), raw_ref=client_id, vouched=vouched,
            # only a signed identity may link the visitor to a customer; typed details stay
            # contact info (webchat_visitor)
            display_name=claim.name if vouched else None,
            email=claim.email if vouched else None, phone=claim.phone if vouched else None)
        new = await self.intake.put(message)
        if new:
            self.typing(visitor, BOT_TYPING_SECONDS)
        return web.json_response({"visitor_id": visitor, "client_message_id": client_id,
                                  "duplicate": not new, "verified": vouched}, status=202)

    def _limit(self, request: web.Request, visitor: str) -> None:
        ip = request.remote or "?"
        for limiter, key in ((self.ip_limit, f"ip:{ip}"), (self.visitor_limit, visitor)):
            allowed, wait = limiter.allow(key)
            if not allowed:
                raise RateLimited("too many messages, slow down", retry_after=wait)

    def _claim(self, body: dict[str, Any], request: web.Request) -> VisitorContact:
        """Who the visitor says they are: the store's signed customer, or typed details."""
        name, email = _text_field(body.get("name"), 200), _text_field(body.get("email"), 320)
        page = self._page(body.get("page"), request)
        customer = body.get("customer")
        if customer is None:
            return VisitorContact(name=name, email=normalise_email(email), page=page)
        if not isinstance(customer, dict):
            raise InputError("'customer' must be an object {id, name?, email?, phone?}")
        ref = customer.get("id")
        ref = str(ref) if isinstance(ref, (str, int)) and not isinstance(ref, bool) else ""
        if not 0 < len(ref) <= 128 or has_bad_characters(ref):
            raise InputError("'customer.id' must be 1-128 characters")
        c_name = _text_field(customer.get("name"), 200)
        c_email = normalise_email(_text_field(customer.get("email"), 320))
        c_phone = normalise_phone(_text_field(customer.get("phone"), 40))
        given = body.get("identity_hash")
        if self.identity_secret is None:
            log.warning("webchat: a customer identity was sent but WEBCHAT_IDENTITY_SECRET is "
                        "not set; kept as contact info, not linked")
            verified = False
        else:
            expected = identity_hash(self.identity_secret, ref)
            verified = isinstance(given, str) and hmac.compare_digest(
                expected, given.strip().lower())
            if not verified:
                log.warning("webchat: an identity whose hash does not match was kept as "
                            "contact info, not linked (from %s)", request.remote or "?")
        return VisitorContact(name=c_name or name, email=c_email or normalise_email(email),
                              phone=c_phone, customer_ref=ref if verified else None,
                              verified=verified, page=page)

    def _page(self, value: Any, request: web.Request) -> str | None:
        """The page the visitor writes from, if it is the store's (the email links to it)."""
        if not isinstance(value, str) or len(value) > 500 or has_bad_characters(value):
            return None
        origin = "/".join(value.split("/", 3)[:3]).lower()
        if origin in self.origins or _same_host(request, origin):
            return value
        return None

    async def _remember(self, visitor: str, claim: VisitorContact) -> VisitorContact:
        """Keep what the visitor told us (see `_merge`)."""
        cached = self._contacts.get(visitor)
        if cached is None:
            row = await self.store.visitor(visitor)
            cached = (row, True) if row is not None else (VisitorContact(), False)
        known, stored = cached
        merged = _merge(known, claim)
        if claim.verified and known.customer_ref not in (None, claim.customer_ref):
            log.warning("webchat: a visitor signed as one customer sent another's identity; "
                        "not linked")
        worth_keeping = merged.email or merged.phone or merged.name or merged.customer_ref
        if worth_keeping and (merged != known or not stored):
            await self.store.save_visitor(visitor, merged, new=not stored, now=self.clock())
            stored = True
        self._contacts[visitor] = (merged, stored)
        self._contacts.move_to_end(visitor)
        while len(self._contacts) > CONTACT_CACHE:
            self._contacts.popitem(last=False)
        return merged

    # --- files ----------------------------------------------------------------------------

    async def post_file(self, request: web.Request) -> web.Response:
        """An image or PDF, the body as is; it becomes a message whose attachment links to it
        (the visitor's transcript, the staff thread)."""
        q = request.query
        visitor, client_id = _ids(q.get("visitor_id"), q.get("client_message_id"))
        self._limit(request, visitor)
        assert self.files_dir is not None
        declared = request.content_length
        if declared is not None and declared > self.upload_max:
            raise InputError(f"the file is larger than {self.upload_max} bytes", status=413)
        data = bytearray()
        try:
            async for chunk in request.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > self.upload_max:
                    raise InputError(f"the file is larger than {self.upload_max} bytes",
                                     status=413)
        except (OSError, ValueError) as exc:
            raise InputError(f"the file cannot be read: {type(exc).__name__}") from None
        kind = sniff(bytes(data[:16]))
        if kind is None:
            raise InputError("send an image (JPEG, PNG, GIF, WebP) or a PDF", status=415)
        ext, mime, what = kind
        token = secrets.token_urlsafe(24)
        stored = f"{token}.{ext}"
        path = self.files_dir / stored
        try:
            await asyncio.to_thread(_write_file, path, bytes(data))
        except OSError as exc:
            log.error("webchat: cannot keep a visitor's file in %s (%s)", self.files_dir,
                      exc.strerror or type(exc).__name__)
            raise QueueError("the file cannot be kept now") from None
        name = _file_label(q.get("name"), ext)
        message = InboundMessage(
            channel=self.name, external_id=f"{visitor}:{client_id}", address=visitor,
            text="", raw_ref=client_id,
            attachments=(Attachment(kind=what, name=name, mime_type=mime, size=len(data),
                                    ref=f"{self.public_url}/webchat/files/{stored}"),))
        try:
            new = await self.intake.put(message)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if not new:  # the same upload again: the first copy is the one in the transcript
            path.unlink(missing_ok=True)
        log.info("webchat: a %s of %d bytes was received", mime, len(data))
        return web.json_response({"visitor_id": visitor, "client_message_id": client_id,
                                  "duplicate": not new}, status=202)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        """Served as what it was sniffed to be, never as HTML."""
        name = request.match_info["name"]
        if not _FILE_NAME.match(name) or self.files_dir is None:
            raise web.HTTPNotFound()
        path = self.files_dir / name
        if not path.is_file():
            raise web.HTTPNotFound()
        ext = name.rpartition(".")[2]
        disposition = "attachment" if ext == "pdf" else "inline"
        return web.FileResponse(path, headers={
            "Content-Type": MIME_BY_EXT[ext],
            "Content-Disposition": f'{disposition}; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=86400"})

    # --- welcome --------------------------------------------------------------------------

    async def welcome(self, request: web.Request) -> web.Response:
        """The first screen: whether people answer now (and how soon), else when they will."""
        now = self.clock()
        opens = self.hours.next_open(now) if self.hours is not None else now
        is_open = opens <= now
        return web.json_response({
            "store_name": self.store_name, "staffed": self.staffed, "open": is_open,
            "reply_minutes": self.reply_minutes if is_open and self.staffed else None,
            "opens_at": None if is_open else opens.astimezone(UTC).isoformat(),
            "timezone": self.hours.tz.key if self.hours is not None else "UTC"})

    async def get_messages(self, request: web.Request) -> web.Response:
        visitor = _visitor(request)
        after = _int_param(request, "after", 0)
        wait = min(float(_int_param(request, "wait", 0)), 30.0)
        shown = request.query.get("typing")
        typing = self.is_typing(visitor) if shown is None else shown == "1"
        self._saw(visitor)
        messages = await self._new_messages(visitor, after)
        if not messages and wait > 0 and typing == self.is_typing(visitor):
            messages = await self._wait_for(visitor, after, wait, typing=typing)
        self._saw(visitor)
        return web.json_response({"messages": messages, "staffed": self.staffed,
                                  "typing": self.is_typing(visitor)}, dumps=_dumps)

    async def events(self, request: web.Request) -> web.StreamResponse:
        visitor = _visitor(request)
        after = _int_param(request, "after", 0)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        typing = False
        while True:
            self._saw(visitor)
            messages = await self._wait_for(visitor, after, 15.0, typing=typing)
            if self.is_typing(visitor) != typing:
                typing = not typing
                await resp.write(f"event: typing\ndata: {_dumps({'typing': typing})}\n\n"
                                 .encode())
            if not messages:
                await resp.write(b": keep-alive\n\n")
                continue
            for m in messages:
                await resp.write(f"id: {m['id']}\ndata: {_dumps(m)}\n\n".encode())
                after = m["id"]

    async def _wait_for(self, visitor: str, after: int, wait: float, *,
                        typing: bool | None = None) -> list[dict[str, Any]]:
        """Sleep until a commit concerns this visitor (`notify`: the bot's replies, staff
        replies, and, across processes, the wake-ups the workers publish), then read what is
        new; or until "typing" is no longer `typing`. An idle waiter costs no query; a
        re-read every `RECHECK` seconds is only the safety net for a wake-up that got lost."""
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
                if messages or (typing is not None and self.is_typing(visitor) != typing):
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
        rows = await self.store.transcript(self.name, visitor, after, TRANSCRIPT_LIMIT)
        out = []
        complete = len(rows) < TRANSCRIPT_LIMIT  # True: `out` is everything there is now
        for r in rows:
            if r.direction == "out" and r.status == "pending":
                complete = False
                break
            if r.direction == "out" and r.status not in ("sent", "delivered"):
                continue
            out.append(_shown(StoredMessage(r.id, r.direction, r.author, r.text, r.created_at,
                                            r.language, r.stage, r.conversation_status,
                                            tuple(r.attachments))))
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
    """A message as the page gets it; files as paths on this service."""
    shown = {"id": m.id, "from": "you" if m.direction == "in" else m.author, "text": m.text,
             "at": m.created_at.isoformat(), "language": m.language, "stage": m.stage,
             "conversation_status": m.conversation_status}
    files = [{"url": "/webchat/files/" + str(a["ref"]).rpartition("/webchat/files/")[2],
              "name": a.get("name"), "type": a.get("mime_type"), "size": a.get("size")}
             for a in m.attachments if "/webchat/files/" in str(a.get("ref") or "")]
    if files:
        shown["files"] = files
    return shown


def sniff(head: bytes) -> tuple[str, str, str] | None:
    """(extension, MIME type, attachment kind) from a file's first bytes, or None."""
    for magic, second, ext, mime, kind in FILE_TYPES:
        if head.startswith(magic) and (second is None or head[8:12] == second):
            return ext, mime, kind
    return None


def identity_hash(secret: str | bytes, customer_id: str) -> str:
    """What the store's server puts in `identity_hash` for its logged-in customer."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    """Whole or not at all; the folder is made on the first upload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _file_label(value: str | None, ext: str) -> str:
    """The visitor's file name, cleaned, for the staff thread; never used as a path."""
    name = (value or "").replace("\\", "/").rpartition("/")[2]
    name = re.sub(r"[^\w .()-]", "", name, flags=re.UNICODE).strip()[:100]
    return name or f"file.{ext}"


def _text_field(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or has_bad_characters(value):
        return None
    return value.strip()[:limit] or None


def _ids(visitor: Any, client_id: Any) -> tuple[str, str]:
    visitor = visitor or secrets.token_urlsafe(24)
    client_id = client_id or uuid.uuid4().hex
    for field, value in (("visitor_id", visitor), ("client_message_id", client_id)):
        if not isinstance(value, str) or not _TOKEN.match(value):
            raise InputError(f"'{field}' must be 16-64 characters of A-Z a-z 0-9 _ -")
    return visitor, client_id


def _merge(known: VisitorContact, claim: VisitorContact) -> VisitorContact:
    """What we know of a visitor after this message's details: a signed identity is never
    replaced by typed details, and a visitor signed as one customer is not re-linked."""
    page = claim.page or known.page
    if claim.verified and known.customer_ref in (None, claim.customer_ref):
        return VisitorContact(claim.customer_ref, claim.name or known.name,
                              claim.email or known.email, claim.phone or known.phone, True,
                              page)
    if known.verified:  # typed details never replace what the store signed
        return replace(known, page=page)
    return VisitorContact(None, claim.name or known.name, claim.email or known.email,
                          claim.phone or known.phone, False, page)


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
