"""The store figures owners track, per lifecycle stage and per cohort month.

Definitions (what the dashboard's "Store figures" panel and its CSV say):
- an order counts unless it was cancelled or refunded; a customer is a *buyer* once they have
  one; merged customer records count as the one they were merged into;
- *cohort month*: the UTC month of a buyer's first order;
- *retention rate* over a period: of the buyers who had ordered before the period started,
  the share who ordered again during it; *churn rate* is the rest of that base;
- *repeat purchase rate*: buyers with two or more orders (up to the period's end) over buyers;
- *average lifetime value*: what buyers spent (up to the period's end) over buyers;
- *monthly retention* of a cohort: for month 0, 1, 2... after the cohort month, the share of
  the cohort that ordered in that month;
- *NPS*: answers 0-10 in the period, % promoters (9-10) minus % detractors (0-6);
- *CSAT*: answers 1-5 in the period, the average and the share of 4 and 5; from the desk's
  survey after a person resolved a conversation ("staff"), and from the playbooks' questions
  (bot/surveys.py: "bot" after the bot answered alone, else "playbook").
Groups per stage use the customer's stage now.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.admin.queries import STAGES, Period
from bot.db.models import Conversation, Customer, Escalation, Order, SurveyAnswer

CU = Customer.__table__.c
OR = Order.__table__.c
ES = Escalation.__table__.c
CV = Conversation.__table__.c
SA = SurveyAnswer.__table__.c
NOT_REVENUE = ("cancelled", "refunded")
#: months of monthly retention shown per cohort
COHORT_MONTHS = 12
COLUMNS = ["group", "key", "customers", "buyers", "retention_rate", "churn_rate",
           "repeat_purchase_rate", "average_lifetime_value", "nps", "nps_answers", "csat",
           "csat_answers"]


@dataclass(slots=True)
class Buyer:
    """One customer's orders, summed up in SQL (merged records added together)."""

    orders: int = 0
    spent: float = 0.0
    first: datetime | None = None
    in_period: bool = False
    months: set[str] = field(default_factory=set)

    def add(self, orders: int, spent: float, first: datetime, in_period: bool) -> None:
        self.orders += orders
        self.spent += spent
        self.first = first if self.first is None else min(self.first, first)
        self.in_period = self.in_period or in_period


@dataclass(slots=True)
class Scores:
    nps: list[int] = field(default_factory=list)
    csat: list[int] = field(default_factory=list)
    csat_by_source: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))


async def store_kpis(conn: AsyncConnection, period: Period) -> dict[str, Any]:
    """The figures for the store, per stage now and per cohort month, over `period`."""
    owner, stages = await _customers(conn)
    buyers = await _buyers(conn, owner, period)
    scores = await _scores(conn, owner, period)
    everyone = set(stages)
    store = _figures(everyone, buyers, scores, period)
    by_stage = []
    for stage in (*STAGES, "none"):
        members = {c for c, s in stages.items() if (s or "none") == stage}
        if members:
            by_stage.append({"stage": stage, **_figures(members, buyers, scores, period)})
    cohorts: dict[str, set[int]] = defaultdict(set)
    for customer, buyer in buyers.items():
        assert buyer.first is not None
        cohorts[_month(buyer.first)].add(customer)
    by_cohort = [{"cohort": month, **_figures(members, buyers, scores, period),
                  "monthly_retention": _monthly(month, members, buyers, period.end)}
                 for month, members in sorted(cohorts.items())]
    return {"period": {"from": period.start.isoformat(), "to": period.end.isoformat()},
            "store": store, "by_stage": by_stage, "by_cohort": by_cohort}


def rows_for_csv(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"group": "store", "key": "all", **data["store"]}]
    rows += [{"group": "stage", "key": r["stage"], **r} for r in data["by_stage"]]
    rows += [{"group": "cohort", "key": r["cohort"], **r} for r in data["by_cohort"]]
    return rows


async def _customers(conn: AsyncConnection) -> tuple[dict[int, int], dict[int, str | None]]:
    """Who each customer record stands for (merges followed), and each one's stage now."""
    rows = (await conn.execute(select(CU.id, CU.merged_into, CU.stage))).all()
    parent = {r.id: r.merged_into for r in rows}
    owner: dict[int, int] = {}
    for customer in parent:
        seen, at = {customer}, customer
        while parent.get(at) is not None and parent[at] not in seen:
            at = parent[at]
            seen.add(at)
        owner[customer] = at
    return owner, {r.id: r.stage for r in rows if r.merged_into is None}


