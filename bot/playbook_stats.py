"""What each playbook step did, from the database: the dashboard's playbooks panel.

Per step of the steps' jobs in a period (by when they fired): scheduled, sent, skipped and
cancelled (with the most common reasons), delivered (the platform confirmed), and within
PLAYBOOK_ATTRIBUTION_DAYS of each sent message: the customer replied, opted out, ordered, or
moved stage. A reply is any customer message after the step's message (by message order: a
platform's timestamps cannot reorder them).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import Consent, Conversation, Message, Order, PlaybookJob, StageChange

PJ, MS, CV = PlaybookJob.__table__.c, Message.__table__.c, Conversation.__table__.c
OR, SC, CO = Order.__table__.c, StageChange.__table__.c, Consent.__table__.c
COLUMNS = ["playbook", "step", "kind", "scheduled", "sent", "delivered", "skipped",
           "cancelled", "replied", "opted_out", "ordered", "stage_moved", "top_reason"]
_DELIVERED = ("delivered", "read")


def _within(events: Iterable[datetime], start: datetime, days: int) -> bool:
    end = start + timedelta(days=days)
    return any(start <= at <= end for at in events)


async def playbook_figures(conn: AsyncConnection, *, start: datetime, end: datetime,
                           days: int) -> dict[str, Any]:
    jobs = (await conn.execute(select(
        PJ.playbook, PJ.step, PJ.kind, PJ.state, PJ.reason, PJ.customer_id, PJ.done_at,
        PJ.message_id, MS.status.label("message_status")).outerjoin(
        Message.__table__, MS.id == PJ.message_id).where(
        PJ.fired_at >= start, PJ.fired_at < end))).all()
    sent = [j for j in jobs if j.state == "sent" and j.done_at is not None]
    customers = sorted({j.customer_id for j in sent})
    replies, opt_outs, orders, moves = await _events(conn, customers)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    reasons: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for j in jobs:
        key = (j.playbook, j.step)
        row = rows.setdefault(key, {c: 0 for c in COLUMNS} | {
            "playbook": j.playbook, "step": j.step, "kind": j.kind, "top_reason": ""})
        row[j.state] = row.get(j.state, 0) + 1
        if j.reason and j.state in ("skipped", "cancelled"):
            reasons[key][j.reason] += 1
        if j.state != "sent" or j.done_at is None:
            continue
        row["delivered"] += j.message_status in _DELIVERED
        c = j.customer_id
        row["replied"] += any(mid > (j.message_id or 0) for mid in replies.get(c, ()))
        row["opted_out"] += _within(opt_outs.get(c, ()), j.done_at, days)
        row["ordered"] += _within(orders.get(c, ()), j.done_at, days)
        row["stage_moved"] += _within(moves.get(c, ()), j.done_at, days)
    for key, counter in reasons.items():
        rows[key]["top_reason"] = counter.most_common(1)[0][0]
    return {"from": start.isoformat(), "to": end.isoformat(), "attribution_days": days,
            "steps": [rows[k] for k in sorted(rows)]}


async def _events(conn: AsyncConnection, customers: list[int]) -> tuple[
        dict[int, list[int]], dict[int, list[datetime]],
        dict[int, list[datetime]], dict[int, list[datetime]]]:
    """Inbound message ids, opt-outs, orders and stage moves of these customers."""
    replies: dict[int, list[int]] = defaultdict(list)
    opt_outs: dict[int, list[datetime]] = defaultdict(list)
    orders: dict[int, list[datetime]] = defaultdict(list)
    moves: dict[int, list[datetime]] = defaultdict(list)
    for i in range(0, len(customers), 500):
        chunk = customers[i:i + 500]
        for r in (await conn.execute(select(CV.customer_id, MS.id).join(
                Conversation.__table__, CV.id == MS.conversation_id).where(
                CV.customer_id.in_(chunk), MS.direction == "in"))).all():
            replies[r.customer_id].append(r.id)
        for r in (await conn.execute(select(CO.customer_id, CO.opted_out_at).where(
                CO.customer_id.in_(chunk), CO.opted_out_at.is_not(None)))).all():
            opt_outs[r.customer_id].append(r.opted_out_at)
        for r in (await conn.execute(select(OR.customer_id, OR.placed_at).where(
                OR.customer_id.in_(chunk)))).all():
            orders[r.customer_id].append(r.placed_at)
        for r in (await conn.execute(select(SC.customer_id, SC.created_at).where(
                SC.customer_id.in_(chunk)))).all():
            moves[r.customer_id].append(r.created_at)
    return replies, opt_outs, orders, moves
