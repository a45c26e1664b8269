"""Time rules on a schedule: "no order for 180 days -> at_risk" for customers nobody heard from.

Rules with `days_since_last_order_min` become true by time passing alone, so waiting for a
message or an order would leave a silent customer's stage wrong forever. `StageSchedule.run`
applies them every LIFECYCLE_SCHEDULE_SECONDS under the leader lock (one process at a time in
scale-out), starting with a run at once, which also catches up after downtime: a sweep looks
at who is overdue *now*, not at what happened since the last sweep.

Each move is recorded in `scheduled_stage` keyed by customer, rule and the last-order time it
counted from, in the same transaction as the stage change: a customer is moved once per lapse
even if two processes overlap while a lock changes hands, and again only after ordering anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Protocol

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import customer_facts
from bot.db.engine import Database
from bot.db.models import Customer, ScheduledStage
from bot.lifecycle import (
    LifecycleRules,
    Rule,
    current_customer_stage,
    record_customer_stage_change,
)
from bot.orders import latest_open_conversation
from core.clock import Clock

log = logging.getLogger(__name__)
CU = Customer.__table__.c


class RulesSource(Protocol):
    @property
    def rules(self) -> LifecycleRules: ...


class StageSchedule:
    def __init__(self, db: Database, lifecycle: RulesSource, clock: Clock, *,
                 interval: float = 3600.0, batch: int = 200) -> None:
        self.db = db
        self.lifecycle = lifecycle
        self.clock = clock
        self.interval = interval
        self.batch = batch
        #: set after every sweep (tests and operators wait on it instead of sleeping)
        self.sweeps = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep now, then every `interval` seconds until `stop`; a failed sweep is logged and
        retried at the next tick."""
        while not stop.is_set():
            try:
                moved = await self.run_once()
                if moved:
                    log.info("lifecycle schedule: %d customers moved by time rules", moved)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle schedule: sweep failed; retrying later")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def run_once(self) -> int:
        """One sweep over every time rule; returns how many customers moved."""
        rules = self.lifecycle.rules
        moved = 0
        for rule in rules.timed_rules:
            cursor = 0
            while True:
                ids = await self._candidates(rule, cursor)
                if not ids:
                    break
                async with self.db.write() as conn:
                    for customer_id in ids:
                        moved += await self._apply(conn, rules, customer_id)
                cursor = ids[-1]
        self.sweeps += 1
        return moved

    async def _candidates(self, rule: Rule, after: int) -> list[int]:
        """Customers the rule may concern: overdue by its window and not at its stage yet."""
        assert rule.days_since_last_order_min is not None
        now = self.clock()
        cutoff = now - timedelta(days=rule.days_since_last_order_min)
        where = [CU.id > after, CU.merged_into.is_(None), CU.last_order_at.is_not(None),
                 CU.last_order_at <= cutoff, or_(CU.stage.is_(None), CU.stage != rule.stage)]
        if rule.days_since_last_order_max is not None:
            where.append(CU.last_order_at >= now - timedelta(days=rule.days_since_last_order_max))
        if rule.orders_min is not None:
            where.append(CU.orders_count >= rule.orders_min)
        async with self.db.read() as conn:
            rows = (await conn.execute(select(CU.id).where(*where).order_by(CU.id)
                                       .limit(self.batch))).scalars().all()
        return [int(i) for i in rows]

    async def _apply(self, conn: AsyncConnection, rules: LifecycleRules,
                     customer_id: int) -> int:
        current = await current_customer_stage(conn, customer_id)  # locks the customer row
        facts = await customer_facts(conn, customer_id)
        when = self.clock()
        decision = rules.decide_scheduled(current, facts, when)
        if decision is None or facts.last_order_at is None:
            return 0
        table = ScheduledStage.__table__
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        marker = dialect_insert(table).values(
            customer_id=customer_id, rule=f"{decision.stage}:{decision.reason}"[:200],
            basis=facts.last_order_at.isoformat(), created_at=when,
        ).on_conflict_do_nothing(index_elements=["customer_id", "rule", "basis"]) \
            .returning(table.c.id)
        if (await conn.execute(marker)).scalar() is None:
            return 0  # this lapse was applied before
        await record_customer_stage_change(
            conn, customer_id=customer_id, old=current, new=decision.stage,
            reason=f"{decision.reason} (schedule)", now=when,
            conversation_id=await latest_open_conversation(conn, customer_id))
        return 1
