"""Step one of the pipeline, before any transaction: what each message says.

Pure CPU (FAQ matching and text tests), so it runs before the write lock is taken and accepting
new messages never waits for it. Everything that depends on the conversation (language
default, the last answer, whether a person owns it) is left to the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.pipeline import signals
from channels.base import InboundMessage
from faq.models import FaqEntry, MatchResult

#: a small-talk FAQ match below this is taken only when the built-in detector agrees
#: ("help" is close to "thanks" by letters, not by meaning)
SMALL_TALK_SURE = 0.6
#: at most this many questions of one message are answered
MAX_ANSWERS = 3

Match = Callable[[str], MatchResult]


@dataclass(frozen=True, slots=True)
class Understanding:
    """What a message says, as far as it can be known without the conversation."""

    match: MatchResult | None  # the whole text's FAQ match (None: no text)
    #: confident answers, one per question the message asks, in the order asked
    answers: tuple[MatchResult, ...] = ()
    small_talk: str | None = None  # built-in kind ("greeting", "thanks"...) or None
    small_talk_entry: FaqEntry | None = None  # the FAQ's own small-talk entry, if it matched
    complaint: bool = False
    asks_for_human: bool = False
    not_helped: bool = False
    vague: bool = False

    @property
    def is_small_talk(self) -> bool:
        return self.small_talk is not None or self.small_talk_entry is not None


def understand(msg: InboundMessage, match: Match) -> Understanding:
    text = msg.text.strip()
    if not text:
        return Understanding(None)
    whole = match(text)
    answers = _answers(text, whole, match)
    built_in = signals.small_talk_kind(text)
    if built_in is not None and all(a.score < SMALL_TALK_SURE for a in answers):
        answers = ()  # "still there?" is not a question about cancelling an order
    entry = whole.small_talk
    if entry is not None and whole.score < SMALL_TALK_SURE and built_in is None:
        entry = None
    return Understanding(
        match=whole,
        answers=answers,
        small_talk=built_in if not answers else None,
        small_talk_entry=entry if not answers else None,
        complaint=signals.is_complaint(text) or _tagged(whole, "complaint"),
        asks_for_human=signals.asks_for_human(text) or _tagged(whole, "human"),
        not_helped=signals.says_not_helped(text),
        vague=signals.is_vague(text),
    )


def _answers(text: str, whole: MatchResult, match: Match) -> tuple[MatchResult, ...]:
    """One confident match per question: "Hi! How much is shipping?" is one question, "How much
    is shipping? And how long does it take?" two. The whole text's match is kept unless its
    sentences find better or more."""
    questions = signals.split_questions(text)
    if len(questions) <= 1:
        if whole.confident_answer is not None:
            return (whole,)
        if not questions or questions[0] == text:
            return ()
        alone = match(questions[0])  # the question without its greeting
        return (alone,) if alone.confident_answer is not None else ()
    found: list[MatchResult] = []
    seen: set[str] = set()
    for question in questions[:MAX_ANSWERS + 2]:
        result = match(question)
        entry = result.confident_answer
        if entry is not None and entry.id not in seen:
            seen.add(entry.id)
            found.append(result)
    if len(found) >= 2:
        return tuple(found[:MAX_ANSWERS])
    if whole.confident_answer is not None:
        return (whole,)
    return tuple(found)


def _tagged(result: MatchResult, tag: str) -> bool:
    """An escalate-only FAQ entry with that tag matched (the FAQ's own complaint entry...)."""
    entry = result.entry  # set only above the threshold
    return entry is not None and entry.escalate and tag in entry.tags
