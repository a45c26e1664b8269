"""Routing rules and business hours (pure), then routed escalations, out-of-hours notices and
re-posts of untaken escalations through the real service with a controlled clock."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.desk.routing import DAYS, DEFAULT_ROUTING, RoutingStore, load_routing, parse_routing
from core.errors import ConfigError
from tests.conftest import eventually, next_reply
from tests.fakes.slack import FakeSlack, send_event
from tests.test_desk.conftest import DESK_START, STAFF, card_of, escalation
from tests.test_desk.test_desk import HUMAN, reply_with, webchat

RULES = """
default_team: support
teams:
  support: {oncall: S0ONCALL, repost_after_minutes: 10}
  thai: {channel: CTHAI, timezone: Asia/Bangkok}
  retention: {channel: CKEEP}
  vip: {channel: CVIP}
  orders: {channel: CORDERS}
rules:
  - {team: retention, stage: [at_risk]}
  - {team: thai, language: th}
  - {team: orders, faq_tag: [orders]}
  - {team: vip, channel: [email], reason: [asked_for_human]}
"""
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def test_first_matching_rule_picks_the_team() -> None:
    r = parse_routing(yaml.safe_load(RULES))
    assert r.route({"language": "th", "stage": "at_risk"}).name == "retention"
    assert r.route({"language": "th", "stage": "purchase"}).channel == "CTHAI"
    assert r.route({"language": "en", "faq_tag": ["shipping", "orders"]}).name == "orders"
    assert r.route({"channel": "email", "reason": "asked_for_human"}).name == "vip"
    assert r.route({"channel": "email", "reason": "no_match"}).name == "support"
    assert r.route({}).name == "support" and r.route({}).channel is None
    assert r.channels() == {"CTHAI", "CKEEP", "CVIP", "CORDERS"}


def test_business_hours_in_the_team_timezone() -> None:
    r = parse_routing({"teams": {"it": {"timezone": "Europe/Rome", "hours": {
        "mon-fri": "09:00-12:30, 14:00-18:00", "sat": "10:00-13:00"}}}})
    team = r.team("it")
    # Monday 08:30 UTC = 09:30 in Rome (winter, UTC+1)
    assert team.is_open(MONDAY + timedelta(hours=8, minutes=30))
    assert not team.is_open(MONDAY + timedelta(hours=12))  # 13:00 lunch break
    assert team.next_open(MONDAY + timedelta(hours=12)) == MONDAY + timedelta(hours=13)
    friday_night = MONDAY + timedelta(days=4, hours=20)
    assert team.next_open(friday_night) == MONDAY + timedelta(days=5, hours=9)  # sat 10:00 Rome
    sunday = MONDAY + timedelta(days=6, hours=10)
    assert team.next_open(sunday) == MONDAY + timedelta(days=7, hours=8)
    assert team.out_of_hours_text(sunday, "it").count("lunedì 09:00") == 1
    assert "วันจันทร์ 09:00" in team.out_of_hours_text(sunday, "th")
    assert "Monday 09:00 (Europe/Rome time)" in team.out_of_hours_text(sunday, "en")
    assert r.team("unknown") is r.team("it")  # unknown names fall back to the default team


@pytest.mark.parametrize("bad, problem", [
    ({"teams": {"a": {}}, "rules": [{"team": "nope", "language": "en"}]}, "rule 1"),
    ({"teams": {"a": {}}, "rules": [{"team": "a", "colour": "red"}]}, "unknown condition"),
    ({"teams": {"a": {"timezone": "Mars/Olympus"}}}, "unknown timezone"),
    ({"teams": {"a": {"hours": {"mon": "18:00-09:00"}}}}, "ends before it starts"),
    ({"teams": {"a": {"hours": {"funday": "09:00-10:00"}}}}, "unknown day"),
    ({"teams": {"a": {}}, "default_team": "b"}, "default_team"),
])
def test_bad_rules_name_the_file_and_problem(tmp_path: Path, bad: Any, problem: str) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as err:
        load_routing(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_shipped_default_is_valid_and_edits_are_reloaded(tmp_path: Path) -> None:
    default = load_routing(DEFAULT_ROUTING)
    assert default.route({"language": "th"}).name == "support" and default.survey
    path = tmp_path / "routing.yaml"
    path.write_text(RULES)
    store = RoutingStore(path)
    assert store.routing.route({"language": "th"}).name == "thai"
    path.write_text(RULES.replace("language: th", "language: it"))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert store.routing.route({"language": "it"}).name == "thai"
    path.write_text("rules: [oops")  # a broken edit keeps the last good rules
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert store.routing.route({"language": "it"}).name == "thai"


async def test_thai_and_at_risk_customers_go_to_their_teams(start_desk: Any,
                                                            slack: FakeSlack) -> None:
    service, _ = await start_desk(RULES)
    session, thai = await webchat(service, "ขอคุยกับพนักงานหน่อยค่ะ")
    try:
        await next_reply(session, thai)
        await card_of(service, slack, "CTHAI")
        assert (await escalation(service)).team == "thai"
        angry, _ = await webchat(service, "This is a scam, terrible service. "
                                          "I want to talk to a human")
        await angry.close()
        await card_of(service, slack, "CKEEP")
        esc = await escalation(service)
        assert (esc.team, esc.staff_channel) == ("retention", "CKEEP")
        assert not [c for c in slack.posts(STAFF) if c.params.get("blocks")]
    finally:
        await session.close()


async def test_thread_replies_work_in_routed_channels(start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk(RULES)
    session, visitor = await webchat(service, "ขอคุยกับพนักงานหน่อยค่ะ")
    try:
        ts, _ = await card_of(service, slack, "CTHAI")
        assert await send_event(service, {"channel": "CTHAI", "user": "USTAFF", "ts": "8.1",
                                          "text": "สวัสดีค่ะ", "thread_ts": ts},
                                event_id="EvTh") == 200
        await reply_with(session, visitor, "สวัสดีค่ะ")
    finally:
        await session.close()


def _closed_until_day_after_tomorrow(now: datetime) -> tuple[str, datetime]:
    """Hours (UTC) that open only the day after tomorrow at 09:00; and that opening time."""
    day = (now + timedelta(days=2)).date()
    return DAYS[day.weekday()], datetime(day.year, day.month, day.day, 9, tzinfo=UTC)


async def test_out_of_hours_customer_is_told_and_repost_waits_for_opening(
        start_desk: Any, slack: FakeSlack) -> None:
    day, opens = _closed_until_day_after_tomorrow(DESK_START)
    rules = f"""
