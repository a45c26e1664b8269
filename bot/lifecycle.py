"""Lifecycle stage of a conversation, from rules admins edit (bot/data/lifecycle.yaml).

The rules are data; this module only evaluates them. The result carries a human-readable
reason, stored with every stage change so admins can see why a customer moved.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import CustomerFacts
from bot.db.models import Conversation, Customer, StageChange
from bot.errors import ConfigError
from faq.models import STAGES

log = logging.getLogger(__name__)
FUNNEL = {"awareness": 0, "consideration": 1, "purchase": 2, "retention": 3, "advocacy": 4}
_CONDITIONS = {"keywords", "faq_stage", "orders_min", "orders_max", "spend_min",
               "days_since_last_order_min", "days_since_last_order_max", "no_stage", "event"}


@dataclass(frozen=True, slots=True)
class Rule:
    stage: str
    reason: str
    override: bool = False
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    faq_stage: tuple[str, ...] = ()
    orders_min: int | None = None
    orders_max: int | None = None
    spend_min: float | None = None
    days_since_last_order_min: float | None = None
    days_since_last_order_max: float | None = None
    no_stage: bool = False
    event: str | None = None


@dataclass(frozen=True, slots=True)
class StageSignal:
    """Everything a rule may look at for one event."""

    event: str  # "message" or "order"
    text: str = ""
    language: str | None = None
    faq_stage: str | None = None
    facts: CustomerFacts = field(default_factory=CustomerFacts)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class StageDecision:
    stage: str
    reason: str


def _keyword_pattern(words: Sequence[str], lang: str) -> re.Pattern[str]:
    escaped = [re.escape(w.lower()) for w in words]
    if lang == "th":  # Thai has no spaces between words: substring match
        return re.compile("|".join(escaped))
    return re.compile(r"(?<!\w)(?:" + "|".join(escaped) + r")")


class LifecycleRules:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._patterns = {
            (i, lang): _keyword_pattern(words, lang)
            for i, rule in enumerate(self.rules) for lang, words in rule.keywords.items() if words
        }

    @classmethod
    def from_file(cls, path: Path) -> LifecycleRules:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read lifecycle rules: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise ConfigError(f"{path}: expected a mapping with a 'rules' list")
        return cls([_parse_rule(path, i, raw) for i, raw in enumerate(data["rules"], 1)])

    def decide(self, current: str | None, signal: StageSignal) -> StageDecision | None:
        """The new stage and why, or None when the stage stays as it is."""
        for i, rule in enumerate(self.rules):
            if not self._matches(i, rule, current, signal):
                continue
            if rule.stage == current:
                return None
            if not rule.override and not _may_move(current, rule.stage):
                continue
            return StageDecision(rule.stage, rule.reason)
        return None

    def _matches(self, i: int, rule: Rule, current: str | None, s: StageSignal) -> bool:
        f = s.facts
        checks = (
            rule.event is None or rule.event == s.event,
            not rule.no_stage or current is None,
            not rule.faq_stage or s.faq_stage in rule.faq_stage,
            rule.orders_min is None or f.orders_count >= rule.orders_min,
            rule.orders_max is None or f.orders_count <= rule.orders_max,
            rule.spend_min is None or f.total_spent >= rule.spend_min,
        )
        if not all(checks):
            return False
        if rule.days_since_last_order_min is not None or rule.days_since_last_order_max is not None:
            if f.last_order_at is None:
                return False
            days = (s.now - f.last_order_at).total_seconds() / 86400
            if rule.days_since_last_order_min is not None and days < rule.days_since_last_order_min:
                return False
            if rule.days_since_last_order_max is not None and days > rule.days_since_last_order_max:
                return False
        if rule.keywords:
            text = s.text.lower()
            langs = [s.language] if s.language and s.language in rule.keywords \
                else list(rule.keywords)
            if not any((pat := self._patterns.get((i, lang))) and pat.search(text)
                       for lang in langs):
                return False
        return True


def _may_move(current: str | None, new: str) -> bool:
    if current is None:
        return True
    if current == "at_risk":
        return False
    if new == "at_risk":
        return True
    return FUNNEL.get(new, 0) > FUNNEL.get(current, 0)


def _parse_rule(path: Path, index: int, raw: Any) -> Rule:
    where = f"{path}: rule {index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - _CONDITIONS - {"stage", "reason", "override"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    stage = raw.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"{where}: stage must be one of {', '.join(STAGES)}, got {stage!r}")
    for hint in raw.get("faq_stage") or ():
        if hint not in STAGES:
            raise ConfigError(f"{where}: faq_stage {hint!r} is not a stage")
    keywords = raw.get("keywords") or {}
    if not isinstance(keywords, dict):
        raise ConfigError(f"{where}: keywords must map a language to a list of words")
    try:
        return Rule(
            stage=stage, reason=str(raw.get("reason") or f"rule {index}"),
            override=bool(raw.get("override", False)),
            keywords={str(k): tuple(str(w) for w in v) for k, v in keywords.items()},
            faq_stage=tuple(raw.get("faq_stage") or ()),
            orders_min=raw.get("orders_min"), orders_max=raw.get("orders_max"),
            spend_min=raw.get("spend_min"),
            days_since_last_order_min=raw.get("days_since_last_order_min"),
            days_since_last_order_max=raw.get("days_since_last_order_max"),
            no_stage=bool(raw.get("no_stage", False)), event=raw.get("event"),
        )
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class LifecycleStore:
    """The current rules; reloaded when the file changes, keeping the last good rules."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules = LifecycleRules.from_file(path)
        self.last_error: ConfigError | None = None

    def reload(self) -> bool:
        try:
            self.rules = LifecycleRules.from_file(self.path)
        except ConfigError as exc:
            self.last_error = exc
            log.warning("lifecycle rules not reloaded, keeping the previous ones: %s", exc)
            return False
        self.last_error = None
        log.info("lifecycle rules reloaded from %s (%d rules)", self.path, len(self.rules.rules))
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        async for _changes in awatch(self.path, stop_event=stop, debounce=300):
            self.reload()


async def record_stage_change(conn: AsyncConnection, *, conversation_id: int | None,
                              customer_id: int, old: str | None, new: str, reason: str) -> None:
    """Move a customer (and the conversation it happened in) to `new`, keeping the history."""
    CV, CU = Conversation.__table__.c, Customer.__table__.c
    now = datetime.now(UTC)
    await conn.execute(insert(StageChange.__table__).values(
        conversation_id=conversation_id, customer_id=customer_id, from_stage=old, to_stage=new,
        reason=reason[:500], created_at=now))
    if conversation_id is not None:
        await conn.execute(update(Conversation.__table__).where(CV.id == conversation_id)
                           .values(stage=new, updated_at=now))
    await conn.execute(update(Customer.__table__).where(CU.id == customer_id).values(stage=new))
