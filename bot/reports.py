"""Read-only queries for admins: escalations, one conversation, unanswered questions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import Conversation, Customer, Escalation, Message, StageChange

CV = Conversation.__table__.c
CU = Customer.__table__.c
ES = Escalation.__table__.c
MS = Message.__table__.c
SC = StageChange.__table__.c


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def list_escalations(conn: AsyncConnection, *, status: str | None = "open",
                           limit: int = 100) -> list[dict[str, Any]]:
    stmt = (select(ES.id, ES.conversation_id, ES.reason, ES.question, ES.status, ES.created_at,
                   ES.taken_by, ES.candidates, CV.channel, CV.language, CV.stage,
                   CV.status.label("conversation_status"), CU.display_name, CU.id.label("cid"))
            .join(Conversation.__table__, CV.id == ES.conversation_id)
            .join(Customer.__table__, CU.id == CV.customer_id)
            .order_by(ES.id.desc()).limit(limit))
    if status and status != "all":
        stmt = stmt.where(ES.status == status)
    rows = (await conn.execute(stmt)).all()
    return [{"id": r.id, "conversation_id": r.conversation_id, "reason": r.reason,
             "question": r.question, "status": r.status, "created_at": _iso(r.created_at),
             "taken_by": r.taken_by, "candidates": r.candidates or [], "channel": r.channel,
             "language": r.language, "stage": r.stage,
             "conversation_status": r.conversation_status,
             "customer": {"id": r.cid, "name": r.display_name}} for r in rows]


async def conversation_detail(conn: AsyncConnection, conversation_id: int) -> dict[str, Any] | None:
    conv = (await conn.execute(select(Conversation.__table__, CU.display_name, CU.email, CU.phone,
                                      CU.orders_count, CU.total_spent)
                               .join(Customer.__table__, CU.id == CV.customer_id)
                               .where(CV.id == conversation_id))).first()
    if conv is None:
        return None
    c = conv._mapping
    messages = (await conn.execute(select(MS.id, MS.direction, MS.author, MS.text, MS.language,
                                          MS.faq_id, MS.score, MS.decision, MS.status, MS.error,
                                          MS.created_at)
                                   .where(MS.conversation_id == conversation_id)
                                   .order_by(MS.id))).all()
    stages = (await conn.execute(select(SC.from_stage, SC.to_stage, SC.reason, SC.created_at)
                                 .where(SC.conversation_id == conversation_id)
                                 .order_by(SC.id))).all()
    escalations = (await conn.execute(select(ES.id, ES.reason, ES.status, ES.taken_by,
                                             ES.created_at, ES.resolved_at)
                                      .where(ES.conversation_id == conversation_id)
                                      .order_by(ES.id))).all()
    return {
        "id": c["id"], "channel": c["channel"], "status": c["status"], "stage": c["stage"],
        "language": c["language"], "assigned_to": c["assigned_to"],
        "created_at": _iso(c["created_at"]),
        "customer": {"id": c["customer_id"], "name": c["display_name"], "email": c["email"],
                     "phone": c["phone"], "orders_count": c["orders_count"],
                     "total_spent": c["total_spent"]},
        "messages": [{"id": m.id, "direction": m.direction, "author": m.author, "text": m.text,
                      "language": m.language, "faq_id": m.faq_id, "score": m.score,
                      "decision": m.decision, "status": m.status, "error": m.error,
                      "at": _iso(m.created_at)} for m in messages],
        "stage_history": [{"from": s.from_stage, "to": s.to_stage, "reason": s.reason,
                           "at": _iso(s.created_at)} for s in stages],
        "escalations": [{"id": e.id, "reason": e.reason, "status": e.status,
                         "taken_by": e.taken_by, "created_at": _iso(e.created_at),
                         "resolved_at": _iso(e.resolved_at)} for e in escalations],
    }


async def unanswered_questions(database_url: str, since_days: int = 30) -> list[str]:
    """Customer questions the bot escalated for lack of a (clear) answer."""
    db = Database(database_url)
    since = datetime.now(UTC) - timedelta(days=since_days)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(
                select(ES.question).where(ES.reason.in_(("no_match", "ambiguous")),
                                          ES.created_at >= since, ES.question.is_not(None))
                .order_by(ES.id))).all()
    finally:
        await db.close()
    return [r.question for r in rows if r.question and r.question.strip()]
