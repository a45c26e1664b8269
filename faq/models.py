"""The FAQ as the rest of the service sees it: entries, a loaded FAQ, and a match result."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Decision = Literal["answer", "escalate", "ambiguous"]
Kind = Literal["answer", "small_talk"]
KINDS: tuple[Kind, ...] = ("answer", "small_talk")
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy", "at_risk")


@dataclass(frozen=True, slots=True)
class FaqEntry:
    """One canned answer and the phrasings that should reach it.

    `answers` maps a language code ("en", "it", "th") to text; an entry written with a plain
    string answer has it under "default". `stage` is the lifecycle stage the question hints at.
    `escalate` entries are recognised but always handed to a person (e.g. "I want to speak to a
    manager" or legal threats). `negatives` are phrasings that must NOT match this entry.
    `kind: small_talk` entries are greetings, thanks and the like: answered with their (short,
    possibly empty) answer, never escalated and never counted as a gap in the FAQ.
    """

    id: str
    questions: tuple[str, ...]
    answers: Mapping[str, str]
    stage: str | None = None
    tags: tuple[str, ...] = ()
    escalate: bool = False
    negatives: tuple[str, ...] = ()
    kind: Kind = "answer"
    #: the answer when the customer's order is known (`$order_number`, `$tracking_url`...),
    #: by language; `answers` stays the fallback for customers without one
    order_answers: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    line: int = 0

    def answer_for(
        self, lang: str, default_lang: str = "en", variables: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        """The answer in `lang` if the entry has it, else in the default; returns (text, lang).

        `$name` / `${name}` placeholders are filled from `variables`; unknown ones stay as written.
        A small-talk entry without an answer gives ("", lang): nothing to say.
        """
        if not self.answers:
            return "", lang
        answers = self.answers
        if self.order_answers and variables and variables.get("order_number"):
            answers = self.order_answers
        for candidate in (lang, default_lang, "default"):
            if candidate in answers:
                text = answers[candidate]
                used = default_lang if candidate == "default" else candidate
                break
        else:
            used, text = next(iter(answers.items()))
        if variables:
            text = string.Template(text).safe_substitute(variables)
        return text, used


@dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    score: float


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Best entry (or None), its score in [0, 1], the decision, and the runners-up."""

    entry: FaqEntry | None
    score: float
    decision: Decision
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)

    @property
    def faq_id(self) -> str | None:
        return self.entry.id if self.entry else None

    @property
    def confident_answer(self) -> FaqEntry | None:
        """The entry to answer with: a confident match of an ordinary, answerable entry."""
        entry = self.entry
        if (entry is None or self.decision != "answer" or entry.escalate
                or entry.kind != "answer"):
            return None
        return entry

    @property
    def small_talk(self) -> FaqEntry | None:
        entry = self.entry
        return entry if entry is not None and entry.kind == "small_talk" and \
            self.decision == "answer" else None
