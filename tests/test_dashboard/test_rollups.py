"""Rollup-based answers equal the live SQL answers, whatever the rollups have seen.

The hand-built history of test_metrics (whose right answers are worked out there) is rolled up
at various points in time, changed behind the rollups' back, and every dashboard metric is
compared with the same metric computed live, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from bot.admin import queries as mq
from bot.admin import rollups
from bot.customers import merge_customers
from bot.db.engine import Database
from bot.settings import Settings
from tests.conftest import eventually
from tests.test_dashboard.test_metrics import NOW, WEEK, at, build_history

PERIODS = [
    WEEK,  # starts mid-day: a live first day, rolled days, live today
    mq.Period(at(4, 0), at(6, 0), "day"),  # whole past days
    mq.Period(NOW - timedelta(days=30), NOW, "day"),
    mq.Period(at(9, 0), at(10, 0) + timedelta(days=1), "hour"),  # hour buckets: live
    mq.Period(at(8, 5, 30), at(9, 23), "day"),  # starts and ends inside a day
    mq.Period(at(8, 10, 3), NOW, "day"),  # early in a day: that day minus its first hours
    mq.Period(at(5, 9, 30), at(9, 0), "day"),
]


async def add_repeated_transitions(db: Database) -> None:
    """Customer 3 goes retention -> at_risk twice (03-04 and 03-08): one customer, two changes.
    """
    async with db.write() as conn:
        await conn.execute(insert(mq.STAGE_CHANGE), [
            {"conversation_id": 4, "customer_id": 3, "from_stage": None, "to_stage": to,
             "reason": "test", "created_at": when}
            for to, when in (("at_risk", at(4, 8)), ("retention", at(6, 8)),
                             ("at_risk", at(8, 11)))])


async def everything(db: Database, *, use_rollups: bool) -> list[Any]:
    out: list[Any] = []
    async with db.read() as conn:
        for period in PERIODS:
            out.append(await mq.stages_over_time(conn, period, use_rollups=use_rollups))
            out.append(await mq.stage_flow(conn, period, use_rollups=use_rollups))
            for by in mq.DIMENSIONS:
                out.append(await mq.performance(conn, period, by, use_rollups=use_rollups))
            out.append(await mq.faq_hits(conn, period, use_rollups=use_rollups))
    return out


async def rolled(db: Database) -> datetime | None:
    async with db.read() as conn:
        return await rollups.rolled_until(conn)


async def assert_rollups_agree(db: Database) -> None:
    assert await everything(db, use_rollups=True) == await everything(db, use_rollups=False)


async def test_rolled_up_answers_equal_live_ones(metrics_db: Database) -> None:
    await build_history(metrics_db)
    assert await rolled(metrics_db) is None  # never refreshed: all live
    stats = await rollups.refresh(metrics_db, now=NOW)
    assert stats.rebuilt and stats.rolled_until == datetime(2026, 3, 10, tzinfo=UTC)
    assert await rolled(metrics_db) == datetime(2026, 3, 10, tzinfo=UTC)
    async with metrics_db.read() as conn:
        inbound = (await conn.execute(select(func.sum(rollups.INBOUND.c.messages)))).scalar()
        escalated = (await conn.execute(select(func.sum(rollups.ESCALATIONS.c.escalations))
                                        .where(rollups.ESCALATIONS.c.dim == "stage"))).scalar()
    assert (inbound, escalated) == (8, 5)  # the whole history is in closed days
    await assert_rollups_agree(metrics_db)
    # and the hand-worked answers of test_metrics still hold through the rollups
    async with metrics_db.read() as conn:
        flow = await mq.stage_flow(conn, WEEK)
        total = (await mq.performance(conn, WEEK, "channel"))["total"]
    assert {(f["from"], f["to"]): f["customers"] for f in flow["flows"]} == {
        ("new", "awareness"): 1, ("awareness", "consideration"): 1,
        ("awareness", "at_risk"): 1, ("consideration", "purchase"): 1}
    assert (total["messages"], total["answered_by_bot"], total["escalations"]) == (7, 4, 4)


async def test_a_customer_repeating_a_transition_counts_once(metrics_db: Database) -> None:
    await build_history(metrics_db)
    await add_repeated_transitions(metrics_db)
    await rollups.refresh(metrics_db, now=NOW)
    await assert_rollups_agree(metrics_db)
    for period, expected in ((WEEK, (2, 1)), (mq.Period(at(5, 0), NOW, "day"), (1, 1)),
                             (mq.Period(at(8, 10, 3), NOW, "day"), (1, 1))):
        async with metrics_db.read() as conn:
            flow = await mq.stage_flow(conn, period)
        found = {(f["from"], f["to"]): (f["changes"], f["customers"]) for f in flow["flows"]}
        assert found[("retention", "at_risk")] == expected, period


async def test_lagging_rollups_still_give_exact_answers(metrics_db: Database) -> None:
    await build_history(metrics_db)
    await rollups.refresh(metrics_db, now=at(6, 12))  # rolled up to 03-06 only
    assert await rolled(metrics_db) == datetime(2026, 3, 6, tzinfo=UTC)
    await assert_rollups_agree(metrics_db)
    stats = await rollups.refresh(metrics_db, now=NOW)  # the days since, incrementally
    assert not stats.rebuilt and stats.days == 4
    await assert_rollups_agree(metrics_db)


async def test_late_rows_stage_changes_and_merges_are_folded_in(metrics_db: Database) -> None:
    await build_history(metrics_db)
    await rollups.refresh(metrics_db, now=NOW)
    async with metrics_db.write() as conn:  # a message arrives dated three days ago
        await conn.execute(insert(mq.MESSAGE).values(
            conversation_id=2, direction="in", channel="whatsapp", author="customer",
            text="late", language="it", faq_id="returns", decision="answer",
            created_at=at(7, 9)))
    async with metrics_db.read() as conn:  # that day is answered live until the next refresh
        assert await rollups.stale_days(conn, await rollups.rolled_until(conn),
                                        stage=False) == {"2026-03-07"}
    await assert_rollups_agree(metrics_db)
    await rollups.refresh(metrics_db, now=NOW)
    async with metrics_db.read() as conn:
        assert await rollups.stale_days(conn, await rollups.rolled_until(conn),
                                        stage=False) == set()
    await assert_rollups_agree(metrics_db)

    async with metrics_db.write() as conn:  # conversation 1 (messages on 03-05) moves on
        await conn.execute(insert(mq.STAGE_CHANGE).values(
            conversation_id=1, customer_id=1, from_stage="consideration", to_stage="advocacy",
            reason="test", created_at=at(10, 11)))
        await conn.execute(update(mq.CONVERSATION).where(mq.CV.id == 1)
                           .values(stage="advocacy"))
        await conn.execute(update(mq.CUSTOMER).where(mq.CU.id == 1).values(stage="advocacy"))
    async with metrics_db.read() as conn:  # its days are answered live until the refresh
        # opened 02-28, escalated 03-01, messages 02-28 and 03-05
        assert await rollups.stale_days(conn, await rollups.rolled_until(conn), stage=True) == {
            "2026-02-28", "2026-03-01", "2026-03-05"}
    await assert_rollups_agree(metrics_db)
    await rollups.refresh(metrics_db, now=NOW + timedelta(hours=1))
    async with metrics_db.read() as conn:
        assert await rollups.stale_days(conn, await rollups.rolled_until(conn), stage=True) == set()
    await assert_rollups_agree(metrics_db)

    async with metrics_db.write() as conn:  # an escalation of 03-09 is resolved and rated
        await conn.execute(update(mq.ESCALATION).where(mq.ES.reason == "no_match",
                                                       mq.ES.conversation_id == 3)
                           .values(resolved_at=at(10, 11), csat=1, status="resolved"))
    await assert_rollups_agree(metrics_db)  # that day is answered live until the refresh
    async with metrics_db.read() as conn:
        total = (await mq.performance(conn, WEEK, "channel"))["total"]
    # resolutions 1800, 3600, 7200 and now 86400 s: p90 = 7200 + 0.7 * (86400 - 7200)
    assert (total["csat_count"], total["resolution_p90_s"]) == (4, 62640.0)
    await rollups.refresh(metrics_db, now=NOW + timedelta(hours=1))
    await assert_rollups_agree(metrics_db)

    async with metrics_db.write() as conn:  # customer 2 turns out to be customer 1
        await merge_customers(conn, keep=1, drop=2)
    await rollups.refresh(metrics_db, now=NOW + timedelta(hours=2))
    await assert_rollups_agree(metrics_db)


async def test_a_conversation_dated_in_the_past_makes_everything_live(
        metrics_db: Database) -> None:
    await build_history(metrics_db)
    await rollups.refresh(metrics_db, now=NOW)
    async with metrics_db.write() as conn:  # e.g. an import: all answers live until refreshed
        await conn.execute(insert(mq.CONVERSATION).values(
            id=9, customer_id=3, identity_id=3, channel="telegram", address="a3",
            language="th", stage="advocacy", status="bot", created_at=at(6), updated_at=at(6)))
    assert await rolled(metrics_db) is None
    await assert_rollups_agree(metrics_db)
    await rollups.refresh(metrics_db, now=NOW)
    assert await rolled(metrics_db) is not None
    await assert_rollups_agree(metrics_db)


async def test_concurrent_refreshes_do_not_double_count(metrics_db: Database) -> None:
    await build_history(metrics_db)
    other = Database(metrics_db.url)  # another process's engine
    try:
        await asyncio.gather(rollups.refresh(metrics_db, now=NOW),
                             rollups.refresh(other, now=NOW),
                             rollups.refresh(other, now=NOW, rebuild=True))
    finally:
        await other.close()
    async with metrics_db.read() as conn:
        inbound = (await conn.execute(select(func.sum(rollups.INBOUND.c.messages)))).scalar()
    assert inbound == 8
    await assert_rollups_agree(metrics_db)


def test_split_cuts_a_period_at_whole_rolled_up_days() -> None:
    until = datetime(2026, 3, 10, tzinfo=UTC)
    part = rollups.split(at(3, 12), at(10, 12), until)
    assert part.days == ("2026-03-04", "2026-03-10")
    assert part.live == [(at(3, 12), at(4, 0)), (until, at(10, 12))]
    assert rollups.split(at(9, 1), at(9, 23), until).days is None  # inside one day
    assert rollups.split(at(4, 0), None, until).live == [(until, None)]
    assert rollups.split(at(4, 0), at(6, 0), None).live == [(at(4, 0), at(6, 0))]


async def test_the_service_rolls_up_on_start_and_answers_from_rollups(
        make_settings: Callable[..., Settings]) -> None:
    import aiohttp

    from bot.app import Service
    from tests.conftest import ADMIN_TOKEN

    settings = make_settings(dashboard_cache_seconds=0)
    db = Database(settings.database_url)
    await db.upgrade()
    await build_history(db)
    service = Service(settings)
    await service.start(workers=False)
    try:
        closed = rollups.floor_day(datetime.now(UTC) - rollups.CLOSE_MARGIN)

        async def rolled_up() -> bool:
            return await rolled(db) == closed

        # the background task's first refresh: a day at a time, leaving as long to the rest
        await eventually(rolled_up, timeout=120, what="every closed day rolled up")
        query = "period=custom&from=2026-03-03&to=2026-03-09&by=channel"
        async with aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{service.port}",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client, \
                client.get(f"/api/dashboard/performance?{query}") as resp:
            assert resp.status == 200
            served = await resp.json()
        async with db.read() as conn:
            live = await mq.performance(conn, mq.Period(at(3, 0), at(10, 0), "day"), "channel",
                                        use_rollups=False)
        assert served["total"] == live["total"] and served["rows"] == live["rows"]
        assert served["total"]["escalations"] == 4
    finally:
        await service.stop()
        await db.close()
