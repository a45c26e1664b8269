"""Dashboard metrics: SQL aggregates and per-day rollups; nothing loads a whole table.

Every function takes an open connection and a `Period` and returns plain JSON-ready data.
The same answers come out of SQLite and PostgreSQL: time buckets are UTC labels built in SQL
("2026-11-22" or "2026-11-22 13"). Message counts, FAQ hits, conversations opened and stage
transitions come from the day rollups (bot/admin/rollups.py) for a period's closed days and from
live SQL for the rest, so the cost follows days, not messages; `use_rollups=False` computes
everything live (the tests check both agree). Escalation figures are read live in one pass
over the period's escalations (a few numbers each); percentiles are continuous, interpolated
the way PostgreSQL's `percentile_cont` does.

Definitions (what an admin reads on the dashboard):
- customers per stage at the end of each bucket: replayed from `stage_change` (+1 for the new
  stage, -1 for the customer's previous stage), so it is exact for any past day;
- conversations per stage: conversations opened in each bucket, by the stage they are at now;
- answered by the bot: inbound messages with decision "answer" over all inbound messages;
- first response / resolution: `first_response_at` / `resolved_at` minus the escalation's
  `created_at`, in seconds; CSAT is `escalation.csat` (1-5).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    String,
    Table,
    and_,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from bot.admin import rollups
from bot.db.models import Conversation, Customer, Escalation, Message, StageChange

CONVERSATION: Table = Conversation.__table__
CUSTOMER: Table = Customer.__table__
ESCALATION: Table = Escalation.__table__
MESSAGE: Table = Message.__table__
STAGE_CHANGE: Table = StageChange.__table__
CV, CU, ES, MS, SC = (t.c for t in (CONVERSATION, CUSTOMER, ESCALATION, MESSAGE, STAGE_CHANGE))
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy", "at_risk")
DIMENSIONS = ("stage", "channel", "language")
PERCENTILES = (0.5, 0.9)
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in UTC, cut into hour or day buckets."""

    start: datetime
    end: datetime
    bucket: str = "day"

    def labels(self) -> list[str]:
        """Every bucket label in the period, so charts show empty days as zero."""
        step = timedelta(hours=1) if self.bucket == "hour" else timedelta(days=1)
        at = self.start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if self.bucket == "day":
            at = at.replace(hour=0)
        out = []
        while at < self.end:
            out.append(_label(at, self.bucket))
            at += step
        return out

    def previous(self) -> Period:
        return Period(self.start - (self.end - self.start), self.start, self.bucket)

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "bucket": self.bucket}


def _label(at: datetime, bucket: str) -> str:
    return at.strftime("%Y-%m-%d %H" if bucket == "hour" else "%Y-%m-%d")


