"""Time rules on a schedule, with an injected clock: a silent customer becomes at_risk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import Service
from bot.customers import OrderIn
from bot.db.engine import Database
from bot.db.models import Customer, StageChange
from bot.lifecycle import LifecycleStore
from bot.lifecycle_schedule import StageSchedule
from bot.orders import apply_orders
from bot.settings import DEFAULT_LIFECYCLE_RULES
from core.clock import FrozenClock
from tests.conftest import eventually

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def history(db: Database) -> list[tuple[str | None, str, str]]:
    async with db.read() as conn:
        return [(r.from_stage, r.to_stage, r.reason) for r in (await conn.execute(
            select(StageChange.from_stage, StageChange.to_stage, StageChange.reason)
            .order_by(StageChange.id))).all()]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
async def scheduled(make_settings: Any, database_url: str,
                    clock: FrozenClock) -> AsyncIterator[Service]:
    svc = Service(make_settings(lifecycle_schedule_seconds=0.05), clock=clock)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def test_silent_customer_becomes_at_risk_on_schedule(
        scheduled: Service, clock: FrozenClock, admin_headers: dict[str, str]) -> None:
    service = scheduled
    order = {"email": "quiet@example.com", "order_id": "Q-1", "total": 40,
             "placed_at": "2026-11-30T09:00:00Z"}
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client, \
            client.post("/api/orders", headers=admin_headers, json=order) as resp:
        assert resp.status == 200, await resp.text()
    assert [h[:2] for h in await history(service.db)] == [(None, "purchase")]

    sweeps = service.stage_schedule.sweeps
    clock.advance(timedelta(days=170))
    await eventually(lambda: _sweeps_past(service, sweeps + 2))
    assert len(await history(service.db)) == 1  # not yet: 170 days

    clock.advance(timedelta(days=11))
    await eventually(lambda: _stage_is(service.db, "at_risk"))
    changes = await history(service.db)
    assert changes[1][:2] == ("purchase", "at_risk") and "(schedule)" in changes[1][2]
    sweeps = service.stage_schedule.sweeps
    await eventually(lambda: _sweeps_past(service, sweeps + 3))
    assert len(await history(service.db)) == 2  # once per customer per transition


async def _sweeps_past(service: Service, count: int) -> bool:
    return service.stage_schedule.sweeps >= count


async def _stage_is(db: Database, stage: str) -> bool:
    async with db.read() as conn:
        return (await conn.execute(select(Customer.stage))).scalar() == stage


async def test_catch_up_after_downtime_and_overlapping_sweeps(
        make_settings: Any, database_url: str, clock: FrozenClock,
        admin_headers: dict[str, str]) -> None:
    """The service was down while customers lapsed: the first sweep moves them, and two
    processes sweeping at once (a lock changing hands) still move each customer once."""
    service = Service(make_settings(), clock=clock)
    await service.start(workers=False)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            for i in range(5):
                async with client.post("/api/orders", headers=admin_headers, json={
                        "email": f"c{i}@example.com", "order_id": f"O-{i}", "total": 10,
                        "placed_at": "2026-11-20T09:00:00Z"}) as resp:
                    assert resp.status == 200
    finally:
        await service.stop()

    clock.advance(timedelta(days=400))  # the shop was closed for a year
    rules = LifecycleStore(DEFAULT_LIFECYCLE_RULES)
    dbs = [Database(database_url) for _ in range(2)]
    try:
        first, second = (StageSchedule(db, rules, clock, batch=2) for db in dbs)
        if dbs[0].is_sqlite:  # one process by design: the sweeps take turns
            moved = [await first.run_once(), await second.run_once()]
        else:
            moved = list(await asyncio.gather(first.run_once(), second.run_once()))
        assert sum(moved) == 5
        assert await first.run_once() == 0
        changes = await history(dbs[0])
        assert sorted(c[:2] for c in changes if c[1] == "at_risk") == [("purchase",
                                                                       "at_risk")] * 5
        # a customer who orders again and lapses again is moved again, once
        async with dbs[0].write() as conn:
            cid = (await conn.execute(select(Customer.id).where(
                Customer.email == "c0@example.com"))).scalar_one()
            result = await apply_orders(conn, rules.rules, cid, [OrderIn(
                "O-new", 5.0, placed_at=clock())], now=clock())
            assert result["stage_changes"][0]["to"] == "retention"
        clock.advance(timedelta(days=200))
        assert await first.run_once() == 1
        assert await second.run_once() == 0
    finally:
        for db in dbs:
            await db.close()
