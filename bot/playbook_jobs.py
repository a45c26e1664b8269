"""Scheduling playbook steps: a trigger occurrence becomes `playbook_job` rows.

Order events and checkouts are fired where the store's data is applied (bot/orders.py,
bot/store_webhooks.py), in the same transaction. Stage changes, ratings and the bot's answers
are found by the runner's sweeps over `stage_change`, `escalation`, `survey_answer` and the
customers' messages, so every path that moves a stage (messages, orders, the time rules)
counts without hooks in each, and the message path pays nothing; lapses (`no_order_for`) are
found by a sweep over customers. Every job is keyed by customer, playbook, step and
occurrence: a redelivered webhook or an overlapping sweep inserts nothing new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import surveys
from bot.customers import OrderIn, OrderWrite
from bot.db.engine import Database
from bot.db.models import (
    ChannelState,
    Conversation,
    ConversationStatus,
    Customer,
    Escalation,
    Message,
    PlaybookJob,
    StageChange,
)
from bot.playbooks import Playbooks

PJ = PlaybookJob.__table__.c
SC = StageChange.__table__.c
ES = Escalation.__table__.c
CV = Conversation.__table__.c
CU = Customer.__table__.c
CS = ChannelState.__table__.c
MS = Message.__table__.c
#: sweeps look this many ids back from their cursor: PostgreSQL may commit ids out of order
OVERLAP = 200
#: stage changes older than this never fire (a playbook switched back on after months)
STALE = timedelta(days=1)
LAPSE_CATCH_UP = timedelta(days=7)
#: occurrences fired per write transaction by a sweep
FIRE_SLICE = 100


class PlaybookSource(Protocol):
    @property
    def playbooks(self) -> Playbooks: ...


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One thing that happened to one customer that playbooks may react to."""

    kind: str  # a trigger kind (bot/playbooks.TRIGGERS)
    key: str  # unique per customer and happening: "order:shopify:1:delivered"
    value: str | None = None
    score: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)  # message variables, order id...