def _is_pg(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


def _bucket(conn: AsyncConnection, col: Any, bucket: str) -> ColumnElement[str]:
    """The UTC bucket label of a timestamp column, computed by the database."""
    if _is_pg(conn):
        fmt = "YYYY-MM-DD HH24" if bucket == "hour" else "YYYY-MM-DD"
        return func.to_char(func.timezone("UTC", col), fmt, type_=String)
    # SQLite keeps UTC as "YYYY-MM-DD HH:MM:SS.ffffff"
    return func.substr(col, 1, 13 if bucket == "hour" else 10, type_=String)


def _in(col: Any, period: Period) -> ColumnElement[bool]:
    return and_(col >= period.start, col < period.end)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def percentile_cont(ordered: Sequence[float], p: float) -> float:
    """PostgreSQL's percentile_cont over already sorted values: linear interpolation between
    the two values around position p * (n - 1)."""
    pos = p * (len(ordered) - 1)
    k = int(pos)
    low = ordered[k]
    high = ordered[k + 1] if k + 1 < len(ordered) else low
    return low + (high - low) * (pos - k)


# --- stages --------------------------------------------------------------------------------

async def _rolled(conn: AsyncConnection, use_rollups: bool) -> datetime | None:
    return await rollups.rolled_until(conn) if use_rollups else None


async def _stage_deltas(conn: AsyncConnection, start: datetime, end: datetime | None,
                        rolled: datetime | None, label: Callable[[datetime], str]
                        ) -> dict[str, dict[str, int]]:
    """Net change of customers per stage in [start, end), per `label` of the change's time:
    +1 for the stage a customer moves to, -1 for the one they leave."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    part = rollups.split(start, end, rolled, subtract=True)
    if part.days is not None:
        rt = rollups.TRANSITIONS.c
        for day, src, to, n in (await conn.execute(
                select(rt.day, rt.from_stage, rt.to_stage, func.sum(rt.changes))
                .where(rt.day >= part.days[0], rt.day < part.days[1])
                .group_by(rt.day, rt.from_stage, rt.to_stage))).all():
            bucket = label(datetime.fromisoformat(day).replace(tzinfo=UTC))
            out[bucket][to] += int(n)
            if src != "new":
                out[bucket][src] -= int(n)
    for sign, intervals in ((1, part.live), (-1, part.minus)):
        for a, b in intervals:
            for t in await rollups.transitions(conn, a, b):
                # a change before the period (minus) counts in its first day's bucket
                bucket = label(max(t.at, start))
                out[bucket][t.to] += sign
                if t.source != "new":
                    out[bucket][t.source] -= sign
    return out


async def stages_over_time(conn: AsyncConnection, period: Period, *,
                           use_rollups: bool = True) -> dict[str, Any]:
    """Customers in each stage at the end of every bucket, and conversations opened per bucket.

    The customer series starts from today's stages (customer.stage) and walks back through the
    changes since the period started (day rollups for closed days, live for the rest), so its
    cost follows the number of days, not the history.
    """
    labels = period.labels()
    rolled = await _rolled(conn, use_rollups)
    in_rolled = rolled if period.bucket == "day" else None  # hour buckets: live
    by_bucket = await _stage_deltas(conn, period.start, period.end, in_rolled,
                                    lambda at: _label(at, period.bucket))
    after = await _stage_deltas(conn, period.end, None, rolled, lambda at: "~")
    now_rows = (await conn.execute(select(CU.stage, func.count()).where(CU.stage.is_not(None))
                                   .group_by(CU.stage))).all()
    running = defaultdict(int, {r[0]: int(r[1]) for r in now_rows})
    now_stages = set(running)
    touched = set(running) | {s for d in (*by_bucket.values(), *after.values()) for s in d}
    for stage, total in after.get("~", {}).items():  # changes after the period
        running[stage] -= total
    customers: dict[str, list[int]] = {s: [0] * len(labels) for s in touched}
    for i in range(len(labels) - 1, -1, -1):
        for stage in touched:
            customers[stage][i] = running[stage]
        for stage, total in by_bucket.get(labels[i], {}).items():
            running[stage] -= total
    # stages customers are in now, or were in at the end of some bucket
    stages = _ordered_stages(s for s in touched if any(customers[s]) or s in now_stages)

    rows: list[tuple[str, str, int, int]] = []
    part = rollups.without(rollups.split(period.start, period.end, in_rolled),
                           await rollups.stale_days(conn, in_rolled, stage=True),
                           period.start, period.end)
    if part.days is not None:
        rc = rollups.CONVERSATIONS.c
        rows += [(r[0], r[1], int(r[2]), int(r[3])) for r in (await conn.execute(
            select(rc.day, rc.stage, rc.conversations, rc.customers)
            .where(rc.day >= part.days[0], rc.day < part.days[1],
                   rc.day.not_in(part.skip)))).all()]
    cb = _bucket(conn, CV.created_at, period.bucket).label("b")
    cstage = func.coalesce(CV.stage, UNKNOWN).label("stage")
    rows += [(r[0], r[1], int(r[2]), int(r[3])) for r in (await conn.execute(
        select(cb, cstage, func.count(), func.count(CV.customer_id.distinct()))
        .where(rollups.in_intervals(CV.created_at, part.live)).group_by(cb, cstage))).all()]
    conv_stages = _ordered_stages({r[1] for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    conversations = {s: [0] * len(labels) for s in conv_stages}
    contacting = {s: [0] * len(labels) for s in conv_stages}
    for bkt, stage, n, distinct_customers in rows:
        if bkt in index:
            conversations[stage][index[bkt]] += n
            contacting[stage][index[bkt]] += distinct_customers
    return {"period": period.as_dict(), "labels": labels,
            "customers": [{"stage": s, "counts": customers[s]} for s in stages],
            "customers_now": {s: running_now for s, running_now in
                              ((r[0], int(r[1])) for r in now_rows)},
            "conversations": [{"stage": s, "counts": conversations[s],
                               "customers": contacting[s]} for s in conv_stages]}


def _ordered_stages(found: Iterable[str]) -> list[str]:
    found = set(found)
    return [s for s in STAGES if s in found] + sorted(found - set(STAGES))


async def stage_flow(conn: AsyncConnection, period: Period, *,
                     use_rollups: bool = True) -> dict[str, Any]:
    """Customers' stage transitions in the period (from the customer's previous stage, or
    "new"), whichever conversation they happened in; staying in a stage is not a transition.

    "customers" counts each customer once per transition: a transition counts as a new
    customer when that customer's previous identical one is older than the period."""
    changes: dict[tuple[str, str], int] = defaultdict(int)
    customers: dict[tuple[str, str], int] = defaultdict(int)
    part = rollups.split(period.start, period.end, await _rolled(conn, use_rollups),
                         subtract=True)
    if part.days is not None:
        rt = rollups.TRANSITIONS.c
        first_in_period = or_(rt.repeat_after.is_(None), rt.repeat_after < period.start)
        for src, to, n, distinct in (await conn.execute(
                select(rt.from_stage, rt.to_stage, func.sum(rt.changes),
                       func.sum(case((first_in_period, rt.changes), else_=0)))
                .where(rt.day >= part.days[0], rt.day < part.days[1])
                .group_by(rt.from_stage, rt.to_stage))).all():
            changes[(src, to)] += int(n)
            customers[(src, to)] += int(distinct)
    for sign, intervals in ((1, part.live), (-1, part.minus)):
        for a, b in intervals:
            for t in await rollups.transitions(conn, a, b):
                changes[(t.source, t.to)] += sign
                if t.repeat_after is None or t.repeat_after < period.start:
                    customers[(t.source, t.to)] += sign
    changes = defaultdict(int, {k: n for k, n in changes.items() if n})
    order = {s: i for i, s in enumerate(("new", *STAGES))}
    keys = sorted(changes, key=lambda k: (order.get(k[0], 99), order.get(k[1], 99)))
    flows = [{"from": k[0], "to": k[1], "changes": changes[k], "customers": customers[k]}
             for k in keys]
    return {"period": period.as_dict(), "flows": flows, "total": sum(changes.values())}


