"""The outbox sender: queued replies out through their channel, each outcome committed alone.

Sends are not rounds. Each conversation with due replies gets a slot (at most
`concurrency` at once) and sends its replies in order; the outcome of every send is committed
before the slot sends anything else, so a crash or a stop can only repeat the sends that were
in flight, never a batch that had already gone out. A slow or hanging send holds its own slot
and nothing else: the other conversations keep flowing, and the send is cut at `send_timeout`.

A timeout (or a dropped connection after the request left) means the platform may have the
message. It is retried: a customer who might see an answer twice is better off than one who
never sees it. A send the platform accepted is recorded as sent even if the database is
briefly unwritable: the recorder keeps trying to commit it and never sends it again.

Commits are grouped: outcomes that finish together share one transaction (group commit), so
many concurrent sends cost few writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import deliveries
from bot.db.engine import Database
from bot.db.models import Conversation, Message, OutboxItem
from bot.jobs import OUTBOX
from bot.worker import sleep_or_stop, wait_event_or_stop
from channels.base import Attachment, Channel, OutboundMessage, SendResult
from core.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelOutcomeUnknown,
    ChannelPermanentError,
    ChannelRateLimited,
)

log = logging.getLogger(__name__)
OB = OutboxItem.__table__.c
MS = Message.__table__.c
CV = Conversation.__table__.c

#: on a graceful stop, sends in flight get this long to finish and be recorded; the rest are
#: left pending (and so sent after the restart)
STOP_GRACE = 5.0

_OUTBOX_SENT = (update(OutboxItem.__table__).where(OB.id == bindparam("ob_id"))
                .values(status="sent", sent_at=bindparam("now"), attempts=bindparam("attempts")))
_MESSAGE_SENT = (update(Message.__table__).where(MS.id == bindparam("msg_id"))
                 .values(status=bindparam("status"), provider_id=bindparam("provider_id"),
                         sent_at=bindparam("now"), error=None))

Apply = Callable[[AsyncConnection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Job:
    outbox_id: int
    attempts: int
    message: OutboundMessage


@dataclass(frozen=True, slots=True)
class _Sent:
    """A delivered reply; delivered replies that finish together share two statements."""

    job: _Job
    result: SendResult


_Outcome = _Sent | Apply


class OutboxSender:
    """Delivers queued replies through their channel (one process at a time: the leader)."""

    def __init__(self, db: Database, channels: Mapping[str, Channel], *, concurrency: int,
                 max_attempts: int, send_timeout: float = 20.0, batch: int = 200,
                 reply_window: frozenset[str] = frozenset(),
                 reporting: frozenset[str] = frozenset()) -> None:
        """`reply_window`: channels whose messages need the customer's last message time;
        `reporting`: channels whose platform reports deliveries later (Channel flags)."""
        self.db = db
        self.channels = channels
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.send_timeout = send_timeout
        self.batch = batch
        self.stop_grace = STOP_GRACE
        self.wakeup = asyncio.Event()
        self.on_sent: list[Callable[[OutboundMessage, SendResult], Awaitable[None]]] = []
        #: called inside the transaction that records a permanent failure (outbox id, message,
        #: error), so e.g. the desk's notice is as durable as the failure itself
        self.on_failed: list[Callable[[AsyncConnection, int, OutboundMessage, str],
                                      Awaitable[None]]] = []
        #: conversation id -> the task sending its replies
        self._busy: dict[int, asyncio.Task[None]] = {}
        self._recorder = _Recorder(db, reporting)
        self._windowed = reply_window

    def wake(self) -> None:
        self.wakeup.set()

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    async def run(self, stop: asyncio.Event) -> None:
        recorder = asyncio.create_task(self._recorder.run(), name="outbox-recorder")
        try:
            await self._dispatch(stop)
        finally:
            await self._finish_in_flight()
            await self._recorder.close()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def _dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self.concurrency - len(self._busy)
            if free <= 0:
                self.wakeup.clear()
                await wait_event_or_stop(self.wakeup, stop, timeout=1.0)
                continue
            self.wakeup.clear()
            try:
                due, next_due = await self._due(exclude=set(self._busy))
            except Exception:
                log.exception("outbox: could not read pending replies; retrying in 1 s")
                await sleep_or_stop(stop, 1.0)
                continue
            for conversation_id, jobs in list(due.items())[:free]:
                task = asyncio.create_task(self._send_conversation(jobs),
                                           name=f"outbox-conversation-{conversation_id}")
                self._busy[conversation_id] = task
                task.add_done_callback(functools.partial(self._done, conversation_id))
            if not due:
                await wait_event_or_stop(self.wakeup, stop, timeout=min(next_due, 1.0))

    def _done(self, conversation_id: int, task: asyncio.Task[None]) -> None:
        self._busy.pop(conversation_id, None)
        self.wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox: conversation %d stopped sending: %r", conversation_id,
                      task.exception())

    async def _finish_in_flight(self) -> None:
        """Let sends in flight finish (and their outcome be committed) for a while; the ones
        still running after that are cut and stay pending, to be sent after the restart."""
        if not self._busy:
            return
        tasks = list(self._busy.values())
        log.info("outbox: waiting up to %.0f s for %d send(s) in flight", self.stop_grace,
                 len(tasks))
        _done, pending = await asyncio.wait(tasks, timeout=self.stop_grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("outbox: %d send(s) did not finish in time; they stay queued and are "
                        "sent after the restart", len(pending))

    async def _due(self, *, exclude: set[int]) -> tuple[dict[int, list[_Job]], float]:
        """Due replies by conversation, oldest first, skipping conversations being sent and
        conversations whose oldest reply waits for a retry (order within a conversation)."""
        now = datetime.now(UTC)
        stmt = (select(OB.id, OB.attempts, OB.next_attempt_at, OB.conversation_id, OB.channel,
                       MS.id.label("message_id"), MS.text, MS.attachments, MS.meta,
                       CV.address, CV.thread, CV.meta.label("conv_meta"))
                .join(Message.__table__, MS.id == OB.message_id)
                .join(Conversation.__table__, CV.id == OB.conversation_id)
                .where(OB.status == "pending").order_by(OB.id).limit(self.batch))
        if exclude:
            stmt = stmt.where(OB.conversation_id.not_in(exclude))
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        due: dict[int, list[_Job]] = defaultdict(list)
        waiting: set[int] = set()
        next_due = 1.0
        for r in rows:
            if r.conversation_id in waiting:
                continue
            if r.next_attempt_at is not None and r.next_attempt_at > now:
                waiting.add(r.conversation_id)
                next_due = min(next_due, (r.next_attempt_at - now).total_seconds())
                continue
            meta = dict(r.conv_meta or {})
            meta.update(r.meta or {})
            due[r.conversation_id].append(_Job(r.id, r.attempts, OutboundMessage(
                channel=r.channel, address=r.address, text=r.text, message_id=r.message_id,
                conversation_id=r.conversation_id, thread=r.thread,
                attachments=tuple(Attachment(**a) for a in r.attachments or ()), meta=meta)))
        if any(j.message.channel in self._windowed for jobs in due.values() for j in jobs):
            await self._fill_windows(due)
        return due, max(next_due, 0.01)

    async def _fill_windows(self, due: dict[int, list[_Job]]) -> None:
        """The customer's last message per address, for channels with a reply window."""
        wanted = sorted({(j.message.channel, j.message.address) for jobs in due.values()
                         for j in jobs if j.message.channel in self._windowed})
        async with self.db.read() as conn:
            last = {(r.channel, r.address): r.at for r in (await conn.execute(
                select(CV.channel, CV.address, func.max(CV.last_inbound_at).label("at"))
                .where(tuple_(CV.channel, CV.address).in_(wanted))
                .group_by(CV.channel, CV.address))).all()}
        for conversation_id, jobs in due.items():
            due[conversation_id] = [
                _Job(j.outbox_id, j.attempts, replace(
                    j.message, last_inbound_at=last.get((j.message.channel, j.message.address))))
                if j.message.channel in self._windowed else j for j in jobs]

    async def _send_conversation(self, jobs: Sequence[_Job]) -> None:
        """One conversation's due replies, in order; a reply that must be retried holds back
        the ones after it."""
        for job in jobs:
            outcome, ok = await self._send_one(job)
            await self._recorder.record(outcome)
            if not ok:
                return

    async def _send_one(self, job: _Job) -> tuple[_Outcome, bool]:
        channel = self.channels.get(job.message.channel)
        try:
            if channel is None:
                raise ChannelPermanentError(f"channel {job.message.channel!r} is not configured")
            async with asyncio.timeout(self.send_timeout):
                result = await channel.send(job.message)
        except ChannelRateLimited as exc:  # "later", not "no": not an attempt that failed
            return self._retry(job, str(exc), delay=max(exc.retry_after, 0.5),
                               counts=False), False
        except (ChannelPermanentError, ChannelAuthError) as exc:
            return self._fail(job, f"{type(exc).__name__}: {exc}"), True
        except ChannelOutcomeUnknown as exc:
            return self._retry(job, f"{exc} (retried: the customer may get it twice)"), False
        except ChannelError as exc:
            return self._retry(job, f"{type(exc).__name__}: {exc}"), False
        except TimeoutError:
            return self._retry(job, f"no answer from {job.message.channel} within "
                                    f"{self.send_timeout:g} s; it may have the message "
                                    "(retried: the customer may get it twice)"), False
        except Exception as exc:
            log.exception("outbox %d: unexpected error from %s", job.outbox_id,
                          job.message.channel)
            return self._retry(job, f"{type(exc).__name__}: {exc}"), False
        for hook in self.on_sent:
            await hook(job.message, result)
        return _Sent(job, result), True

    def _retry(self, job: _Job, error: str, delay: float | None = None, *,
               counts: bool = True) -> Apply:
        """Try again later; `counts=False` (flood control) neither uses up an attempt nor
        lengthens the backoff of later failures."""
        attempts = job.attempts + 1 if counts else job.attempts
        retry = OUTBOX.retry(attempts, error, datetime.now(UTC), delay=delay,
                             max_attempts=self.max_attempts)
        if retry.gave_up:  # the message row and the failure hooks too
            return self._fail(job, f"gave up after {attempts} attempts: {error}")
        log.warning("outbox %d via %s: attempt %d failed, retrying in %.1f s: %s",
                    job.outbox_id, job.message.channel, attempts, retry.wait, error)

        async def apply(conn: AsyncConnection) -> None:
            await conn.execute(update(OutboxItem.__table__).where(OB.id == job.outbox_id)
                               .values(retry.values))
            await conn.execute(update(Message.__table__).where(MS.id == job.message.message_id)
                               .values(error=error[:2000]))
        return apply

    def _fail(self, job: _Job, error: str) -> Apply:
        log.error("outbox %d via %s failed for good: %s", job.outbox_id, job.message.channel,
                  error)
        retry = OUTBOX.retry(job.attempts + 1, error, datetime.now(UTC), permanent=True,
                             max_attempts=self.max_attempts)

        async def apply(conn: AsyncConnection) -> None:
            await conn.execute(update(OutboxItem.__table__).where(OB.id == job.outbox_id)
                               .values(retry.values))
            await conn.execute(update(Message.__table__).where(MS.id == job.message.message_id)
                               .values(status="failed", error=error[:2000]))
            for hook in self.on_failed:
                await hook(conn, job.outbox_id, job.message, error)
        return apply