async def _buyers(conn: AsyncConnection, owner: dict[int, int], period: Period
                  ) -> dict[int, Buyer]:
    counted = (OR.status.not_in(NOT_REVENUE), OR.placed_at < period.end)
    rows = await conn.execute(
        select(OR.customer_id, func.count().label("orders"), func.sum(OR.total).label("spent"),
               func.min(OR.placed_at).label("first"),
               func.max(case((OR.placed_at >= period.start, 1), else_=0)).label("recent"))
        .where(*counted).group_by(OR.customer_id))
    buyers: dict[int, Buyer] = defaultdict(Buyer)
    for r in rows:
        buyers[owner.get(r.customer_id, r.customer_id)].add(
            int(r.orders), float(r.spent or 0), r.first, bool(r.recent))
    month = _month_sql(conn)
    for r in await conn.execute(select(OR.customer_id, month).where(*counted).distinct()):
        buyers[owner.get(r.customer_id, r.customer_id)].months.add(str(r.month))
    return buyers


def _month_sql(conn: AsyncConnection) -> Any:
    """The order's UTC month as "YYYY-MM", in SQL (stored UTC on both databases)."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", OR.placed_at), "YYYY-MM").label("month")
    return func.strftime("%Y-%m", OR.placed_at).label("month")


async def _scores(conn: AsyncConnection, owner: dict[int, int],
                  period: Period) -> dict[int, Scores]:
    scores: dict[int, Scores] = defaultdict(Scores)
    desk = await conn.execute(
        select(CV.customer_id, ES.csat).join(Conversation.__table__, CV.id == ES.conversation_id)
        .where(ES.csat.is_not(None), ES.resolved_at >= period.start,
               ES.resolved_at < period.end))
    for r in desk:
        mine = scores[owner.get(r.customer_id, r.customer_id)]
        mine.csat.append(int(r.csat))
        mine.csat_by_source["staff"].append(int(r.csat))
    asked = await conn.execute(select(SA.customer_id, SA.kind, SA.score, SA.source).where(
        SA.answered_at >= period.start, SA.answered_at < period.end))
    for r in asked:
        mine = scores[owner.get(r.customer_id, r.customer_id)]
        if r.kind == "nps":
            mine.nps.append(int(r.score))
        else:
            mine.csat.append(int(r.score))
            mine.csat_by_source[r.source or "bot"].append(int(r.score))
    return scores


def _figures(members: set[int], buyers: dict[int, Buyer], scores: dict[int, Scores],
             period: Period) -> dict[str, Any]:
    mine = [buyers[c] for c in members if c in buyers]
    base = [b for b in mine if b.first is not None and b.first < period.start]
    retained = sum(1 for b in base if b.in_period)
    nps = [n for c in members if c in scores for n in scores[c].nps]
    csat = [n for c in members if c in scores for n in scores[c].csat]
    sources: dict[str, list[int]] = defaultdict(list)
    for c in members:
        if c in scores:
            for source, answers in scores[c].csat_by_source.items():
                sources[source].extend(answers)
    return {
        "customers": len(members), "buyers": len(mine), "returning_base": len(base),
        "retention_rate": _share(retained, len(base)),
        "churn_rate": _share(len(base) - retained, len(base)),
        "repeat_purchase_rate": _share(sum(1 for b in mine if b.orders >= 2), len(mine)),
        "average_lifetime_value": round(sum(b.spent for b in mine) / len(mine), 2)
        if mine else None,
        "nps": net_promoter_score(nps), "nps_answers": len(nps),
        "csat": _average(csat), "csat_answers": len(csat),
        "csat_satisfied": _share(sum(1 for n in csat if n >= 4), len(csat)),
        "csat_by_source": {s: {"csat": _average(a), "answers": len(a)}
                           for s, a in sorted(sources.items())},
    }


def _monthly(cohort: str, members: set[int], buyers: dict[int, Buyer],
             end: datetime) -> list[float | None]:
    """Share of the cohort ordering in each month after its first, up to the period's end."""
    year, month = map(int, cohort.split("-"))
    final = end - timedelta(microseconds=1)  # the period's end is not part of it
    last = final.year * 12 + final.month - 1
    first = year * 12 + month - 1
    shares: list[float | None] = []
    for offset in range(min(COHORT_MONTHS, last - first + 1)):
        index = first + offset
        label = f"{index // 12:04d}-{index % 12 + 1:02d}"
        active = sum(1 for c in members if label in buyers[c].months)
        shares.append(_share(active, len(members)))
    return shares


def net_promoter_score(answers: Iterable[int]) -> float | None:
    answers = list(answers)
    if not answers:
        return None
    promoters = sum(1 for a in answers if a >= 9)
    detractors = sum(1 for a in answers if a <= 6)
    return round(100 * (promoters - detractors) / len(answers), 1)


def _month(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _average(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None

