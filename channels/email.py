"""Email: IMAP in (IDLE, or polling), SMTP out, threaded replies.

In: `poll` keeps one IMAP session on the mailbox. It reads UIDs above a cursor
`(UIDVALIDITY, last UID)` kept in `channel_state`, hands each mail to the queue and moves the
cursor only after the queue committed them, so a crash or restart re-reads (deduplicated by
Message-ID) rather than loses. A new UIDVALIDITY voids the UIDs: the cursor restarts and the
Message-ID dedup absorbs what was seen before. Auto-replies, bounces, list mail and our own
mail are logged and skipped, never answered.

Out: `send` answers in the customer's thread (In-Reply-To/References to their latest mail,
"Re:" subject) and marks bot answers `Auto-Submitted: auto-replied`. Bot answers per address
are capped per day (RFC 3834 §2); a capped answer fails for good with the reason recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Any

import aioimaplib
import aiosmtplib

from channels.base import (
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
)
from channels.email_parse import (
    OWN_ID_MARK,
    ParsedMail,
    parse_mail,
    reply_references,
    reply_subject,
)
from channels.email_playbook import playbook_mail
from channels.settings import ChannelSettings
from core.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelPermanentError,
    ChannelTemporaryError,
    ConfigError,
    QueueError,
)
from core.stores import ChannelStore

log = logging.getLogger(__name__)
IDLE_SECONDS = 25 * 60  # re-IDLE before the 29 minutes of RFC 2177
CHUNK = 25  # mails fetched, queued and committed per cursor step
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_SIZE = re.compile(rb"UID (\d+).*RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+).*UID (\d+)")


class EmailChannel(Channel):
    name = "email"

    def __init__(self, intake: Intake, store: ChannelStore, settings: ChannelSettings) -> None:
        super().__init__(intake)
        self.store = store
        self.s = settings
        _, self.from_address = parseaddr(
            settings.email_from or settings.smtp_user or settings.imap_user or "")
        self.from_address = self.from_address.lower()
        self.domain = self.from_address.rpartition("@")[2] or "localhost"
        self.own = frozenset(a.lower() for a in (self.from_address, settings.imap_user,
                                                 settings.smtp_user) if a and "@" in a)
        self.cursor_key = (f"email:{settings.imap_user}@{settings.imap_host}/"
                           f"{settings.imap_mailbox}")
        self.skipped = 0  # mails we chose not to answer (automatic, too large, too old)
        self._watching = False  # the current IMAP session got as far as SELECT
        self._sent_today: dict[str, tuple[str, set[int]]] = {}  # address -> (day, ids)
        self._address_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> EmailChannel | None:
        s = ctx.settings
        if not s.imap_host and not s.smtp_host:
            return None
        missing = []
        if s.imap_host:
            missing += [n for n, v in (("IMAP_USER", s.imap_user),
                                       ("IMAP_PASSWORD", s.imap_password)) if not v]
        if s.smtp_host and not (s.email_from or s.smtp_user):
            missing.append("EMAIL_FROM")
        if missing:
            raise ConfigError(f"email channel: set {', '.join(missing)}")
        if ctx.store is None:
            raise ConfigError("the email channel needs the core's channel store")
        return cls(ctx.intake, ctx.store, s)

    # --- in: IMAP ------------------------------------------------------------------------------

    async def poll(self, stop: asyncio.Event) -> None:
        """Keep an IMAP session until `stop`; reconnect with backoff after any failure."""
        if not self.s.imap_host:
            return
        failures = 0
        while not stop.is_set():
            try:
                await self._session(stop)
                return
            except (aioimaplib.AioImapException, ChannelError, QueueError, OSError,
                    TimeoutError) as exc:
                failures = 1 if self._watching else failures + 1  # a working session resets
                delay = min(300.0, 2.0 ** failures)  # 2, 4, 8 ... 300 s
                log.warning("email: IMAP %s:%s (%s): %s: %s; reconnecting in %.0f s",
                            self.s.imap_host, self.s.imap_port, self.s.imap_user,
                            type(exc).__name__, exc or "no detail", delay)
                await _sleep_or_stop(stop, delay)

    async def _session(self, stop: asyncio.Event) -> None:
        self._watching = False
        lost = asyncio.Event()
        ctx = ssl.create_default_context() if self.s.imap_ssl else None
        client = aioimaplib.IMAP4(host=self.s.imap_host or "", port=self.s.imap_port,
                                  timeout=30, conn_lost_cb=lambda _exc: lost.set(),
                                  ssl_context=ctx)
        try:
            await client.wait_hello_from_server()
            password = self.s.imap_password.get_secret_value() if self.s.imap_password else ""
            resp = await client.login(self.s.imap_user or "", password)
            if resp.result != "OK":
                raise ChannelAuthError(f"login refused: {_said(resp)}")
            resp = await client.select(self.s.imap_mailbox)
            if resp.result != "OK":
                raise ChannelTemporaryError(f"SELECT {self.s.imap_mailbox}: {_said(resp)}")
            uidvalidity = next((int(m.group(1)) for line in resp.lines
                                if (m := _UIDVALIDITY.search(bytes(line)))), 0)
            last_uid = await self._load_cursor(uidvalidity)
            idle = self.s.imap_idle and client.has_capability("IDLE")
            self._watching = True
            log.info("email: watching %s of %s (%s), from UID %s", self.s.imap_mailbox,
                     self.s.imap_user, "IDLE" if idle else f"every {self.s.imap_poll_seconds}s",
                     last_uid if last_uid is not None else "the last days")
            while not stop.is_set():
                last_uid = await self._catch_up(client, uidvalidity, last_uid)
                if idle:
                    await self._idle(client, stop, lost)
                else:
                    await _wait_any(stop, lost, timeout=self.s.imap_poll_seconds)
                if lost.is_set():
                    raise ChannelTemporaryError("connection lost")
        finally:
            if not lost.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.logout(), 5)

    async def _idle(self, client: aioimaplib.IMAP4, stop: asyncio.Event,
                    lost: asyncio.Event) -> None:
        """Wait for the server to announce anything (or stop/disconnect), then end IDLE."""
        idle = await client.idle_start(timeout=IDLE_SECONDS)
        push = asyncio.ensure_future(client.wait_server_push(timeout=IDLE_SECONDS + 30))
        try:
            await _wait_any(stop, lost, timeout=IDLE_SECONDS + 60, also=push)
        finally:
            push.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await push
            if not lost.is_set() and client.has_pending_idle():
                client.idle_done()
                await asyncio.wait_for(idle, 10)

    async def _catch_up(self, client: aioimaplib.IMAP4, uidvalidity: int,
                        last_uid: int | None) -> int:
        """Queue every mail above the cursor, oldest first; return the new cursor."""
        start = (last_uid or 0) + 1
        resp = await client.uid_search(f"UID {start}:*")
        uids = sorted(u for u in _numbers(resp) if u >= start)  # "n:*" always has the top UID
        old: set[int] = set()
        if last_uid is None and uids:  # first sync: leave old history alone
            since = datetime.now(UTC) - timedelta(days=self.s.imap_first_sync_days)
            recent = set(_numbers(await client.uid_search(
                f"UID {start}:* SINCE {since:%d-%b-%Y}")))
            old = set(uids) - recent
            if old:
                log.info("email: first sync, leaving %d mails older than %s unanswered",
                         len(old), f"{since:%Y-%m-%d}")
        wanted = [u for u in uids if u not in old]
        cursor = last_uid or 0
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i:i + CHUNK]
            sizes = await self._sizes(client, chunk)
            batch: list[InboundMessage] = []
            for uid in chunk:
                inbound = await self._read(client, uid, sizes.get(uid), uidvalidity)
                if inbound is not None:
                    batch.append(inbound)
            await asyncio.gather(*(self.intake.put(m) for m in batch))
            cursor = chunk[-1]
            await self._save_cursor(uidvalidity, cursor)
        if last_uid is None or (uids and uids[-1] > cursor):  # first sync, or old mail on top
            cursor = max(cursor, uids[-1] if uids else 0)
            await self._save_cursor(uidvalidity, cursor)
        return cursor

    async def _sizes(self, client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, int]:
        resp = await client.uid("fetch", ",".join(map(str, uids)), "(UID RFC822.SIZE)")
        sizes: dict[int, int] = {}
        for line in resp.lines:
            if m := _FETCH_SIZE.search(bytes(line)):
                uid, size = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
                sizes[int(uid)] = int(size)
        return sizes

    async def _read(self, client: aioimaplib.IMAP4, uid: int, size: int | None,
                    uidvalidity: int) -> InboundMessage | None:
        """Fetch and parse one mail; None (with a log line) for mail we do not answer."""
        if size is not None and size > self.s.email_max_bytes:
            self.skipped += 1
            log.warning("email: UID %d is %d bytes (limit %d); skipped", uid, size,
                        self.s.email_max_bytes)
            return None
        resp = await client.uid("fetch", str(uid), "(UID BODY.PEEK[])")
        raw = next((bytes(x) for x in resp.lines if isinstance(x, bytearray)), None)
        if resp.result != "OK" or raw is None:
            log.warning("email: UID %d vanished before it was read", uid)
            return None
        try:
            parsed = parse_mail(raw, own_addresses=self.own, own_domain=self.domain)
        except Exception:  # one broken mail must not block the mailbox
            self.skipped += 1
            log.exception("email: UID %d could not be parsed; left in the mailbox for a person",
                          uid)
            return None
        if parsed.automatic:
            self.skipped += 1
            log.info("email: not answering UID %d from %s: %s", uid, parsed.from_address,
                     parsed.automatic)
            return None
        return self._inbound(parsed, f"{uidvalidity}:{uid}")

    def _inbound(self, parsed: ParsedMail, ref: str) -> InboundMessage:
        text = parsed.text or reply_subject(parsed.subject)[4:].strip()
        return InboundMessage(
            channel=self.name, external_id=parsed.dedup_key, address=parsed.sender,
            text=text[:self.s.max_text_chars], display_name=parsed.display_name,
            attachments=parsed.attachments, raw_ref=ref, thread=parsed.thread,
            email=parsed.sender, meta={
                "message_id": parsed.message_id, "in_reply_to": parsed.in_reply_to,
                "references": list(parsed.references), "subject": parsed.subject[:500]})

    async def _load_cursor(self, uidvalidity: int) -> int | None:
        """The last UID handled, or None on first sync or after a UIDVALIDITY change."""
        value = await self.store.get_state(self.cursor_key)
        if not value:
            return None
        if value.get("uidvalidity") != uidvalidity:
            log.warning("email: UIDVALIDITY of %s changed (%s -> %s); re-reading recent mail, "
                        "duplicates are dropped by Message-ID", self.s.imap_mailbox,
                        value.get("uidvalidity"), uidvalidity)
            return None
        return int(value["last_uid"])

    async def _save_cursor(self, uidvalidity: int, last_uid: int) -> None:
        await self.store.put_state(self.cursor_key,
                                   {"uidvalidity": uidvalidity, "last_uid": last_uid})

    # --- out: SMTP -----------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        if not self.s.smtp_host:
            raise ChannelPermanentError("email: SMTP_HOST is not configured")
        if message.meta.get("playbook"):  # sent by itself: no thread, never capped
            mail = playbook_mail(message, self.s.email_from or self.from_address, self.domain)
            await self._deliver(mail)
            return SendResult(provider_id=str(mail["Message-ID"]), status="sent")
        author, theirs = await self._reply_context(message)
        automatic = author == "bot"
        mail = self._compose(message, theirs, automatic=automatic)
        if not automatic:  # a person's answer is never capped
            await self._deliver(mail)
        else:
            async with self._address_locks[message.address]:
                await self._check_cap(message.address)
                await self._deliver(mail)
                self._note_sent(message.address, message.message_id)
        return SendResult(provider_id=str(mail["Message-ID"]), status="sent")

    async def send_plain(self, to: str, subject: str, text: str) -> None:
        """A mail that answers no mail of theirs (a staff reply from the web chat, for a
        visitor who left); raises a ChannelError subclass like `send`."""
        if not self.s.smtp_host:
            raise ChannelPermanentError("email: SMTP_HOST is not configured")
        mail = EmailMessage()
        mail["From"] = self.s.email_from or self.from_address
        mail["To"] = to
        mail["Subject"] = subject
        mail["Date"] = format_datetime(datetime.now(UTC))
        mail["Message-ID"] = make_msgid(idstring=OWN_ID_MARK, domain=self.domain)
        mail["Auto-Submitted"] = "auto-generated"
        mail["X-Auto-Response-Suppress"] = "All"
        mail.set_content(text)
        await self._deliver(mail)

    async def _deliver(self, mail: EmailMessage) -> None:
        try:
            await aiosmtplib.send(
                mail, hostname=self.s.smtp_host, port=self.s.smtp_port,
                username=self.s.smtp_user,
                password=self.s.smtp_password.get_secret_value() if self.s.smtp_password
                else None,
                use_tls=self.s.smtp_tls == "ssl", start_tls=self.s.smtp_tls == "starttls",
                timeout=30)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _smtp_error(exc) from exc

    async def _reply_context(self, message: OutboundMessage) -> tuple[str, dict[str, Any]]:
        """Who wrote the reply, and the headers of the customer mail it answers (the one in
        the message meta, else their latest in the conversation, else the first)."""
        author, theirs = await self.store.reply_context(message)
        return author, dict(theirs or message.meta)

    def _compose(self, message: OutboundMessage, theirs: dict[str, Any], *,
                 automatic: bool) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.s.email_from or self.from_address
        mail["To"] = message.address
        mail["Subject"] = reply_subject(str(theirs.get("subject") or ""))
        mail["Date"] = format_datetime(datetime.now(UTC))
        mail["Message-ID"] = make_msgid(idstring=f"{OWN_ID_MARK}.{message.message_id}",
                                        domain=self.domain)
        their_id = theirs.get("message_id")
        if isinstance(their_id, str) and their_id:
            mail["In-Reply-To"] = their_id
            refs = reply_references(their_id, list(theirs.get("references") or ()),
                                    theirs.get("in_reply_to"))
            mail["References"] = " ".join(refs)
        if automatic:
            mail["Auto-Submitted"] = "auto-replied"
        mail["X-Auto-Response-Suppress"] = "All"
        mail.set_content(self.text_with_attachments(message))
        return mail

    async def _check_cap(self, address: str) -> None:
        """Refuse a bot answer once `address` had the daily cap of them (RFC 3834 §2).

        Counts what the database says was sent today plus what this process sent and the
        outbox has not recorded yet, without a write transaction per send."""
        now = datetime.now(UTC)
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        ids = await self.store.bot_replies_since(self.name, address, day_start)
        day, local = self._sent_today.get(address, ("", set()))
        if day == f"{now:%Y-%m-%d}":
            ids |= local
        cap = self.s.email_max_auto_replies_per_day
        if len(ids) >= cap:
            raise ChannelPermanentError(
                f"auto-reply cap reached: {cap} automatic answers to this address today",
                code="auto_reply_cap")

    def _note_sent(self, address: str, message_id: int) -> None:
        today = f"{datetime.now(UTC):%Y-%m-%d}"
        if len(self._sent_today) > 10_000:
            self._sent_today = {a: v for a, v in self._sent_today.items() if v[0] == today}
            self._address_locks = defaultdict(asyncio.Lock, {
                a: lock for a, lock in self._address_locks.items() if lock.locked()})
        day, ids = self._sent_today.get(address, (today, set()))
        if day != today:
            ids = set()
        ids.add(message_id)
        self._sent_today[address] = (today, ids)


def _smtp_error(exc: Exception) -> ChannelError:
    """The one place SMTP failures become our errors: 4xx retry, 5xx fail, 535 auth."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    code = getattr(exc, "code", None)
    text = f"SMTP {code}: {getattr(exc, 'message', '') or exc}" if code else f"SMTP: {exc!r}"
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) or code in (530, 534, 535):
        return ChannelAuthError(text)
    if isinstance(code, int) and 500 <= code < 600:
        return ChannelPermanentError(text, code=str(code))
    return ChannelTemporaryError(text)  # 4xx, timeouts, refused or dropped connections


def _numbers(resp: Any) -> list[int]:
    found: list[int] = []
    for line in resp.lines[:-1]:
        text = bytes(line).decode("ascii", "replace").strip()
        if text.startswith("SEARCH"):
            text = text[6:]
        if text and all(p.isdigit() for p in text.split()):
            found.extend(int(p) for p in text.split())
    return found


def _said(resp: Any) -> str:
    return " ".join(bytes(x).decode("utf-8", "replace") for x in resp.lines[-1:])[:200]


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(*events: asyncio.Event, timeout: float,
                    also: asyncio.Future[Any] | None = None) -> None:
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waiters | ({also} if also else set()), timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

