"""The loops that drain the queues: inbound workers and the outbox sender.

Workers take their shard of the inbox in order and handle a batch of messages in one
transaction, with a savepoint per message, so a crash re-does whole messages and a message
that raises is retried later without undoing its neighbours. The sender delivers outbox rows
per conversation in order, concurrently across conversations, and retries failures with
backoff that honours the platform's Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import Conversation, Message, OutboxItem
from bot.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelPermanentError,
    ChannelRateLimited,
)
from bot.pipeline import Outcome, Pipeline
from bot.queue import Inbox, QueuedItem, backoff
from channels.base import Attachment, Channel, OutboundMessage, SendResult

log = logging.getLogger(__name__)
OB = OutboxItem.__table__.c
MS = Message.__table__.c
CV = Conversation.__table__.c

#: seconds a worker waits after a part-full batch, so that under steady traffic the fixed cost
#: of a batch (claim, transaction, lookups) is shared by more messages
WORKER_LINGER = 0.01

OutcomeListener = Callable[[QueuedItem, Outcome], Awaitable[None] | None]


class WorkerPool:
    """`workers` asyncio tasks, each owning a slice of the conversation shards."""

    def __init__(self, db: Database, inbox: Inbox, pipeline: Pipeline, *, workers: int,
                 batch: int, on_committed: Callable[[], None] | None = None) -> None:
        self.db = db
        self.inbox = inbox
        self.pipeline = pipeline
        self.workers = workers
        self.batch = batch
        self.on_committed = on_committed
        self.listeners: list[OutcomeListener] = []
        self.handled = 0
        self.latencies: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._loop(i, stop), name=f"worker-{i}")
                 for i in range(self.workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _loop(self, index: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                items = await self.inbox.claim(index, self.workers, self.batch)
            except Exception:
                log.exception("worker %d could not read the queue; retrying in 1 s", index)
                await _sleep_or_stop(stop, 1.0)
                continue
            if not items:
                self.inbox.wakeup.clear()
                await _wait_event_or_stop(self.inbox.wakeup, stop, timeout=1.0)
                continue
            try:
                await self.process(items)
                if len(items) < self.batch:  # let the next batch fill a little
                    await _sleep_or_stop(stop, WORKER_LINGER)
            except Exception:
                log.exception("worker %d: batch not handled (database error?); retrying in 1 s",
                              index)
                await _sleep_or_stop(stop, 1.0)

    async def process(self, items: list[QueuedItem]) -> None:
        """Handle a batch in one transaction; if any message fails, redo the batch with one
        savepoint per message so only the failing one (and what follows it in its
        conversation) waits for a retry."""
        claimed = items
        try:
            done = await self._handle_batch(items)
            failed: list[tuple[QueuedItem, str]] = []
        except Exception:  # noqa: BLE001 - retried message by message below
            done, failed = await self._handle_isolated(items)
        await self._after_commit(done, failed)
        await self.inbox.settle(claimed)

    async def _handle_batch(self, items: list[QueuedItem]) -> list[tuple[QueuedItem, Outcome]]:
        # FAQ matching is pure CPU: done before the write lock, so accepting new messages
        # (which needs that lock on SQLite) never waits for it.
        seen = {item.id: self.pipeline.understand(item.message) for item in items}
        async with self.db.write() as conn:
            items = await self.inbox.lock(conn, items)
            outcomes = await self.pipeline.handle(
                conn, [item.message for item in items],
                [seen[item.id] if item.id in seen else self.pipeline.understand(item.message)
                 for item in items])
            await Inbox.complete_many(conn, [item.id for item in items])
        return list(zip(items, outcomes, strict=True))

    async def _handle_isolated(self, items: list[QueuedItem]) -> tuple[
            list[tuple[QueuedItem, Outcome]], list[tuple[QueuedItem, str]]]:
        failed: list[tuple[QueuedItem, str]] = []
        done: list[tuple[QueuedItem, Outcome]] = []
        blocked: set[str] = set()
        async with self.db.write() as conn:
            items = await self.inbox.lock(conn, items)
            for item in items:
                if item.conversation_key in blocked:  # keep order behind a failed message
                    continue
                try:
                    async with conn.begin_nested():
                        (outcome,) = await self.pipeline.handle(conn, [item.message])
                        await Inbox.complete(conn, item.id)
                except Exception as exc:
                    log.exception("handling message %d (%s) failed", item.id, item.message.channel)
                    failed.append((item, f"{type(exc).__name__}: {exc}"))
                    blocked.add(item.conversation_key)
                    continue
                done.append((item, outcome))
        return done, failed

    async def _after_commit(self, done: list[tuple[QueuedItem, Outcome]],
                            failed: list[tuple[QueuedItem, str]]) -> None:
        now = time.time()
        for item, outcome in done:
            self.handled += 1
            self.latencies.append(now - item.message.timestamp.timestamp())
            log.info("message %d on %s: %s%s", item.id, item.message.channel, outcome.decision,
                     f" ({outcome.reason})" if outcome.reason else "")
            for listener in self.listeners:
                result = listener(item, outcome)
                if asyncio.iscoroutine(result):
                    await result
        if len(self.latencies) > 10000:
            del self.latencies[:5000]
        if done and self.on_committed:
            self.on_committed()
        for item, error in failed:
            if await self.inbox.retry_later(item, error):
                log.error("message %d dead-lettered after %d attempts: %s", item.id,
                          item.attempts + 1, error)


@dataclass(frozen=True, slots=True)
class _Job:
    outbox_id: int
    attempts: int
    message: OutboundMessage


@dataclass(frozen=True, slots=True)
class _Sent:
    """A delivered reply, recorded with the others of its round in one executemany."""

    job: _Job
    result: SendResult


_Update = Callable[[AsyncConnection], Awaitable[None]] | _Sent
_OUTBOX_SENT = (update(OutboxItem.__table__).where(OB.id == bindparam("ob_id"))
                .values(status="sent", sent_at=bindparam("now"), attempts=bindparam("attempts")))
_MESSAGE_SENT = (update(Message.__table__).where(MS.id == bindparam("msg_id"))
                 .values(status=bindparam("status"), provider_id=bindparam("provider_id"),
                         sent_at=bindparam("now"), error=None))


class OutboxSender:
    """Delivers queued replies through their channel."""

    def __init__(self, db: Database, channels: Mapping[str, Channel], *, concurrency: int,
                 max_attempts: int, batch: int = 200) -> None:
        self.db = db
        self.channels = channels
        self.max_attempts = max_attempts
        self.batch = batch
        self.semaphore = asyncio.Semaphore(concurrency)
        self.wakeup = asyncio.Event()
        self.sent = 0
        self.failed = 0
        self.on_sent: list[Callable[[OutboundMessage, SendResult], Awaitable[None]]] = []
        #: called inside the transaction that records a permanent failure (outbox id, message,
        #: error), so e.g. the desk's notice is as durable as the failure itself
        self.on_failed: list[Callable[[AsyncConnection, int, OutboundMessage, str],
                                      Awaitable[None]]] = []

    def wake(self) -> None:
        self.wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                jobs, next_due = await self._due()
            except Exception:
                log.exception("outbox: could not read pending replies; retrying in 1 s")
                await _sleep_or_stop(stop, 1.0)
                continue
            if not jobs:
                self.wakeup.clear()
                await _wait_event_or_stop(self.wakeup, stop, timeout=min(next_due, 1.0))
                continue
            await self._deliver(jobs)

    async def _due(self) -> tuple[list[_Job], float]:
        now = datetime.now(UTC)
        stmt = (select(OB.id, OB.attempts, OB.next_attempt_at, OB.conversation_id, OB.channel,
                       MS.id.label("message_id"), MS.text, MS.attachments, MS.meta,
                       CV.address, CV.thread, CV.meta.label("conv_meta"))
                .join(Message.__table__, MS.id == OB.message_id)
                .join(Conversation.__table__, CV.id == OB.conversation_id)
                .where(OB.status == "pending").order_by(OB.id).limit(self.batch))
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        jobs: list[_Job] = []
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
            jobs.append(_Job(r.id, r.attempts, OutboundMessage(
                channel=r.channel, address=r.address, text=r.text, message_id=r.message_id,
                conversation_id=r.conversation_id, thread=r.thread,
                attachments=tuple(Attachment(**a) for a in r.attachments or ()), meta=meta)))
        return jobs, max(next_due, 0.01)

    async def _deliver(self, jobs: list[_Job]) -> None:
        by_conversation: dict[int, list[_Job]] = defaultdict(list)
        for job in jobs:
            by_conversation[job.message.conversation_id].append(job)
        results = await asyncio.gather(*(self._send_in_order(js)
                                         for js in by_conversation.values()))
        updates = [u for batch in results for u in batch]
        sent = [u for u in updates if isinstance(u, _Sent)]
        async with self.db.write() as conn:
            if sent:  # the common case, in two statements whatever the batch size
                now = datetime.now(UTC)
                await conn.execute(_OUTBOX_SENT, [
                    {"ob_id": u.job.outbox_id, "attempts": u.job.attempts + 1, "now": now}
                    for u in sent])
                await conn.execute(_MESSAGE_SENT, [
                    {"msg_id": u.job.message.message_id, "status": u.result.status,
                     "provider_id": u.result.provider_id, "now": now} for u in sent])
            for apply in updates:
                if not isinstance(apply, _Sent):
                    await apply(conn)

    async def _send_in_order(self, jobs: list[_Job]) -> list[_Update]:
        updates: list[_Update] = []
        async with self.semaphore:
            for job in jobs:
                update_fn, ok = await self._send_one(job)
                updates.append(update_fn)
                if not ok:  # later replies of this conversation wait for this one
                    break
        return updates

    async def _send_one(self, job: _Job) -> tuple[_Update, bool]:
        channel = self.channels.get(job.message.channel)
        try:
            if channel is None:
                raise ChannelPermanentError(f"channel {job.message.channel!r} is not configured")
            result = await channel.send(job.message)
        except ChannelRateLimited as exc:
            return self._retry(job, str(exc), delay=max(exc.retry_after, 0.5)), False
        except (ChannelPermanentError, ChannelAuthError) as exc:
            return self._fail(job, f"{type(exc).__name__}: {exc}"), True
        except ChannelError as exc:
            return self._retry(job, f"{type(exc).__name__}: {exc}"), False
        except Exception as exc:
            log.exception("outbox %d: unexpected error from %s", job.outbox_id, channel)
            return self._retry(job, f"{type(exc).__name__}: {exc}"), False
        self.sent += 1
        for hook in self.on_sent:
            await hook(job.message, result)
        return self._mark_sent(job, result), True

    @staticmethod
    def _mark_sent(job: _Job, result: SendResult) -> _Sent:
        return _Sent(job, result)

    def _retry(self, job: _Job, error: str, delay: float | None = None) -> Callable[
            [AsyncConnection], Awaitable[None]]:
        attempts = job.attempts + 1
        if attempts >= self.max_attempts:
            return self._fail(job, f"gave up after {attempts} attempts: {error}")
        wait = delay if delay is not None else backoff(attempts)
        log.warning("outbox %d via %s: attempt %d failed, retrying in %.1f s: %s",
                    job.outbox_id, job.message.channel, attempts, wait, error)

        async def apply(conn: AsyncConnection) -> None:
            await conn.execute(update(OutboxItem.__table__).where(OB.id == job.outbox_id).values(
                attempts=attempts, last_error=error[:2000],
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=wait)))
            await conn.execute(update(Message.__table__).where(MS.id == job.message.message_id)
                               .values(error=error[:2000]))
        return apply

    def _fail(self, job: _Job, error: str) -> Callable[[AsyncConnection], Awaitable[None]]:
        self.failed += 1
        log.error("outbox %d via %s failed for good: %s", job.outbox_id, job.message.channel,
                  error)

        async def apply(conn: AsyncConnection) -> None:
            await conn.execute(update(OutboxItem.__table__).where(OB.id == job.outbox_id).values(
                status="failed", attempts=job.attempts + 1, last_error=error[:2000]))
            await conn.execute(update(Message.__table__).where(MS.id == job.message.message_id)
                               .values(status="failed", error=error[:2000]))
            for hook in self.on_failed:
                await hook(conn, job.outbox_id, job.message, error)
        return apply


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_event_or_stop(event: asyncio.Event, stop: asyncio.Event, *,
                              timeout: float) -> None:
    waiters: set[asyncio.Task[Any]] = {asyncio.create_task(event.wait()),
                                       asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