# --- bot performance -----------------------------------------------------------------------

def _dim(by: str, table: str) -> Any:
    """The group of a message or escalation row. The conversation's columns are looked up
    per row by primary key: the live parts of a period are small, and PostgreSQL would
    otherwise hash-join the whole conversation table for a few hundred rows."""
    if by not in DIMENSIONS:
        raise ValueError(f"by must be one of {', '.join(DIMENSIONS)}")
    if table == "message" and by != "stage":
        return func.coalesce(MS.channel if by == "channel" else MS.language, UNKNOWN)
    owner = MS.conversation_id if table == "message" else ES.conversation_id
    col = {"stage": CV.stage, "channel": CV.channel, "language": CV.language}[by]
    return func.coalesce(select(col).where(CV.id == owner).scalar_subquery(), UNKNOWN)


def _escalations(conn: AsyncConnection, by: str) -> Select[Any]:
    return select(_dim(by, "escalation").label("g"), ES.reason, ES.csat, ES.created_at,
                  rollups.seconds(conn, ES.first_response_at, ES.created_at).label("first"),
                  rollups.seconds(conn, ES.resolved_at, ES.created_at).label("resolve"))


Row = Callable[[str], dict[str, Any]]


@dataclass(slots=True)
class _Escalations:
    """What the performance panel needs from escalations, summed over days and live rows."""

    reasons: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    csat: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    trend: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    firsts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    resolves: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def finish(self, row: Row, total: dict[str, Any]) -> list[dict[str, Any]]:
        """Fill the rows and the total; returns the CSAT trend."""
        for (g, reason), n in self.reasons.items():
            for r in (row(g), total):
                r["reasons"][reason] = r["reasons"].get(reason, 0) + n
                r["escalations"] += n
        csat = dict(self.csat)
        csat["all"] = [sum(c[0] for c in csat.values()), sum(c[1] for c in csat.values())]
        for k, (csat_sum, csat_n) in csat.items():
            if csat_n or k == "all":
                row(k).update(csat_avg=_round(csat_sum / csat_n, 2) if csat_n else None,
                              csat_count=csat_n)
        for name, found in (("first_response", self.firsts), ("resolution", self.resolves)):
            groups = {g: values for g, values in found.items() if values}
            if groups:
                groups["all"] = [v for values in groups.values() for v in values]
            for k, values in groups.items():
                values.sort()
                r = row(k)
                r[f"{name}_p50_s"] = _round(percentile_cont(values, 0.5))
                r[f"{name}_p90_s"] = _round(percentile_cont(values, 0.9))
        return [{"bucket": bkt, "avg": _round(sc / n, 2), "count": n}
                for bkt, (sc, n) in sorted(self.trend.items()) if n]


