"""What happens to one customer message, inside one database transaction.

resolve customer -> pick conversation -> detect language -> (human owns it? stay silent)
-> match FAQ -> decide answer or escalation -> update lifecycle stage -> store messages and
queue the reply in the outbox. Nothing here talks to a platform: replies leave through the
outbox after the transaction commits, so a crash at any point either redoes all of this or
none of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import customer_facts, resolve_customer
from bot.db.models import (
    Conversation,
    ConversationStatus,
    Customer,
    Escalation,
    Message,
    StageChange,
)
from bot.lifecycle import LifecycleRules, StageSignal
from bot.queue import enqueue_outbound
from bot.texts import asks_for_human, text_for
from channels.base import InboundMessage
from faq.language import detect_language
from faq.models import MatchResult

log = logging.getLogger(__name__)
CV = Conversation.__table__.c
CU = Customer.__table__.c


class MatcherLike(Protocol):
    def match(self, text: str, lang: str | None = None) -> MatchResult: ...


class FaqSource(Protocol):
    @property
    def matcher(self) -> MatcherLike: ...


class RulesSource(Protocol):
    @property
    def rules(self) -> LifecycleRules: ...


class DeskHook(Protocol):
    """Called inside the transaction so staff notifications are as durable as the message."""

    async def on_escalation(self, conn: AsyncConnection, *, escalation_id: int,
                            conversation_id: int) -> None: ...

    async def on_customer_message(self, conn: AsyncConnection, *, conversation_id: int,
                                  message_id: int) -> None: ...

    async def on_survey_answer(self, conn: AsyncConnection, msg: InboundMessage, *,
                               identity_id: int) -> int | None:
        """Take the message as the answer to a satisfaction question we asked; return the
        conversation id it was recorded in, or None to handle the message normally."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    conversation_id: int
    decision: str  # answer, escalate, silent
    reason: str | None = None
    faq_id: str | None = None
    reply_message_id: int | None = None
    escalation_id: int | None = None


@dataclass(slots=True)
class HandlerConfig:
    store_name: str = "Our Store"
    default_language: str = "en"
    repeat_window: timedelta = timedelta(minutes=30)
    #: channels where a stored reply is a delivered one (the web chat): no outbox round trip
    stored_delivery: frozenset[str] = frozenset()


