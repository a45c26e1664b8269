"""Lifecycle playbooks: what to send a customer, when, from a YAML file admins edit.

The file is composed to YAML nodes before it becomes Python values, as the FAQ loader does, so
a broken field is reported with its file and line (`playbooks.yaml:12: playbook 'win_back':
step 1: delay '3 days' is not a duration like 30s, 10m, 2h, 3d, 2w or 1mo`). Loading stops at
the first problem; the service keeps the last good playbooks when a reload fails.

A playbook has a trigger, optional conditions and stop conditions, and steps; a step may name
its own trigger, conditions and stops, and has a delay (from the trigger), a kind
(transactional or marketing) and a message per language with the FAQ answers' `$variables`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.surveys import SCALES
from core.errors import PlaybookError
from faq.models import STAGES

log = logging.getLogger(__name__)
ORDER_EVENTS = ("created", "paid", "fulfilled", "delivered", "cancelled")
TRIGGERS = ("stage_entered", "order", "checkout_abandoned", "bot_answered", "csat", "nps",
            "no_order_for", "points_expiring")
ASKS = tuple(SCALES)  # the rating questions a step may ask (bot/surveys.py)
KINDS = ("transactional", "marketing")
STOPS = ("replied", "ordered", "opted_out", "staff_owns")
CHANNELS = ("telegram", "slack", "whatsapp", "email", "webchat")
LANGUAGES = ("en", "it", "th")
CONDITIONS = ("stage", "channel", "language", "min_orders", "max_orders", "min_spend",
              "min_csat", "max_csat")
PLAYBOOK_KEYS = ("name", "trigger", "conditions", "stop", "steps", "enabled")
STEP_KEYS = ("trigger", "delay", "conditions", "message", "subject", "kind", "stop",
             "whatsapp_template", "ask")
_DURATION = re.compile(r"^(\d{1,6})(s|m|h|d|w|mo)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def parse_duration(text: str) -> timedelta | None:
    """`30s`, `10m`, `2h`, `3d`, `2w`, `1mo` (30 days); None when it is not one."""
    m = _DURATION.match(text.strip())
    return None if m is None else timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: str  # one of TRIGGERS
    value: str | None = None  # the stage, or the order event
    after: timedelta | None = None  # no_order_for
    min: int | None = None  # csat / nps scores
    max: int | None = None

    def matches(self, kind: str, value: str | None = None, score: int | None = None) -> bool:
        if kind != self.kind or (self.value is not None and value != self.value):
            return False
        if self.min is None and self.max is None:
            return True
        return score is not None and (self.min is None or score >= self.min) \
            and (self.max is None or score <= self.max)


@dataclass(frozen=True, slots=True)
class Conditions:
    stage: tuple[str, ...] = ()
    channel: tuple[str, ...] = ()
    language: tuple[str, ...] = ()
    min_orders: int | None = None
    max_orders: int | None = None
    min_spend: float | None = None
    min_csat: int | None = None
    max_csat: int | None = None


@dataclass(frozen=True, slots=True)
class Template:
    """An approved WhatsApp template (ContentSid) and its variables ($name etc. allowed)."""

    content_sid: str
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    index: int  # 1-based, the step's key in playbook_job
    trigger: Trigger
    delay: timedelta
    kind: str
    message: Mapping[str, str]
    conditions: Conditions = field(default_factory=Conditions)
    stop: tuple[str, ...] = ()
    subject: Mapping[str, str] = field(default_factory=dict)
    whatsapp_template: Template | None = None
    #: the message asks for a rating (csat 1-5, nps 0-10); the answer is recorded
    ask: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class Playbook:
    name: str
    steps: tuple[Step, ...]
    enabled: bool = True
    line: int = 0

    def step(self, index: int) -> Step | None:
        return next((s for s in self.steps if s.index == index), None)


@dataclass(frozen=True, slots=True)
class Playbooks:
    playbooks: tuple[Playbook, ...] = ()

    def get(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)

    def steps_for(self, kind: str, value: str | None = None,
                  score: int | None = None) -> list[tuple[Playbook, Step]]:
        """The enabled steps an event starts."""
        return [(p, s) for p in self.playbooks if p.enabled for s in p.steps
                if s.trigger.matches(kind, value, score)]

    def uses(self, kind: str) -> bool:
        """Some enabled step starts on this trigger kind (sweeps for no one are skipped)."""
        return any(s.trigger.kind == kind for p in self.playbooks if p.enabled for s in p.steps)

    def idle_triggers(self) -> list[timedelta]:
        """The distinct `no_order_for` durations, for the sweep."""
        return sorted({s.trigger.after for p in self.playbooks if p.enabled for s in p.steps
                       if s.trigger.kind == "no_order_for" and s.trigger.after is not None})


# --- reading the file ---------------------------------------------------------------------------

class _Reader:
    """Turns nodes into values, raising PlaybookError with the node's line."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, node: yaml.Node | None, problem: str) -> PlaybookError:
        return PlaybookError(self.path, node.start_mark.line + 1 if node else None, problem)

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]
                ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in allowed:
                raise self.fail(key, f"{what}: unknown key {name!r}; allowed: "
                                     f"{', '.join(allowed)}")
            out[str(name)] = value
        return out

    def text(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            raise self.fail(node, f"{what} must be a non-empty text")
        return str(node.value).strip()

    def names(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for item in items:
            value = self.text(item, what)
            if value not in allowed:
                raise self.fail(item, f"{what} {value!r} is not one of {', '.join(allowed)}")
            out.append(value)
        return tuple(out)

    def number(self, node: yaml.Node, what: str, *, integer: bool = True) -> Any:
        value: Any = yaml.safe_load(node.value) if isinstance(node, yaml.ScalarNode) else None
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or value < 0:
            kind = "a whole number" if integer else "a number"
            raise self.fail(node, f"{what} must be {kind} (0 or more)")
        return value

    def flag(self, node: yaml.Node, what: str) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":bool"):
            return bool(yaml.safe_load(node.value))
        raise self.fail(node, f"{what} must be true or false")

    def languages(self, node: yaml.Node, what: str) -> dict[str, str]:
        fields = self.mapping(node, what, LANGUAGES)
        if not fields:
            raise self.fail(node, f"{what} needs at least one language (en, it, th)")
        return {lang: self.text(value, f"{what} in {lang!r}") for lang, value in fields.items()}


def _trigger(r: _Reader, node: yaml.Node, what: str) -> Trigger:
    if isinstance(node, yaml.ScalarNode):
        kind = r.text(node, what)
        if kind not in ("checkout_abandoned", "bot_answered", "points_expiring", "csat", "nps"):
            raise r.fail(node, f"{what} {kind!r} must be one of checkout_abandoned, "
                               "bot_answered, points_expiring, csat, nps, or a mapping such "
                               "as {order: delivered}")
        return Trigger(kind)
    fields = r.mapping(node, what, TRIGGERS)
    if len(fields) != 1:
        raise r.fail(node, f"{what} must name exactly one trigger")
    kind, value = next(iter(fields.items()))
    label = f"{what} {kind}"
    if kind == "stage_entered":
        return Trigger(kind, r.names(value, label, STAGES)[0])
    if kind == "order":
        return Trigger(kind, r.names(value, label, ORDER_EVENTS)[0])
    if kind == "no_order_for":
        after = _duration(r, value, label)
        return Trigger(kind, str(int(after.total_seconds())), after=after)
    if kind in ("csat", "nps"):
        scores = r.mapping(value, label, ("min", "max"))
        return Trigger(kind, min=r.number(scores["min"], f"{label} min") if "min" in scores
                       else None,
                       max=r.number(scores["max"], f"{label} max") if "max" in scores else None)
    return Trigger(kind)


def _duration(r: _Reader, node: yaml.Node, what: str) -> timedelta:
    text = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
    found = parse_duration(text)
    if found is None:
        raise r.fail(node, f"{what} {text!r} is not a duration like 30s, 10m, 2h, 3d, 2w or 1mo")
    return found


def _conditions(r: _Reader, node: yaml.Node | None, what: str) -> Conditions:
    if node is None:
        return Conditions()
    f = r.mapping(node, what, CONDITIONS)
    num = {k: r.number(f[k], f"{what} {k}", integer=k != "min_spend")
           for k in ("min_orders", "max_orders", "min_spend", "min_csat", "max_csat") if k in f}
    return Conditions(
        stage=r.names(f["stage"], f"{what} stage", STAGES) if "stage" in f else (),
        channel=r.names(f["channel"], f"{what} channel", CHANNELS) if "channel" in f else (),
        language=r.names(f["language"], f"{what} language", LANGUAGES)
        if "language" in f else (), **num)


def _template(r: _Reader, node: yaml.Node, what: str) -> Template:
    f = r.mapping(node, what, ("content_sid", "variables"))
    if "content_sid" not in f:
        raise r.fail(node, f"{what} needs content_sid (the approved template's HX... id)")
    sid = r.text(f["content_sid"], f"{what} content_sid")
    variables: dict[str, str] = {}
    if "variables" in f:
        v = f["variables"]
        if not isinstance(v, yaml.MappingNode):
            raise r.fail(v, f"{what} variables must map a number to a text")
        for key, value in v.value:
            variables[r.text(key, f"{what} variable")] = r.text(value, f"{what} variable")
    return Template(sid, variables)


def _step(r: _Reader, node: yaml.Node, index: int, label: str,
          defaults: tuple[Trigger | None, Conditions, tuple[str, ...]]) -> Step:
    what = f"{label}: step {index}"
    f = r.mapping(node, what, STEP_KEYS)
    trigger = _trigger(r, f["trigger"], f"{what}: trigger") if "trigger" in f else defaults[0]
    if trigger is None:
        raise r.fail(node, f"{what}: no trigger (give the playbook or the step one)")
    if "message" not in f:
        raise r.fail(node, f"{what}: missing 'message' (a text per language: en, it, th)")
    kind = r.names(f["kind"], f"{what}: kind", KINDS)[0] if "kind" in f else None
    if kind is None:
        raise r.fail(node, f"{what}: missing 'kind' (transactional or marketing)")
    return Step(
        index=index, trigger=trigger,
        delay=_duration(r, f["delay"], f"{what}: delay") if "delay" in f else timedelta(0),
        kind=kind, message=r.languages(f["message"], f"{what}: message"),
        conditions=_conditions(r, f.get("conditions"), f"{what}: conditions")
        if "conditions" in f else defaults[1],
        stop=r.names(f["stop"], f"{what}: stop", STOPS) if "stop" in f else defaults[2],
        subject=r.languages(f["subject"], f"{what}: subject") if "subject" in f else {},
        whatsapp_template=_template(r, f["whatsapp_template"], f"{what}: whatsapp_template")
        if "whatsapp_template" in f else None,
        ask=r.names(f["ask"], f"{what}: ask", ASKS)[0] if "ask" in f else None,
        line=node.start_mark.line + 1)


def _playbook(r: _Reader, node: yaml.Node, seen: set[str]) -> Playbook:
    f = r.mapping(node, "a playbook", PLAYBOOK_KEYS)
    if "name" not in f:
        raise r.fail(node, "a playbook needs a name")
    name = r.text(f["name"], "name")
    if not _NAME.match(name):
        raise r.fail(f["name"], f"name {name!r} must be lowercase letters, digits, '_' or '-'")
    if name in seen:
        raise r.fail(f["name"], f"playbook {name!r} is defined twice")
    seen.add(name)
    label = f"playbook {name!r}"
    defaults = (_trigger(r, f["trigger"], f"{label}: trigger") if "trigger" in f else None,
                _conditions(r, f.get("conditions"), f"{label}: conditions"),
                r.names(f["stop"], f"{label}: stop", STOPS) if "stop" in f else ())
    steps = f.get("steps")
    if not isinstance(steps, yaml.SequenceNode) or not steps.value:
        raise r.fail(steps or node, f"{label}: 'steps' must be a non-empty list")
    return Playbook(name, tuple(_step(r, s, i, label, defaults)
                                for i, s in enumerate(steps.value, 1)),
                    enabled=r.flag(f["enabled"], f"{label}: enabled") if "enabled" in f
                    else True, line=node.start_mark.line + 1)


def load_playbooks(path: Path) -> Playbooks:
    """Every playbook of the file; PlaybookError (file, line, problem) at the first problem."""
    r = _Reader(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise PlaybookError(str(path), mark.line + 1 if mark else None,
                            f"YAML syntax error: {exc.problem}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PlaybookError(str(path), None, f"cannot read the playbooks: {exc}") from None
    if root is None:
        return Playbooks()
    top = r.mapping(root, "the file", ("playbooks",))
    items = top.get("playbooks")
    if items is None or (isinstance(items, yaml.ScalarNode) and items.tag.endswith(":null")):
        return Playbooks()
    if not isinstance(items, yaml.SequenceNode):
        raise r.fail(items, "'playbooks' must be a list")
    seen: set[str] = set()
    return Playbooks(tuple(_playbook(r, item, seen) for item in items.value))


class PlaybookStore:
    """The current playbooks; reloaded when the file changes, keeping the last good ones.
    Without a file there are none, and nothing is ever sent."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.playbooks = load_playbooks(path) if path is not None else Playbooks()
        self.last_error: PlaybookError | None = None

    def reload(self) -> bool:
        if self.path is None:
            return False
        try:
            self.playbooks = load_playbooks(self.path)
        except PlaybookError as exc:
            self.last_error = exc
            log.warning("playbooks not reloaded, keeping the previous ones: %s", exc)
            return False
        self.last_error = None
        log.info("playbooks reloaded from %s (%d playbooks)", self.path,
                 len(self.playbooks.playbooks))
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        if self.path is None:
            return
        from watchfiles import awatch

        async for _changes in awatch(self.path, stop_event=stop, debounce=300):
            self.reload()
