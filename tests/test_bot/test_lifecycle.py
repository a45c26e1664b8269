"""Lifecycle stages: set and changed by rules, by pushed order data, and by CSV import."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import Service
from bot.customers import CustomerFacts
from bot.db.models import Conversation, Customer, StageChange
from bot.errors import ConfigError
from bot.lifecycle import LifecycleRules, StageSignal
from bot.settings import DEFAULT_LIFECYCLE_RULES
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


async def _customer_id(service: Service) -> int:
    async with service.db.read() as conn:
        return int((await conn.execute(select(Conversation.customer_id))).scalar_one())


async def test_pushed_order_moves_the_conversation_and_records_why(
        client: aiohttp.ClientSession, service: Service, admin_headers: dict[str, str]) -> None:
    await chat(client, "How much does shipping cost?")
    cid = await _customer_id(service)
    order = {"order_id": "A-1001", "total": 79.9, "placed_at": "2026-11-20T10:00:00Z"}
    async with client.post(f"/api/customers/{cid}/orders", json=order,
                           headers=admin_headers) as resp:
        assert resp.status == 200, await resp.text()
        result = await resp.json()
    assert result["orders_count"] == 1 and result["total_spent"] == pytest.approx(79.9)
    assert result["stage_changes"][0]["to"] == "retention"
    async with service.db.read() as conn:
        history = (await conn.execute(select(StageChange.from_stage, StageChange.to_stage,
                                             StageChange.reason)
                                      .order_by(StageChange.id))).all()
    assert [(h.from_stage, h.to_stage) for h in history] == [(None, "awareness"),
                                                             ("awareness", "retention")]
    assert "order A-1001" in history[-1].reason
    # the same order pushed again changes nothing
    async with client.post(f"/api/customers/{cid}/orders", json=order,
                           headers=admin_headers) as resp:
        assert (await resp.json())["orders_count"] == 1


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


def test_csv_import_sets_stages(tmp_path: Path) -> None:
    db = tmp_path / "import.db"
    csv_file = tmp_path / "orders.csv"
    csv_file.write_text("email,order_id,total,placed_at\n"
                        "ann@example.com,1,20.5,2026-11-01T10:00:00+00:00\n"
                        "ann@example.com,2,30,2026-11-10T10:00:00+00:00\n"
                        "bob@example.com,3,15,2024-01-01T10:00:00+00:00\n")
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

    import asyncio

    from bot.db.engine import Database

    async def stages() -> dict[str, tuple[str, int]]:
        database = Database(f"sqlite+aiosqlite:///{db}")
        async with database.read() as conn:
            rows = (await conn.execute(select(Customer.email, Customer.stage,
                                              Customer.orders_count))).all()
        await database.close()
        return {r.email: (r.stage, r.orders_count) for r in rows}

    result = asyncio.run(stages())
    assert result["ann@example.com"] == ("retention", 2)
    assert result["bob@example.com"] == ("at_risk", 1)
