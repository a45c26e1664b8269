"""Metric queries on a small hand-built history whose right answers are worked out by hand.

Same data, same expected numbers on SQLite and on PostgreSQL.

Timeline (now = 2026-03-10 12:00 UTC; "7 days" = from 2026-03-03 12:00):
  customer 1: awareness 02-28, consideration 03-05 (conv 1), purchase 03-08 (new conv 2)
  customer 2: awareness 03-07, at_risk 03-09 (conv 3)
  customer 3: retention 02-18 (conv 4), nothing since
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from bot.admin import queries as mq
from bot.db.engine import Database

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
WEEK = mq.Period(NOW - timedelta(days=7), NOW, "day")


def at(day: int, hour: int = 10, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 2 if day > 15 else 3, day, hour, minute, second, tzinfo=UTC)


async def build_history(db: Database) -> None:
    t = {name: table for name, table in (
        ("customer", mq.CUSTOMER), ("conversation", mq.CONVERSATION), ("message", mq.MESSAGE),
        ("stage_change", mq.STAGE_CHANGE), ("escalation", mq.ESCALATION))}
    from bot.db.models import Identity
    identity = Identity.__table__
    async with db.write() as conn:
        await conn.execute(insert(t["customer"]), [
            {"id": 1, "display_name": "Ada", "stage": "purchase", "created_at": at(28)},
            {"id": 2, "display_name": "Bo", "stage": "at_risk", "created_at": at(7)},
            {"id": 3, "display_name": "Cy", "stage": "retention", "created_at": at(18)}])
        await conn.execute(insert(identity), [
            {"id": i, "customer_id": i, "channel": ch, "address": f"a{i}", "created_at": at(18)}
            for i, ch in ((1, "email"), (2, "webchat"), (3, "telegram"))])
        conv = [(1, 1, "email", "en", "consideration", "resolved", at(28)),
                (2, 1, "whatsapp", "it", "purchase", "human", at(8)),
                (3, 2, "webchat", "en", "at_risk", "waiting", at(7)),
                (4, 3, "telegram", "th", "retention", "resolved", at(18))]
        await conn.execute(insert(t["conversation"]), [
            {"id": i, "customer_id": c, "identity_id": c, "channel": ch, "address": f"a{c}",
             "language": lang, "stage": stage, "status": status, "created_at": created,
             "updated_at": created} for i, c, ch, lang, stage, status, created in conv])
        msgs: list[tuple[int, str, str, str | None, str | None, datetime]] = [
            (1, "in", "email", "shipping_cost", "answer", at(28)),  # before the period
            (1, "in", "email", "delivery_time", "answer", at(5)),
            (1, "out", "email", "delivery_time", None, at(5, second=2)),
            (2, "in", "whatsapp", "shipping_cost", "answer", at(8)),
            (2, "out", "whatsapp", "shipping_cost", None, at(8, second=1)),
            (2, "in", "whatsapp", "returns", "answer", at(8, 10, 2)),
            (2, "in", "whatsapp", None, "escalate", at(8, 10, 5)),
            (3, "in", "webchat", "shipping_cost", "answer", at(7)),
            (3, "in", "webchat", None, "escalate", at(9)),
            (3, "in", "webchat", None, "silent", at(9, 10, 30)),
        ]
        await conn.execute(insert(t["message"]), [
            {"conversation_id": c, "direction": d, "channel": ch, "author":
             "customer" if d == "in" else "bot", "text": f"message {i}",
             "language": {"email": "en", "whatsapp": "it", "webchat": "en"}[ch],
             "faq_id": faq, "decision": dec, "created_at": when}
            for i, (c, d, ch, faq, dec, when) in enumerate(msgs)])
        await conn.execute(insert(t["stage_change"]), [
            {"conversation_id": c, "customer_id": cu, "from_stage": f, "to_stage": to,
             "reason": "test", "created_at": when}
            for c, cu, f, to, when in ((4, 3, None, "retention", at(18)),
                                       (1, 1, None, "awareness", at(28)),
                                       (1, 1, "awareness", "consideration", at(5)),
                                       (3, 2, None, "awareness", at(7)),
                                       (2, 1, None, "purchase", at(8)),
                                       (3, 2, "awareness", "at_risk", at(9)))])
        esc: list[tuple[int, str, datetime, int | None, int | None, int | None, str]] = [
            (2, "no_match", at(8, 10, 5), 600, 3600, 4, "Can I pay with bitcoin?"),
            (3, "asked_for_human", at(9), 120, 1800, 2, "a person please"),
            (3, "no_match", at(9, 11), 300, None, None, "do you accept bitcoin payments"),
            (2, "ambiguous", at(8, 12), 1200, 7200, 5, "returns or exchange?"),
            (1, "no_match", at(1), 60, 60, 3, "previous period"),  # 03-01: the week before
        ]
        await conn.execute(insert(t["escalation"]), [
            {"conversation_id": c, "reason": r, "created_at": when, "question": q,
             "first_response_at": when + timedelta(seconds=f) if f is not None else None,
             "resolved_at": when + timedelta(seconds=res) if res is not None else None,
             "csat": csat, "status": "resolved" if res else "taken"}
            for c, r, when, f, res, csat, q in esc])


@pytest.fixture
async def history(metrics_db: Database) -> Database:
    await build_history(metrics_db)
    return metrics_db


async def test_customers_per_stage_at_the_end_of_each_day(history: Database) -> None:
    async with history.read() as conn:
        data = await mq.stages_over_time(conn, WEEK)
    assert data["labels"] == [f"2026-03-{d:02d}" for d in range(3, 11)]
    series = {s["stage"]: s["counts"] for s in data["customers"]}
    assert series == {
        "awareness": [1, 1, 0, 0, 1, 1, 0, 0],
        "consideration": [0, 0, 1, 1, 1, 0, 0, 0],
        "purchase": [0, 0, 0, 0, 0, 1, 1, 1],
        "retention": [1] * 8,
        "at_risk": [0, 0, 0, 0, 0, 0, 1, 1],
    }
    assert list(series) == ["awareness", "consideration", "purchase", "retention", "at_risk"]
    conversations = {s["stage"]: s["counts"] for s in data["conversations"]}
    assert conversations == {"purchase": [0, 0, 0, 0, 0, 1, 0, 0],
                             "at_risk": [0, 0, 0, 0, 1, 0, 0, 0]}


async def test_customer_series_for_a_past_period_replays_later_changes(history: Database) -> None:
    period = mq.Period(at(4, 0), at(6, 0), "day")  # 03-04 and 03-05 only
    async with history.read() as conn:
        data = await mq.stages_over_time(conn, period)
    series = {s["stage"]: s["counts"] for s in data["customers"]}
    assert data["labels"] == ["2026-03-04", "2026-03-05"]
    assert series["awareness"] == [1, 0]
    assert series["consideration"] == [0, 1]
    assert series["retention"] == [1, 1]
    assert series["purchase"] == [0, 0] and series["at_risk"] == [0, 0]


async def test_flow_counts_customer_transitions_across_conversations(history: Database) -> None:
    async with history.read() as conn:
        data = await mq.stage_flow(conn, WEEK)
    flows = {(f["from"], f["to"]): f["customers"] for f in data["flows"]}
    # customer 1 moved consideration -> purchase in a NEW conversation: still a transition
    assert flows == {("new", "awareness"): 1, ("awareness", "consideration"): 1,
                     ("awareness", "at_risk"): 1, ("consideration", "purchase"): 1}
    assert data["total"] == 4


async def test_performance_by_stage(history: Database) -> None:
    async with history.read() as conn:
        data = await mq.performance(conn, WEEK, "stage")
    rows = {r["key"]: r for r in data["rows"]}
    assert [r["key"] for r in data["rows"]] == ["consideration", "purchase", "at_risk"]
    assert (rows["purchase"]["messages"], rows["purchase"]["answered_by_bot"]) == (3, 2)
    assert rows["purchase"]["bot_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert (rows["at_risk"]["messages"], rows["at_risk"]["answered_by_bot"]) == (3, 1)
    assert (rows["consideration"]["messages"], rows["consideration"]["answered_by_bot"]) == (1, 1)
    purchase = rows["purchase"]
    assert purchase["reasons"] == {"no_match": 1, "ambiguous": 1}
    assert (purchase["first_response_p50_s"], purchase["first_response_p90_s"]) == (900.0, 1140.0)
    assert (purchase["resolution_p50_s"], purchase["resolution_p90_s"]) == (5400.0, 6840.0)
    assert (purchase["csat_avg"], purchase["csat_count"]) == (4.5, 2)
    at_risk = rows["at_risk"]
    assert (at_risk["first_response_p50_s"], at_risk["first_response_p90_s"]) == (210.0, 282.0)
    assert (at_risk["resolution_p50_s"], at_risk["resolution_p90_s"]) == (1800.0, 1800.0)
    assert (at_risk["csat_avg"], at_risk["csat_count"]) == (2.0, 1)
    assert rows["consideration"]["escalations"] == 0
    assert rows["consideration"]["first_response_p50_s"] is None


async def test_performance_totals_and_csat_trend(history: Database) -> None:
    async with history.read() as conn:
        data = await mq.performance(conn, WEEK, "channel")
    total: dict[str, Any] = data["total"]
    assert (total["messages"], total["answered_by_bot"], total["escalations"]) == (7, 4, 4)
    assert total["reasons"] == {"no_match": 2, "asked_for_human": 1, "ambiguous": 1}
    # first responses 120, 300, 600, 1200 s; resolutions 1800, 3600, 7200 s (one still open)
    assert (total["first_response_p50_s"], total["first_response_p90_s"]) == (450.0, 1020.0)
    assert (total["resolution_p50_s"], total["resolution_p90_s"]) == (3600.0, 6480.0)
    assert (total["csat_avg"], total["csat_count"], total["csat_prev_avg"]) == (3.67, 3, 3.0)
    assert data["csat_trend"] == [{"bucket": "2026-03-08", "avg": 4.5, "count": 2},
                                  {"bucket": "2026-03-09", "avg": 2.0, "count": 1}]
    by_channel = {r["key"]: (r["messages"], r["answered_by_bot"]) for r in data["rows"]}
    assert by_channel == {"email": (1, 1), "webchat": (3, 1), "whatsapp": (3, 2)}


async def test_percentiles_match_percentile_cont_definition(metrics_db: Database) -> None:
    """Odd and even counts, ties and a single value, against numbers worked out by hand and,
    on PostgreSQL, against percentile_cont itself."""
    from sqlalchemy import func, literal_column, select, union_all

    values = {"a": [5, 1, 3, 2, 4], "b": [10, 10, 20, 40], "c": [7]}
    expected = {"a": {0.5: 3.0, 0.9: 4.6, 0.25: 2.0}, "b": {0.5: 15.0, 0.9: 34.0, 0.25: 10.0},
                "c": {0.5: 7.0, 0.9: 7.0, 0.25: 7.0},
                "all": {0.5: 6.0, 0.9: 22.0, 0.25: 3.25}}  # 1 2 3 4 5 7 10 10 20 40
    values["all"] = [v for vs in values.values() for v in vs]
    for group, ps in expected.items():
        ordered = sorted(float(v) for v in values[group])
        assert {p: mq.percentile_cont(ordered, p) for p in ps} == pytest.approx(ps)
    if metrics_db.is_sqlite:
        return
    parts: list[Any] = [select(literal_column(f"'{g}'").label("g"),
                               literal_column(str(v)).label("v"))
                        for g, vs in values.items() if g != "all" for v in vs]
    src = union_all(*parts).subquery()
    async with metrics_db.read() as conn:
        for group, ps in expected.items():
            stmt = select(*[func.percentile_cont(p).within_group(src.c.v) for p in ps])
            if group != "all":
                stmt = stmt.where(src.c.g == group)
            got = (await conn.execute(stmt)).one()
            assert list(got) == pytest.approx(list(ps.values()))


async def test_faq_hits_and_unanswered_questions(history: Database) -> None:
    async with history.read() as conn:
        hits = await mq.faq_hits(conn, WEEK)
        questions = await mq.unanswered_questions(conn, WEEK)
    assert hits == {"shipping_cost": 2, "returns": 1, "delivery_time": 1}
    assert questions == ["do you accept bitcoin payments", "Can I pay with bitcoin?"]


async def test_conversation_list_filters(history: Database) -> None:
    async def ids(period: mq.Period | None = None, **filters: str) -> list[int]:
        async with history.read() as conn:
            page = await mq.list_conversations(conn, filters=filters, period=period)
        assert page["total"] == len(page["conversations"])
        return [c["id"] for c in page["conversations"]]

    assert await ids() == [4, 3, 2, 1]
    assert await ids(stage="purchase") == [2]
    assert await ids(channel="webchat") == [3]
    assert await ids(status="resolved") == [4, 1]
    assert await ids(language="th") == [4]
    assert await ids(WEEK) == [3, 2]
    assert await ids(WEEK, status="resolved") == []
    async with history.read() as conn:
        page = await mq.list_conversations(conn, filters={}, period=None, limit=1, offset=1)
    assert page["total"] == 4 and [c["id"] for c in page["conversations"]] == [3]
    first = page["conversations"][0]
    assert first["customer"]["name"] == "Bo" and first["messages"] == 3
    assert first["last_message"] == "message 9"


async def test_escalation_details_say_who_answered_and_how_fast(history: Database) -> None:
    async with history.read() as conn:
        details = await mq.escalation_details(conn, 3)
    assert [(d["reason"], d["first_response_s"], d["resolution_s"], d["csat"])
            for d in details] == [("asked_for_human", 120.0, 1800.0, 2),
                                  ("no_match", 300.0, None, None)]


def test_hour_buckets_for_today() -> None:
    period = mq.Period(datetime(2026, 3, 10, 0, tzinfo=UTC), datetime(2026, 3, 10, 3, 30,
                                                                       tzinfo=UTC), "hour")
    assert period.labels() == ["2026-03-10 00", "2026-03-10 01", "2026-03-10 02",
                               "2026-03-10 03"]
