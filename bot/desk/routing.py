"""Which staff team (Slack channel) gets an escalation, and when that team is at work.

The rules live in a YAML file admins edit (DESK_ROUTING_FILE, default bot/data/routing.yaml,
documented there). It is re-read when it changes; a broken edit keeps the last good rules and
logs the problem. Times are computed with an injected `now`, so tests control the clock.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from core.errors import ConfigError
from core.hours import OpeningHours
from core.phrases import text_for, weekday_name

log = logging.getLogger(__name__)
DEFAULT_ROUTING = Path(__file__).resolve().parent.parent / "data" / "routing.yaml"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
CONDITIONS = ("language", "stage", "faq_tag", "channel", "reason")
#: conditions on the customer's value: the fact must be at least this much
AMOUNTS = ("spend_min", "orders_min")
_AMOUNT_FACTS = {"spend_min": "total_spent", "orders_min": "orders_count"}
#: what a rule may set besides the team
OUTCOMES = ("priority", "repost_after_minutes")

@dataclass(frozen=True, slots=True)
class Team:
    """A group of staff: its Slack channel, on-call group, timezone and weekly hours."""

    name: str
    channel: str | None = None  # None = SLACK_STAFF_CHANNEL
    oncall: str | None = None  # Slack user group id (S...), mentioned on re-post
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    #: weekday (0 = Monday) -> opening windows; None = always open
    hours: Mapping[int, tuple[tuple[time, time], ...]] | None = None
    repost_after: timedelta = timedelta(minutes=15)

    @property
    def opening(self) -> OpeningHours:
        return OpeningHours(self.tz, self.hours)

    def is_open(self, now: datetime) -> bool:
        return self.opening.is_open(now)

    def next_open(self, now: datetime) -> datetime:
        """`now` if the team is at work, else the start of its next opening window (UTC)."""
        return self.opening.next_open(now)

    def out_of_hours_text(self, now: datetime, lang: str) -> str:
        opens = self.next_open(now).astimezone(self.tz)
        when = f"{weekday_name(opens.weekday(), lang)} {opens:%H:%M}"
        return text_for("out_of_hours", lang).format(when=when, tz=self.tz.key)


@dataclass(frozen=True, slots=True)
class Rule:
    """Conditions (all must hold) and what they decide. Facts: language, stage (the
    customer's), faq_tag, channel, reason, total_spent, orders_count."""

    team: str | None
    when: Mapping[str, frozenset[str]]
    amounts: Mapping[str, float] = field(default_factory=dict)
    priority: bool = False
    repost_after: timedelta | None = None

    def matches(self, facts: Mapping[str, Any]) -> bool:
        for key, wanted in self.when.items():
            value = facts.get(key)
            values = set(value) if isinstance(value, (list, tuple, set, frozenset)) else {value}
            if not values & wanted:
                return False
        for key, least in self.amounts.items():
            value = facts.get(_AMOUNT_FACTS[key])
            if not isinstance(value, (int, float)) or value < least:
                return False
        return True


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where an escalation goes, whether it is marked priority, and when to remind on-call."""

    team: Team
    priority: bool = False
    repost_after: timedelta | None = None  # None: the team's own repost_after

    @property
    def reminder_after(self) -> timedelta:
        return self.repost_after if self.repost_after is not None else self.team.repost_after


@dataclass(frozen=True, slots=True)
class Routing:
    teams: Mapping[str, Team]
    rules: tuple[Rule, ...]
    default_team: str
    survey: bool = True
    survey_hours: float = 24.0
    handover: tuple[Rule, ...] = ()

    def route(self, facts: Mapping[str, Any]) -> Team:
        """The first rule whose conditions all hold picks the team; else the default team."""
        return self.decide(facts).team

    def decide(self, facts: Mapping[str, Any]) -> RouteDecision:
        """The first matching rule's team, priority mark and reminder time."""
        for rule in self.rules:
            if rule.matches(facts):
                return RouteDecision(self.teams[rule.team or self.default_team], rule.priority,
                                     rule.repost_after)
        return RouteDecision(self.teams[self.default_team])

    def hand_over(self, facts: Mapping[str, Any]) -> bool:
        """Whether a person should answer instead of the bot (a `handover` rule holds), e.g. an
        at-risk or top-spend customer asking about a refund or complaining."""
        return any(rule.matches(facts) for rule in self.handover)

    def team(self, name: str | None) -> Team:
        return self.teams.get(name or "", self.teams[self.default_team])

    def channels(self) -> set[str]:
        return {t.channel for t in self.teams.values() if t.channel}


def parse_days(spec: str) -> list[int]:
    spec = spec.strip().lower()
    if spec in ("daily", "every day", "all"):
        return list(range(7))
    days: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = (p.strip()[:3] for p in part.split("-", 1))
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"unknown day range {part!r}")
            i, j = DAYS.index(a), DAYS.index(b)
            days.extend(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part[:3] in DAYS:
            days.append(DAYS.index(part[:3]))
        else:
            raise ValueError(f"unknown day {part!r}")
    return days


def parse_ranges(spec: Any) -> tuple[tuple[time, time], ...]:
    parts = spec if isinstance(spec, list) else str(spec).split(",")
    out = []
    for part in parts:
        m = _RANGE.match(str(part))
        if not m:
            raise ValueError(f"hours must look like 09:00-18:00, got {part!r}")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start = time(h1, m1)
        end = time(0) if (h2, m2) == (24, 0) else time(h2, m2)
        if end != time(0) and end <= start:
            raise ValueError(f"{part!r} ends before it starts")
        out.append((start, end))
    return tuple(out)


def _team(name: str, raw: Any) -> Team:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValueError(f"team {name!r} must be a mapping")
    try:
        tz = ZoneInfo(str(raw.get("timezone", "UTC")))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"team {name!r}: unknown timezone {raw.get('timezone')!r}") from None
    hours: dict[int, tuple[tuple[time, time], ...]] | None = None
    if raw.get("hours"):
        if not isinstance(raw["hours"], dict):
            raise ValueError(f"team {name!r}: hours must map days to times")
        hours = {}
        for days, ranges in raw["hours"].items():
            for d in parse_days(str(days)):
                hours[d] = hours.get(d, ()) + parse_ranges(ranges)
    return Team(name=name, channel=raw.get("channel") or None, oncall=raw.get("oncall") or None,
                tz=tz, hours=hours,
                repost_after=timedelta(minutes=float(raw.get("repost_after_minutes", 15))))