async def _escalation_figures(conn: AsyncConnection, period: Period, by: str,
                              rolled: datetime | None, stale: frozenset[str]) -> _Escalations:
    """Escalations of the period: rolled-up days (unless they changed since) + a pass over
    the remaining escalations (a handful of numbers each, never messages)."""
    acc = _Escalations()
    part = await rollups.escalation_split(conn, period.start, period.end,
                                          rolled if period.bucket == "day" else None)
    part = rollups.without(part, stale, period.start, period.end)
    if part.days is not None:
        re = rollups.ESCALATIONS.c
        result = await conn.execute(
            select(re.day, re.grp, re.reasons, re.csat_sum, re.csat_count,
                   re.first_response_s, re.resolution_s)
            .where(re.dim == by, re.day >= part.days[0], re.day < part.days[1]))
        for day, g, reasons, csat_sum, csat_n, firsts, resolves in result.tuples():
            if day in part.skip:
                continue
            for reason, n in reasons.items():
                acc.reasons[(g, reason)] += int(n)
            for target in (acc.csat[g], acc.trend[day]):
                target[0] += csat_sum
                target[1] += csat_n
            acc.firsts[g] += firsts
            acc.resolves[g] += resolves
    if not part.live:
        return acc
    esc = _escalations(conn, by).where(rollups.in_intervals(ES.created_at, part.live)).subquery()
    b = _bucket(conn, esc.c.created_at, period.bucket)
    result = await conn.execute(select(esc.c.g, esc.c.reason, esc.c.csat, b, esc.c.first,
                                       esc.c.resolve))
    for g, reason, score, bucket, first, resolve in result.tuples():
        acc.reasons[(g, reason)] += 1
        if score is not None:
            for target in (acc.csat[g], acc.trend[bucket]):
                target[0] += score
                target[1] += 1
        if first is not None:
            acc.firsts[g].append(first)
        if resolve is not None:
            acc.resolves[g].append(resolve)
    return acc


async def _previous_csat(conn: AsyncConnection, period: Period, by: str,
                         rolled: datetime | None, stale: frozenset[str], row: Row,
                         rows: Mapping[str, Any]) -> None:
    """CSAT of the period before, for the groups seen now and the total."""
    before: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    part = await rollups.escalation_split(conn, period.start, period.end, rolled)
    part = rollups.without(part, stale, period.start, period.end)
    found: list[tuple[str, int, int]] = []
    if part.days is not None:
        re = rollups.ESCALATIONS.c
        found += [(g, int(s), int(n)) for day, g, s, n in (await conn.execute(
            select(re.day, re.grp, re.csat_sum, re.csat_count)
            .where(re.dim == by, re.day >= part.days[0], re.day < part.days[1]))).tuples()
            if day not in part.skip]
    if part.live:
        rated = (_escalations(conn, by)
                 .where(rollups.in_intervals(ES.created_at, part.live), ES.csat.is_not(None))
                 .subquery())
        found += [(g, int(s or 0), int(n)) for g, s, n in (await conn.execute(
            select(rated.c.g, func.sum(rated.c.csat), func.count(rated.c.csat))
            .group_by(rated.c.g))).tuples()]
    for g, csat_sum, csat_n in found:
        for k in (g, "all"):
            before[k][0] += csat_sum
            before[k][1] += csat_n
    for k, (csat_sum, csat_n) in before.items():
        if csat_n and (k == "all" or k in rows):
            row(k)["csat_prev_avg"] = _round(csat_sum / csat_n, 2)


