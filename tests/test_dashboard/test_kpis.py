"""Store figures (retention, churn, repeat purchase, lifetime value, NPS, CSAT) per stage and
cohort month, checked against a history built by hand, on SQLite and PostgreSQL, through the
dashboard API an admin reads."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from bot.app import Service
from bot.db.models import Conversation, Customer, Escalation, Identity, Order, SurveyAnswer
from tests.conftest import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PERIOD = {"period": "custom", "from": "2026-10-01", "to": "2026-12-31"}


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)


# name: (stage, merged into, [(placed, total, status)], [(nps or csat, score, day)])
HISTORY: dict[str, tuple[str | None, str | None, list[tuple[str, float, str]],
                         list[tuple[str, int, str]]]] = {
    "ann": ("retention", None, [("2026-08-10", 50, "paid"), ("2026-10-15", 30, "delivered")],
            [("nps", 10, "2026-11-02")]),
    # Ann met on another channel first; merged into her record: her order counts as Ann's
    "ann2": (None, "ann", [("2026-12-01", 10, "paid")], []),
    "bob": ("at_risk", None, [("2026-08-20", 100, "delivered")],
            [("nps", 3, "2026-10-20"), ("nps", 0, "2026-09-01")]),  # the second is before
    "cat": ("purchase", None, [("2026-11-05", 40, "paid"), ("2027-01-05", 70, "paid")],
            [("nps", 9, "2026-11-20"), ("csat", 4, "2026-11-21")]),  # an order after the end
    "dan": ("at_risk", None, [("2026-09-01", 20, "paid"), ("2026-10-20", 999, "cancelled")],
            []),
    "fay": ("consideration", None, [], [("nps", 7, "2026-12-10")]),
}
#: (customer, CSAT the desk's survey got, resolved on)
DESK_CSAT = [("bob", 2, "2026-10-10"), ("ann", 5, "2026-11-01"), ("ann", 1, "2026-09-15")]


@pytest.fixture
async def service(make_settings: Any, database_url: str) -> AsyncIterator[Service]:
    svc = Service(make_settings())
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def build_history(service: Service) -> None:
    ids: dict[str, int] = {}
    async with service.db.write() as conn:
        for name, (stage, _merged, _orders, _answers) in HISTORY.items():
            ids[name] = (await conn.execute(Customer.__table__.insert().values(
                display_name=name, stage=stage, created_at=at("2026-08-01"))
                .returning(Customer.__table__.c.id))).scalar_one()
        conversations: dict[str, int] = {}
        for name, (_stage, merged, orders, answers) in HISTORY.items():
            if merged:
                await conn.execute(Customer.__table__.update().where(
                    Customer.__table__.c.id == ids[name]).values(merged_into=ids[merged]))
            for n, (day, total, status) in enumerate(orders):
                await conn.execute(Order.__table__.insert().values(
                    customer_id=ids[name], external_id=f"{name}-{n}", total=total,
                    status=status, placed_at=at(day)))
            identity = (await conn.execute(Identity.__table__.insert().values(
                customer_id=ids[name], channel="webchat", address=f"visitor-{name}")
                .returning(Identity.__table__.c.id))).scalar_one()
            conversations[name] = (await conn.execute(Conversation.__table__.insert().values(
                customer_id=ids[name], identity_id=identity, channel="webchat",
                address=f"visitor-{name}", status="resolved")
                .returning(Conversation.__table__.c.id))).scalar_one()
            for kind, score, day in answers:
                await conn.execute(SurveyAnswer.__table__.insert().values(
                    customer_id=ids[name], conversation_id=conversations[name], kind=kind,
                    score=score, answered_at=at(day)))
        for name, score, day in DESK_CSAT:
            await conn.execute(Escalation.__table__.insert().values(
                conversation_id=conversations[name], reason="asked_for_human",
                status="resolved", csat=score, created_at=at(day), resolved_at=at(day)))


async def get(service: Service, **params: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{service.port}/api/dashboard/kpis", params=params,
            headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else \
            await resp.text()


async def test_store_figures_match_the_hand_built_history(service: Service) -> None:
    await build_history(service)
    data = await get(service, **PERIOD)

    store = data["store"]
    assert store["customers"] == 5 and store["buyers"] == 4  # ann2 is Ann; fay never bought
    # had ordered before October: ann, bob, dan; only ann ordered again in the period
    assert store["returning_base"] == 3
    assert store["retention_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert store["churn_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert store["repeat_purchase_rate"] == 0.25  # ann's three orders; dan's 2nd is cancelled
    assert store["average_lifetime_value"] == 62.5  # (90 + 100 + 40 + 20) / 4
    assert (store["nps"], store["nps_answers"]) == (25.0, 4)  # 10, 3, 9, 7
    assert (store["csat"], store["csat_answers"]) == (pytest.approx(3.67), 3)  # 2, 5, 4
    assert store["csat_by_source"] == {"bot": {"csat": 4.0, "answers": 1},
                                       "staff": {"csat": 3.5, "answers": 2}}

    stages = {r["stage"]: r for r in data["by_stage"]}
    assert set(stages) == {"retention", "at_risk", "purchase", "consideration"}
    assert (stages["at_risk"]["retention_rate"], stages["at_risk"]["churn_rate"]) == (0.0, 1.0)
    assert stages["at_risk"]["average_lifetime_value"] == 60.0
    assert stages["at_risk"]["nps"] == -100.0
    assert stages["retention"]["retention_rate"] == 1.0
    assert stages["retention"]["average_lifetime_value"] == 90.0
    assert stages["purchase"]["retention_rate"] is None  # no one to retain yet
    assert stages["consideration"]["buyers"] == 0 and stages["consideration"]["nps"] == 0.0

    cohorts = {r["cohort"]: r for r in data["by_cohort"]}
    assert list(cohorts) == ["2026-08", "2026-09", "2026-11"]
    assert cohorts["2026-08"]["monthly_retention"] == [1.0, 0.0, 0.5, 0.0, 0.5]
    assert cohorts["2026-08"]["average_lifetime_value"] == 95.0
    assert cohorts["2026-09"]["monthly_retention"] == [1.0, 0.0, 0.0, 0.0]
    assert cohorts["2026-11"]["monthly_retention"] == [1.0, 0.0]
    assert cohorts["2026-11"]["repeat_purchase_rate"] == 0.0  # January is after the period


async def test_store_figures_as_csv(service: Service) -> None:
    await build_history(service)
    text = await get(service, **PERIOD, format="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    keys = [(r["group"], r["key"]) for r in rows]
    assert keys[:2] == [("store", "all"), ("stage", "consideration")]
    assert {r["key"] for r in rows if r["group"] == "cohort"} == {"2026-08", "2026-09", "2026-11"}
    assert next(r for r in rows if r["group"] == "store")["average_lifetime_value"] == "62.5"


async def test_an_empty_store_has_no_figures_rather_than_zeros(service: Service) -> None:
    store = (await get(service, **PERIOD))["store"]
    assert store["buyers"] == 0
    assert store["retention_rate"] is None and store["nps"] is None and store["csat"] is None
