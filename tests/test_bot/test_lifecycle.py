"""Lifecycle stages: set and changed by rules, by pushed order data, and by CSV import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.app import Service
from bot.clock import FrozenClock
from bot.customers import CustomerFacts
from bot.db.engine import Database
from bot.db.models import Conversation, Customer, Identity, StageChange
from bot.lifecycle import LifecycleRules, StageSignal, apply_customer_stage
from bot.orders import import_orders, read_orders_csv
from bot.settings import DEFAULT_LIFECYCLE_RULES, Settings
from core.errors import ConfigError
from tests.conftest import ADMIN_TOKEN, ROOT, chat

RULES = LifecycleRules.from_file(DEFAULT_LIFECYCLE_RULES)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def decide(current: str | None, *, text: str = "", lang: str = "en", faq_stage: str | None = None,
           orders: int = 0, last_order_days: float | None = None, event: str = "message"):
    facts = CustomerFacts(orders, 50.0 * orders,
                          NOW - timedelta(days=last_order_days) if last_order_days is not None
                          else None)
    return RULES.decide(current, StageSignal(event, text=text, language=lang,
                                             faq_stage=faq_stage, facts=facts, now=NOW))


@pytest.mark.parametrize(("current", "kwargs", "expected"), [
    (None, {"text": "hello"}, "awareness"),
    ("awareness", {"faq_stage": "consideration"}, "consideration"),
    ("consideration", {"faq_stage": "purchase"}, "purchase"),
    ("purchase", {"faq_stage": "awareness"}, None),  # never back down the funnel
    ("retention", {"text": "This is the worst shop, never again"}, "at_risk"),
    ("purchase", {"text": "servizio pessimo, sono deluso", "lang": "it"}, "at_risk"),
    ("awareness", {"text": "แย่มากเลยค่ะ", "lang": "th"}, "at_risk"),
    ("at_risk", {"faq_stage": "consideration"}, None),  # stays at risk on a plain question
    ("at_risk", {"event": "order", "orders": 2, "last_order_days": 1}, "retention"),
    (None, {"orders": 3, "last_order_days": 400}, "at_risk"),  # lapsed customer
    ("retention", {"faq_stage": "advocacy", "orders": 2, "last_order_days": 10}, "advocacy"),
    ("awareness", {"faq_stage": "advocacy"}, None),  # no orders: cannot be an advocate yet
    (None, {"faq_stage": "retention"}, "purchase"),  # tracking question, no order on file
    (None, {"event": "order", "orders": 1, "last_order_days": 0}, "purchase"),  # first order
    ("purchase", {"event": "order", "orders": 2, "last_order_days": 0}, "retention"),
    ("advocacy", {"event": "order", "orders": 3, "last_order_days": 0}, None),  # stays up
    ("retention", {"event": "cancel", "orders": 1, "last_order_days": 3}, "at_risk"),
    ("awareness", {"event": "checkout"}, "purchase"),
    ("retention", {"event": "checkout", "orders": 1, "last_order_days": 3}, None),
    ("consideration", {"faq_stage": "awareness"}, None),  # "What do you sell?" later on
])
def test_default_rules(current: str | None, kwargs: dict[str, Any], expected: str | None) -> None:
    decision = decide(current, **kwargs)
    assert (decision.stage if decision else None) == expected
    if decision:
        assert decision.reason


def test_bad_rules_file_names_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - stage: awareness\n  - stage: happy\n")
    with pytest.raises(ConfigError, match=r"rule 2: stage must be one of"):
        LifecycleRules.from_file(path)
    path.write_text("rules:\n  - stage: awareness\n    colour: red\n")
    with pytest.raises(ConfigError, match=r"rule 1: unknown key\(s\) colour"):
        LifecycleRules.from_file(path)


def test_rules_refuse_unknown_events_and_stages(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - stage: awareness\n    event: [message, tea]\n")
    with pytest.raises(ConfigError, match=r"rule 1: event must be one of"):
        LifecycleRules.from_file(path)
    path.write_text("rules:\n  - stage: awareness\n    current_stage: [happy]\n")
    with pytest.raises(ConfigError, match=r"rule 1: current_stage 'happy'"):
        LifecycleRules.from_file(path)


def test_only_time_rules_run_on_the_schedule() -> None:
    lapsed = CustomerFacts(2, 100.0, NOW - timedelta(days=200))
    decision = RULES.decide_scheduled("retention", lapsed, NOW)
    assert decision is not None and decision.stage == "at_risk"
    assert RULES.decide_scheduled("at_risk", lapsed, NOW) is None  # already there
    recent = CustomerFacts(2, 100.0, NOW - timedelta(days=20))
    assert RULES.decide_scheduled("retention", recent, NOW) is None
    # "returning customer" (no stage, has orders) is not a time rule: nothing to do
    assert RULES.decide_scheduled(None, recent, NOW) is None


async def test_stage_belongs_to_the_customer_across_conversations(database_url: str) -> None:
    """A new conversation starts from the customer's stage: a plain question there neither
    moves the customer back nor records a change without its from-stage."""
    database = Database(database_url)
    await database.upgrade()
    try:
        async with database.write() as conn:
            cid, first = await _conversation(conn, "telegram", "100")
            moved = await apply_customer_stage(
                conn, RULES, customer_id=cid, conversation_id=first,
                signal=StageSignal("message", text="hi", now=NOW))
            assert moved is not None and (moved.old, moved.new) == (None, "awareness")
            moved = await apply_customer_stage(
                conn, RULES, customer_id=cid, conversation_id=first,
                signal=StageSignal("message", faq_stage="consideration", now=NOW))
            assert moved is not None and (moved.old, moved.new) == ("awareness",
                                                                     "consideration")
            _, second = await _conversation(conn, "webchat", "v-1", customer_id=cid)
            assert await apply_customer_stage(
                conn, RULES, customer_id=cid, conversation_id=second,
                signal=StageSignal("message", text="What do you sell?",
                                   faq_stage="awareness", now=NOW)) is None
            moved = await apply_customer_stage(
                conn, RULES, customer_id=cid, conversation_id=second,
                signal=StageSignal("message", text="worst shop ever", language="en", now=NOW))
            assert moved is not None and (moved.old, moved.new) == ("consideration", "at_risk")
        async with database.read() as conn:
            convs = dict((await conn.execute(select(Conversation.id, Conversation.stage)
                                              .order_by(Conversation.id))).tuples().all())
            history = (await conn.execute(select(StageChange.conversation_id,
                                                 StageChange.from_stage, StageChange.to_stage)
                                          .order_by(StageChange.id))).tuples().all()
            stage = (await conn.execute(select(Customer.stage))).scalar_one()
    finally:
        await database.close()
    assert stage == "at_risk"
    assert convs == {first: "consideration", second: "at_risk"}
    assert history == [(first, None, "awareness"), (first, "awareness", "consideration"),
                       (second, "consideration", "at_risk")]


async def _conversation(conn: AsyncConnection, channel: str, address: str, *,
                        customer_id: int | None = None) -> tuple[int, int]:
    if customer_id is None:
        customer_id = (await conn.execute(insert(Customer.__table__).values(
            orders_count=0, total_spent=0.0, created_at=NOW)
            .returning(Customer.__table__.c.id))).scalar_one()
    identity = (await conn.execute(insert(Identity.__table__).values(
        customer_id=customer_id, channel=channel, address=address, created_at=NOW)
        .returning(Identity.__table__.c.id))).scalar_one()
    conv = (await conn.execute(insert(Conversation.__table__).values(
        customer_id=customer_id, identity_id=identity, channel=channel, address=address,
        status="bot", created_at=NOW, updated_at=NOW)
        .returning(Conversation.__table__.c.id))).scalar_one()
    return int(customer_id), int(conv)


async def _customer_id(service: Service) -> int:
    async with service.db.read() as conn:
        return int((await conn.execute(select(Conversation.customer_id))).scalar_one())


@pytest.fixture
def clock() -> FrozenClock:
    """Early December 2026: the orders below are recent, whatever today's date is."""
    return FrozenClock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def clocked(settings: Settings, clock: FrozenClock) -> AsyncIterator[Service]:
    svc = Service(settings, clock=clock)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def clocked_client(clocked: Service) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{clocked.port}") as session:
        yield session