teams:
  support:
    oncall: S0ONCALL
    repost_after_minutes: 10
    hours: {{{day}: "09:00-17:00"}}
"""
    service, clock = await start_desk(rules)
    session, visitor = await webchat(service, HUMAN)
    try:
        weekday = opens.strftime("%A")
        notice = await eventually(lambda: _find(session, visitor, "Our team is away"),
                                  what="out-of-hours notice")
        assert f"from {weekday} 09:00 (UTC time)" in notice
        ts, card = await card_of(service, slack)
        assert "Outside team hours" in str(card.params["blocks"])

        assert service.desk is not None
        clock.fixed = opens + timedelta(minutes=9)  # the team opened 9 minutes ago
        assert await service.desk.check_untaken() == 0
        clock.fixed = opens + timedelta(minutes=11)
        assert await service.desk.check_untaken() == 1
        repost = await eventually(lambda: [c for c in slack.posts(STAFF, thread=ts)
                                         if "<!subteam^S0ONCALL>" in str(c.params["text"])],
                                  what="re-post")
        assert repost[0].params.get("reply_broadcast") in (True, "true", "1", 1)
        assert (await escalation(service)).reposted_at == clock.fixed
        assert await service.desk.check_untaken() == 0  # once
    finally:
        await session.close()


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_untaken_escalation_is_reposted_after_the_set_time(
        start_desk: Any, slack: FakeSlack) -> None:
    service, clock = await start_desk("teams: {support: {oncall: S0ONCALL, "
                                      "repost_after_minutes: 10}}")
    assert service.desk is not None
    session, _ = await webchat(service, HUMAN)
    try:
        ts, _ = await card_of(service, slack)
        clock.advance(minutes=9)
        assert await service.desk.check_untaken() == 0
        clock.advance(minutes=2)
        assert await service.desk.check_untaken() == 1
        await eventually(lambda: [c for c in slack.posts(STAFF, thread=ts)
                                if "nobody has taken escalation #1 for 11 min"
                                in str(c.params["text"])], what="re-post")
        await eventually(lambda: any("re-posted" in str(c["text"])
                                   for c in slack.calls_to("chat.update", ts=ts)),
                         what="card shows the re-post")
        # a taken escalation is never re-posted
        session2, _ = await webchat(service, "I want to talk to a human now")
        await session2.close()
        await card_of(service, slack, index=1)
        esc2 = await escalation(service)
        assert service.desk is not None
        async with service.db.write() as conn:
            await service.desk.take(conn, esc2.id, "USTAFF")
        clock.advance(minutes=30)
        assert await service.desk.check_untaken() == 0
    finally:
        await session.close()


async def _find(session: Any, visitor: str, needle: str) -> str | None:
    from tests.conftest import transcript
    return next((m["text"] for m in await transcript(session, visitor) if needle in m["text"]),
                None)


async def test_waiting_time_on_the_card_is_refreshed(start_desk: Any, slack: FakeSlack) -> None:
    service, clock = await start_desk()
    assert service.desk is not None
    session, _ = await webchat(service, HUMAN)
    try:
        ts, _ = await card_of(service, slack)
        assert await service.desk.refresh_waiting() == 0  # first seen now
        clock.advance(minutes=6)
        assert await service.desk.refresh_waiting() == 1
        await eventually(lambda: any("Waiting for 6 min" in str(c["text"])
                                   for c in slack.calls_to("chat.update", ts=ts)),
                         what="refreshed waiting time")
        assert await service.desk.refresh_waiting() == 0  # not again right away
    finally:
        await session.close()


def test_customer_value_priority_and_handover() -> None:
    r = parse_routing(yaml.safe_load("""
