"""What happens to customer messages: one pipeline for a batch of any size.

    understand (before the transaction: FAQ match, text signals)
    -> load (set-based: senders, open conversations, pending surveys)
    -> decide (ordered rules, first match wins; lifecycle stage for every message)
    -> write (set-based rows; one function queues every reply; desk hooks)

Nothing here talks to a platform: replies leave through the outbox after the transaction
commits (or, on the web chat, are delivered by being stored), so a crash either redoes all of
a batch or none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.lifecycle import LifecycleRules, StageSignal
from bot.order_context import OrderContext, named_numbers, order_context
from bot.pipeline import rules
from bot.pipeline.load import Loaded, Sender, SurveySource, load, pick_conversation
from bot.pipeline.offload import UnderstandingOffload
from bot.pipeline.rules import ConversationState, Decision, RuleConfig, Turn
from bot.pipeline.understand import Understanding, understand
from bot.pipeline.write import DeskHook, Plan, Planned, StageMove, waiting_status, write
from channels.base import InboundMessage, StoredMessage
from faq.language import detect_language
from faq.models import FaqEntry, MatchResult

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


class MatcherLike(Protocol):
    def match(self, text: str, lang: str | None = None) -> MatchResult: ...


class FaqSource(Protocol):
    @property
    def matcher(self) -> MatcherLike: ...


class RulesSource(Protocol):
    @property
    def rules(self) -> LifecycleRules: ...


class Desk(DeskHook, SurveySource, Protocol):
    """The staff desk as the pipeline uses it."""

    #: a person answers escalations: the bot may promise it
    staffed: bool

    def queue_notice(self, lang: str, now: datetime) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    conversation_id: int
    decision: str  # answer, escalate, silent, survey, small_talk, clarify, queued
    reason: str | None = None
    faq_id: str | None = None
    reply_message_id: int | None = None
    escalation_id: int | None = None
    rule: str = ""
    reply_ids: tuple[int, ...] = ()
    #: what this message added to its conversation (empty: not known, e.g. a survey answer),
    #: and the conversation's newest message id before them (None: a new conversation)
    stored: tuple[StoredMessage, ...] = ()
    stored_after: int | None = None


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    rules: RuleConfig = field(default_factory=RuleConfig)
    #: channels where a stored reply is a delivered one (the web chat)
    stored_delivery: frozenset[str] = frozenset()
    #: channels whose threads are separate conversations (Slack customer channels)
    threads_own: frozenset[str] = frozenset()
    #: channels where the customer's contact details are only typed in (the web chat): their
    #: conversations are told nothing about orders, unless the message is `vouched` (signed)
    unverified: frozenset[str] = frozenset()


class Pipeline:
    def __init__(self, faq: FaqSource, lifecycle: RulesSource, config: PipelineConfig, *,
                 desk: Desk | None = None, clock: Clock | None = None,
                 offload: UnderstandingOffload | None = None) -> None:
        self.faq = faq
        self.offload = offload
        self.lifecycle = lifecycle
        self.desk = desk
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.config = self._with_desk(config)

    def _with_desk(self, config: PipelineConfig) -> PipelineConfig:
        r = config.rules
        desk = self.desk
        rule_config = RuleConfig(
            store_name=r.store_name, default_language=r.default_language,
            repeat_window=r.repeat_window, answer_while_waiting=r.answer_while_waiting,
            desk_available=desk is not None and desk.staffed,
            queue_notice=desk.queue_notice if desk is not None else r.queue_notice,
            complaint_entry=self._complaint_entry, rematch=self._match)
        return PipelineConfig(rule_config, config.stored_delivery, config.threads_own,
                              config.unverified)

    def _match(self, text: str) -> MatchResult:
        return self.faq.matcher.match(text)

    def _complaint_entry(self) -> FaqEntry | None:
        entries = getattr(self.faq, "entries", ())
        return next((e for e in entries if e.escalate and "complaint" in e.tags), None)

    def understand(self, msg: InboundMessage) -> Understanding:
        """Pure CPU, before the transaction: callers run it first so the write lock is not
        held while matching."""
        return understand(msg, self._match)

    async def understand_all(self, messages: Sequence[InboundMessage]) -> list[Understanding]:
        """`understand` for each, in the helper process when there is one."""
        if self.offload is not None:
            found = await self.offload.understand_many(messages)
            if found is not None:
                return found
        return [self.understand(m) for m in messages]

    async def handle(self, conn: AsyncConnection, messages: Sequence[InboundMessage],
                     seen: Sequence[Understanding] | None = None) -> list[Outcome]:
        """Outcomes in message order; `seen[i]` is `understand(messages[i])` if the caller
        computed it already."""
        if seen is None:
            seen = [self.understand(m) for m in messages]
        now = self.clock()
        loaded = await load(conn, messages, surveys=self.desk, now=now,
                            stored_delivery=self.config.stored_delivery)
        orders = await self._orders(conn, messages, seen, loaded)
        plan = Plan()
        for index, (msg, understood) in enumerate(zip(messages, seen, strict=True)):
            self._plan(plan, index, msg, understood, loaded, now, orders.get(index))
        await write(conn, plan, stored_delivery=self.config.stored_delivery, desk=self.desk,
                    now=now)
        last_ids = dict(loaded.last_ids)
        return [_outcome(p, now, last_ids) for p in plan.planned]

    async def _orders(self, conn: AsyncConnection, messages: Sequence[InboundMessage],
                      seen: Sequence[Understanding], loaded: Loaded) -> dict[int, OrderContext]:
        """The order each message is about, for customers with orders who name one or ask an
        order question; never on a channel whose contact details nobody vouches for."""
        found: dict[int, OrderContext] = {}
        for index, (msg, understood) in enumerate(zip(messages, seen, strict=True)):
            sender = loaded.senders[(msg.channel, msg.who)]
            unverified = msg.channel in self.config.unverified and not msg.vouched
            if not sender.facts.orders_count or unverified:
                continue
            about_orders = any(a.entry is not None and (a.entry.order_answers
                                                        or "orders" in a.entry.tags)
                               for a in (understood.match, *understood.answers) if a)
            if about_orders or named_numbers(msg.text):
                found[index] = await order_context(conn, customer_id=sender.customer_id,
                                                   text=msg.text)
        return found

    def _plan(self, plan: Plan, index: int, msg: InboundMessage, seen: Understanding,
              loaded: Loaded, now: datetime, order: OrderContext | None) -> None:
        sender = loaded.senders[(msg.channel, msg.who)]
        survey = loaded.surveys.get(index)
        open_conv = next((c for c in sender.conversations
                          if survey is not None and c.id == survey.conversation_id), None)
        if open_conv is not None:  # a playbook's question, answered where it was asked
            conv = open_conv
        elif survey is not None:
            conv = ConversationState(id=survey.conversation_id, status="resolved",
                                     language=survey.language, stage=sender.stage,
                                     channel=msg.channel, address=msg.address, thread=None,
                                     customer_id=sender.customer_id)
        else:
            conv = pick_conversation(sender, msg,
                                     threads_own=msg.channel in self.config.threads_own)
            if conv.id is None and all(c is not conv for c, _ in plan.opened):
                plan.opened.append((conv, sender))
        lang = msg.language_hint or detect_language(
            msg.text, default=conv.language or self.config.rules.default_language)
        turn = Turn(msg, seen, conv, lang, now, self.config.rules, survey, order)
        decision = rules.decide(turn)
        planned = Planned(index, msg, sender, conv, lang, decision, plan.next_round(conv))
        plan.planned.append(planned)
        if survey is not None:
            return
        self._stage(plan, planned, now)
        conv.language = lang
        conv.status = waiting_status(decision, conv)
        if decision.answered:
            conv.last_faq_id = decision.answered[0].faq_id
            conv.last_answer_at = now
        plan.touched[id(conv)] = (conv, now)

    def _stage(self, plan: Plan, p: Planned, now: datetime) -> None:
        """Every message counts for the customer's stage, whoever owns the conversation."""
        sender, conv, decision = p.sender, p.conv, p.decision
        signal = StageSignal("message", text=p.msg.text, language=p.lang,
                             faq_stage=decision.stage_hint, facts=sender.facts, now=now)
        current = sender.stage
        moved = self.lifecycle.rules.decide(current, signal)
        if moved is None or moved.stage == current:
            conv.stage = conv.stage or current
            return
        answered = decision.answered[0].faq_id if decision.answered else None
        reason = moved.reason + (f" ({answered})" if answered and decision.stage_hint else "")
        plan.stage_moves.append(StageMove(sender, conv, current, moved.stage, reason, now))
        sender.stage = conv.stage = moved.stage


