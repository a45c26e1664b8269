"""The inbound workers (the outbox sender is bot/outbox.py).

Workers take their shard of the inbox in order and handle a batch of messages in one
transaction, with a savepoint per message, so a crash re-does whole messages and a message
that raises is retried later without undoing its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot.db.engine import Database
from bot.db.models import Conversation, Message, OutboxItem
from bot.pipeline import Outcome, Pipeline
from bot.queue import Inbox, QueuedItem

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
            except Exception as exc:
                log.error("worker %d could not read the queue (%s: %s); retrying in 1 s", index,
                          type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                log.debug("queue read failure", exc_info=True)
                await sleep_or_stop(stop, 1.0)
                continue
            if not items:
                self.inbox.wakeup.clear()
                await wait_event_or_stop(self.inbox.wakeup, stop, timeout=1.0)
                continue
            try:
                await self.process(items)
                if len(items) < self.batch:  # let the next batch fill a little
                    await sleep_or_stop(stop, WORKER_LINGER)
            except Exception:
                log.exception("worker %d: batch not handled (database error?); retrying in 1 s",
                              index)
                await sleep_or_stop(stop, 1.0)

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
        await self.inbox.settle(claimed, [item for item, _ in done])

    async def _handle_batch(self, items: list[QueuedItem]) -> list[tuple[QueuedItem, Outcome]]:
        # FAQ matching is pure CPU: done before the write lock, so accepting new messages
        # (which needs that lock on SQLite) never waits for it.
        understood = await self.pipeline.understand_all([item.message for item in items])
        seen = {item.id: u for item, u in zip(items, understood, strict=True)}
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
        for item, outcome in done:
            log.info("message %d on %s: %s%s", item.id, item.message.channel, outcome.decision,
                     f" ({outcome.reason})" if outcome.reason else "")
            for listener in self.listeners:
                result = listener(item, outcome)
                if asyncio.iscoroutine(result):
                    await result
        if done and self.on_committed:
            self.on_committed()
        for item, error in failed:
            if await self.inbox.retry_later(item, error):
                log.error("message %d dead-lettered after %d attempts: %s", item.id,
                          item.attempts + 1, error)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def wait_event_or_stop(event: asyncio.Event, stop: asyncio.Event, *,
                              timeout: float) -> None:
    waiters: set[asyncio.Task[Any]] = {asyncio.create_task(event.wait()),
                                       asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