class _Recorder:
    """Commits send outcomes as they come, grouping those that arrive together; an outcome
    handed over is committed even if its sender is cancelled (a stop), and retried until the
    database takes it."""

    def __init__(self, db: Database, reporting: frozenset[str] = frozenset()) -> None:
        self.db = db
        self.reporting = reporting
        self._pending: list[tuple[_Outcome, asyncio.Future[None]]] = []
        self._event = asyncio.Event()
        self._closing = False

    async def record(self, outcome: _Outcome) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        self._event.set()
        await asyncio.shield(future)

    async def run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._event.wait()
                self._event.clear()
                continue
            batch, self._pending = self._pending, []
            await self._commit(batch)

    async def close(self) -> None:
        self._closing = True
        self._event.set()

    async def _commit(self, batch: list[tuple[_Outcome, asyncio.Future[None]]]) -> None:
        try:
            async with self.db.write() as conn:
                await _apply(conn, [outcome for outcome, _ in batch], self.reporting)
        except Exception as exc:  # noqa: BLE001 - one bad outcome must not hold back the rest
            log.error("outbox: could not record %d send outcome(s) together (%s); recording "
                      "them one by one", len(batch), type(exc).__name__)
            for item in batch:
                await self._commit_alone(*item)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _commit_alone(self, outcome: _Outcome, future: asyncio.Future[None]) -> None:
        """A delivered reply is retried until the database takes it (it must never be sent
        again); a retry or failure that cannot be written is given up after a few tries, and
        its reply, still pending, is simply tried again."""
        delay, tries = 0.1, 0
        while True:
            try:
                async with self.db.write() as conn:
                    await _apply(conn, [outcome], self.reporting)
                break
            except Exception as exc:  # noqa: BLE001 - the send happened: keep its outcome
                tries += 1
                if not isinstance(outcome, _Sent) and tries >= 5:
                    log.error("outbox: dropped an unrecordable send outcome after %d tries: %s",
                              tries, type(exc).__name__)
                    break
                log.error("outbox: could not record a send outcome, retrying in %.1f s: %s",
                          delay, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if not future.done():
            future.set_result(None)


async def _apply(conn: AsyncConnection, outcomes: Sequence[_Outcome],
                 reporting: frozenset[str]) -> None:
    sent = [o for o in outcomes if isinstance(o, _Sent)]
    if sent:  # the common case, in two statements whatever the number
        now = datetime.now(UTC)
        await conn.execute(_OUTBOX_SENT, [
            {"ob_id": s.job.outbox_id, "attempts": s.job.attempts + 1, "now": now}
            for s in sent])
        await conn.execute(_MESSAGE_SENT, [
            {"msg_id": s.job.message.message_id, "status": s.result.status,
             "provider_id": s.result.provider_id, "now": now} for s in sent])
        if reporting or any(s.result.meta for s in sent):
            await deliveries.record_sent(conn, [
                (s.job.message.message_id, s.job.message.channel, s.result.provider_id,
                 s.result.meta) for s in sent], reporting=reporting)
    for outcome in outcomes:
        if not isinstance(outcome, _Sent):
            await outcome(conn)
