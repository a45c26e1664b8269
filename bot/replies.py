"""The one way a message to a customer is written: bot answers, staff replies, surveys.

Inside the caller's transaction, so a reply exists exactly when what caused it does. On a
channel that delivers by storing (the web chat reads its transcript from the database) the
stored row is the delivery; everywhere else the row waits in the outbox for the sender.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import Message, OutboxItem
from channels.base import Attachment

MS = Message.__table__.c
_INSERT_MESSAGE = insert(Message.__table__).returning(MS.id)
_INSERT_OUTBOX = insert(OutboxItem.__table__)


@dataclass(frozen=True, slots=True)
class OutgoingReply:
    conversation_id: int
    channel: str
    text: str
    language: str | None
    author: str = "bot"  # "bot" or "staff:<user>"
    faq_id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()


async def queue_replies(conn: AsyncConnection, replies: Sequence[OutgoingReply], *,
                        stored_delivery: Collection[str], now: datetime) -> list[int]:
    """Write `replies` (in this order) and queue the ones the outbox must send; returns their
    message ids in the same order."""
    if not replies:
        return []
    rows = []
    for r in replies:
        stored = r.channel in stored_delivery
        rows.append({
            "conversation_id": r.conversation_id, "direction": "out", "channel": r.channel,
            "author": r.author, "text": r.text, "language": r.language, "faq_id": r.faq_id,
            "attachments": [a.as_dict() for a in r.attachments] or None,
            "status": "delivered" if stored else "pending", "sent_at": now if stored else None,
            "meta": dict(r.meta) or None, "created_at": now})
    ids = await insert_returning_ids(conn, _INSERT_MESSAGE, rows)
    queued = [{"message_id": message_id, "conversation_id": r.conversation_id,
               "channel": r.channel, "status": "pending", "attempts": 0,
               "next_attempt_at": now, "created_at": now}
              for r, message_id in zip(replies, ids, strict=True)
              if r.channel not in stored_delivery]
    if queued:
        await conn.execute(_INSERT_OUTBOX, queued)
    return ids


async def insert_returning_ids(conn: AsyncConnection, stmt: Any,
                               rows: list[dict[str, Any]]) -> list[int]:
    """Insert `rows` with one multi-row INSERT .. RETURNING and give their ids in row order.

    VALUES are processed in order: SQLite gives each new row max(rowid) + 1 (nobody else
    writes while this transaction holds the write lock) and PostgreSQL calls the id sequence
    once per row, in order (other sessions can only leave gaps). So ascending ids are the
    rows' order, whatever order RETURNING lists them in. (SQLAlchemy's sort_by_parameter_order
    would fall back to one statement per row: these tables have no sentinel column.)
    """
    if not rows:
        return []
    ids = sorted((await conn.execute(stmt, rows)).scalars().all())
    if len(ids) != len(rows):
        raise RuntimeError(f"inserted {len(rows)} rows but got {len(ids)} ids back")
    return ids
