"""Step two: what to do with one message, as an ordered list of small named rules.

Each rule looks at one `Turn` (the message, what it says, its conversation, the settings) and
returns a `Decision` or None to pass; the first decision wins. Rules read nothing from the
database and write nothing: the loader gathered what they need and the writer carries out what
they decide, so a batch of a thousand messages and a single message take the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rapidfuzz import fuzz

from bot.consent import opt_out_language
from bot.order_context import ORDER_PROBLEM, OrderContext, order_problem, variables_for
from bot.pipeline import signals
from bot.pipeline.understand import Understanding
from bot.surveys import AskedSurvey
from channels.base import InboundMessage
from core.phrases import text_for
from faq.models import FaqEntry, MatchResult
from faq.normalize import normalize

#: a question this close to the one just answered (0-100, normalised text) is a repeat
VERBATIM = 90.0

BOT, WAITING, HUMAN = "bot", "waiting", "human"


@dataclass(slots=True)
class ConversationState:
    """One conversation as the rules see it; the writer saves what they change."""

    id: int | None  # None until the writer inserts it
    status: str
    language: str | None
    stage: str | None
    channel: str
    address: str
    thread: str | None
    customer_id: int | None
    last_faq_id: str | None = None
    last_answer_at: datetime | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def bot_state(self) -> Mapping[str, Any]:
        """What the bot remembers between turns (the last question, notices already given)."""
        state = self.meta.get("bot")
        return state if isinstance(state, dict) else {}

    def remember(self, **values: Any) -> None:
        self.meta = {**self.meta, "bot": {**self.bot_state, **values}}


@dataclass(frozen=True, slots=True)
class PendingSurvey:
    """A satisfaction question we asked in a resolved conversation, still unanswered."""

    conversation_id: int
    escalation_id: int
    language: str | None
    rating: int


Survey = PendingSurvey | AskedSurvey


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    language: str
    faq_id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    rule: str  # the rule that decided, for logs and tests
    stored: str  # the decision recorded on the customer's message
    replies: tuple[Reply, ...] = ()
    escalation: str | None = None  # the reason, when a person is needed
    answered: tuple[MatchResult, ...] = ()
    stage_hint: str | None = None
    to_desk: bool = False  # the staff thread gets the message (and the replies)
    survey: Survey | None = None
    match: MatchResult | None = None  # recorded on the customer's message
    opt_out: bool = False  # the writer records the customer's opt-out


@dataclass(frozen=True, slots=True)
class RuleConfig:
    store_name: str = "Our Store"
    default_language: str = "en"
    repeat_window: timedelta = timedelta(minutes=30)
    #: answer confident FAQ questions while the customer waits for a person
    answer_while_waiting: bool = True
    #: a person can pick escalations up (a desk is configured)
    desk_available: bool = False
    #: the bot's "still in the queue" line with the expected reply time, when hours are known
    queue_notice: Callable[[str, datetime], str | None] = lambda _lang, _now: None
    #: the FAQ's escalate-only entry for complaints, for its apology
    complaint_entry: Callable[[], FaqEntry | None] = lambda: None
    #: a second look at a short follow-up, with the previous question as context
    rematch: Callable[[str], MatchResult] | None = None


@dataclass(slots=True)
class Turn:
    msg: InboundMessage
    seen: Understanding
    conv: ConversationState
    lang: str
    now: datetime
    config: RuleConfig
    survey: Survey | None = None
    #: the customer's order this message is about (only theirs, by a verified identity)
    order: OrderContext | None = None
    variables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.order is not None and self.order.order is not None:
            self.variables = {**variables_for(self.order.order, self.lang), **self.variables}

    def text(self, key: str) -> Reply:
        return Reply(text_for(key, self.lang, self.config.default_language), self.lang)

    def answer(self, entry: FaqEntry) -> Reply:
        text, lang = entry.answer_for(self.lang, self.config.default_language,
                                      {"store_name": self.config.store_name, **self.variables})
        return Reply(text, lang, entry.id)

    def hand_over(self, key: str, entry: FaqEntry | None = None) -> Reply:
        """The hand-over line: the FAQ entry's own words when it has some, else ours; without a
        desk, never a promise that a person will reply here."""
        if entry is not None and entry.answers and self.config.desk_available:
            return self.answer(entry)
        return self.text(key if self.config.desk_available else f"{key}_no_desk")


Rule = Callable[[Turn], Decision | None]


def opt_out(t: Turn) -> Decision | None:
    """STOP, annulla iscrizione, ยกเลิก...: before anything else, confirmed in the language of
    the word the customer used."""
    lang = opt_out_language(t.msg.text)
    if lang is None:
        return None
    reply = Reply(text_for("opted_out", lang, t.config.default_language), lang)
    return Decision("opt_out", "opt_out", (reply,), opt_out=True, to_desk=t.conv.status == HUMAN)


def survey_answer(t: Turn) -> Decision | None:
    if t.survey is None:
        return None
    if isinstance(t.survey, AskedSurvey):  # ours to thank for; the desk thanks for its own
        lang = t.survey.language or t.lang
        reply = Reply(text_for("survey_thanks", lang, t.config.default_language), lang)
        return Decision("survey_answer", "survey", (reply,), survey=t.survey)
    return Decision("survey_answer", "survey", survey=t.survey)


def person_owns(t: Turn) -> Decision | None:
    """A person has taken the conversation: the bot stays out of it."""
    if t.conv.status != HUMAN:
        return None
    return Decision("person_owns", "silent", to_desk=True,
                    stage_hint="at_risk" if t.seen.complaint else None)


def while_waiting(t: Turn) -> Decision | None:
    """Escalated, nobody has taken it yet: answer what the FAQ answers with confidence, and say
    once (or whenever asked for a person again) that the customer is still in the queue."""
    if t.conv.status != WAITING:
        return None
    seen = t.seen
    hint = "at_risk" if seen.complaint else None
    if seen.answers and t.config.answer_while_waiting and not (seen.complaint
                                                              or seen.asks_for_human):
        return _answer(t, "answer_while_waiting", seen.answers, to_desk=True)
    if seen.asks_for_human or seen.complaint or not t.conv.bot_state.get("queue_notice"):
        t.conv.remember(queue_notice=True)
        notice = t.config.queue_notice(t.lang, t.now)
        reply = Reply(notice, t.lang) if notice else t.text("in_queue")
        return Decision("still_in_queue", "queued", (reply,), to_desk=True, stage_hint=hint,
                        match=seen.match)
    return Decision("waiting_quietly", "silent", to_desk=True, stage_hint=hint, match=seen.match)


def complaint(t: Turn) -> Decision | None:
    if not t.seen.complaint:
        return None
    matched = t.seen.match.entry if t.seen.match else None
    entry = matched if matched is not None and matched.escalate else t.config.complaint_entry()
    return _escalate(t, "complaint", t.hand_over("complaint", entry), stage_hint="at_risk")


def asked_for_person(t: Turn) -> Decision | None:
    if not t.seen.asks_for_human:
        return None
    matched = t.seen.match.entry if t.seen.match else None
    return _escalate(t, "asked_for_human", t.hand_over(
        "escalated_human", matched if matched is not None and matched.escalate else None))


def not_helped(t: Turn) -> Decision | None:
    """"That doesn't answer my question" after an answer: a person should look."""
    if not t.seen.not_helped or t.conv.last_faq_id is None or t.seen.answers:
        return None
    return _escalate(t, "repeated_question", t.hand_over("escalated"))


def order_needs_a_person(t: Turn) -> Decision | None:
    """The order asked about is late, or marked delivered while the customer says it never
    came: no canned answer fixes that."""
    facts = t.order.order if t.order is not None else None
    if facts is None or not order_problem(facts, t.msg.text, t.now, t.lang):
        return None
    return _escalate(t, ORDER_PROBLEM, t.hand_over("escalated"))


def answer(t: Turn) -> Decision | None:
    if not t.seen.answers:
        return None
    if len(t.seen.answers) == 1 and _repeats_last_question(t, t.seen.answers[0]):
        return _escalate(t, "repeated_question", t.hand_over("escalated"))
    return _answer(t, "answer", t.seen.answers)


def small_talk(t: Turn) -> Decision | None:
    seen = t.seen
    if not seen.is_small_talk:
        return None
    if seen.small_talk_entry is not None:
        reply = t.answer(seen.small_talk_entry)
    elif seen.small_talk == "ack":
        reply = Reply("", t.lang)
    else:
        reply = t.text(seen.small_talk or "greeting")
    replies = (reply,) if reply.text else ()
    return Decision("small_talk", "small_talk", replies, match=seen.match)


def follow_up(t: Turn) -> Decision | None:
    """"And to Germany?" right after the shipping answer: the same topic with a new detail,
    read together with the question it follows."""
    last = t.conv.bot_state.get("last_question")
    rematch = t.config.rematch
    if not last or rematch is None or t.conv.last_faq_id is None or t.seen.match is None:
        return None
    if len(t.msg.text.split()) > 8 or not signals.is_follow_up(t.msg.text):
        return None
    result = rematch(f"{last} {t.msg.text}")
    if result.confident_answer is None:
        return None
    return _answer(t, "follow_up", (result,))


def vague(t: Turn) -> Decision | None:
    """"?", "help", a lone emoji: ask once what they need before handing over."""
    if not t.seen.vague or t.conv.bot_state.get("clarified"):
        return None
    t.conv.remember(clarified=True)
    return Decision("clarify", "clarify", (t.text("clarify"),), match=t.seen.match)


def entry_escalates(t: Turn) -> Decision | None:
    result = t.seen.match
    if result is None or result.entry is None or not result.entry.escalate:
        return None
    return _escalate(t, "entry_escalates", t.hand_over("escalated", result.entry))


def ambiguous(t: Turn) -> Decision | None:
    if t.seen.match is None or t.seen.match.decision != "ambiguous":
        return None
    return _escalate(t, "ambiguous", t.hand_over("escalated"))


def contact_shared(t: Turn) -> Decision | None:
    """The customer shared their own phone number (Telegram's contact button): it now links
    their channels; say so instead of handing a "file" to a person."""
    shared = t.msg.attachments
    if t.msg.text.strip() or not shared or any(a.kind != "contact" for a in shared):
        return None
    if not t.msg.phone:
        return None  # someone else's card: a person should look
    return Decision("contact_shared", "small_talk", (t.text("contact_saved"),))


def attachment_only(t: Turn) -> Decision | None:
    if t.seen.match is not None or not t.msg.attachments:
        return None
    return _escalate(t, "attachment", t.text("attachment_only"))


def no_match(t: Turn) -> Decision:
    reason = "no_match" if t.seen.match is not None else "empty_message"
    return _escalate(t, reason, t.hand_over("escalated"))


RULES: tuple[Rule, ...] = (
    opt_out, survey_answer, person_owns, while_waiting, complaint, asked_for_person, not_helped,
    order_needs_a_person, answer,
    small_talk, follow_up, vague, entry_escalates, ambiguous, contact_shared, attachment_only,
)


def decide(turn: Turn, rules: Sequence[Rule] = RULES) -> Decision:
    for rule in rules:
        decision = rule(turn)
        if decision is not None:
            return decision
    return no_match(turn)


def _answer(t: Turn, rule: str, results: Sequence[MatchResult], *,
            to_desk: bool = False) -> Decision:
    replies = []
    for result in results:
        entry = result.confident_answer
        assert entry is not None
        replies.append(t.answer(entry))
    t.conv.remember(last_question=t.msg.text[:500], clarified=False)
    hint = next((r.entry.stage for r in results if r.entry and r.entry.stage), None)
    return Decision(rule, "answer", tuple(replies), answered=tuple(results), stage_hint=hint,
                    to_desk=to_desk, match=results[0])


def _escalate(t: Turn, reason: str, reply: Reply, *, stage_hint: str | None = None) -> Decision:
    t.conv.remember(queue_notice=False)
    return Decision(reason, "escalate", (reply,), escalation=reason, stage_hint=stage_hint,
                    match=t.seen.match)


def _repeats_last_question(t: Turn, result: MatchResult) -> bool:
    """The same entry again, asked after the answer went out, in nearly the same words.

    A question sent before the answer went out is a second question, not a sign that the
    answer did not help; platforms that stamp whole seconds get a second's allowance.
    """
    conv = t.conv
    last_at, last_question = conv.last_answer_at, conv.bot_state.get("last_question")
    if (result.entry is None or conv.last_faq_id != result.entry.id or last_at is None
            or not last_question or t.now - last_at > t.config.repeat_window):
        return False
    sent = t.msg.timestamp
    if sent.microsecond == 0:
        sent += timedelta(seconds=1)
    if sent < last_at:
        return False
    return fuzz.ratio(normalize(t.msg.text), normalize(str(last_question))) >= VERBATIM
