"""Lifecycle stage of a customer, from rules admins edit (bot/data/lifecycle.yaml).

The rules are data; `LifecycleRules` only evaluates them. The stage belongs to the customer,
across channels and conversations: `apply_customer_stage` decides from the customer's stage
(never a conversation's), records the change with its from-stage, time and reason, and notes
the stage on the conversation it happened in. The result carries a human-readable reason so
admins can see why a customer moved.
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
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import CustomerFacts, customer_facts
from bot.db.models import Conversation, Customer, StageChange
from core.errors import ConfigError
from faq.models import STAGES

log = logging.getLogger(__name__)
FUNNEL = {"awareness": 0, "consideration": 1, "purchase": 2, "retention": 3, "advocacy": 4}
_CONDITIONS = {"keywords", "faq_stage", "orders_min", "orders_max", "spend_min",
               "days_since_last_order_min", "days_since_last_order_max", "no_stage", "event",
               "current_stage"}
#: events a rule may name: a customer message, the store's order data, the schedule
EVENTS = ("message", "order", "order_update", "cancel", "refund", "checkout", "customer",
          "schedule")
CV = Conversation.__table__.c
CU = Customer.__table__.c


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
    event: tuple[str, ...] = ()
    current_stage: tuple[str, ...] = ()

    @property
    def timed(self) -> bool:
        """A rule that may become true by time passing alone (no order for N days): the
        schedule evaluates these for silent customers."""
        return (self.days_since_last_order_min is not None and not self.keywords
                and not self.faq_stage and (not self.event or "schedule" in self.event))


@dataclass(frozen=True, slots=True)
class StageSignal:
    """Everything a rule may look at for one event."""

    event: str  # one of EVENTS
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

    def decide_scheduled(self, current: str | None, facts: CustomerFacts,
                         now: datetime) -> StageDecision | None:
        """What the time rules alone say about a customer nobody heard from."""
        signal = StageSignal("schedule", facts=facts, now=now)
        for i, rule in enumerate(self.rules):
            if not rule.timed or not self._matches(i, rule, current, signal):
                continue
            if rule.stage == current:
                return None
            if not rule.override and not _may_move(current, rule.stage):
                continue
            return StageDecision(rule.stage, rule.reason)
        return None

    @property
    def timed_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.timed)

    def _matches(self, i: int, rule: Rule, current: str | None, s: StageSignal) -> bool:
        f = s.facts
        checks = (
            not rule.event or s.event in rule.event,
            not rule.no_stage or current is None,
            not rule.current_stage or (current or "none") in rule.current_stage,
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
    events = _names(raw.get("event"))
    for event in events:
        if event not in EVENTS:
            raise ConfigError(f"{where}: event must be one of {', '.join(EVENTS)}, got {event!r}")
    currents = _names(raw.get("current_stage"))
    for name in currents:
        if name not in STAGES and name != "none":
            raise ConfigError(f"{where}: current_stage {name!r} is not a stage (or none)")
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
            no_stage=bool(raw.get("no_stage", False)), event=events, current_stage=currents,
        )
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


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


# --- the customer's stage in the database ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class StageChangeResult:
    """A change that was recorded: the customer moved from `old` to `new`."""

    customer_id: int
    conversation_id: int | None
    old: str | None
    new: str
    reason: str


async def record_customer_stage_change(
        conn: AsyncConnection, *, customer_id: int, old: str | None, new: str, reason: str,
        conversation_id: int | None = None, now: datetime | None = None) -> StageChangeResult:
    """Write one change of the customer's stage (from, to, time, reason) and note the new stage
    on the conversation it happened in, if any. The caller has read `old` from the customer
    row (see `apply_customer_stage`), so from_stage is the customer's, never a conversation's.
    """
    now = now or datetime.now(UTC)
    await conn.execute(insert(StageChange.__table__).values(
        conversation_id=conversation_id, customer_id=customer_id, from_stage=old, to_stage=new,
        reason=reason[:500], created_at=now))
    await conn.execute(update(Customer.__table__).where(CU.id == customer_id).values(stage=new))
    if conversation_id is not None:
        await conn.execute(update(Conversation.__table__).where(CV.id == conversation_id)
                           .values(stage=new, updated_at=now))
    return StageChangeResult(customer_id, conversation_id, old, new, reason[:500])


async def current_customer_stage(conn: AsyncConnection, customer_id: int) -> str | None:
    """The customer's stage, with the row locked until the transaction ends (PostgreSQL), so
    two workers deciding for the same customer at once cannot both move them."""
    row = (await conn.execute(select(CU.stage).where(CU.id == customer_id)
                              .with_for_update())).first()
    return None if row is None else row.stage


async def apply_customer_stage(
        conn: AsyncConnection, rules: LifecycleRules, *, customer_id: int, signal: StageSignal,
        conversation_id: int | None = None, reason_suffix: str = "",
        facts: CustomerFacts | None = None) -> StageChangeResult | None:
    """Evaluate the rules for one event against the *customer's* stage and record the change.

    `signal.facts` is replaced by the customer's order facts from the database unless `facts`
    is given; `signal.now` is the time of the change (pass the service clock's now). The
    conversation (if any) records the stage the customer had in it: a new conversation of a
    customer whose stage does not change gets the customer's stage without a change row.
    Returns the change, or None when the stage stays.
    """
    current = await current_customer_stage(conn, customer_id)
    facts = facts if facts is not None else await customer_facts(conn, customer_id)
    full = StageSignal(signal.event, text=signal.text, language=signal.language,
                       faq_stage=signal.faq_stage, facts=facts, now=signal.now)
    decision = rules.decide(current, full)
    if decision is None:
        if conversation_id is not None and current is not None:
            await conn.execute(update(Conversation.__table__).where(
                CV.id == conversation_id, CV.stage.is_(None)).values(stage=current))
        return None
    return await record_customer_stage_change(
        conn, customer_id=customer_id, old=current, new=decision.stage,
        reason=decision.reason + reason_suffix, conversation_id=conversation_id, now=signal.now)