def _insert(conn: AsyncConnection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


async def fire(conn: AsyncConnection, playbooks: Playbooks, customer_id: int,
               occurrence: Occurrence, *, now: datetime,
               conversation_id: int | None = None) -> int:
    """Schedule every enabled step the occurrence starts; returns how many were new."""
    return await fire_many(conn, playbooks, [(customer_id, occurrence, conversation_id)],
                           now=now)


Fire = tuple[int, Occurrence, int | None]  # (customer, occurrence, conversation)


async def fire_many(conn: AsyncConnection, playbooks: Playbooks, fires: Sequence[Fire], *,
                    now: datetime) -> int:
    """`fire` for each, in two statements: the customers' order counts, then one insert of
    every step they start (those already scheduled insert nothing)."""
    wanted = [(f, steps) for f in fires
              if (steps := playbooks.steps_for(f[1].kind, f[1].value, f[1].score))]
    if not wanted:
        return 0
    customers = sorted({customer_id for (customer_id, _, _), _ in wanted})
    orders = dict((await conn.execute(select(CU.id, CU.orders_count)
                                      .where(CU.id.in_(customers)))).tuples().all())
    rows = [dict(customer_id=customer_id, conversation_id=conversation_id,
                 playbook=playbook.name, step=step.index, occurrence=occurrence.key[:200],
                 kind=step.kind, state="scheduled", attempts=0, due_at=now + step.delay,
                 fired_at=now, created_at=now,
                 # "ordered since" is counted from it
                 data={**occurrence.data, "orders": int(orders.get(customer_id) or 0)})
            for (customer_id, occurrence, conversation_id), steps in wanted
            for playbook, step in steps]
    stmt = _insert(conn)(PlaybookJob.__table__).values(rows).on_conflict_do_nothing(
        index_elements=["customer_id", "playbook", "step", "occurrence"]).returning(PJ.id)
    return len((await conn.execute(stmt)).all())


def order_occurrences(order: OrderIn, written: OrderWrite) -> list[Occurrence]:
    """created for a new order, and paid / fulfilled / delivered / cancelled when the order
    reached that status now."""
    data = {"order_id": order.order_id}
    found = []
    if written.created and order.status not in ("cancelled", "refunded"):
        found.append(Occurrence("order", f"order:{order.order_id}:created", "created", data=data))
    status = "delivered" if order.shipment_status == "delivered" else order.status
    if status in ("paid", "fulfilled", "delivered", "cancelled") \
            and written.previous_status != status:
        found.append(Occurrence("order", f"order:{order.order_id}:{status}", status, data=data))
    return found


async def fire_order(conn: AsyncConnection, playbooks: Playbooks | None, order: OrderIn,
                     written: OrderWrite, *, now: datetime) -> int:
    if playbooks is None or written.stale:
        return 0
    return sum([await fire(conn, playbooks, written.customer_id, o, now=now)
                for o in order_occurrences(order, written)])


async def fire_checkout(conn: AsyncConnection, playbooks: Playbooks | None, customer_id: int,
                        external_id: str, url: str | None, *, now: datetime) -> int:
    """A checkout with a customer and not completed: abandoned unless they order before the
    step is due (the steps' `ordered` stop, and the completed check at send time)."""
    if playbooks is None:
        return 0
    return await fire(conn, playbooks, customer_id, Occurrence(
        "checkout_abandoned", f"checkout:{external_id}",
        data={"checkout": external_id, "checkout_url": url or ""}), now=now)


# --- sweeps the runner makes ----------------------------------------------------------------

async def _cursor(conn: AsyncConnection, key: str, start: Any) -> int:
    value = (await conn.execute(select(CS.value).where(CS.key == key))).scalar()
    if value is not None:
        return int(value["id"])
    first = int((await conn.execute(start)).scalar() or 0)
    await _save_cursor(conn, key, first)
    return first


async def _save_cursor(conn: AsyncConnection, key: str, last: int) -> None:
    stmt = _insert(conn)(ChannelState.__table__).values(key=key, value={"id": last},
                                                        updated_at=func.now())
    await conn.execute(stmt.on_conflict_do_update(index_elements=["key"],
                                                  set_={"value": {"id": last}}))


async def _fire_in_slices(db: Database, playbooks: Playbooks, fires: list[Fire], *,
                          now: datetime, cursor: tuple[str, int] | None = None) -> int:
    """Fire each occurrence, `FIRE_SLICE` per write transaction, so a sweep that finds
    thousands (a busy quarter of a minute) never holds the write lock or, on SQLite, the
    event loop for long; the cursor is saved with the last slice. A slice that fails leaves
    the cursor where it was: the next sweep fires again, and what is already scheduled
    inserts nothing."""
    new = 0
    for first in range(0, max(len(fires), 1), FIRE_SLICE):
        async with db.write() as conn:
            new += await fire_many(conn, playbooks, fires[first:first + FIRE_SLICE], now=now)
            if cursor is not None and first + FIRE_SLICE >= len(fires):
                await _save_cursor(conn, *cursor)
        await asyncio.sleep(0)  # the loop's other tasks, even when no writer is waiting
    return new


async def sweep_stage_changes(db: Database, playbooks: Playbooks, *, now: datetime,
                              batch: int = 500) -> int:
    """stage_entered for stage changes recorded since the last sweep (a first sweep starts
    from now: history never fires)."""
    if not playbooks.uses("stage_entered"):
        return 0  # and no cursor: a playbook added later starts from its first sweep
    key = "playbooks:stage_change"
    async with db.write() as conn:
        cursor = await _cursor(conn, key, select(func.max(SC.id)))
        rows = (await conn.execute(
            select(SC.id, SC.customer_id, SC.to_stage, SC.conversation_id)
            .where(SC.id > max(cursor - OVERLAP, 0), SC.created_at >= now - STALE)
            .order_by(SC.id).limit(batch + OVERLAP))).all()
    if not rows:
        return 0
    return await _fire_in_slices(db, playbooks, [
        (r.customer_id, Occurrence("stage_entered", f"stage_change:{r.id}", r.to_stage),
         r.conversation_id) for r in rows], now=now, cursor=(key, max(cursor, rows[-1].id)))


async def sweep_csat(db: Database, playbooks: Playbooks, *, now: datetime,
                     window: timedelta = timedelta(days=2)) -> int:
    """csat for satisfaction answers of escalations resolved lately (one per escalation)."""
    if not playbooks.uses("csat"):
        return 0
    async with db.read() as conn:
        rows = (await conn.execute(
            select(ES.id, ES.csat, ES.conversation_id, CV.customer_id)
            .join(Conversation.__table__, CV.id == ES.conversation_id)
            .where(ES.created_at >= now - timedelta(days=90), ES.csat.is_not(None),
                   ES.resolved_at >= now - window))).all()
    if not rows:
        return 0
    return await _fire_in_slices(db, playbooks, [
        (r.customer_id, Occurrence("csat", f"csat:{r.id}", score=int(r.csat)),
         r.conversation_id) for r in rows], now=now)


async def sweep_survey_answers(db: Database, playbooks: Playbooks, *, now: datetime,
                               batch: int = 500) -> int:
    """csat / nps for answers to the playbooks' own questions since the last sweep."""
    if not (playbooks.uses("csat") or playbooks.uses("nps")):
        return 0
    key = "playbooks:survey_answer"
    async with db.write() as conn:
        cursor = await _cursor(conn, key, select(func.max(surveys.SA.id)))
        rows = await surveys.answers_since(conn, max(cursor - OVERLAP, 0), batch + OVERLAP)
    if not rows:
        return 0
    return await _fire_in_slices(db, playbooks, [
        (customer_id, Occurrence(kind, f"survey:{answer_id}", score=score), conversation_id)
        for answer_id, customer_id, conversation_id, kind, score in rows],
        now=now, cursor=(key, max(cursor, rows[-1][0])))


async def sweep_bot_answered(db: Database, playbooks: Playbooks, *, now: datetime,
                             batch: int = 2000) -> int:
    """bot_answered for conversations the bot answered from the FAQ since the last sweep and
    that no person is in: one occurrence per answered message, only the latest of each
    conversation per sweep (the steps' `replied` stop cancels the earlier ones anyway)."""
    if not playbooks.uses("bot_answered"):
        return 0
    key = "playbooks:bot_answered"
    async with db.write() as conn:
        cursor = await _cursor(conn, key, select(func.max(MS.id)))
        rows = (await conn.execute(
            select(MS.id, MS.conversation_id, CV.customer_id)
            .join(Conversation.__table__, CV.id == MS.conversation_id)
            .where(MS.id > max(cursor - OVERLAP, 0), MS.direction == "in",
                   MS.decision == "answer", CV.status == ConversationStatus.BOT)
            .order_by(MS.id).limit(batch + OVERLAP))).all()
    if not rows:
        return 0
    latest: dict[int, Any] = {}
    for r in rows:
        latest[int(r.conversation_id)] = r
    return await _fire_in_slices(db, playbooks, [
        (int(r.customer_id), Occurrence("bot_answered", f"bot_answered:{r.id}"),
         int(r.conversation_id)) for r in latest.values() if r.customer_id is not None],
        now=now, cursor=(key, max(cursor, int(rows[-1].id))))


async def sweep_lapsed(db: Database, playbooks: Playbooks, *, now: datetime,
                       since: dict[timedelta, tuple[datetime, int]], batch: int = 500) -> int:
    """no_order_for: customers whose last order became that old since the last sweep, once
    per lapse (the occurrence is the last order's time, so ordering again and lapsing again
    fires again). `since` is the caller's cursor (last order time, customer id) per duration;
    a new one looks a week back, so a restart catches up on a week of lapses without firing
    for all of history."""
    new = 0
    for after in playbooks.idle_triggers():
        cutoff = now - after
        at, last_id = since.get(after, (cutoff - LAPSE_CATCH_UP, 0))
        async with db.read() as conn:
            rows = (await conn.execute(select(CU.id, CU.last_order_at).where(
                CU.merged_into.is_(None), CU.last_order_at <= cutoff,
                or_(CU.last_order_at > at, and_(CU.last_order_at == at, CU.id > last_id)))
                .order_by(CU.last_order_at, CU.id).limit(batch))).all()
        if not rows:
            continue
        seconds = str(int(after.total_seconds()))
        new += await _fire_in_slices(db, playbooks, [
            (r.id, Occurrence("no_order_for",
                              f"lapse:{seconds}s:{r.last_order_at.isoformat()}", seconds), None)
            for r in rows], now=now)
        since[after] = (rows[-1].last_order_at, int(rows[-1].id))
    return new