class MessageHandler:
    def __init__(self, faq: FaqSource, lifecycle: RulesSource, config: HandlerConfig,
                 desk: DeskHook | None = None) -> None:
        self.faq = faq
        self.lifecycle = lifecycle
        self.config = config
        self.desk = desk

    def match(self, msg: InboundMessage) -> MatchResult | None:
        """The FAQ match of a message (None for one without text). Pure: callers may run it
        before opening the transaction, so the write lock is not held while matching."""
        return self.faq.matcher.match(msg.text) if msg.text.strip() else None

    async def handle(self, conn: AsyncConnection, msg: InboundMessage,
                     match: MatchResult | None = None) -> Outcome:
        """Handle one message; `match` is its FAQ match if the caller computed it already."""
        now = datetime.now(UTC)
        customer_id, identity_id = await resolve_customer(
            conn, channel=msg.channel, address=msg.address, display_name=msg.display_name,
            email=msg.email, phone=msg.phone)
        if self.desk is not None:
            survey_conv = await self.desk.on_survey_answer(conn, msg, identity_id=identity_id)
            if survey_conv is not None:
                return Outcome(survey_conv, "survey")
        conv = await self._conversation(conn, msg, customer_id, identity_id, now)
        lang = msg.language_hint or detect_language(
            msg.text, default=conv["language"] or self.config.default_language)
        if conv["status"] in (ConversationStatus.WAITING, ConversationStatus.HUMAN):
            return await self._while_human(conn, msg, conv, lang, now)

        result = match
        if result is None and msg.text.strip():
            result = self.faq.matcher.match(msg.text, lang)
        reason = self.escalation_reason(msg, conv, result, now)
        faq_id = result.faq_id if result else None
        in_id = await self._store_inbound(conn, msg, conv["id"], lang, result,
                                          "escalate" if reason else "answer")
        await self._update_stage(conn, conv, customer_id, msg.text, lang, result)

        escalation_id = None
        if reason:
            escalation_id = await self._escalate(conn, conv["id"], reason, msg.text, result)
            reply = acknowledgement(reason, lang, self.config.default_language)
            reply_lang = lang
        else:
            assert result is not None and result.entry is not None
            reply, reply_lang = result.entry.answer_for(
                lang, self.config.default_language, {"store_name": self.config.store_name})
        out_id = await self._store_outbound(conn, conv, reply, reply_lang, faq_id, in_id)
        values: dict[str, Any] = {"language": lang, "updated_at": now, "last_inbound_at": now}
        if reason:
            values["status"] = ConversationStatus.WAITING
        else:
            values.update(last_faq_id=faq_id, last_answer_at=now)
        await conn.execute(update(Conversation.__table__).where(CV.id == conv["id"]).values(values))
        if escalation_id is not None and self.desk is not None:
            await self.desk.on_escalation(conn, escalation_id=escalation_id,
                                          conversation_id=conv["id"])
        return Outcome(conv["id"], "escalate" if reason else "answer", reason, faq_id, out_id,
                       escalation_id)

    async def _conversation(self, conn: AsyncConnection, msg: InboundMessage, customer_id: int,
                            identity_id: int, now: datetime) -> dict[str, Any]:
        """The open conversation of this address (same thread if the channel has threads)."""
        cols = (CV.id, CV.status, CV.language, CV.stage, CV.last_faq_id, CV.last_answer_at,
                CV.thread, CV.customer_id, CV.channel)
        base = select(*cols).where(CV.identity_id == identity_id,
                                   CV.status != ConversationStatus.RESOLVED)
        row = None
        if msg.thread:
            row = (await conn.execute(base.where(CV.thread == msg.thread)
                                      .order_by(CV.id.desc()).limit(1))).first()
        if row is None:
            row = (await conn.execute(base.order_by(CV.id.desc()).limit(1))).first()
        if row is not None:
            conv = dict(row._mapping)
            if conv["customer_id"] != customer_id:  # identity was merged into another customer
                await conn.execute(update(Conversation.__table__).where(CV.id == conv["id"])
                                   .values(customer_id=customer_id))
            return conv
        lang = msg.language_hint
        new_id = (await conn.execute(insert(Conversation.__table__).values(
            customer_id=customer_id, identity_id=identity_id, channel=msg.channel,
            address=msg.address, thread=msg.thread, status=ConversationStatus.BOT,
            language=lang, meta=dict(msg.meta), created_at=now, updated_at=now,
        ).returning(CV.id))).scalar_one()
        return {"id": new_id, "status": ConversationStatus.BOT, "language": lang, "stage": None,
                "last_faq_id": None, "last_answer_at": None, "thread": msg.thread,
                "customer_id": customer_id, "channel": msg.channel}

    def escalation_reason(self, msg: InboundMessage, conv: dict[str, Any],
                           result: MatchResult | None, now: datetime) -> str | None:
        """Why the bot should hand over, or None to answer.

        "repeated_question" needs the customer to have asked again *after* the answer: two
        messages sent in a row before the first answer went out are two questions, not a sign
        that the answer did not help.
        """
        if result is None:
            return "attachment" if msg.attachments else "empty_message"
        if asks_for_human(msg.text) or (result.entry is not None and result.entry.escalate
                                        and "human" in (result.entry.tags or ())):
            return "asked_for_human"
        if result.entry is not None and result.entry.escalate and result.decision != "ambiguous":
            return "entry_escalates" if result.score > 0 else "no_match"
        if result.decision == "ambiguous":
            return "ambiguous"
        if result.decision != "answer" or result.entry is None:
            return "no_match"
        last_at = conv.get("last_answer_at")
        if (conv.get("last_faq_id") == result.entry.id and last_at is not None
                and now - last_at <= self.config.repeat_window
                and _sent_at_latest(msg) >= last_at):
            return "repeated_question"
        return None

    async def _while_human(self, conn: AsyncConnection, msg: InboundMessage,
                           conv: dict[str, Any], lang: str, now: datetime) -> Outcome:
        """A person owns the conversation: record the message, say nothing."""
        in_id = await self._store_inbound(conn, msg, conv["id"], lang, None, "silent")
        await conn.execute(update(Conversation.__table__).where(CV.id == conv["id"])
                           .values(updated_at=now, last_inbound_at=now))
        if self.desk is not None:
            await self.desk.on_customer_message(conn, conversation_id=conv["id"],
                                                message_id=in_id)
        return Outcome(conv["id"], "silent")

    async def _store_inbound(self, conn: AsyncConnection, msg: InboundMessage, conv_id: int,
                             lang: str, result: MatchResult | None, decision: str) -> int:
        return int((await conn.execute(insert(Message.__table__).values(
            conversation_id=conv_id, direction="in", channel=msg.channel,
            external_id=msg.external_id, author="customer", text=msg.text,
            attachments=[a.as_dict() for a in msg.attachments] or None, language=lang,
            faq_id=result.faq_id if result else None,
            score=round(result.score, 4) if result else None, decision=decision,
            status="received", meta=dict(msg.meta) or None, created_at=msg.timestamp,
        ).returning(Message.__table__.c.id))).scalar_one())

    async def _store_outbound(self, conn: AsyncConnection, conv: dict[str, Any], text: str,
                              lang: str, faq_id: str | None, in_reply_to: int) -> int:
        now = datetime.now(UTC)
        stored = conv["channel"] in self.config.stored_delivery
        out_id = int((await conn.execute(insert(Message.__table__).values(
            conversation_id=conv["id"], direction="out", channel=conv["channel"],
            author="bot", text=text, language=lang, faq_id=faq_id,
            status="delivered" if stored else "pending", sent_at=now if stored else None,
            meta={"in_reply_to": in_reply_to}, created_at=now,
        ).returning(Message.__table__.c.id))).scalar_one())
        if not stored:
            await enqueue_outbound(conn, message_id=out_id, conversation_id=conv["id"],
                                   channel=conv["channel"])
        return out_id

    async def _escalate(self, conn: AsyncConnection, conv_id: int, reason: str, question: str,
                        result: MatchResult | None) -> int:
        return int((await conn.execute(insert(Escalation.__table__).values(
            conversation_id=conv_id, reason=reason, question=question[:2000],
            candidates=top_candidates(result), status="open", created_at=datetime.now(UTC),
        ).returning(Escalation.__table__.c.id))).scalar_one())

    async def _update_stage(self, conn: AsyncConnection, conv: dict[str, Any], customer_id: int,
                            text: str, lang: str, result: MatchResult | None) -> None:
        faq_stage = result.entry.stage if result and result.entry and \
            result.decision == "answer" else None
        signal = StageSignal("message", text=text, language=lang, faq_stage=faq_stage,
                             facts=await customer_facts(conn, customer_id))
        decision = self.lifecycle.rules.decide(conv["stage"], signal)
        if decision is None:
            return
        reason = decision.reason + (f" ({result.faq_id})" if faq_stage and result else "")
        await record_stage_change(conn, conversation_id=conv["id"], customer_id=customer_id,
                                  old=conv["stage"], new=decision.stage, reason=reason)
        conv["stage"] = decision.stage