async def _inbound_counts(conn: AsyncConnection, period: Period, by: str,
                          rolled: datetime | None,
                          stale: frozenset[str]) -> list[tuple[str, int, int]]:
    """(group, inbound messages, answered by the bot): day rollups + live SQL for the rest."""
    key = _dim(by, "message")
    part = rollups.without(rollups.split(period.start, period.end, rolled, subtract=True),
                           stale, period.start, period.end)
    out: list[tuple[str, int, int]] = []
    if part.days is not None:
        ri = rollups.INBOUND.c
        col = {"stage": ri.stage, "channel": ri.channel, "language": ri.language}[by]
        out += [(r[0], int(r[1]), int(r[2])) for r in (await conn.execute(
            select(col, func.sum(ri.messages), func.sum(ri.answered))
            .where(ri.day >= part.days[0], ri.day < part.days[1], ri.day.not_in(part.skip))
            .group_by(col))).all()]
    for sign, intervals in ((1, part.live), (-1, part.minus)):
        if not intervals:
            continue
        stmt = (select(key.label("g"), func.count(),
                       func.sum(case((MS.decision == "answer", 1), else_=0)))
                .where(MS.direction == "in", rollups.in_intervals(MS.created_at, intervals))
                .group_by(key))
        out += [(r[0], sign * int(r[1]), sign * int(r[2] or 0))
                for r in (await conn.execute(stmt)).all()]
    summed: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g, n, answered in out:
        summed[g][0] += n
        summed[g][1] += answered
    return [(g, n, answered) for g, (n, answered) in summed.items() if n]


async def performance(conn: AsyncConnection, period: Period, by: str = "stage", *,
                      use_rollups: bool = True) -> dict[str, Any]:
    """Per stage, channel or language: volume, bot share, escalations, response times, CSAT.

    Message counts come from the day rollups plus live SQL for the rest of the period;
    escalations (far fewer rows than messages, and still changing as people answer them) are
    read live in one pass, plus one aggregate for the previous period's CSAT.
    """
    rows: dict[str, dict[str, Any]] = {}
    total: dict[str, Any] = {"messages": 0, "answered_by_bot": 0, "escalations": 0,
                             "reasons": {}}

    def row(key: str) -> dict[str, Any]:
        return total if key == "all" else rows.setdefault(
            key, {"key": key, "messages": 0, "answered_by_bot": 0, "escalations": 0,
                  "reasons": {}})

    rolled = await _rolled(conn, use_rollups)
    # days changed since the last refresh (late messages; by stage, re-filed days) are live
    stale = await rollups.stale_days(conn, rolled, stage=by == "stage")
    for g, n, answered in await _inbound_counts(conn, period, by, rolled, stale):
        for r in (row(g), total):
            r["messages"] += n
            r["answered_by_bot"] += answered

    trend = (await _escalation_figures(conn, period, by, rolled, stale)).finish(row, total)
    await _previous_csat(conn, period.previous(), by, rolled, stale, row, rows)
    ordered = sorted(rows.values(), key=lambda r: (
        STAGES.index(r["key"]) if by == "stage" and r["key"] in STAGES else 99, r["key"]))
    for r in (*ordered, total):
        r["bot_share"] = round(r["answered_by_bot"] / r["messages"], 4) if r["messages"] \
            else None
        _fill_defaults(r)
    return {"period": period.as_dict(), "by": by, "rows": ordered, "total": total,
            "csat_trend": trend}


def _fill_defaults(r: dict[str, Any]) -> None:
    for name in ("messages", "answered_by_bot", "escalations", "csat_count"):
        r.setdefault(name, 0)
    for name in ("bot_share", "csat_avg", "csat_prev_avg", "first_response_p50_s",
                 "first_response_p90_s", "resolution_p50_s", "resolution_p90_s"):
        r.setdefault(name, None)
    r.setdefault("reasons", {})


# --- FAQ -----------------------------------------------------------------------------------

async def faq_hits(conn: AsyncConnection, period: Period, *,
                   use_rollups: bool = True) -> dict[str, int]:
    """Inbound messages the bot answered, per FAQ entry."""
    hits: dict[str, int] = defaultdict(int)
    rolled = await _rolled(conn, use_rollups)
    part = rollups.without(rollups.split(period.start, period.end, rolled, subtract=True),
                           await rollups.stale_days(conn, rolled, stage=False), period.start,
                           period.end)
    if part.days is not None:
        rf = rollups.FAQ.c
        for faq_id, n in (await conn.execute(
                select(rf.faq_id, func.sum(rf.hits))
                .where(rf.day >= part.days[0], rf.day < part.days[1], rf.day.not_in(part.skip))
                .group_by(rf.faq_id))).all():
            hits[faq_id] += int(n)
    for sign, intervals in ((1, part.live), (-1, part.minus)):
        if intervals:
            for faq_id, n in (await conn.execute(
                    select(MS.faq_id, func.count())
                    .where(MS.direction == "in", rollups.in_intervals(MS.created_at, intervals),
                           MS.decision == "answer", MS.faq_id.is_not(None))
                    .group_by(MS.faq_id))).all():
                hits[faq_id] += sign * int(n)
    return {faq_id: n for faq_id, n in hits.items() if n}