def _outcome(p: Planned, now: datetime, last_ids: dict[int, int]) -> Outcome:
    d: Decision = p.decision
    conv_id = d.survey.conversation_id if d.survey else p.conv.id
    assert conv_id is not None
    faq_id = d.answered[0].faq_id if d.answered else (d.match.faq_id if d.match else None)
    decision = "silent" if d.stored in ("silent", "queued") and not p.reply_ids else d.stored
    stored = () if d.survey else _stored(p, now)
    after = last_ids.get(conv_id)
    if stored:
        last_ids[conv_id] = stored[-1].id
    return Outcome(conv_id, decision, d.escalation, faq_id,
                   p.reply_ids[0] if p.reply_ids else None, p.escalation_id, d.rule, p.reply_ids,
                   stored, after)


def _stored(p: Planned, now: datetime) -> tuple[StoredMessage, ...]:
    conv = p.conv
    assert p.inbound_id is not None
    rows = [StoredMessage(p.inbound_id, "in", "customer", p.msg.text, p.msg.timestamp, p.lang,
                          conv.stage, conv.status,
                          tuple(a.as_dict() for a in p.msg.attachments))]
    rows += [StoredMessage(reply_id, "out", "bot", reply.text, now, reply.language, conv.stage,
                           conv.status)
             for reply_id, reply in zip(p.reply_ids, p.decision.replies, strict=True)]
    return tuple(rows)


__all__ = ["Outcome", "Pipeline", "PipelineConfig", "RuleConfig", "Sender", "Understanding"]