def acknowledgement(reason: str, lang: str, default_language: str) -> str:
    """Our message telling the customer a person will take over, for this escalation reason."""
    key = {"asked_for_human": "escalated_human",
           "attachment": "attachment_only"}.get(reason, "escalated")
    return text_for(key, lang, default_language)


def top_candidates(result: MatchResult | None) -> list[dict[str, Any]] | None:
    """The five best entries of a match, kept on the escalation for the staff's card."""
    return [{"faq_id": c.entry_id, "score": round(c.score, 4)}
            for c in (result.candidates if result else ())][:5] or None


def _sent_at_latest(msg: InboundMessage) -> datetime:
    """The latest moment the customer may have sent `msg`: platforms that stamp whole seconds
    (Telegram) may have sent it up to a second after the stamp."""
    sent = msg.timestamp
    return sent + timedelta(seconds=1) if sent.microsecond == 0 else sent


async def record_stage_change(conn: AsyncConnection, *, conversation_id: int | None,
                              customer_id: int, old: str | None, new: str, reason: str) -> None:
    now = datetime.now(UTC)
    await conn.execute(insert(StageChange.__table__).values(
        conversation_id=conversation_id, customer_id=customer_id, from_stage=old, to_stage=new,
        reason=reason[:500], created_at=now))
    if conversation_id is not None:
        await conn.execute(update(Conversation.__table__).where(CV.id == conversation_id)
                           .values(stage=new, updated_at=now))
    await conn.execute(update(Customer.__table__).where(CU.id == customer_id).values(stage=new))
