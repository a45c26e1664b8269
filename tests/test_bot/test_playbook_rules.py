"""What a due step becomes, rule by rule, table-driven: the rules are pure, so every case is
one line (the HTTP tests show the same rules end to end)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.playbook_rules import NO_TEMPLATE, Due, Target, judge, quiet_end
from bot.playbooks import Conditions, Playbook, Step, Template, Trigger

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
STEP = Step(index=1, trigger=Trigger("order", "delivered"), delay=timedelta(0),
            kind="transactional", message={"en": "hi"},
            stop=("replied", "ordered", "opted_out", "staff_owns"))
MARKETING = replace(STEP, kind="marketing")
BOOK = Playbook("p", (STEP,))
CHANNELS = frozenset({"telegram", "slack", "whatsapp", "email", "webchat"})


def due(step: Step = STEP, **values: Any) -> Due:
    target = values.pop("target", Target("email", "a@b.test", 1, wrote_first=True))
    values.setdefault("channels", CHANNELS)
    return Due(job=None, playbook=values.pop("playbook", BOOK), step=step, now=NOW,
               target=target, language="en", **values)


def whatsapp(last_inbound: timedelta | None) -> Target:
    return Target("whatsapp", "+1555", 1,
                  last_inbound_at=None if last_inbound is None else NOW - last_inbound,
                  wrote_first=last_inbound is not None)


@pytest.mark.parametrize(("case", "verdict"), [
    (due(), None),
    (due(step=None), ("cancelled", "the step is no longer in the playbooks file")),
    (due(playbook=replace(BOOK, enabled=False)), ("cancelled", "the playbook is disabled")),
    (due(do_not_contact=True), ("cancelled", "do not contact")),
    (due(replied=True), ("cancelled", "stop: replied")),
    (due(replied=True, opted_out=True), ("cancelled", "stop: opted_out")),
    (due(ordered=True), ("cancelled", "stop: ordered")),
    (due(replace(STEP, stop=()), replied=True), None),
    (due(target=Target("telegram", "7", 1, status="human", wrote_first=True)),
     ("cancelled", "stop: staff_owns")),
    (due(target=Target("telegram", "7", 1, status="waiting", wrote_first=True)), None),
    (due(target=None), ("skipped", "no channel to reach the customer on")),
    (due(channels=frozenset({"webchat"})), ("skipped", "channel email is not configured")),
    (due(replace(STEP, conditions=Conditions(min_orders=2, stage=("retention",))),
         orders_count=1, stage="purchase"),
     ("skipped", "conditions do not hold: stage, min_orders")),
    (due(replace(STEP, conditions=Conditions(min_csat=4)), last_csat=5), None),
    (due(replace(STEP, conditions=Conditions(max_csat=2))),
     ("skipped", "conditions do not hold: max_csat")),
    (due(MARKETING), ("skipped", "no marketing opt-in on email")),
    (due(MARKETING, opted_in=True), None),
    (due(MARKETING, opted_in=True, marketing_sent_week=2, cap=2),
     ("skipped", "frequency cap: 2 marketing messages in 7 days")),
    (due(STEP, marketing_sent_week=9, cap=2), None),  # the cap is for marketing
    (due(target=Target("telegram", "7", 1, wrote_first=False)),
     ("skipped", "the customer never wrote on telegram first")),
    (due(target=Target("slack", "U1", 1, wrote_first=False)),
     ("skipped", "the customer never wrote on slack first")),
    (due(target=whatsapp(timedelta(hours=23))), None),
    (due(target=whatsapp(timedelta(hours=25))), ("skipped", NO_TEMPLATE)),
    (due(target=whatsapp(None)), ("skipped", NO_TEMPLATE)),
    (due(replace(STEP, whatsapp_template=Template("HX1")), target=whatsapp(None)), None),
])
def test_the_first_rule_that_speaks_decides(case: Due,
                                            verdict: tuple[str, str] | None) -> None:
    found = judge(case)
    assert (None if found is None else (found.state, found.reason)) == verdict


def test_a_checkout_completed_cancels_the_abandoned_cart_step() -> None:
    step = replace(STEP, trigger=Trigger("checkout_abandoned"))
    found = judge(due(step, checkout_completed=True))
    assert found is not None and found.reason == "the checkout was completed"


ROME = ZoneInfo("Europe/Rome")


@pytest.mark.parametrize(("utc", "quiet", "end"), [
    ("2026-03-02T20:30", (time(21), time(9)), "2026-03-03T08:00"),  # 21:30 Rome
    ("2026-03-02T07:00", (time(21), time(9)), "2026-03-02T08:00"),  # 08:00 Rome
    ("2026-03-02T08:00", (time(21), time(9)), None),  # 09:00 Rome: over
    ("2026-03-02T12:00", (time(21), time(9)), None),
    ("2026-03-02T12:30", (time(13), time(14)), "2026-03-02T13:00"),  # a lunch break
    ("2026-07-01T19:30", (time(21), time(9)), "2026-07-02T07:00"),  # summer time
])
def test_quiet_hours_end_in_the_stores_time_zone(utc: str, quiet: tuple[time, time],
                                                 end: str | None) -> None:
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    found = quiet_end(now, quiet, ROME)
    assert found == (None if end is None else datetime.fromisoformat(end).replace(tzinfo=UTC))


def test_a_step_due_in_quiet_hours_is_moved_not_dropped() -> None:
    found = judge(replace(due(), now=datetime(2026, 3, 2, 22, 0, tzinfo=UTC),
                          quiet=(time(21), time(9)), tz=ROME))
    assert found is not None and found.state == "scheduled"
    assert found.due_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