teams: {support: {repost_after_minutes: 15}, keep: {channel: CKEEP}}
rules:
  - {team: keep, stage: [at_risk], priority: true, repost_after_minutes: 5}
  - {team: support, spend_min: 500, orders_min: 2, priority: true}
handover:
  - {stage: [at_risk], faq_tag: [returns, complaint]}
  - {spend_min: 500, faq_tag: [returns]}
"""))
    at_risk = r.decide({"stage": "at_risk", "total_spent": 10.0})
    assert (at_risk.team.name, at_risk.priority) == ("keep", True)
    assert at_risk.reminder_after == timedelta(minutes=5)
    top = r.decide({"stage": "retention", "total_spent": 800.0, "orders_count": 3})
    assert (top.team.name, top.priority, top.reminder_after) == ("support", True,
                                                                  timedelta(minutes=15))
    plain = r.decide({"stage": "retention", "total_spent": 800.0, "orders_count": 1})
    assert not plain.priority and r.route({"total_spent": "lots"}).name == "support"
    assert r.hand_over({"stage": "at_risk", "faq_tag": ["complaint"]})
    assert r.hand_over({"total_spent": 501.0, "faq_tag": ["returns", "money"]})
    assert not r.hand_over({"stage": "retention", "faq_tag": ["returns"]})
    assert not r.hand_over({"stage": "at_risk", "faq_tag": ["shipping"]})
    for bad, message in (({"rules": [{"team": "support", "spend_min": "x"}]}, "spend_min"),
                         ({"rules": [{"team": "support", "repost_after_minutes": 0}]},
                          "repost_after_minutes"),
                         ({"handover": [{"vip": True}]}, "unknown condition")):
        with pytest.raises(ValueError, match=message):
            parse_routing({"teams": {"support": {}}, **bad})


def test_card_shows_priority_stage_and_orders() -> None:
    from bot.desk import cards

    data = cards.CardData(
        escalation_id=7, status="open", reason="order_problem", customer="Ann", channel="webchat",
        language="en", stage="at_risk", team="support", created_at=MONDAY, now=MONDAY,
        priority=True, orders_count=3, total_spent=640.5, currency="EUR",
        last_order=("A-1003", "fulfilled", MONDAY - timedelta(days=2)))
    text, blocks = cards.card(data)
    rendered = json.dumps(blocks, ensure_ascii=False)
    assert "🔥 Priority" in rendered and "*Stage*\\nat_risk" in rendered
    assert "3 orders · 640.50 EUR · last #A-1003 on 2026-11-21: fulfilled" in rendered
    plain = cards.card(cards.CardData(
        escalation_id=8, status="open", reason="no_match", customer="Bob", channel="webchat",
        language="en", stage=None, team=None, created_at=MONDAY, now=MONDAY))[1]
    assert "No orders on file" in json.dumps(plain) and "Priority" not in json.dumps(plain)
    assert text
