"""Per-day rollups of the dashboard's big aggregates, so a period costs days, not messages.

A UTC day is *closed* once it ended `CLOSE_MARGIN` ago. `refresh` aggregates closed days into
the rollup_* tables and records how far it went (`rollup_state.rolled_until`). The dashboard
answers a period from the rollups for its whole closed days and from live SQL over the rest
(a partial first day, today, any day the rollups have not reached), so answers are exact
whatever the lag. Rows written late (platform timestamps in the past, an import, bench/seed.py),
conversations whose stage changed since and customer merges mark their days dirty, and the
next refresh recomputes those days.

A refresh deletes and re-inserts whole days, a day per transaction, under a lock (an advisory
lock on PostgreSQL, the write lock on SQLite), so any number of processes can run it. On SQLite
its statements run on a thread (`Database.analytics`, `background_write`): the event loop keeps
serving customers while a year of history is rolled up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    Float,
    Integer,
    Table,
    and_,
    case,
    cast,
    delete,
    extract,
    false,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from bot.db.engine import Database
from bot.db.models import (
    Conversation,
    Customer,
    Escalation,
    Message,
    RollupConversation,
    RollupEscalation,
    RollupEscalationCheck,
    RollupFaq,
    RollupInbound,
    RollupState,
    RollupTransition,
    StageChange,
)

log = logging.getLogger(__name__)
CONVERSATION: Table = Conversation.__table__
CUSTOMER: Table = Customer.__table__
MESSAGE: Table = Message.__table__
STAGE_CHANGE: Table = StageChange.__table__
INBOUND: Table = RollupInbound.__table__
FAQ: Table = RollupFaq.__table__
CONVERSATIONS: Table = RollupConversation.__table__
TRANSITIONS: Table = RollupTransition.__table__
STATE: Table = RollupState.__table__
ESCALATION: Table = Escalation.__table__
ESCALATIONS: Table = RollupEscalation.__table__
CHECKS: Table = RollupEscalationCheck.__table__
ROLLUPS = (INBOUND, FAQ, CONVERSATIONS, TRANSITIONS, ESCALATIONS, CHECKS)
CV, CU, MS, SC, ES = (t.c for t in (CONVERSATION, CUSTOMER, MESSAGE, STAGE_CHANGE, ESCALATION))
DIMENSIONS = ("stage", "channel", "language")
STATE_KEY = "daily"
CLOSE_MARGIN = timedelta(minutes=10)  # a transaction open longer than this may land late
CHUNK_DAYS = 1  # days built per write transaction (SQLite writers wait that long)
MAX_PAUSE = 1.0  # seconds between two of them, at most
UNKNOWN = "unknown"
DAY = timedelta(days=1)
Interval = tuple[datetime, datetime | None]  # [start, end); None = no end


# --- days and intervals ----------------------------------------------------------------------

def floor_day(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(at: datetime) -> datetime:
    floor = floor_day(at)
    return floor if floor == at else floor + DAY


def day_label(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, slots=True)
class Split:
    """A period cut into whole rolled-up days [days_from, days_to), live intervals to add,
    and `minus` intervals: rows the rolled-up days include but the period does not."""

    days: tuple[str, str] | None
    live: list[Interval]
    minus: list[Interval] = field(default_factory=list)
    skip: frozenset[str] = frozenset()  # days in `days` answered live instead


def split(start: datetime, end: datetime | None, rolled_until: datetime | None, *,
          subtract: bool = False) -> Split:
    """Which part of [start, end) the rollups answer (whole days before `rolled_until`).

    With `subtract` (for counts, where a day minus a part of it is exact), a period starting
    in the first half of a rolled-up day takes that whole day and subtracts the hours before
    `start`, so at most half a day is ever read live at that end.
    """
    if rolled_until is None:
        return Split(None, [(start, end)])
    first = ceil_day(start)
    last = rolled_until if end is None else min(floor_day(end), rolled_until)
    minus: list[Interval] = []
    if subtract and start < first and first - start > DAY / 2 and first <= last:
        first, minus = floor_day(start), [(floor_day(start), start)]
    if first >= last:
        return Split(None, [(start, end)])
    live: list[Interval] = []
    if start < first:
        live.append((start, first))
    if end is None or last < end:
        live.append((last, end))
    return Split((day_label(first), day_label(last)), live, minus)


def in_intervals(col: Any, intervals: Iterable[Interval]) -> ColumnElement[bool]:
    parts = [and_(col >= a, col < b) if b is not None else col >= a for a, b in intervals]
    if not parts:
        return false()
    return or_(*parts) if len(parts) > 1 else parts[0]


def day_of(conn: AsyncConnection, col: Any) -> ColumnElement[str]:
    """The UTC day label of a timestamp column, computed by the database."""
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")
    return func.substr(col, 1, 10)  # SQLite keeps UTC as "YYYY-MM-DD HH:MM:SS.ffffff"


async def rolled_until(conn: AsyncConnection) -> datetime | None:
    """Every day before this is in the rollups and up to date; None: answer live.

    Conversations or stage changes that arrived since the last refresh dated inside the
    rolled-up days (an import, bench/seed.py) make them stale until the next refresh: lookups on
    the primary keys of the rows added since tell. (Late messages, which platforms do send,
    only make their days live: see `stale_days`.)"""
    row = (await conn.execute(select(STATE.c.rolled_until, STATE.c.seen)
                              .where(STATE.c.key == STATE_KEY))).first()
    if row is None or row.rolled_until is None:
        return None
    until: datetime = row.rolled_until
    seen = row.seen or {}
    for table, key in ((CONVERSATION, "conversation"), (STAGE_CHANGE, "stage_change")):
        # only the id condition, so both databases walk the primary key from `seen`
        # (min over an expression: SQLite would otherwise walk the created_at index)
        first = func.min(func.coalesce(table.c.created_at, table.c.created_at))
        oldest = (await conn.execute(select(first).where(
            table.c.id > int(seen.get(key, 0))))).scalar()
        if oldest is not None and oldest < until:
            return None
    return until


async def stale_days(conn: AsyncConnection, rolled: datetime | None, *,
                     stage: bool) -> frozenset[str]:
    """Rolled-up days whose figures changed since the last refresh, found from the few rows
    added since: messages that arrived dated in a rolled-up day, and with `stage` the days a
    stage change re-filed (a conversation counts under its current stage, so a change moves
    its earlier messages, escalations and its opening)."""
    if rolled is None:
        return frozenset()
    seen = (await conn.execute(select(STATE.c.seen).where(STATE.c.key == STATE_KEY))).scalar()
    seen = seen or {}
    # the created_at test goes through coalesce so that the primary key range is used
    late = (select(day_of(conn, MS.created_at)).distinct()
            .where(MS.id > int(seen.get("message", 0)),
                   func.coalesce(MS.created_at, MS.created_at) < rolled))
    days = await _days(conn, late)
    if stage:
        changed = select(SC.conversation_id).where(SC.id > int(seen.get("stage_change", 0)))
        for table, owner in ((MESSAGE, MS.conversation_id), (ESCALATION, ES.conversation_id),
                             (CONVERSATION, CV.id)):
            days |= await _days(conn, select(day_of(conn, table.c.created_at)).distinct()
                                .where(owner.in_(changed), table.c.created_at < rolled))
    return frozenset(days)


def without(part: Split, days: Iterable[str], start: datetime, end: datetime | None) -> Split:
    """`part` with these rolled-up days answered live instead (within [start, end))."""
    if part.days is None:
        return part
    first, last = part.days
    moved = {d for d in days if first <= d < last} - part.skip
    if not moved:
        return part
    live = list(part.live)
    for a, b in _ranges(moved):
        live.append((max(a, start), b if end is None else min(b, end)))
    minus = [(a, b) for a, b in part.minus if day_label(a) not in moved]
    return Split(part.days, live, minus, part.skip | moved)


# --- escalations ---------------------------------------------------------------------------------

def seconds(conn: AsyncConnection, later: Any, earlier: Any) -> ColumnElement[float]:
    """`later - earlier` in seconds, computed by the database."""
    if conn.dialect.name == "postgresql":
        return cast(extract("epoch", later) - extract("epoch", earlier), Float)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _millis(conn: AsyncConnection, col: Any) -> ColumnElement[int]:
    if conn.dialect.name == "postgresql":
        return cast(extract("epoch", col) * 1000, BigInteger)
    return cast((func.julianday(col) - 2440587.5) * 86400000.0, Integer)


async def escalation_fingerprints(conn: AsyncConnection, first: str,
                                  last: str) -> dict[str, str]:
    """Per day in [first, last): counts, CSAT and the sums of answer and resolution times of
    its escalations, from the covering index on escalation time (no table rows, no join)."""
    # PostgreSQL: a date cast is cheaper than to_char per row (the label is made here)
    day = (cast(func.timezone("UTC", ES.created_at), Date)
           if conn.dialect.name == "postgresql" else day_of(conn, ES.created_at))
    start = datetime.fromisoformat(first).replace(tzinfo=UTC)
    end = datetime.fromisoformat(last).replace(tzinfo=UTC)
    rows = (await conn.execute(
        select(day, func.count(), func.count(ES.first_response_at), func.count(ES.resolved_at),
               func.count(ES.csat), func.coalesce(func.sum(ES.csat), 0),
               func.coalesce(func.sum(_millis(conn, ES.first_response_at)), 0),
               func.coalesce(func.sum(_millis(conn, ES.resolved_at)), 0))
        .where(ES.created_at >= start, ES.created_at < end).group_by(day))).all()
    return {str(r[0]): ",".join(str(int(v)) for v in r[1:]) for r in rows}


async def escalation_split(conn: AsyncConnection, start: datetime, end: datetime,
                           rolled: datetime | None) -> Split:
    """`split` for escalations: a rolled-up day whose escalations changed since (an answer,
    a resolution, a CSAT score) is answered live."""
    part = split(start, end, rolled)
    if part.days is None:
        return part
    now = await escalation_fingerprints(conn, *part.days)
    stored = dict((await conn.execute(
        select(CHECKS.c.day, CHECKS.c.fingerprint)
        .where(CHECKS.c.day >= part.days[0], CHECKS.c.day < part.days[1]))).tuples().all())
    stale = {d for d in set(now) | set(stored) if now.get(d) != stored.get(d)}
    return without(part, stale, start, end)


async def _build_escalations(conn: AsyncConnection, start: datetime, end: datetime) -> None:
    dims = [func.coalesce(CV.stage, UNKNOWN), func.coalesce(CV.channel, UNKNOWN),
            func.coalesce(CV.language, UNKNOWN)]
    result = await conn.execute(
        select(day_of(conn, ES.created_at), *dims, ES.reason, ES.csat,
               seconds(conn, ES.first_response_at, ES.created_at),
               seconds(conn, ES.resolved_at, ES.created_at))
        .select_from(ESCALATION.join(CONVERSATION, CV.id == ES.conversation_id))
        .where(ES.created_at >= start, ES.created_at < end))
    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    for day, stage, channel, language, reason, csat, first, resolve in result.tuples():
        for dim, g in zip(DIMENSIONS, (stage, channel, language), strict=True):
            a = acc.get((day, dim, g))
            if a is None:
                a = acc[(day, dim, g)] = {"day": day, "dim": dim, "grp": g, "escalations": 0,
                                          "reasons": {}, "csat_sum": 0, "csat_count": 0,
                                          "first_response_s": [], "resolution_s": []}
            a["escalations"] += 1
            a["reasons"][reason] = a["reasons"].get(reason, 0) + 1
            if csat is not None:
                a["csat_sum"] += int(csat)
                a["csat_count"] += 1
            if first is not None:
                a["first_response_s"].append(float(first))
            if resolve is not None:
                a["resolution_s"].append(float(resolve))
    for a in acc.values():
        a["first_response_s"].sort()
        a["resolution_s"].sort()
    if acc:
        await conn.execute(insert(ESCALATIONS), list(acc.values()))
    checks = await escalation_fingerprints(conn, day_label(start), day_label(end))
    if checks:
        await conn.execute(insert(CHECKS), [{"day": d, "fingerprint": f}
                                            for d, f in checks.items()])


# --- stage transitions -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Transition:
    at: datetime
    customer_id: int
    source: str  # the customer's previous stage, or "new"
    to: str
    repeat_after: datetime | None  # the same customer's previous identical transition


async def transitions(conn: AsyncConnection, start: datetime,
                      end: datetime | None) -> list[Transition]:
    """Customers' stage transitions in [start, end), whichever conversation they happened in;
    staying in a stage is not a transition. Reads the history of the customers concerned only.
    """
    window = [SC.created_at >= start] + ([SC.created_at < end] if end is not None else [])
    who = select(SC.customer_id).where(*window)
    upto = [SC.created_at < end] if end is not None else []
    rows = (await conn.execute(
        select(SC.customer_id, SC.created_at, SC.to_stage)
        .where(SC.customer_id.in_(who), *upto)
        .order_by(SC.customer_id, SC.created_at, SC.id))).all()
    out: list[Transition] = []
    customer: int | None = None
    previous: str | None = None
    last_same: dict[tuple[str, str], datetime] = {}
    for cid, at, to in rows:
        if cid != customer:
            customer, previous, last_same = cid, None, {}
        source = previous or "new"
        if source != to:
            if at >= start:
                out.append(Transition(at, cid, source, to, last_same.get((source, to))))
            last_same[(source, to)] = at
        previous = to
    return out


# --- building days -------------------------------------------------------------------------------

def _ranges(days: Iterable[str]) -> list[tuple[datetime, datetime]]:
    """Contiguous day labels merged into [start, end) ranges."""
    out: list[tuple[datetime, datetime]] = []
    for label in sorted(set(days)):
        start = datetime.fromisoformat(label).replace(tzinfo=UTC)
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], start + DAY)
        else:
            out.append((start, start + DAY))
    return out


async def _build(conn: AsyncConnection, start: datetime, end: datetime) -> None:
    """Recompute every rollup for the days in [start, end)."""
    first, last = day_label(start), day_label(end)
    for table in ROLLUPS:
        await conn.execute(delete(table).where(table.c.day >= first, table.c.day < last))
    period = [MS.created_at >= start, MS.created_at < end]
    day = day_of(conn, MS.created_at)
    stage = func.coalesce(CV.stage, UNKNOWN)
    channel, language = func.coalesce(MS.channel, UNKNOWN), func.coalesce(MS.language, UNKNOWN)
    await conn.execute(insert(INBOUND).from_select(
        ["day", "stage", "channel", "language", "messages", "answered"],
        select(day, stage, channel, language, func.count(),
               func.sum(case((MS.decision == "answer", 1), else_=0)))
        .select_from(MESSAGE.join(CONVERSATION, CV.id == MS.conversation_id))
        .where(MS.direction == "in", *period).group_by(day, stage, channel, language)))
    await conn.execute(insert(FAQ).from_select(
        ["day", "faq_id", "hits"],
        select(day, MS.faq_id, func.count())
        .where(MS.direction == "in", *period, MS.decision == "answer", MS.faq_id.is_not(None))
        .group_by(day, MS.faq_id)))
    cday, cstage = day_of(conn, CV.created_at), func.coalesce(CV.stage, UNKNOWN)
    await conn.execute(insert(CONVERSATIONS).from_select(
        ["day", "stage", "conversations", "customers"],
        select(cday, cstage, func.count(), func.count(CV.customer_id.distinct()))
        .where(CV.created_at >= start, CV.created_at < end).group_by(cday, cstage)))
    await _build_escalations(conn, start, end)
    counted: dict[tuple[str, str, str, datetime | None], int] = defaultdict(int)
    for t in await transitions(conn, start, end):
        counted[(day_label(t.at), t.source, t.to, t.repeat_after)] += 1
    if counted:
        await conn.execute(insert(TRANSITIONS), [
            {"day": d, "from_stage": s, "to_stage": to, "repeat_after": r, "changes": n}
            for (d, s, to, r), n in counted.items()])


async def _max_id(conn: AsyncConnection, table: Table) -> int:
    return int((await conn.execute(select(func.coalesce(func.max(table.c.id), 0)))).scalar_one())


async def _seen_now(conn: AsyncConnection) -> dict[str, Any]:
    merged = (await conn.execute(select(CU.id).where(CU.merged_into.is_not(None)))).scalars()
    return {"message": await _max_id(conn, MESSAGE),
            "conversation": await _max_id(conn, CONVERSATION),
            "stage_change": await _max_id(conn, STAGE_CHANGE),
            "merged": sorted(int(i) for i in merged)}


async def _days(conn: AsyncConnection, stmt: Any) -> set[str]:
    return {str(r[0]) for r in (await conn.execute(stmt)).all() if r[0] is not None}


async def _dirty_days(conn: AsyncConnection, seen: dict[str, Any], now_seen: dict[str, Any],
                      until: datetime) -> set[str]:
    """Already rolled-up days whose answers changed since the last refresh."""
    dirty: set[str] = set()
    # rows that arrived with a timestamp in a rolled-up day
    dirty |= await _days(conn, select(day_of(conn, MS.created_at)).distinct().where(
        MS.id > seen.get("message", 0), MS.created_at < until))
    dirty |= await _days(conn, select(day_of(conn, CV.created_at)).distinct().where(
        CV.id > seen.get("conversation", 0), CV.created_at < until))
    changed = (select(SC.conversation_id, SC.customer_id, SC.created_at)
               .where(SC.id > seen.get("stage_change", 0)).subquery())
    # a conversation's stage counts for all its messages: its days change with its stage
    conversations = select(changed.c.conversation_id)
    dirty |= await _days(conn, select(day_of(conn, MS.created_at)).distinct().where(
        MS.conversation_id.in_(conversations), MS.created_at < until))
    dirty |= await _days(conn, select(day_of(conn, CV.created_at)).distinct().where(
        CV.id.in_(conversations), CV.created_at < until))
    dirty |= await _days(conn, select(day_of(conn, ES.created_at)).distinct().where(
        ES.conversation_id.in_(conversations), ES.created_at < until))
    # escalations answered, resolved or rated since they were rolled up
    if (first := await _first_day(conn)) is not None and first < until:
        now = await escalation_fingerprints(conn, day_label(first), day_label(until))
        stored = dict((await conn.execute(select(CHECKS.c.day, CHECKS.c.fingerprint)))
                      .tuples().all())
        dirty |= {d for d in set(now) | set(stored) if now.get(d) != stored.get(d)}
    # a change dated in the past re-orders that customer's later transitions
    backdated = (await conn.execute(
        select(changed.c.customer_id, func.min(changed.c.created_at))
        .where(changed.c.created_at < until).group_by(changed.c.customer_id))).all()
    customers: dict[int, datetime] = {int(c): at for c, at in backdated}
    # a merge moves the dropped customer's history to the kept one
    merged = sorted(set(now_seen["merged"]) - set(seen.get("merged", [])))
    if merged:
        kept = (await conn.execute(select(CU.merged_into).where(CU.id.in_(merged)))).scalars()
        for cid in kept:
            if cid is not None:
                customers[int(cid)] = datetime(1970, 1, 1, tzinfo=UTC)
    for cid, since in customers.items():
        dirty |= await _days(conn, select(day_of(conn, SC.created_at)).distinct().where(
            SC.customer_id == cid, SC.created_at >= since, SC.created_at < until))
        dirty |= await _days(conn, select(day_of(conn, CV.created_at)).distinct().where(
            CV.customer_id == cid, CV.created_at < until))
    return dirty


async def _first_day(conn: AsyncConnection) -> datetime | None:
    found = [at for table in (MESSAGE, CONVERSATION, STAGE_CHANGE, ESCALATION)
             if (at := (await conn.execute(select(func.min(table.c.created_at)))).scalar())]
    return floor_day(min(found)) if found else None


async def _lock(conn: AsyncConnection) -> None:
    """Serialise refreshes across processes, and make sure the state row exists."""
    pg = conn.dialect.name == "postgresql"
    if pg:
        await conn.execute(text("SELECT pg_advisory_xact_lock(23864)"))
    # on SQLite this first write takes the database's write lock before anything is read
    upsert = (pg_insert(STATE) if pg else sqlite_insert(STATE)).values(
        key=STATE_KEY, rolled_until=None, seen={}, updated_at=datetime.now(UTC))
    await conn.execute(upsert.on_conflict_do_nothing(index_elements=["key"]))


@dataclass(slots=True)
class RefreshStats:
    days: int = 0
    rebuilt: bool = False
    rolled_until: datetime | None = None
    seconds: float = 0.0


def _day_labels(start: datetime, end: datetime) -> set[str]:
    out, at = set(), start
    while at < end:
        out.add(day_label(at))
        at += DAY
    return out


def _chunks(ranges: list[tuple[datetime, datetime]],
            days: int) -> list[tuple[datetime, datetime]]:
    """Ranges cut into pieces of at most `days` days."""
    out = []
    for start, end in ranges:
        while start < end:
            out.append((start, min(end, start + days * DAY)))
            start = out[-1][1]
    return out


async def refresh(db: Database, *, now: datetime | None = None,
                  rebuild: bool = False) -> RefreshStats:
    """Roll up the closed days not rolled up yet and the dirty ones (all of them if `rebuild`).

    What to do is worked out in a read transaction; the days are then built a few at a time,
    one short write transaction each (on SQLite the workers wait for the write lock), and
    `rolled_until` only moves over days built. If another process starts a rebuild meanwhile,
    this one stops and leaves the work to it.
    """
    started = time.perf_counter()
    closed = floor_day((now or datetime.now(UTC)) - CLOSE_MARGIN)
    stats = RefreshStats()
    async with db.analytics() as conn:
        row = (await conn.execute(select(STATE.c.rolled_until, STATE.c.seen)
                                  .where(STATE.c.key == STATE_KEY))).first()
        until: datetime | None = row.rolled_until if row is not None else None
        seen: dict[str, Any] = dict(row.seen or {}) if row is not None else {}
        now_seen = await _seen_now(conn)
        if rebuild or until is None:
            first = await _first_day(conn)
            start_from = first if first is not None and first < closed else closed
            days = _day_labels(start_from, closed)
            stats.rebuilt = True
        else:
            days = await _dirty_days(conn, seen, now_seen, until) | _day_labels(until, closed)
    if stats.rebuilt:
        async with db.background_write() as conn:
            await _lock(conn)
            for table in ROLLUPS:
                await conn.execute(delete(table))
            await conn.execute(STATE.update().where(STATE.c.key == STATE_KEY).values(
                rolled_until=start_from, seen=now_seen, updated_at=datetime.now(UTC)))
    elif not days and now_seen == seen:
        stats.rolled_until = until
        stats.seconds = round(time.perf_counter() - started, 2)
        return stats
    for start, end in _chunks(_ranges(days), CHUNK_DAYS):
        chunk_started = time.perf_counter()
        async with db.background_write() as conn:
            await _lock(conn)
            current = (await conn.execute(select(STATE.c.rolled_until)
                                          .where(STATE.c.key == STATE_KEY))).scalar()
            if current is None or start > current:  # another process started over
                stats.seconds = round(time.perf_counter() - started, 2)
                return stats
            await _build(conn, start, end)
            stats.days += (end - start).days
            if end > current:
                await conn.execute(STATE.update().where(STATE.c.key == STATE_KEY)
                                   .values(rolled_until=end))
        # as long again for the live traffic: rolling up a long history (the first start
        # after an import) takes at most half of the write lock and of a core
        await asyncio.sleep(min(time.perf_counter() - chunk_started, MAX_PAUSE))
    async with db.write() as conn:
        await _lock(conn)
        await conn.execute(STATE.update().where(STATE.c.key == STATE_KEY).values(
            seen=now_seen, updated_at=datetime.now(UTC)))
        stats.rolled_until = await rolled_until_raw(conn)
    if stats.rebuilt and not db.is_sqlite:
        async with db.write() as conn:
            for table in ROLLUPS:
                await conn.execute(text(f"ANALYZE {table.name}"))
    stats.seconds = round(time.perf_counter() - started, 2)
    return stats


async def rolled_until_raw(conn: AsyncConnection) -> datetime | None:
    """`rolled_until` as stored, without the staleness check."""
    found: datetime | None = (await conn.execute(
        select(STATE.c.rolled_until).where(STATE.c.key == STATE_KEY))).scalar()
    return found


async def run_forever(db: Database, every: float) -> None:
    """The background task: refresh now, then every `every` seconds; errors are logged."""
    while True:
        try:
            stats = await refresh(db)
            if stats.days:
                log.info("dashboard rollups: %d days in %.1f s (up to %s)", stats.days,
                         stats.seconds, stats.rolled_until)
        except asyncio.CancelledError:
            raise
        except Exception:  # keep the dashboard on live SQL and try again later
            log.exception("dashboard rollup refresh failed")
        await asyncio.sleep(every)

