"""Everything held on one customer: exported as one JSON document, or erased for good.

A customer is also every record merged into it (the same person met on another channel first).
Erasing deletes their rows in every table that names them or their conversations, and records
only how many rows went (the `erasure` table): the dashboard's daily rollups are anonymous
counts already and stay. On SQLite the deleted pages are zeroed (`secure_delete`) and the
write-ahead log is truncated, so the address cannot be read back from the database files.

What the platforms themselves keep (a Slack thread, a mailbox) is outside this database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, false, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import (
    Checkout,
    Consent,
    Conversation,
    Customer,
    DeliveryReportRow,
    DeskJob,
    DoNotContact,
    Erasure,
    Escalation,
    Identity,
    InboxItem,
    Message,
    Order,
    OutboxItem,
    PlaybookJob,
    ScheduledStage,
    StageChange,
    SurveyAnswer,
    SurveyQuestion,
)
from core.errors import InputError

log = logging.getLogger(__name__)
CU = Customer.__table__.c
ID = Identity.__table__.c
CV = Conversation.__table__.c
MS = Message.__table__.c
ES = Escalation.__table__.c
#: rows removed per statement when purging old message bodies
PURGE_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Holder:
    """Who the rows belong to: the customer records, their conversations and addresses."""

    customers: tuple[int, ...]
    conversations: tuple[int, ...]
    escalations: tuple[int, ...]
    #: "channel:address" of every identity and conversation: the inbox's conversation keys
    queue_keys: tuple[str, ...]
    #: the platform ids of their messages (WhatsApp status callbacks are parked under them)
    provider_ids: tuple[str, ...]


#: (name in the export, table, rows of the holder) in the order rows can be deleted
Plan = tuple[str, Table, Callable[[Holder], ColumnElement[bool]]]


def _in(column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    return column.in_(values) if values else false()


PLAN: tuple[Plan, ...] = (
    ("playbook_jobs", PlaybookJob.__table__, lambda h: or_(
        _in(PlaybookJob.__table__.c.customer_id, h.customers),
        _in(PlaybookJob.__table__.c.conversation_id, h.conversations))),
    ("consent", Consent.__table__, lambda h: _in(Consent.__table__.c.customer_id,
                                                 h.customers)),
    ("do_not_contact", DoNotContact.__table__,
     lambda h: _in(DoNotContact.__table__.c.customer_id, h.customers)),
    ("desk_jobs", DeskJob.__table__, lambda h: _in(DeskJob.__table__.c.escalation_id,
                                                    h.escalations)),
    ("outbox", OutboxItem.__table__, lambda h: _in(OutboxItem.__table__.c.conversation_id,
                                                   h.conversations)),
    ("messages", Message.__table__, lambda h: _in(MS.conversation_id, h.conversations)),
    ("escalations", Escalation.__table__, lambda h: _in(ES.id, h.escalations)),
    ("survey_answers", SurveyAnswer.__table__, lambda h: or_(
        _in(SurveyAnswer.__table__.c.customer_id, h.customers),
        _in(SurveyAnswer.__table__.c.conversation_id, h.conversations))),
    ("survey_questions", SurveyQuestion.__table__, lambda h: or_(
        _in(SurveyQuestion.__table__.c.customer_id, h.customers),
        _in(SurveyQuestion.__table__.c.conversation_id, h.conversations))),
    ("stage_changes", StageChange.__table__, lambda h: or_(
        _in(StageChange.__table__.c.customer_id, h.customers),
        _in(StageChange.__table__.c.conversation_id, h.conversations))),
    ("scheduled_stages", ScheduledStage.__table__,
     lambda h: _in(ScheduledStage.__table__.c.customer_id, h.customers)),
    ("checkouts", Checkout.__table__, lambda h: _in(Checkout.__table__.c.customer_id,
                                                    h.customers)),
    ("orders", Order.__table__, lambda h: _in(Order.__table__.c.customer_id, h.customers)),
    ("queued_messages", InboxItem.__table__,
     lambda h: _in(InboxItem.__table__.c.conversation_key, h.queue_keys)),
    ("delivery_reports", DeliveryReportRow.__table__, lambda h: _in(
        DeliveryReportRow.__table__.c.provider_id, h.provider_ids)),
    ("conversations", Conversation.__table__, lambda h: _in(CV.id, h.conversations)),
    ("identities", Identity.__table__, lambda h: _in(ID.customer_id, h.customers)),
)


async def holder(conn: AsyncConnection, customer_id: int) -> Holder:
    """The customer and everything merged into it; 404 when there is no such customer."""
    found = (await conn.execute(select(CU.id).where(CU.id == customer_id))).scalar()
    if found is None:
        raise InputError(f"no customer {customer_id}", status=404)
    customers = [customer_id]
    frontier = [customer_id]
    while frontier:  # merges can chain: a record merged into one that was merged later
        frontier = list((await conn.execute(
            select(CU.id).where(CU.merged_into.in_(frontier)))).scalars())
        frontier = [c for c in frontier if c not in customers]
        customers.extend(frontier)
    conversations = (await conn.execute(
        select(CV.id, CV.channel, CV.address).where(CV.customer_id.in_(customers)))).all()
    ids = [c.id for c in conversations]
    identities = (await conn.execute(
        select(ID.channel, ID.address).where(ID.customer_id.in_(customers)))).all()
    escalations = (await conn.execute(select(ES.id).where(_in(ES.conversation_id, ids)))
                   ).scalars()
    providers = (await conn.execute(select(MS.provider_id).where(
        _in(MS.conversation_id, ids), MS.provider_id.is_not(None)))).scalars()
    keys = {f"{r.channel}:{r.address}" for r in (*conversations, *identities)}
    return Holder(tuple(customers), tuple(ids), tuple(escalations), tuple(sorted(keys)),
                  tuple(p for p in providers if p))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


async def export_customer(db: Database, customer_id: int) -> dict[str, Any]:
    """Every row the database holds on the customer, table by table, as plain JSON values."""
    async with db.read() as conn:
        who = await holder(conn, customer_id)
        document: dict[str, Any] = {"customer_id": customer_id,
                                    "exported_at": datetime.now(UTC).isoformat()}
        customers = (await conn.execute(
            select(Customer.__table__).where(CU.id.in_(who.customers)).order_by(CU.id))).all()
        document["customers"] = [_row(r) for r in customers]
        for name, table, rows in reversed(PLAN):
            found = (await conn.execute(select(table).where(rows(who)))).all()
            document[name] = [_row(r) for r in found]
    return document


def _row(row: Any) -> dict[str, Any]:
    return {key: _plain(value) for key, value in row._mapping.items()}


async def erase_customer(db: Database, customer_id: int) -> dict[str, int]:
    """Delete every row naming the customer; returns how many rows went, per table."""
    async with db.write() as conn:
        if db.is_sqlite:  # freed pages are zeroed, not left readable in the file
            await conn.exec_driver_sql("PRAGMA secure_delete=ON")
        try:
            who = await holder(conn, customer_id)
            counts: dict[str, int] = {}
            for name, table, rows in PLAN:
                counts[name] = (await conn.execute(delete(table).where(rows(who)))).rowcount
            # merged records point at the one they were merged into: delete those first
            await conn.execute(update(Customer.__table__).where(CU.id.in_(who.customers))
                               .values(merged_into=None))
            counts["customers"] = (await conn.execute(
                delete(Customer.__table__).where(CU.id.in_(who.customers)))).rowcount
            await conn.execute(Erasure.__table__.insert().values(
                erased_at=datetime.now(UTC), rows=counts))
        finally:
            if db.is_sqlite:
                await conn.exec_driver_sql("PRAGMA secure_delete=OFF")
    if db.is_sqlite:
        await _truncate_wal(db)
    log.info("customer %d erased: %s", customer_id,
             ", ".join(f"{n} {c}" for n, c in counts.items() if c))
    return counts


async def _truncate_wal(db: Database) -> None:
    """Copy the log into the database file and empty it, so no old page survives there."""
    async with db.engine.connect() as conn:
        busy = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).first()
        await conn.commit()
    if busy and busy[0]:
        log.warning("erasure: a reader held the write-ahead log; it empties at the next "
                    "checkpoint")


async def purge_message_bodies(db: Database, *, before: datetime) -> int:
    """Blank the text and attachments of messages (and escalated questions) older than
    `before`: the retention setting. Counts, stages and timings stay for the dashboard."""
    purged = 0
    while True:
        async with db.write() as conn:
            chunk = select(MS.id).where(MS.created_at < before, or_(
                MS.text != "", MS.attachments.is_not(None))).limit(PURGE_CHUNK)
            done = (await conn.execute(update(Message.__table__).where(MS.id.in_(chunk))
                                       .values(text="", attachments=null()))).rowcount
            if done < PURGE_CHUNK:
                await conn.execute(update(Escalation.__table__).where(
                    ES.created_at < before, ES.question.is_not(None)).values(question=None))
        purged += done
        if done < PURGE_CHUNK:
            return purged

