"""What happens to one due playbook step, decided when it is due: ordered small rules.

Each rule looks at the `Due` context (the job, its step, the customer, the channel it would go
out on) and returns a `Verdict` (cancel, skip, move) or None to pass; a step that passes them
all is sent. Stop conditions cancel (the step and, since they hold for the customer, the ones
after it when they come due); conditions, consent and channel rules skip with the reason;
quiet hours move the step to their end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.playbooks import Conditions, Playbook, Step

WINDOW = timedelta(hours=24)  # WhatsApp's customer-service window
FIRST_WRITE = ("telegram", "slack")  # only to customers who wrote there first
NO_TEMPLATE = "no approved template outside the 24-hour window"


@dataclass(frozen=True, slots=True)
class Target:
    """Where the message would go: an existing conversation, or one to open (id None)."""

    channel: str
    address: str
    conversation_id: int | None
    status: str = "bot"
    language: str | None = None
    last_inbound_at: datetime | None = None
    wrote_first: bool = False


@dataclass(frozen=True, slots=True)
class Due:
    job: Any  # the playbook_job row
    playbook: Playbook | None
    step: Step | None
    now: datetime
    stage: str | None = None
    language: str | None = None
    orders_count: int = 0
    total_spent: float = 0.0
    last_csat: int | None = None
    do_not_contact: bool = False
    replied: bool = False
    ordered: bool = False
    opted_out: bool = False
    opted_in: bool = False
    checkout_completed: bool = False
    marketing_sent_week: int = 0
    #: the step asks for a rating and the customer was asked that lately (bot/surveys.py)
    asked_lately: bool = False
    target: Target | None = None
    channels: frozenset[str] = frozenset()
    cap: int = 2
    quiet: tuple[time, time] | None = None
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))

    @property
    def window_open(self) -> bool:
        t = self.target
        return t is not None and t.last_inbound_at is not None \
            and self.now - t.last_inbound_at < WINDOW


@dataclass(frozen=True, slots=True)
class Verdict:
    state: str  # cancelled, skipped, scheduled (moved)
    reason: str
    due_at: datetime | None = None


Rule = Callable[[Due], Verdict | None]


def _cancel(reason: str) -> Verdict:
    return Verdict("cancelled", reason)


def _skip(reason: str) -> Verdict:
    return Verdict("skipped", reason)


def step_gone(d: Due) -> Verdict | None:
    if d.playbook is None or d.step is None:
        return _cancel("the step is no longer in the playbooks file")
    return None if d.playbook.enabled else _cancel("the playbook is disabled")


def not_to_be_contacted(d: Due) -> Verdict | None:
    return _cancel("do not contact") if d.do_not_contact else None


def stopped(d: Due) -> Verdict | None:
    assert d.step is not None
    staff = d.target is not None and d.target.status == "human"
    holds = {"opted_out": d.opted_out, "replied": d.replied, "ordered": d.ordered,
             "staff_owns": staff}
    for stop in ("opted_out", "staff_owns", "ordered", "replied"):  # the telling reason first
        if stop in d.step.stop and holds[stop]:
            return _cancel(f"stop: {stop}")
    return None


def checkout_completed(d: Due) -> Verdict | None:
    assert d.step is not None
    if d.step.trigger.kind == "checkout_abandoned" and d.checkout_completed:
        return _cancel("the checkout was completed")
    return None


def no_target(d: Due) -> Verdict | None:
    if d.target is None:
        return _skip("no channel to reach the customer on")
    if d.target.channel not in d.channels:
        return _skip(f"channel {d.target.channel} is not configured")
    return None


def conditions_fail(d: Due) -> Verdict | None:
    assert d.step is not None and d.target is not None
    c: Conditions = d.step.conditions
    checks = (
        ("stage", not c.stage or d.stage in c.stage),
        ("channel", not c.channel or d.target.channel in c.channel),
        ("language", not c.language or d.language in c.language),
        ("min_orders", c.min_orders is None or d.orders_count >= c.min_orders),
        ("max_orders", c.max_orders is None or d.orders_count <= c.max_orders),
        ("min_spend", c.min_spend is None or d.total_spent >= c.min_spend),
        ("min_csat", c.min_csat is None or (d.last_csat or 0) >= c.min_csat),
        ("max_csat", c.max_csat is None or (d.last_csat is not None
                                            and d.last_csat <= c.max_csat)),
    )
    failed = [name for name, ok in checks if not ok]
    return _skip(f"conditions do not hold: {', '.join(failed)}") if failed else None


def no_consent(d: Due) -> Verdict | None:
    assert d.step is not None and d.target is not None
    if d.step.kind == "marketing" and not d.opted_in:
        return _skip(f"no marketing opt-in on {d.target.channel}")
    return None


def channel_rules(d: Due) -> Verdict | None:
    assert d.step is not None and d.target is not None
    t = d.target
    if t.channel in FIRST_WRITE and not t.wrote_first:
        return _skip(f"the customer never wrote on {t.channel} first")
    if t.channel == "whatsapp" and not d.window_open and d.step.whatsapp_template is None:
        return _skip(NO_TEMPLATE)
    return None


def asked_lately(d: Due) -> Verdict | None:
    assert d.step is not None
    if d.step.ask is not None and d.asked_lately:
        return _skip(f"asked for a {d.step.ask} rating lately")
    return None


def quiet_hours(d: Due) -> Verdict | None:
    end = quiet_end(d.now, d.quiet, d.tz)
    return None if end is None else Verdict("scheduled", "moved out of quiet hours", end)


def capped(d: Due) -> Verdict | None:
    assert d.step is not None
    if d.step.kind == "marketing" and d.marketing_sent_week >= d.cap:
        return _skip(f"frequency cap: {d.marketing_sent_week} marketing messages in 7 days")
    return None


RULES: tuple[Rule, ...] = (step_gone, not_to_be_contacted, stopped, checkout_completed,
                           no_target, conditions_fail, no_consent, channel_rules, asked_lately,
                           quiet_hours, capped)


def judge(due: Due, rules: Sequence[Rule] = RULES) -> Verdict | None:
    """The first rule's verdict, or None: send it."""
    for rule in rules:
        verdict = rule(due)
        if verdict is not None:
            return verdict
    return None


def quiet_end(now: datetime, quiet: tuple[time, time] | None, tz: ZoneInfo) -> datetime | None:
    """The end of the quiet hours `now` falls in (aware UTC), or None outside them."""
    if quiet is None:
        return None
    start, end = quiet
    local = now.astimezone(tz)
    at = local.time()
    inside = (start <= at < end) if start < end else (at >= start or at < end)
    if not inside:
        return None
    day = local.date() if at < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=tz).astimezone(now.tzinfo)