async def test_pushed_order_moves_the_customer_and_records_why(
        clocked_client: aiohttp.ClientSession, clocked: Service,
        admin_headers: dict[str, str]) -> None:
    client, service = clocked_client, clocked
    await chat(client, "How much does shipping cost?")
    cid = await _customer_id(service)
    order = {"order_id": "A-1001", "total": 79.9, "placed_at": "2026-11-20T10:00:00Z"}
    async with client.post(f"/api/customers/{cid}/orders", json=order,
                           headers=admin_headers) as resp:
        assert resp.status == 200, await resp.text()
        result = await resp.json()
    assert result["orders_count"] == 1 and result["total_spent"] == pytest.approx(79.9)
    assert result["stage_changes"][0]["to"] == "purchase"
    async with service.db.read() as conn:
        history = (await conn.execute(select(StageChange.from_stage, StageChange.to_stage,
                                             StageChange.reason)
                                      .order_by(StageChange.id))).all()
    assert [(h.from_stage, h.to_stage) for h in history] == [(None, "awareness"),
                                                             ("awareness", "purchase")]
    assert "order a-1001" in history[-1].reason
    # the same order pushed again changes nothing
    async with client.post(f"/api/customers/{cid}/orders", json=order,
                           headers=admin_headers) as resp:
        again = await resp.json()
    assert again["orders_count"] == 1 and again["stage_changes"] == []
    # a second order makes a returning customer
    second = {"order_id": "A-1002", "total": 20, "placed_at": "2026-11-28T10:00:00Z"}
    async with client.post(f"/api/customers/{cid}/orders", json=second,
                           headers=admin_headers) as resp:
        assert (await resp.json())["stage_changes"][0]["to"] == "retention"


