"""The durable queues: inbound messages (`Inbox`) and replies to deliver (`Outbox`).

Inbound: a channel calls `Inbox.put`, which returns only after the row is committed, so the
platform is acknowledged only for messages we cannot lose. `(channel, external_id)` is unique,
so a redelivered webhook is a no-op. Concurrent `put`s are committed together (group commit):
one transaction per burst instead of one per message.

Ordering: every row carries its conversation key and a shard derived from it. Worker task `i`
of `n` takes only the shards `s % n == i`, in id order, so one conversation is always handled by
one task, in arrival order, while different conversations run in parallel. A message that
fails is retried with backoff; the later messages of its conversation wait for it, and after
`max_attempts` it is parked as `dead` (visible to admins), which unblocks the conversation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import InboxItem
from bot.jobs import INBOX, due_rows
from channels.base import Attachment, InboundMessage
from channels.edge import clean_message
from core.errors import QueueError

log = logging.getLogger(__name__)
SHARDS = 1024
# One transaction-scoped advisory lock per conversation (class 0x5D35 = "storedesk"). The
# pending rows are read by a second statement: under READ COMMITTED one statement sees the
# snapshot taken when it began, before its locks were granted, so a single statement would
# still see rows the previous holder committed as done while it waited, and handle them again.
_TRY_LOCK = text("SELECT k FROM unnest(:keys) AS k "
                 "WHERE pg_try_advisory_xact_lock(23861, hashtext(k))").bindparams(
    bindparam("keys", type_=postgresql.ARRAY(String)))


def shard_of(conversation_key: str) -> int:
    return zlib.crc32(conversation_key.encode()) % SHARDS


_MESSAGE_FIELDS = tuple(f.name for f in dataclasses.fields(InboundMessage))


def encode_message(msg: InboundMessage) -> dict[str, Any]:
    # Field by field rather than dataclasses.asdict, which deep-copies what is replaced below.
    data = {name: getattr(msg, name) for name in _MESSAGE_FIELDS}
    data["timestamp"] = msg.timestamp.isoformat()
    data["attachments"] = [a.as_dict() for a in msg.attachments]
    data["meta"] = dict(msg.meta)
    return data


def decode_message(data: dict[str, Any]) -> InboundMessage:
    fields = dict(data)
    fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
    fields["attachments"] = tuple(Attachment(**a) for a in fields.get("attachments") or ())
    return InboundMessage(**fields)


@dataclass(frozen=True, slots=True)
class QueuedItem:
    id: int
    attempts: int
    conversation_key: str
    message: InboundMessage


def _insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise QueueError(f"unsupported database dialect {dialect}")


_COMPLETE = (update(InboxItem.__table__)
             .where(InboxItem.__table__.c.id.in_(bindparam("ids", expanding=True)))
             .values(status="done", done_at=bindparam("now")))


_QUEUED = (select(InboxItem.__table__.c.channel, InboxItem.__table__.c.external_id)
           .where(InboxItem.__table__.c.channel.in_(bindparam("channels", expanding=True)),
                  InboxItem.__table__.c.external_id.in_(
                      bindparam("external_ids", expanding=True))))
_INSERT_INBOX = insert(InboxItem.__table__)


#: seconds a group commit waits for more messages before it writes (added to accept latency)
ACCEPT_LINGER = 0.004


class Inbox:
    """The inbound queue on the database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database, *, max_attempts: int = 5) -> None:
        self.db = db
        self.max_attempts = max_attempts
        self._pending: list[tuple[InboundMessage, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.wakeup = asyncio.Event()

    async def put(self, message: InboundMessage) -> bool:
        """Commit `message` to the queue. True if new, False if already queued (duplicate)."""
        message = clean_message(message)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        # Wait a moment for the puts arriving right behind this one: a busy web chat then
        # commits tens of messages per transaction instead of one or two.
        await asyncio.sleep(ACCEPT_LINGER)
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                inserted = await self._insert(batch)
            except Exception as exc:
                log.exception("could not commit %d inbound messages", len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(QueueError(f"queue unavailable: {exc}"))
                continue
            await self._committed([msg for (msg, _), new in zip(batch, inserted, strict=True)
                                   if new])
            for (_, fut), new in zip(batch, inserted, strict=True):
                if not fut.done():
                    fut.set_result(new)
            if any(inserted):
                self.wakeup.set()

    async def _committed(self, messages: list[InboundMessage]) -> None:
        """After a group commit, before its `put`s return: these messages are new."""

    async def _insert(self, batch: Sequence[tuple[InboundMessage, Any]]) -> list[bool]:
        """Insert the batch in one statement, skipping (channel, external id) already queued;
        True for the rows it inserted."""
        now = datetime.now(UTC)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for msg, _ in batch:
            rows.setdefault((msg.channel, msg.external_id), {
                "channel": msg.channel, "external_id": msg.external_id,
                "conversation_key": msg.conversation_key,
                "shard": shard_of(msg.conversation_key), "payload": encode_message(msg),
                "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now})
        async with self.db.write() as conn:
            if conn.dialect.name == "sqlite":
                # One writer: what is not there now cannot appear before the commit. (The
                # dialect's ON CONFLICT insert is never in SQLAlchemy's compiled cache, and
                # compiling it each time cost more than the whole insert.)
                found = (await conn.execute(_QUEUED, {
                    "channels": sorted({c for c, _ in rows}),
                    "external_ids": sorted({x for _, x in rows})})).all()
                inserted = set(rows) - {(r[0], r[1]) for r in found}
                if inserted:
                    await conn.execute(_INSERT_INBOX, [rows[key] for key in rows
                                                       if key in inserted])
            else:  # several processes may accept the same message at once
                t = InboxItem.__table__.c
                stmt = _insert_ignore(conn, InboxItem.__table__).returning(t.channel,
                                                                           t.external_id)
                inserted = {(r[0], r[1]) for r in
                            (await conn.execute(stmt, list(rows.values()))).all()}
        results: list[bool] = []
        for msg, _ in batch:  # a repeat within the batch is a duplicate of the first
            key = (msg.channel, msg.external_id)
            results.append(key in inserted)
            inserted.discard(key)
        return results

    async def claim(self, worker: int, workers: int, limit: int) -> list[QueuedItem]:
        """The next due messages for this worker, oldest first, never skipping ahead of a
        message of the same conversation that is waiting for a retry."""
        t = InboxItem.__table__.c
        now = datetime.now(UTC)
        # The payload comes back as its stored text and is decoded only for the rows taken:
        # the window is 4x the batch, and decoding JSON was most of the cost of a claim.
        stmt = (select(t.id, t.attempts, t.conversation_key,
                       type_coerce(t.payload, Text).label("payload"), t.next_attempt_at)
                .where(t.status == "pending"))
        if workers > 1:
            stmt = stmt.where(t.shard % workers == worker)
        stmt = stmt.order_by(t.id).limit(limit * 4)
        async with self.db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        items: list[QueuedItem] = []
        for row in due_rows(rows, now, set()):
            try:
                payload = row.payload  # text, or already a dict where the driver decodes JSON
                message = decode_message(payload if isinstance(payload, dict)
                                         else orjson.loads(payload))
            except (TypeError, ValueError, KeyError) as exc:
                await self.park(row.id, f"undecodable payload: {exc}")
                continue
            items.append(QueuedItem(row.id, row.attempts, row.conversation_key, message))
            if len(items) >= limit:
                break
        return items

    @staticmethod
    async def complete(conn: AsyncConnection, item_id: int) -> None:
        await Inbox.complete_many(conn, [item_id])

    @staticmethod
    async def complete_many(conn: AsyncConnection, item_ids: Sequence[int]) -> None:
        """Mark handled rows done, inside the worker's transaction, in one statement."""
        if item_ids:
            await conn.execute(_COMPLETE, {"ids": list(item_ids), "now": datetime.now(UTC)})

    async def retry_later(self, item: QueuedItem, error: str) -> bool:
        """Record a failed attempt. Returns True if the message was parked as dead."""
        retry = INBOX.retry(item.attempts + 1, error, datetime.now(UTC),
                            max_attempts=self.max_attempts)
        t = InboxItem.__table__.c
        async with self.db.write() as conn:
            await conn.execute(update(InboxItem.__table__).where(t.id == item.id)
                               .values(retry.values))
        return retry.gave_up

    async def park(self, item_id: int, error: str) -> None:
        t = InboxItem.__table__.c
        async with self.db.write() as conn:
            await conn.execute(update(InboxItem.__table__).where(t.id == item_id)
                               .values(status="dead", last_error=error[:2000]))

    async def lock(self, conn: AsyncConnection, items: list[QueuedItem]) -> list[QueuedItem]:
        """Called first inside the worker's transaction: returns what this transaction may
        handle, in order.

        On PostgreSQL several worker processes may claim the same conversation. Each
        conversation takes a transaction-scoped advisory lock (skipped when another worker
        holds it: that worker handles those messages), then its pending rows are re-read, so
        nothing is handled twice and nothing overtakes an earlier message. SQLite has one
        writer process whose write lock already serialises this.
        """
        if conn.dialect.name != "postgresql" or not items:
            return items
        keys = sorted({i.conversation_key for i in items})
        locked = [r[0] for r in (await conn.execute(_TRY_LOCK, {"keys": keys})).all()]
        if not locked:
            return []
        t = InboxItem.__table__.c
        rows = (await conn.execute(
            select(t.id, t.attempts, t.conversation_key, t.payload, t.next_attempt_at)
            .where(t.status == "pending", t.conversation_key.in_(locked))
            .order_by(t.id).limit(len(items)))).all()  # one batch, as claimed
        now = datetime.now(UTC)
        blocked: set[str] = set()
        fresh: list[QueuedItem] = []
        for row in due_rows(rows, now, blocked):
            try:
                message = decode_message(row.payload)
            except (TypeError, ValueError, KeyError):
                blocked.add(row.conversation_key)  # claim() parks it
                continue
            fresh.append(QueuedItem(row.id, row.attempts, row.conversation_key, message))
        return fresh

    async def settle(self, items: Sequence[QueuedItem], done: Sequence[QueuedItem] = ()
                     ) -> None:
        """Called after a batch committed (or failed) with what it claimed and what of it
        was committed as handled: the Redis backend acknowledges here."""

    async def ping(self) -> None:
        """Raise if the queue backend is unreachable (the database is checked separately)."""

    async def close(self) -> None:
        """Release backend connections."""

    async def purge_done(self, *, before: datetime, chunk: int = 5000) -> int:
        """Delete handled rows finished before `before`, a chunk per transaction so writers
        never wait long for the lock. Pending and dead rows are never touched."""
        T = InboxItem.__table__.c
        total = 0
        stale = (select(T.id).where(T.status == "done", T.done_at < before)
                 .order_by(T.id).limit(chunk))
        while True:
            async with self.db.write() as conn:
                result = await conn.execute(delete(InboxItem.__table__).where(
                    T.id.in_(stale.scalar_subquery())))
            count = int(result.rowcount or 0)
            total += count
            if count < chunk:
                return total
            await asyncio.sleep(0)

    async def requeue_dead(self, item_ids: Sequence[int] | None = None) -> int:
        """Give dead-lettered messages another round (admin action)."""
        async with self.db.write() as conn:
            count = await INBOX.requeue(conn, datetime.now(UTC), item_ids)
        self.wakeup.set()
        return count

    async def stats(self) -> dict[str, Any]:
        t = InboxItem.__table__.c
        async with self.db.read() as conn:
            counts: dict[str, int] = {str(r[0]): int(r[1]) for r in (await conn.execute(
                select(t.status, func.count()).group_by(t.status))).all()}
            oldest = (await conn.execute(
                select(func.min(t.created_at)).where(t.status == "pending"))).scalar()
        age = None
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            age = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        return {"pending": counts.get("pending", 0), "done": counts.get("done", 0),
                "dead": counts.get("dead", 0), "oldest_pending_age_s": age}



