"""Delivery reports, recorded by the core: channels only verify and translate them.

A report names the platform's id for a message we sent. If the send is recorded (the message
row has that provider id) the report is merged into the row at once. If it is not yet (Twilio
may call back between its API answering and the outbox committing), the report is parked in
`delivery_report`, and the outbox merges it in the same transaction that records the send:
no polling, no second writer on the row. On PostgreSQL both sides first take a transaction
lock on the provider id, so whichever commits second sees the other's work.

Merging keeps the furthest status by rank (reports arrive out of order), never moves a row
back, keeps a reply held outside a platform's window held (a template was delivered, the text
still waits), and records the failure reason on the row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import DeliveryReportRow, Message
from core.messages import DELIVERY_RANK, DeliveryReport

log = logging.getLogger(__name__)
MS = Message.__table__.c
DR = DeliveryReportRow.__table__.c
#: a reply outside a platform's reply window, waiting for the customer to write again
HELD = "held"
#: parked reports whose send is never recorded (not ours, or a send lost) are dropped then
PARKED_FOR = timedelta(days=1)


class DeliveryLog:
    """The `Deliveries` the channels are given."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def report(self, report: DeliveryReport) -> None:
        if report.status not in DELIVERY_RANK or report.status == "pending":
            raise ValueError(f"unknown delivery status {report.status!r}")
        async with self.db.write() as conn:
            await _lock(conn, [(report.channel, report.provider_id)])
            row = (await conn.execute(select(MS.id).where(
                MS.channel == report.channel, MS.provider_id == report.provider_id))).first()
            if row is None:
                await _park(conn, report)
                return
            await merge(conn, int(row.id), report)


async def merge(conn: AsyncConnection, message_id: int, report: DeliveryReport) -> None:
    """Apply `report` to the message row (see the module docstring for the rules)."""
    row = (await conn.execute(select(MS.status, MS.error, MS.meta)
                              .where(MS.id == message_id))).one()
    current = row.status if row.status in DELIVERY_RANK else None
    meta = dict(row.meta or {})
    ahead = current is None or DELIVERY_RANK[report.status] >= DELIVERY_RANK[current]
    if not ahead and row.status != HELD:
        return  # a late report of a step already passed
    meta.update(report.meta)
    status, error = row.status, row.error
    if row.status == HELD and report.status != "failed":
        pass  # the template arrived; the text itself still waits
    elif ahead:
        status = report.status
        error = report.error if report.status == "failed" else row.error
    if (status, error, meta) != (row.status, row.error, dict(row.meta or {})):
        await conn.execute(update(Message.__table__).where(MS.id == message_id)
                           .values(status=status, error=error, meta=meta))


async def record_sent(conn: AsyncConnection, sent: Iterable[tuple[int, str, str | None,
                                                                   Mapping[str, Any]]],
                      *, reporting: frozenset[str]) -> None:
    """Inside the outbox's "sent" transaction: keep each send's platform data on its message,
    then merge the reports that came before it. `sent` is (message id, channel, provider id,
    meta); only channels in `reporting` can have reports."""
    with_meta = [(m, meta) for m, _c, _p, meta in sent if meta]
    for message_id, meta in with_meta:
        old = (await conn.execute(select(MS.meta).where(MS.id == message_id))).scalar()
        await conn.execute(update(Message.__table__).where(MS.id == message_id)
                           .values(meta={**(old or {}), **meta}))
    keys = {(c, p): m for m, c, p, _meta in sent if p and c in reporting}
    if not keys:
        return
    await _lock(conn, sorted(keys))
    parked = (await conn.execute(select(DeliveryReportRow.__table__).where(
        tuple_(DR.channel, DR.provider_id).in_(list(keys))))).all()
    for r in parked:
        await merge(conn, keys[(r.channel, r.provider_id)], DeliveryReport(
            r.channel, r.provider_id, r.status, r.meta or {}, r.error))
    if parked:
        await conn.execute(delete(DeliveryReportRow.__table__).where(
            tuple_(DR.channel, DR.provider_id).in_([(r.channel, r.provider_id)
                                                    for r in parked])))


async def purge_parked(conn: AsyncConnection, *, now: datetime | None = None) -> int:
    before = (now or datetime.now(UTC)) - PARKED_FOR
    done = await conn.execute(delete(DeliveryReportRow.__table__).where(
        DR.received_at < before))
    return int(done.rowcount or 0)


async def _park(conn: AsyncConnection, report: DeliveryReport) -> None:
    """Keep the furthest report per message until its send is recorded."""
    old = (await conn.execute(select(DR.status).where(
        DR.channel == report.channel, DR.provider_id == report.provider_id))).scalar()
    if old is not None and DELIVERY_RANK.get(old, 0) > DELIVERY_RANK[report.status]:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    values = {"status": report.status, "meta": dict(report.meta) or None,
              "error": report.error, "received_at": datetime.now(UTC)}
    await conn.execute(insert(DeliveryReportRow.__table__).values(
        channel=report.channel, provider_id=report.provider_id, **values)
        .on_conflict_do_update(index_elements=["channel", "provider_id"], set_=values))
    log.debug("delivery report for %s message %s parked until its send is recorded",
              report.channel, report.provider_id)


async def _lock(conn: AsyncConnection, keys: list[tuple[str, str]]) -> None:
    """PostgreSQL: serialise the report and the send's record per provider id (SQLite has
    one writer at a time already)."""
    if conn.dialect.name != "postgresql":
        return
    for channel, provider_id in keys:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                           {"key": f"delivery:{channel}:{provider_id}"})