async def test_order_api_refuses_bad_input(client: aiohttp.ClientSession,
                                           admin_headers: dict[str, str]) -> None:
    cases = [
        ("/api/customers/999/orders", {"order_id": "x", "total": 1}, 404),
        ("/api/orders", {"order_id": "x", "total": 1}, 400),  # no email/phone
        ("/api/orders", {"email": "a@b.co", "order_id": "x", "total": "lots"}, 400),
        ("/api/orders", {"email": "a@b.co", "order_id": "x", "total": 1,
                         "placed_at": "yesterday"}, 400),
        ("/api/orders", {"email": "a@b.co", "total": 1}, 400),
    ]
    for path, body, status in cases:
        async with client.post(path, json=body, headers=admin_headers) as resp:
            assert resp.status == status, (path, body, await resp.text())
            assert (await resp.json())["error"]
    async with client.post("/api/orders", json={"email": "a@b.co", "order_id": "x",
                                                "total": 1}) as resp:
        assert resp.status == 401  # no token


def test_csv_import_command(tmp_path: Path) -> None:
    """The CLI plumbing: counts, and a bad row refused with its file and line."""
    db = tmp_path / "import.db"
    csv_file = tmp_path / "orders.csv"
    csv_file.write_text(ORDERS_CSV)
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{db}", "PATH": "/usr/bin:/bin",
           "ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run([sys.executable, "-m", "bot", "import-orders", str(csv_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "imported 3 orders" in done.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("email,order_id,total\nann@example.com,9,abc\n")
    done = subprocess.run([sys.executable, "-m", "bot", "import-orders", str(bad)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{bad}:2: total must be a number" in done.stderr


ORDERS_CSV = ("email,order_id,total,placed_at\n"
              "ann@example.com,1,20.5,2026-11-01T10:00:00+00:00\n"
              "ann@example.com,2,30,2026-11-10T10:00:00+00:00\n"
              "bob@example.com,3,15,2024-01-01T10:00:00+00:00\n")


async def test_csv_import_sets_stages(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS_CSV)
    database = Database(database_url)
    await database.upgrade()
    try:
        changes = await import_orders(database, RULES, path, read_orders_csv(path),
                                      clock=FrozenClock(datetime(2026, 12, 1, tzinfo=UTC)))
        async with database.read() as conn:
            rows = (await conn.execute(select(Customer.email, Customer.stage,
                                              Customer.orders_count))).all()
            history = (await conn.execute(select(StageChange.from_stage, StageChange.to_stage)
                                          .order_by(StageChange.id))).all()
    finally:
        await database.close()
    result = {r.email: (r.stage, r.orders_count) for r in rows}
    assert result["ann@example.com"] == ("retention", 2)
    assert result["bob@example.com"] == ("at_risk", 1)
    assert changes == 3
    assert [tuple(h) for h in history] == [(None, "purchase"), ("purchase", "retention"),
                                           (None, "at_risk")]