def parse_routing(data: Any) -> Routing:
    if not isinstance(data, dict):
        raise ValueError("the file must be a mapping with teams and rules")
    teams_raw = data.get("teams") or {"support": {}}
    if not isinstance(teams_raw, dict):
        raise ValueError("teams must be a mapping of team name to settings")
    teams = {str(n): _team(str(n), t) for n, t in teams_raw.items()}
    default = str(data.get("default_team") or next(iter(teams)))
    if default not in teams:
        raise ValueError(f"default_team {default!r} is not one of the teams")
    rules = []
    for i, r in enumerate(data.get("rules") or (), start=1):
        if not isinstance(r, dict) or r.get("team") not in teams:
            raise ValueError(f"rule {i}: needs a team that is listed under teams")
        rules.append(_rule(f"rule {i}", r, {"team", *OUTCOMES}))
    handover = []
    for i, r in enumerate(data.get("handover") or (), start=1):
        if not isinstance(r, dict) or not r:
            raise ValueError(f"handover rule {i}: needs conditions")
        handover.append(_rule(f"handover rule {i}", r, set()))
    survey = data.get("satisfaction_survey", {}) or {}
    return Routing(teams=teams, rules=tuple(rules), default_team=default,
                   survey=bool(survey.get("enabled", True)),
                   survey_hours=float(survey.get("answer_within_hours", 24)),
                   handover=tuple(handover))


def _rule(where: str, r: dict[str, Any], extra: set[str]) -> Rule:
    unknown = set(r) - {*extra, *CONDITIONS, *AMOUNTS}
    if unknown:
        raise ValueError(f"{where}: unknown condition(s) {sorted(unknown)}; "
                         f"use {', '.join((*CONDITIONS, *AMOUNTS))}")
    when = {k: frozenset(str(v) for v in _as_list(r[k])) for k in CONDITIONS if k in r}
    amounts = {}
    for key in AMOUNTS:
        if key in r:
            value = r[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}: {key} must be a number >= 0")
            amounts[key] = float(value)
    repost = r.get("repost_after_minutes")
    if repost is not None and (isinstance(repost, bool) or not isinstance(repost, (int, float))
                               or repost <= 0):
        raise ValueError(f"{where}: repost_after_minutes must be a number > 0")
    return Rule(team=r.get("team"), when=when, amounts=amounts,
                priority=bool(r.get("priority", False)),
                repost_after=timedelta(minutes=float(repost)) if repost is not None else None)


def _as_list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else [value]


def load_routing(path: Path) -> Routing:
    try:
        return parse_routing(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


class RoutingStore:
    """The current rules; re-reads the file when its modification time changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path or DEFAULT_ROUTING
        self._mtime = self._stat()
        self._routing = load_routing(self.path)  # a bad file stops start-up

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    @property
    def routing(self) -> Routing:
        mtime = self._stat()
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._routing = load_routing(self.path)
                log.info("desk routing reloaded from %s", self.path)
            except ConfigError as exc:
                log.error("desk routing not reloaded, keeping the previous rules: %s", exc)
        return self._routing
