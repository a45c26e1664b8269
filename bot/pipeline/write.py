"""Step three: write what the rules decided for a batch, with a few multi-row statements.

Order: the conversations the batch opened; then per round (a conversation's n-th message in
the batch) the customers' messages, their escalations and the replies, so ids keep every
transcript in order; then stage history, conversation state and customer stages; last, the
desk hooks, which need the ids.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import surveys
from bot.consent import record_opt_out
from bot.db.models import (
    Conversation,
    ConversationStatus,
    Customer,
    Escalation,
    Message,
    OutboxItem,
)
from bot.db.models import StageChange as StageChangeRow
from bot.pipeline.load import Sender, row_for
from bot.pipeline.rules import ConversationState, Decision, PendingSurvey
from bot.replies import OutgoingReply, insert_returning_ids, queue_replies
from bot.surveys import AskedSurvey
from channels.base import InboundMessage

CV = Conversation.__table__.c
CU = Customer.__table__.c
MS = Message.__table__.c
ES = Escalation.__table__.c

_INSERT_CONVERSATION = insert(Conversation.__table__).returning(CV.id)
_INSERT_INBOUND = insert(Message.__table__).returning(MS.id)
_INSERT_ESCALATION = insert(Escalation.__table__).returning(ES.id)
_INSERT_STAGE_CHANGE = insert(StageChangeRow.__table__)
_UPDATE_CONVERSATION = (
    update(Conversation.__table__).where(CV.id == bindparam("conv_id"))
    .values(status=bindparam("status"), language=bindparam("language"), stage=bindparam("stage"),
            last_faq_id=bindparam("last_faq_id"), last_answer_at=bindparam("last_answer_at"),
            last_inbound_at=bindparam("last_inbound_at"), updated_at=bindparam("updated_at"),
            meta=bindparam("meta"), customer_id=bindparam("customer_id")))
_UPDATE_CUSTOMER_STAGE = (update(Customer.__table__).where(CU.id == bindparam("cust_id"))
                          .values(stage=bindparam("stage")))


class DeskHook(Protocol):
    """What the staff desk hears, inside the same transaction as the messages."""

    async def on_escalation(self, conn: AsyncConnection, *, escalation_id: int,
                            conversation_id: int) -> None: ...

    async def on_customer_message(self, conn: AsyncConnection, *, conversation_id: int,
                                  message_id: int, author: str = "customer") -> None: ...

    async def record_survey(self, conn: AsyncConnection, survey: PendingSurvey, *,
                            message_id: int) -> None: ...


@dataclass(slots=True)
class Planned:
    """One message with its decision, and the ids it got once written."""

    index: int
    msg: InboundMessage
    sender: Sender
    conv: ConversationState
    lang: str
    decision: Decision
    round: int
    inbound_id: int | None = None
    reply_ids: tuple[int, ...] = ()
    escalation_id: int | None = None


@dataclass(slots=True)
class StageMove:
    sender: Sender
    conv: ConversationState
    old: str | None
    new: str
    reason: str
    at: datetime


@dataclass(slots=True)
class Plan:
    planned: list[Planned] = field(default_factory=list)
    opened: list[tuple[ConversationState, Sender]] = field(default_factory=list)
    touched: dict[int, tuple[ConversationState, datetime]] = field(default_factory=dict)
    stage_moves: list[StageMove] = field(default_factory=list)
    rounds: dict[int, int] = field(default_factory=dict)  # by id() of the conversation

    def next_round(self, conv: ConversationState) -> int:
        turn = self.rounds.get(id(conv), 0)
        self.rounds[id(conv)] = turn + 1
        return turn


async def write(conn: AsyncConnection, plan: Plan, *, stored_delivery: Collection[str],
                desk: DeskHook | None, now: datetime) -> None:
    if plan.opened:
        ids = await insert_returning_ids(conn, _INSERT_CONVERSATION, [
            row_for(conv, sender, now) for conv, sender in plan.opened])
        for (conv, _), conv_id in zip(plan.opened, ids, strict=True):
            conv.id = conv_id
    await _release_held(conn, {(p.conv.channel, p.conv.address) for p in plan.planned
                               if p.conv.channel not in stored_delivery}, now)
    rounds = max((p.round for p in plan.planned), default=-1) + 1
    for turn in range(rounds):
        await _write_round(conn, [p for p in plan.planned if p.round == turn],
                           stored_delivery, now)
    for p in plan.planned:
        if isinstance(p.decision.survey, AskedSurvey):
            await surveys.record(conn, p.decision.survey, customer_id=p.sender.customer_id,
                                 now=now)
        if p.decision.opt_out:
            await record_opt_out(conn, p.sender.customer_id, p.conv.channel,
                                 source=f"{p.conv.channel} message", now=now)
    if plan.stage_moves:
        await conn.execute(_INSERT_STAGE_CHANGE, [
            {"conversation_id": m.conv.id, "customer_id": m.sender.customer_id,
             "from_stage": m.old, "to_stage": m.new, "reason": m.reason[:500],
             "created_at": m.at} for m in plan.stage_moves])
        stages = {m.sender.customer_id: m.new for m in plan.stage_moves}
        await conn.execute(_UPDATE_CUSTOMER_STAGE, [
            {"cust_id": customer_id, "stage": stage} for customer_id, stage in stages.items()])
    if plan.touched:
        await conn.execute(_UPDATE_CONVERSATION, [
            {"conv_id": conv.id, "status": conv.status, "language": conv.language,
             "stage": conv.stage, "last_faq_id": conv.last_faq_id,
             "last_answer_at": conv.last_answer_at, "last_inbound_at": at, "updated_at": at,
             "meta": conv.meta, "customer_id": conv.customer_id}
            for conv, at in plan.touched.values()])
    if desk is not None:
        await _tell_desk(conn, plan, desk)


async def _release_held(conn: AsyncConnection, addresses: set[tuple[str, str]],
                        now: datetime) -> None:
    """Replies held outside a platform's reply window (WhatsApp's 24 hours) go out now that
    the customer has written (in any of their conversations on that address), ahead of the
    answers to what they just wrote."""
    if not addresses:
        return
    conversations = select(CV.id).where(
        CV.channel.in_(sorted({c for c, _ in addresses})),
        CV.address.in_(sorted({a for _, a in addresses})))
    held = [h for h in (await conn.execute(
        select(MS.id, MS.conversation_id, MS.channel, CV.address)
        .join(Conversation.__table__, CV.id == MS.conversation_id)
        .where(MS.conversation_id.in_(conversations), MS.status == "held")
        .order_by(MS.id))).all() if (h.channel, h.address) in addresses]
    if not held:
        return
    await conn.execute(update(Message.__table__).where(MS.id.in_([h.id for h in held]))
                       .values(status="pending", error=None))
    await conn.execute(insert(OutboxItem.__table__), [
        {"message_id": h.id, "conversation_id": h.conversation_id, "channel": h.channel,
         "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
        for h in held])


async def _write_round(conn: AsyncConnection, planned: list[Planned],
                       stored_delivery: Collection[str], now: datetime) -> None:
    in_ids = await insert_returning_ids(conn, _INSERT_INBOUND, [_inbound_row(p) for p in planned])
    for p, in_id in zip(planned, in_ids, strict=True):
        p.inbound_id = in_id
    escalated = [p for p in planned if p.decision.escalation]
    esc_ids = await insert_returning_ids(conn, _INSERT_ESCALATION, [
        {"conversation_id": p.conv.id, "reason": p.decision.escalation,
         "question": p.msg.text[:2000], "status": "open",
         "candidates": _candidates(p.decision), "created_at": now} for p in escalated])
    for p, esc_id in zip(escalated, esc_ids, strict=True):
        p.escalation_id = esc_id
    replies: list[tuple[Planned, OutgoingReply]] = []
    for p in planned:
        assert p.conv.id is not None
        for reply in p.decision.replies:
            replies.append((p, OutgoingReply(
                conversation_id=p.conv.id, channel=p.conv.channel, text=reply.text,
                language=reply.language, faq_id=reply.faq_id,
                meta={"in_reply_to": p.inbound_id, **reply.meta})))
    ids = await queue_replies(conn, [r for _, r in replies], stored_delivery=stored_delivery,
                              now=now)
    by_message: dict[int, list[int]] = {}
    for (p, _), out_id in zip(replies, ids, strict=True):
        by_message.setdefault(p.index, []).append(out_id)
    for p in planned:
        p.reply_ids = tuple(by_message.get(p.index, ()))


def _inbound_row(p: Planned) -> dict[str, Any]:
    msg, match = p.msg, p.decision.match
    survey = p.decision.survey
    return {
        "conversation_id": survey.conversation_id if survey else p.conv.id,
        "direction": "in", "channel": msg.channel, "external_id": msg.external_id,
        "author": "customer", "text": msg.text,
        "attachments": [a.as_dict() for a in msg.attachments] or None,
        "language": (survey.language or p.lang) if survey else p.lang,
        "faq_id": match.faq_id if match else None,
        "score": round(match.score, 4) if match else None,
        "decision": p.decision.stored, "status": "received",
        "meta": dict(msg.meta) or None, "created_at": msg.timestamp,
    }


def _candidates(decision: Decision) -> list[dict[str, Any]] | None:
    """The five best entries of the match, kept on the escalation for the staff's card."""
    match = decision.match
    return [{"faq_id": c.entry_id, "score": round(c.score, 4)}
            for c in (match.candidates if match else ())][:5] or None


async def _tell_desk(conn: AsyncConnection, plan: Plan, desk: DeskHook) -> None:
    for p in plan.planned:
        assert p.conv.id is not None and p.inbound_id is not None
        if isinstance(p.decision.survey, PendingSurvey):
            await desk.record_survey(conn, p.decision.survey, message_id=p.inbound_id)
            continue
        if p.decision.survey is not None:
            continue  # a playbook's question, answered: recorded above
        if p.escalation_id is not None:
            await desk.on_escalation(conn, escalation_id=p.escalation_id,
                                     conversation_id=p.conv.id)
        elif p.decision.to_desk:
            await desk.on_customer_message(conn, conversation_id=p.conv.id,
                                           message_id=p.inbound_id)
            for reply_id in p.reply_ids:
                await desk.on_customer_message(conn, conversation_id=p.conv.id,
                                               message_id=reply_id, author="bot")


def waiting_status(decision: Decision, conv: ConversationState) -> str:
    """The conversation's status after `decision`."""
    return ConversationStatus.WAITING if decision.escalation else conv.status
