"""The inbound queue on Redis Streams, for several worker processes.

The database row stays the source of truth: `put` commits the inbox row first (group commit,
dedup on `(channel, external_id)`), then adds a stream entry `{k: conversation key, c: channel,
x: external id}` per message, those of one commit in one round trip. The stream only
distributes work; an entry means "conversation k has a pending message". Extra entries are
harmless, so a crash between commit and XADD is repaired by the sweeper (one elected process
re-announces conversations with old pending rows).

Consumers: one group; each process is one consumer. A worker reads entries, loads the pending
rows of their conversations, and handles them in one transaction, which on PostgreSQL first
takes a per-conversation advisory lock and re-reads the rows (`Inbox.lock`). We chose a
per-conversation lock over partitioned streams: any worker can take any conversation, so
adding a worker needs no rebalancing and a dead worker's conversations continue at once on
the next message, while the lock plus the re-read keep order and exactly-once handling. An
entry is acknowledged (XACK, then XDEL so the stream does not grow) only after the transaction
committed and its row is no longer pending.

Failures: entries a dead process held are taken over with XAUTOCLAIM after
`reclaim_seconds` idle (live processes refresh the idle time of what they hold). An entry
delivered more than `max_deliveries` times (it keeps killing workers) and a row that failed
`max_attempts` times go to the dead-letter stream `<prefix>:inbox:dead`, and its row is
marked `dead`; admins see both in /api/queue and `python -m bot queue`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import select, update

from bot.db.engine import Database
from bot.db.models import InboxItem
from bot.queue import Inbox, QueuedItem, decode_message
from channels.base import InboundMessage

log = logging.getLogger(__name__)
T = InboxItem.__table__.c
GROUP = "workers"
CONTENDED_RETRY = 0.05  # another process holds the conversation: look again soon
CLAIM_STALE = 120.0  # a claim not settled by then (a crashed batch) is released
#: an idle worker looks in the table for pending rows older than this that no stream entry
#: announces any more, so a lost hand-off costs seconds, not a sweeper round
IDLE_CHECK_AGE = 2.0


class RedisInbox(Inbox):
    """`Inbox` whose workers get their work from a Redis stream instead of polling the table.

    Args:
        db: the database holding the inbox rows.
        redis_url: redis://host:port/db
        prefix: key prefix, so several deployments can share one Redis.
        reclaim_seconds: idle time after which another process takes over an entry.
        max_deliveries: deliveries of one entry before it is dead-lettered.
        sweep_age: pending rows older than this are re-announced by the sweeper.
    """

    def __init__(self, db: Database, redis_url: str, *, max_attempts: int = 5,
                 prefix: str = "storedesk", reclaim_seconds: float = 30.0,
                 max_deliveries: int = 5, sweep_age: float = 60.0,
                 consumer: str | None = None) -> None:
        super().__init__(db, max_attempts=max_attempts)
        self.redis: Redis = Redis.from_url(redis_url, decode_responses=True,
                                           health_check_interval=30)
        self.stream = f"{prefix}:inbox"
        self.dead_stream = f"{prefix}:inbox:dead"
        self.consumer = consumer or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
        self.reclaim_seconds = reclaim_seconds
        self.max_deliveries = max_deliveries
        self.sweep_age = sweep_age
        self.block_ms = 1000
        self._held: dict[str, dict[str, str]] = defaultdict(dict)  # key -> {entry: "c\x1fx"}
        self._retry_at: dict[str, float] = {}
        self._claiming: dict[str, float] = {}  # keys a worker task of ours is handling
        self._group_ready = False
        self._next_reclaim = 0.0
        self._next_idle_check = 0.0
        self.wakeup = _AlwaysSet()  # claim() blocks on Redis itself


    # --- producing ------------------------------------------------------------------------

    async def _committed(self, messages: list[InboundMessage]) -> None:
        """Announce what a group commit queued, in one round trip."""
        if not messages:
            return
        try:
            await self._ensure_group()
            async with self.redis.pipeline(transaction=False) as pipe:
                for m in messages:
                    pipe.xadd(self.stream, {"k": m.conversation_key, "c": m.channel,
                                            "x": m.external_id})
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the rows are committed; the sweeper repairs
            log.warning("queued %d messages but could not announce them on Redis (%s); the "
                        "sweeper will", len(messages), type(exc).__name__)

    async def _announce(self, key: str, channel: str, external_id: str) -> None:
        await self._ensure_group()
        await self.redis.xadd(self.stream, {"k": key, "c": channel, "x": external_id})

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- consuming ------------------------------------------------------------------------

    async def claim(self, worker: int, workers: int, limit: int) -> list[QueuedItem]:
        """Pending rows of the conversations announced to this process, oldest first."""
        await self._ensure_group()
        now = time.monotonic()
        if worker == 0 and now >= self._next_reclaim:
            self._next_reclaim = now + self.reclaim_seconds / 3
            await self._reclaim()
        due = self._due_keys(now, limit)
        # Held entries wait for a retry or for another task of ours: look again soon.
        block = None if due else (min(self.block_ms, 50) if self._held else self.block_ms)
        response = await self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: ">"}, count=limit, block=block)
        for _stream, entries in response or ():
            for entry_id, fields in entries:
                self._hold(entry_id, fields)
        keys = self._due_keys(time.monotonic(), limit)
        if not keys:
            if not response and worker == 0 and time.monotonic() >= self._next_idle_check:
                self._next_idle_check = time.monotonic() + IDLE_CHECK_AGE / 2
                await self._announce_unheld()
            return []
        for key in keys:
            self._claiming[key] = time.monotonic()
        try:
            return await self._load(keys, limit)
        except BaseException:
            for key in keys:
                self._claiming.pop(key, None)
            raise

    def _hold(self, entry_id: str, fields: dict[str, str]) -> None:
        key = fields.get("k")
        if not key:
            self._held["?"][entry_id] = ""  # malformed entry: acknowledged by _load
        else:
            self._held[key][entry_id] = f"{fields.get('c', '')}\x1f{fields.get('x', '')}"

    def _due_keys(self, now: float, limit: int) -> list[str]:
        keys = []
        for key in self._held:
            started = self._claiming.get(key)
            if started is not None and now - started < CLAIM_STALE:
                continue
            if self._retry_at.get(key, 0.0) <= now:
                keys.append(key)
                if len(keys) >= limit:
                    break
        return keys

    async def _load(self, keys: list[str], limit: int) -> list[QueuedItem]:
        # What we hold *before* reading: an entry another task of ours receives meanwhile may
        # announce a row committed after this read, and must not be acknowledged by it.
        before = {key: dict(self._held.get(key, {})) for key in keys}
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(T.id, T.attempts, T.conversation_key, T.payload, T.next_attempt_at)
                .where(T.status == "pending", T.conversation_key.in_(keys))
                .order_by(T.id).limit(limit))).all()  # one batch per transaction
        now = datetime.now(UTC)
        items: list[QueuedItem] = []
        seen: set[str] = set()
        blocked: set[str] = set()
        for row in rows:
            key = row.conversation_key
            seen.add(key)
            if key in blocked:
                continue
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                blocked.add(key)  # waiting for a retry: nothing after it may run
                wait = (row.next_attempt_at - now).total_seconds()
                self._retry_at[key] = time.monotonic() + wait
                continue
            try:
                message = decode_message(row.payload)
            except (TypeError, ValueError, KeyError) as exc:
                await self.park(row.id, f"undecodable payload: {exc}")
                blocked.add(key)
                self._retry_at[key] = time.monotonic()
                continue
            items.append(QueuedItem(row.id, row.attempts, key, message))
        handed = {i.conversation_key for i in items}
        for key in keys:
            if key not in handed:
                self._claiming.pop(key, None)
        if len(rows) < limit:  # nothing pending for the others: done elsewhere
            await self._forget_many({key: before[key] for key in keys if key not in seen})
        return items

    async def settle(self, items: Sequence[QueuedItem], done: Sequence[QueuedItem] = ()
                     ) -> None:
        """After the batch: acknowledge entries whose rows are no longer pending. An entry
        announcing a row of `done` (committed as handled) needs no look: only the others'
        rows are read."""
        keys = sorted({i.conversation_key for i in items})
        if not keys:
            return
        try:
            await self._settle(keys, {f"{i.message.channel}\x1f{i.message.external_id}"
                                      for i in done})
        except Exception as exc:  # noqa: BLE001 - never kill the worker loop: the entries stay held, retried
            log.warning("could not acknowledge queue entries (%s); retrying later",
                        type(exc).__name__)
            for key in keys:
                self._retry_at[key] = time.monotonic() + 1.0
        finally:
            for key in keys:
                self._claiming.pop(key, None)

    async def _settle(self, keys: list[str], handled: set[str]) -> None:
        before = {key: dict(self._held.get(key, {})) for key in keys}  # as in `_load`
        unsure = [key for key in keys if any(ref not in handled for ref in before[key].values())]
        pending: set[tuple[str, str]] = set()
        if unsure:
            async with self.db.read() as conn:
                pending = {(r.conversation_key, f"{r.channel}\x1f{r.external_id}")
                           for r in (await conn.execute(
                               select(T.conversation_key, T.channel, T.external_id)
                               .where(T.status == "pending", T.conversation_key.in_(unsure))))}
        done = {key: {e: ref for e, ref in before[key].items()
                      if ref in handled or (key, ref) not in pending} for key in keys}
        await self._forget_many(done)
        now = time.monotonic()
        for key in keys:
            if key in self._held and self._retry_at.get(key, 0.0) <= now:
                self._retry_at[key] = now + CONTENDED_RETRY

    async def _forget_many(self, entries: dict[str, dict[str, str]]) -> None:
        """Acknowledge these entries of each key (in one round trip) and stop holding them
        (newer ones stay held)."""
        await self._ack({e: ref for held in entries.values() for e, ref in held.items()})
        for key, done in entries.items():
            held = self._held.get(key, {})
            for entry in done:
                held.pop(entry, None)
            if not held:
                self._held.pop(key, None)
                self._retry_at.pop(key, None)

    async def _ack(self, entries: dict[str, str]) -> None:
        if not entries:
            return
        ids = list(entries)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()

    async def _reclaim(self) -> None:
        """Refresh what we hold, then take over entries idle too long (their worker died)."""
        mine = [e for held in self._held.values() for e in held]
        for start in range(0, len(mine), 500):
            await self.redis.xclaim(self.stream, GROUP, self.consumer, min_idle_time=0,
                                    message_ids=cast(Any, mine[start:start + 500]),
                                    justid=True)
        cursor = "0-0"
        while True:
            cursor, entries, _deleted = (await self.redis.xautoclaim(
                self.stream, GROUP, self.consumer, int(self.reclaim_seconds * 1000),
                start_id=cursor, count=500))[:3]
            if entries:
                log.warning("took over %d queue entries from a stopped worker", len(entries))
                await self._hold_reclaimed(entries)
            if cursor == "0-0" or not entries:
                break
        await self._forget_gone_consumers()

    async def _forget_gone_consumers(self) -> None:
        """Consumers of stopped processes that hold nothing are deleted after an hour."""
        for c in await self.redis.xinfo_consumers(self.stream, GROUP):
            if c["name"] != self.consumer and not c["pending"] and c["idle"] > 3_600_000:
                await self.redis.xgroup_delconsumer(self.stream, GROUP, c["name"])

    async def _hold_reclaimed(self, entries: list[Any]) -> None:
        ids = [e[0] for e in entries]
        counts: dict[str, int] = {}
        for p in await self.redis.xpending_range(self.stream, GROUP, min=ids[0], max=ids[-1],
                                                 count=len(ids) + 10, consumername=self.consumer):
            counts[str(p["message_id"])] = int(p["times_delivered"])
        for entry_id, fields in entries:
            if fields is None:
                continue
            if counts.get(entry_id, 1) > self.max_deliveries:
                await self._dead_entry(entry_id, fields)
            else:
                self._hold(entry_id, fields)

    async def _dead_entry(self, entry_id: str, fields: dict[str, str]) -> None:
        """An entry whose worker died every time: park its row and dead-letter it."""
        error = f"worker process stopped {self.max_deliveries} times while handling it"
        async with self.db.write() as conn:
            await conn.execute(update(InboxItem.__table__).where(
                T.channel == fields.get("c", ""), T.external_id == fields.get("x", ""),
                T.status == "pending").values(status="dead", last_error=error))
        await self._dead_letter(fields.get("k", "?"), fields.get("c", ""), fields.get("x", ""),
                                error)
        await self._ack({entry_id: ""})
        log.error("queue entry %s (%s) dead-lettered: %s", entry_id, fields.get("k"), error)

    async def _dead_letter(self, key: str, channel: str, external_id: str, error: str) -> None:
        try:
            await self.redis.xadd(self.dead_stream, {
                "k": key, "c": channel, "x": external_id, "error": error[:500],
                "at": datetime.now(UTC).isoformat()}, maxlen=10000, approximate=True)
        except Exception as exc:  # noqa: BLE001 - the row is marked dead; this is a copy
            log.warning("could not write the dead-letter stream: %s", type(exc).__name__)

    async def retry_later(self, item: QueuedItem, error: str) -> bool:
        dead = await super().retry_later(item, error)
        if dead:
            await self._dead_letter(item.conversation_key, item.message.channel,
                                    item.message.external_id, error)
        return dead

    async def park(self, item_id: int, error: str) -> None:
        await super().park(item_id, error)
        async with self.db.read() as conn:
            row = (await conn.execute(select(T.conversation_key, T.channel, T.external_id)
                                      .where(T.id == item_id))).first()
        if row is not None:
            await self._dead_letter(row.conversation_key, row.channel, row.external_id, error)

    # --- the sweeper and admin views ------------------------------------------------------

    async def sweep(self, stop: asyncio.Event, *, interval: float = 30.0) -> None:
        """Re-announce conversations with old pending rows (runs in one elected process)."""
        while not stop.is_set():
            try:
                count = await self.sweep_once()
                if count:
                    log.info("sweeper re-announced %d conversations with old messages", count)
            except Exception:
                log.exception("queue sweep failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def _announce_unheld(self) -> None:
        """The stream is quiet: announce again the conversations with pending rows older than
        `IDLE_CHECK_AGE` that this process does not hold (their entry was lost, or another
        process holds it; a second entry is harmless)."""
        try:
            await self.sweep_once(age=IDLE_CHECK_AGE, skip=set(self._held))
        except Exception as exc:  # noqa: BLE001 - best effort; the sweeper remains
            log.debug("idle check failed: %s", type(exc).__name__)

    async def sweep_once(self, *, age: float | None = None, skip: set[str] | None = None) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.sweep_age if age is None else age)
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(T.conversation_key, T.channel, T.external_id)
                .where(T.status == "pending", T.created_at < cutoff).order_by(T.id)
                .limit(5000))).all()
        first: dict[str, tuple[str, str]] = {}
        for r in rows:
            if not skip or r.conversation_key not in skip:
                first.setdefault(r.conversation_key, (r.channel, r.external_id))
        for key, (channel, external_id) in list(first.items())[:1000]:
            await self._announce(key, channel, external_id)
        return min(len(first), 1000)

    async def requeue_dead(self, item_ids: Sequence[int] | None = None) -> int:
        stmt = select(T.conversation_key, T.channel, T.external_id).where(T.status == "dead")
        if item_ids is not None:
            stmt = stmt.where(T.id.in_(list(item_ids)))
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        count = await super().requeue_dead(item_ids)
        for r in rows:
            await self._announce(r.conversation_key, r.channel, r.external_id)
        return count

    async def stats(self) -> dict[str, Any]:
        data = await super().stats()
        await self._ensure_group()
        summary = await self.redis.xpending(self.stream, GROUP)
        consumers = await self.redis.xinfo_consumers(self.stream, GROUP)
        dead = await self.redis.xrevrange(self.dead_stream, count=20)
        data["redis"] = {
            "stream": self.stream, "length": await self.redis.xlen(self.stream),
            "pending": int(summary.get("pending", 0)),
            "consumers": [{"name": c["name"], "pending": c["pending"],
                           "idle_s": round(c["idle"] / 1000, 1)} for c in consumers],
            "dead_letter": {"stream": self.dead_stream,
                            "length": await self.redis.xlen(self.dead_stream),
                            "latest": [{"id": i, **f} for i, f in dead]},
        }
        return data

    async def ping(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


class _AlwaysSet(asyncio.Event):
    """The worker loop waits on `wakeup` after an empty claim; with Redis the blocking read
    already waited, so this event never makes it wait again."""

    def __init__(self) -> None:
        super().__init__()
        self.set()

    def clear(self) -> None:
        """Stays set."""


class RedisWakeups:
    """Cross-process wake-ups over Redis pub/sub, e.g. "a worker committed replies" for the
    elected outbox sender in another process. Best effort: the pollers remain the safety net.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.channel = f"{prefix}:wake"
        self._queued: list[str] = []
        self._sender: asyncio.Task[None] | None = None

    def publish_soon(self, topic: str) -> None:
        """Publish in the background, after what was published before (one sender, so the
        others receive a process's wake-ups in the order of its commits); what queues up
        meanwhile goes out together, in one round trip."""
        self._queued.append(topic)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._publish())

    async def _publish(self) -> None:
        while self._queued:
            topics, self._queued = self._queued, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for topic in topics:
                        pipe.publish(self.channel, topic)
                    await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - best effort
                log.debug("%d wake-ups not published: %s", len(topics), type(exc).__name__)

    async def listen(self, stop: asyncio.Event, handlers: Mapping[str, Callable[[str], None]]
                     ) -> None:
        """For each wake-up "topic [argument]" call `handlers[topic](argument)` until `stop`;
        reconnects on errors."""
        while not stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    topic, _, argument = str(message["data"]).partition(" ")
                    handler = handlers.get(topic)
                    if handler is not None:
                        handler(argument)
            except Exception as exc:  # noqa: BLE001 - Redis away: retry; polling covers the gap
                log.debug("wake-up listener: %s", type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            finally:
                with contextlib.suppress(Exception):
                    await cast(Any, pubsub).aclose()