async def unanswered_questions(conn: AsyncConnection, period: Period, *,
                               limit: int = 2000) -> list[str]:
    """The latest questions escalated because no FAQ entry matched (newest first, capped)."""
    rows = (await conn.execute(
        select(ES.question)
        .where(ES.reason == "no_match", _in(ES.created_at, period), ES.question.is_not(None))
        .order_by(ES.created_at.desc()).limit(limit))).all()
    return [r[0] for r in rows if r[0] and r[0].strip()]


# --- conversations -------------------------------------------------------------------------

CONVERSATION_FILTERS = ("stage", "channel", "status", "language")


async def list_conversations(conn: AsyncConnection, *, filters: Mapping[str, str],
                             period: Period | None, limit: int = 50,
                             offset: int = 0) -> dict[str, Any]:
    """One page of conversations (newest first) matching the filters, and the total count."""
    where: list[ColumnElement[bool]] = []
    for name in CONVERSATION_FILTERS:
        value = filters.get(name)
        if value:
            col = getattr(CV, name)
            where.append(col.is_(None) if value == UNKNOWN else col == value)
    if period is not None:
        where.append(_in(CV.created_at, period))
    total = (await conn.execute(select(func.count()).select_from(CONVERSATION)
                                .where(*where))).scalar_one()
    # pick the page first: SQLite would otherwise compute the per-row subqueries below for
    # every matching conversation before sorting
    page = (select(CV.id).where(*where).order_by(CV.id.desc()).limit(limit).offset(offset)
            .subquery())
    last_text = (select(MS.text).where(MS.conversation_id == CV.id, MS.direction == "in")
                 .order_by(MS.id.desc()).limit(1).scalar_subquery())
    n_messages = (select(func.count()).where(MS.conversation_id == CV.id)
                  .scalar_subquery())
    rows = (await conn.execute(
        select(CV.id, CV.channel, CV.status, CV.stage, CV.language, CV.assigned_to,
               CV.created_at, CV.updated_at, CU.id.label("cid"), CU.display_name,
               last_text.label("last_text"), n_messages.label("n_messages"))
        .select_from(page.join(CONVERSATION, CV.id == page.c.id)
                     .join(CUSTOMER, CU.id == CV.customer_id))
        .order_by(CV.id.desc()))).all()
    return {"total": int(total), "limit": limit, "offset": offset, "conversations": [
        {"id": r.id, "channel": r.channel, "status": r.status, "stage": r.stage,
         "language": r.language, "assigned_to": r.assigned_to,
         "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
         "customer": {"id": r.cid, "name": r.display_name},
         "last_message": (r.last_text or "")[:200], "messages": int(r.n_messages)}
        for r in rows]}


async def escalation_details(conn: AsyncConnection, conversation_id: int) -> list[dict[str, Any]]:
    """What `conversation_detail` leaves out: who answered, how fast, and the CSAT."""
    rows = (await conn.execute(
        select(ES.id, ES.reason, ES.question, ES.status, ES.team, ES.taken_by, ES.taken_at,
               ES.first_response_at, ES.resolved_at, ES.csat, ES.created_at,
               rollups.seconds(conn, ES.first_response_at, ES.created_at).label("first"),
               rollups.seconds(conn, ES.resolved_at, ES.created_at).label("resolve"))
        .where(ES.conversation_id == conversation_id).order_by(ES.id))).all()
    return [{"id": r.id, "reason": r.reason, "question": r.question, "status": r.status,
             "team": r.team, "taken_by": r.taken_by,
             "taken_at": r.taken_at.isoformat() if r.taken_at else None,
             "first_response_at": r.first_response_at.isoformat()
             if r.first_response_at else None,
             "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None,
             "created_at": r.created_at.isoformat(), "csat": r.csat,
             "first_response_s": _round(r.first), "resolution_s": _round(r.resolve)}
            for r in rows]
