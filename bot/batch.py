"""Handle a batch of customer messages with a few set-based statements instead of ~12 each.

Why: on the embedded SQLite default, SQLAlchemy's cost per statement, not SQLite, limits how many
messages one process handles. The common cases - a customer writing in a conversation the bot
answers, escalates, or a person owns; a new web chat visitor; a new conversation - need only
state that can be read for the whole batch at once and rows that can be written with one
multi-row statement per table (the desk hears of escalations once the rows are written).

Everything else goes through `MessageHandler.handle`: contact details that may link or merge
customers, platform threads, possible survey answers, and messages to a person's conversation
while the Slack desk is connected. Before such a message the rows planned so far
are written and the batch's cached state is dropped, so both paths see the same database, in
message order, and produce the same rows (tests/test_bot/test_batch.py compares them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import CustomerFacts, normalise_email, normalise_phone
from bot.db.models import (
    Conversation,
    ConversationStatus,
    Customer,
    Escalation,
    Identity,
    Message,
    OutboxItem,
    StageChange,
)
from bot.handler import MessageHandler, Outcome, acknowledgement, top_candidates
from bot.lifecycle import StageSignal
from channels.base import InboundMessage
from faq.language import detect_language
from faq.models import MatchResult

CV = Conversation.__table__.c
CU = Customer.__table__.c
ID = Identity.__table__.c
MS = Message.__table__.c
ES = Escalation.__table__.c

# A lone 1-5 may answer the desk's satisfaction question: the desk decides, on the general path.
_MAYBE_RATING = re.compile(r"^\s*[1-5]\s*(?:/\s*5)?\s*[.!]?\s*$")

# Built once: SQLAlchemy caches their compiled form, so executing them costs no SQL compilation.
_IDENTITIES = (
    select(ID.id, ID.channel, ID.address, ID.customer_id, CU.merged_into, CU.email, CU.phone,
           CU.display_name, CU.orders_count, CU.total_spent, CU.last_order_at)
    .join(Customer.__table__, CU.id == ID.customer_id)
    # Both columns, so the (channel, address) unique index serves the lookup.
    .where(ID.channel.in_(bindparam("channels", expanding=True)),
           ID.address.in_(bindparam("addresses", expanding=True))))
_OPEN_CONVERSATIONS = (
    select(CV.id, CV.identity_id, CV.status, CV.language, CV.stage, CV.last_faq_id,
           CV.last_answer_at, CV.thread, CV.customer_id, CV.channel)
    .where(CV.identity_id.in_(bindparam("identities", expanding=True)),
           CV.status != ConversationStatus.RESOLVED)
    .order_by(CV.id.desc()))
# Multi-row INSERT .. RETURNING id. SQLAlchemy's sort_by_parameter_order would fall back to one
# statement per row here (no sentinel column); `_ids` sorts instead (see there).
_INSERT_CUSTOMER = insert(Customer.__table__).returning(CU.id)
_INSERT_IDENTITY = insert(Identity.__table__).returning(ID.id)
_INSERT_CONVERSATION = insert(Conversation.__table__).returning(CV.id)
_INSERT_INBOUND = insert(Message.__table__).returning(MS.id)
_INSERT_OUTBOUND = insert(Message.__table__).returning(MS.id)
_INSERT_ESCALATION = insert(Escalation.__table__).returning(ES.id)
_INSERT_OUTBOX = insert(OutboxItem.__table__)
_INSERT_STAGE_CHANGE = insert(StageChange.__table__)
_UPDATE_CONVERSATION = (
    update(Conversation.__table__).where(CV.id == bindparam("conv_id"))
    .values(status=bindparam("status"), language=bindparam("language"), stage=bindparam("stage"),
            last_faq_id=bindparam("last_faq_id"), last_answer_at=bindparam("last_answer_at"),
            last_inbound_at=bindparam("last_inbound_at"), updated_at=bindparam("updated_at")))
_UPDATE_CUSTOMER_STAGE = (update(Customer.__table__).where(CU.id == bindparam("cust_id"))
                          .values(stage=bindparam("stage")))


@dataclass(slots=True)
class _Known:
    """What the general path would read about a sender: identity, customer, open conversation.

    `identity_id` / `customer_id` are None for a sender first seen in this batch until the batch
    is written (and a new conversation's "id" likewise)."""

    identity_id: int | None
    customer_id: int | None
    merged: bool
    email: str | None
    phone: str | None
    display_name: str | None
    facts: CustomerFacts
    conv: dict[str, Any] | None
    new_customer: dict[str, Any] | None = None  # rows to insert first
    new_identity: dict[str, Any] | None = None


@dataclass(slots=True)
class _Planned:
    """The rows one fast-path message will write."""

    index: int  # position in the batch, for its Outcome
    sender: _Known
    conv: dict[str, Any]
    inbound: dict[str, Any]
    reply: dict[str, Any] | None
    round: int  # n-th message of its conversation among the pending ones
    escalation: dict[str, Any] | None = None


@dataclass(slots=True)
class _StageChange:
    sender: _Known
    conv: dict[str, Any]
    old: str | None
    new: str
    reason: str
    at: datetime


@dataclass(slots=True)
class _Pending:
    planned: list[_Planned] = field(default_factory=list)
    new_senders: list[_Known] = field(default_factory=list)
    new_conversations: list[tuple[_Known, dict[str, Any], dict[str, Any]]] = field(
        default_factory=list)  # (sender, conversation state, row)
    per_conversation: dict[int, int] = field(default_factory=dict)  # by id() of the state
    stage_changes: list[_StageChange] = field(default_factory=list)
    conversations: dict[int, tuple[dict[str, Any], datetime]] = field(default_factory=dict)
    customer_stages: dict[int, tuple[_Known, str]] = field(default_factory=dict)
    escalations: list[tuple[int, int]] = field(default_factory=list)  # (id, conversation id)


class BatchHandler:
    """Set-based handling of a batch, falling back to `MessageHandler.handle` per message."""

    def __init__(self, handler: MessageHandler) -> None:
        self.handler = handler
        #: messages handled set-based / through the general path (for metrics and tests)
        self.fast = 0
        self.general = 0

    async def handle_many(self, conn: AsyncConnection, messages: Sequence[InboundMessage],
                          matches: Sequence[MatchResult | None]) -> list[Outcome]:
        """Outcomes in message order; `matches[i]` is the FAQ match of `messages[i]` computed
        beforehand (None for an empty text), so no matching happens while the write
        transaction is open."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        known: dict[tuple[str, str], _Known] | None = None
        pending = _Pending()
        for index, (msg, match) in enumerate(zip(messages, matches, strict=True)):
            if known is None:
                known = await self._load(conn, messages[index:])
            planned = self._plan(index, msg, match, known, pending)
            if planned is None:  # general path, after what is planned so far is written
                await self._write(conn, pending, outcomes)
                pending = _Pending()
                outcomes[index] = await self.handler.handle(conn, msg, match=match)
                self.general += 1
                known = None  # it may have created, linked or merged anything
        await self._write(conn, pending, outcomes)
        return [o for o in outcomes if o is not None]

    async def _load(self, conn: AsyncConnection,
                    messages: Sequence[InboundMessage]) -> dict[tuple[str, str], _Known]:
        addresses = sorted({m.address for m in messages})
        channels = {(m.channel, m.address) for m in messages}
        known: dict[tuple[str, str], _Known] = {}
        params = {"channels": sorted({c for c, _ in channels}), "addresses": addresses}
        for row in (await conn.execute(_IDENTITIES, params)).all():
            if (row.channel, row.address) in channels:
                known[(row.channel, row.address)] = _Known(
                    row.id, row.customer_id, row.merged_into is not None, row.email, row.phone,
                    row.display_name, CustomerFacts(row.orders_count or 0,
                                                    row.total_spent or 0.0, row.last_order_at),
                    None)
        by_identity = {k.identity_id: k for k in known.values()}
        if by_identity:
            rows = (await conn.execute(_OPEN_CONVERSATIONS,
                                       {"identities": sorted(i for i in by_identity if i)})).all()
            for row in rows:  # newest first: keep the first per identity
                sender = by_identity[row.identity_id]
                if sender.conv is None:
                    conv = dict(row._mapping)
                    del conv["identity_id"]
                    sender.conv = conv
        return known

    def _plan(self, index: int, msg: InboundMessage, match: MatchResult | None,
              known: dict[tuple[str, str], _Known], pending: _Pending) -> _Planned | None:
        """The fast-path rows for `msg`, or None when it needs the general path."""
        handler = self.handler
        if msg.thread or (handler.desk is not None and _MAYBE_RATING.match(msg.text)):
            return None
        now = datetime.now(UTC)
        sender = known.get((msg.channel, msg.address))
        if sender is None:
            if normalise_email(msg.email) or normalise_phone(msg.phone):
                return None  # may join or merge with a customer known by email or phone
            sender = known[(msg.channel, msg.address)] = self._new_sender(msg, now, pending)
        elif (sender.merged or not _contact_known(msg, sender) or (
                sender.conv is not None and sender.conv["customer_id"] != sender.customer_id)):
            return None
        conv = sender.conv
        if conv is None:
            conv = sender.conv = self._new_conversation(msg, sender, now, pending)
        lang = msg.language_hint or detect_language(
            msg.text, default=conv["language"] or handler.config.default_language)
        silent = conv["status"] in (ConversationStatus.WAITING, ConversationStatus.HUMAN)
        if silent and handler.desk is not None:
            return None  # the desk relays it to the staff thread
        reason = None if silent else handler.escalation_reason(msg, conv, match, now)
        inbound = {
            "direction": "in", "channel": msg.channel,
            "external_id": msg.external_id, "author": "customer", "text": msg.text,
            "attachments": [a.as_dict() for a in msg.attachments] or None, "language": lang,
            "faq_id": None if silent or match is None else match.faq_id,
            "score": None if silent or match is None else round(match.score, 4),
            "decision": "silent" if silent else "escalate" if reason else "answer",
            "status": "received", "meta": dict(msg.meta) or None, "created_at": msg.timestamp,
        }
        reply = escalation = None
        if not silent:
            self._plan_stage(msg, conv, sender, lang, match, pending)
            faq_id = match.faq_id if match else None
            if reason:  # as MessageHandler.handle: acknowledge, wait for a person
                escalation = {
                    "reason": reason, "question": msg.text[:2000], "status": "open",
                    "candidates": top_candidates(match), "created_at": datetime.now(UTC)}
                text = acknowledgement(reason, lang, handler.config.default_language)
                reply_lang = lang
                conv.update(status=ConversationStatus.WAITING, language=lang)
            else:
                assert match is not None and match.entry is not None
                text, reply_lang = match.entry.answer_for(
                    lang, handler.config.default_language,
                    {"store_name": handler.config.store_name})
                conv.update(last_faq_id=faq_id, last_answer_at=now, language=lang)
            at = datetime.now(UTC)
            stored = conv["channel"] in handler.config.stored_delivery
            reply = {"direction": "out", "channel": conv["channel"], "author": "bot",
                     "text": text, "language": reply_lang, "faq_id": faq_id,
                     "status": "delivered" if stored else "pending",
                     "sent_at": at if stored else None, "meta": None, "created_at": at}
        pending.conversations[id(conv)] = (conv, now)
        turn = pending.per_conversation.get(id(conv), 0)
        pending.per_conversation[id(conv)] = turn + 1
        planned = _Planned(index, sender, conv, inbound, reply, turn, escalation)
        pending.planned.append(planned)
        return planned

    @staticmethod
    def _new_sender(msg: InboundMessage, now: datetime, pending: _Pending) -> _Known:
        """As `resolve_customer` for an address never seen, without email or phone."""
        sender = _Known(None, None, False, None, None, msg.display_name, CustomerFacts(), None,
                        new_customer={"display_name": msg.display_name, "email": None,
                                      "phone": None, "orders_count": 0, "total_spent": 0.0,
                                      "created_at": now},
                        new_identity={"channel": msg.channel, "address": msg.address,
                                      "display_name": msg.display_name, "created_at": now})
        pending.new_senders.append(sender)
        return sender

    @staticmethod
    def _new_conversation(msg: InboundMessage, sender: _Known, now: datetime,
                          pending: _Pending) -> dict[str, Any]:
        """As `MessageHandler._conversation` when the address has no open conversation."""
        conv: dict[str, Any] = {
            "id": None, "status": ConversationStatus.BOT, "language": msg.language_hint,
            "stage": None, "last_faq_id": None, "last_answer_at": None, "thread": None,
            "customer_id": sender.customer_id, "channel": msg.channel}
        pending.new_conversations.append((sender, conv, {
            "channel": msg.channel, "address": msg.address, "thread": None,
            "status": ConversationStatus.BOT, "language": msg.language_hint,
            "meta": dict(msg.meta), "created_at": now, "updated_at": now}))
        return conv

    def _plan_stage(self, msg: InboundMessage, conv: dict[str, Any], sender: _Known, lang: str,
                    match: MatchResult | None, pending: _Pending) -> None:
        """As `MessageHandler._update_stage`: the rules decide from the answered entry's hint,
        the words, and the customer's order facts."""
        faq_stage = (match.entry.stage if match and match.entry and match.decision == "answer"
                     else None)
        signal = StageSignal("message", text=msg.text, language=lang, faq_stage=faq_stage,
                             facts=sender.facts)
        decision = self.handler.lifecycle.rules.decide(conv["stage"], signal)
        if decision is None:
            return
        reason = decision.reason + (f" ({match.faq_id})" if faq_stage and match else "")
        pending.stage_changes.append(_StageChange(sender, conv, conv["stage"], decision.stage,
                                                  reason[:500], datetime.now(UTC)))
        conv["stage"] = decision.stage
        pending.customer_stages[id(sender)] = (sender, decision.stage)

    async def _write(self, conn: AsyncConnection, pending: _Pending,
                     outcomes: list[Outcome | None]) -> None:
        """Write what was planned: new customers, identities and conversations first; then per
        round (a conversation's n-th message) its inbound messages and its replies, so ids keep
        every conversation's transcript in order; then stage history and conversation state."""
        await self._write_new_senders(conn, pending)
        if pending.new_conversations:
            rows = [{**row, "customer_id": sender.customer_id, "identity_id": sender.identity_id}
                    for sender, _, row in pending.new_conversations]
            ids = await _ids(conn, _INSERT_CONVERSATION, rows)
            for (sender, conv, _), conv_id in zip(pending.new_conversations, ids, strict=True):
                conv.update(id=conv_id, customer_id=sender.customer_id)
        if not pending.planned:
            return
        self.fast += len(pending.planned)
        await self._write_messages(conn, pending, outcomes)
        if pending.stage_changes:
            await conn.execute(_INSERT_STAGE_CHANGE, [
                {"conversation_id": c.conv["id"], "customer_id": c.sender.customer_id,
                 "from_stage": c.old, "to_stage": c.new, "reason": c.reason, "created_at": c.at}
                for c in pending.stage_changes])
        await conn.execute(_UPDATE_CONVERSATION, [
            {"conv_id": conv["id"], "status": conv["status"], "language": conv["language"],
             "stage": conv["stage"],
             "last_faq_id": conv["last_faq_id"], "last_answer_at": conv["last_answer_at"],
             "last_inbound_at": at, "updated_at": at}
            for conv, at in pending.conversations.values()])
        if pending.customer_stages:
            await conn.execute(_UPDATE_CUSTOMER_STAGE, [
                {"cust_id": sender.customer_id, "stage": stage}
                for sender, stage in pending.customer_stages.values()])
        if self.handler.desk is not None:
            for escalation_id, conversation_id in pending.escalations:
                await self.handler.desk.on_escalation(conn, escalation_id=escalation_id,
                                                      conversation_id=conversation_id)

    @staticmethod
    async def _write_new_senders(conn: AsyncConnection, pending: _Pending) -> None:
        senders = pending.new_senders
        if not senders:
            return
        customers = [s.new_customer for s in senders if s.new_customer is not None]
        ids = await _ids(conn, _INSERT_CUSTOMER, customers)
        identities = []
        for sender, customer_id in zip(senders, ids, strict=True):
            sender.customer_id = customer_id
            identities.append({**(sender.new_identity or {}), "customer_id": customer_id})
        ids = await _ids(conn, _INSERT_IDENTITY, identities)
        for sender, identity_id in zip(senders, ids, strict=True):
            sender.identity_id = identity_id
            sender.new_customer = sender.new_identity = None

    async def _write_messages(self, conn: AsyncConnection, pending: _Pending,
                              outcomes: list[Outcome | None]) -> None:
        rounds = max(p.round for p in pending.planned) + 1
        for turn in range(rounds):
            planned = [p for p in pending.planned if p.round == turn]
            in_ids = await _ids(conn, _INSERT_INBOUND, [
                {**p.inbound, "conversation_id": p.conv["id"]} for p in planned])
            escalated = [p for p in planned if p.escalation is not None]
            esc_ids = dict(zip((p.index for p in escalated), await _ids(
                conn, _INSERT_ESCALATION, [{**(p.escalation or {}), "conversation_id": p.conv["id"]}
                                           for p in escalated]), strict=True)) if escalated else {}
            pending.escalations.extend((esc_ids[p.index], p.conv["id"]) for p in escalated)
            replies = []
            for p, in_id in zip(planned, in_ids, strict=True):
                if p.reply is not None:
                    p.reply.update(conversation_id=p.conv["id"], meta={"in_reply_to": in_id})
                    replies.append(p)
            out_ids: list[int] = []
            if replies:
                out_ids = await _ids(conn, _INSERT_OUTBOUND,
                                     [p.reply for p in replies if p.reply])
                now = datetime.now(UTC)
                queued = [{"message_id": out_id, "conversation_id": p.conv["id"],
                           "channel": p.conv["channel"], "status": "pending", "attempts": 0,
                           "next_attempt_at": now, "created_at": now}
                          for p, out_id in zip(replies, out_ids, strict=True)
                          if p.reply and p.reply["status"] == "pending"]
                if queued:
                    await conn.execute(_INSERT_OUTBOX, queued)
            reply_ids = {p.index: out_id for p, out_id in zip(replies, out_ids, strict=True)}
            for p in planned:
                if p.reply is None:
                    outcomes[p.index] = Outcome(p.conv["id"], "silent")
                elif p.escalation is not None:
                    outcomes[p.index] = Outcome(
                        p.conv["id"], "escalate", p.escalation["reason"], p.reply["faq_id"],
                        reply_ids[p.index], esc_ids[p.index])
                else:
                    outcomes[p.index] = Outcome(p.conv["id"], "answer", None, p.reply["faq_id"],
                                                reply_ids[p.index])


async def _ids(conn: AsyncConnection, stmt: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert `rows` and return their new ids in the order of `rows`.

    The rows go in one multi-row INSERT whose VALUES are processed in order: SQLite gives each
    new row max(rowid) + 1 (nobody else writes while this transaction holds the write lock) and
    PostgreSQL calls the id sequence once per row, in order (other sessions can only leave
    gaps). So ascending ids are the rows' order, whatever order RETURNING lists them in.
    """
    ids = sorted((await conn.execute(stmt, rows)).scalars().all())
    if len(ids) != len(rows):
        raise RuntimeError(f"inserted {len(rows)} rows but got {len(ids)} ids back")
    return ids


def _contact_known(msg: InboundMessage, sender: _Known) -> bool:
    """True when the general path would change nothing about the customer's contact details
    (no link, no merge, no new email, phone or name)."""
    email, phone = normalise_email(msg.email), normalise_phone(msg.phone)
    if not email and not phone:
        return True
    return (email in (None, sender.email) and phone in (None, sender.phone)
            and not (msg.display_name and not sender.display_name))
