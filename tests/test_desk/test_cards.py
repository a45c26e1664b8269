"""The escalation card as staff read it in Slack: who, what was said, what they can do."""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from bot.app import Service
from bot.desk import cards
from tests.conftest import eventually, next_reply, signed, transcript
from tests.fakes.slack import FakeSlack, click, post_signed
from tests.test_desk.conftest import (
    STAFF,
    action_ids,
    blocks_text,
    card_of,
    escalation,
)
from tests.test_desk.test_desk import reply_with, staff_reply, webchat


async def test_the_card_names_the_customer_quotes_each_message_and_offers_no_hand_over_line(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, "I want to talk to a person please")
    try:
        await next_reply(session, visitor)
        ts, call = await card_of(service, slack)
        text = blocks_text(call.params["blocks"])
        assert visitor not in text and "Web chat visitor" in text
        # each message on its own quoted line, not one collapsed paragraph
        assert "\n> *Customer*: I want to talk to a person please\n> *Bot*:" in text
        # the matched entry is the hand-over itself: staff are not offered to send it again
        esc = await escalation(service)
        assert "talk_to_human" in {c["faq_id"] for c in esc.candidates or ()}
        assert "talk_to_human" not in text
        assert "desk_take" in action_ids(call.params["blocks"])

        assert await click(service, "desk_take", str(esc.id), message_ts=ts) == 200

        def taken_card() -> Any:
            done = [c for c in slack.calls_to("chat.update", ts=ts)
                    if "Taken by" in str(c.get("text"))]
            return done[-1] if done else None
        update = await eventually(taken_card, what="card shows taken")
        assert "desk_take" not in action_ids(update["blocks"])  # taken: no Take button
    finally:
        await session.close()


async def test_a_named_customer_with_email_is_shown_by_name_and_contact(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, "I want to talk to a person please",
                                     **signed("c-bea", name="Bea Rossi",
                                                     email="bea@example.com"))
    try:
        await next_reply(session, visitor)
        _, call = await card_of(service, slack)
        text = blocks_text(call.params["blocks"])
        assert "Bea Rossi" in text and visitor not in text
    finally:
        await session.close()


async def test_escalations_from_before_the_desk_was_on_are_posted_when_it_comes_on(
        make_settings: Any, start_desk: Any, slack: FakeSlack) -> None:
    before = Service(make_settings())  # no Slack yet: the same database file
    await before.start()
    try:
        session, visitor = await webchat(before, "I want to talk to a person please")
        await next_reply(session, visitor)
        await session.close()
    finally:
        await before.stop()
    assert not slack.posts(STAFF)

    service, _ = await start_desk()
    _, call = await card_of(service, slack)
    assert "asked for a person" in blocks_text(call.params["blocks"])


async def choose(service: Service, value: str, *, user: str = "USTAFF") -> int:
    """Pick an option of the card's "Send FAQ answer" menu, as Slack posts it."""
    payload = {"type": "block_actions", "user": {"id": user, "username": user},
               "team": {"id": "T1"}, "api_app_id": "A1", "trigger_id": "t1",
               "container": {"type": "message", "message_ts": "1", "channel_id": STAFF},
               "channel": {"id": STAFF}, "message": {"ts": "1"},
               "response_url": "http://127.0.0.1:9/hooks",
               "actions": [{"type": "static_select", "action_id": "desk_answer", "block_id": "b",
                            "selected_option": {"text": {"type": "plain_text", "text": "x"},
                                                "value": value},
                            "action_ts": str(time.time())}]}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    status, _ = await post_signed(service, "/slack/actions", body,
                                  content_type="application/x-www-form-urlencoded")
    return status


def picker(blocks: list[dict[str, Any]]) -> list[str]:
    return [o["value"] for b in blocks if b.get("type") == "actions" for e in b["elements"]
            if e.get("action_id") == "desk_answer" for o in e["options"]]


async def test_the_picker_sends_the_thai_text_to_a_thai_customer(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, "ขอคุยกับเจ้าหน้าที่ค่ะ")  # a person, please
    try:
        await next_reply(session, visitor)
        ts, call = await card_of(service, slack)
        esc = await escalation(service)
        values = picker(call.params["blocks"])
        assert f"{esc.id}:shipping_costs" in values
        assert not {f"{esc.id}:talk_to_human", f"{esc.id}:complaint"} & set(values)
        assert await choose(service, f"{esc.id}:shipping_costs") == 200
        entry = service.faq.get("shipping_costs")
        assert entry is not None
        sent = await reply_with(session, visitor, entry.answer_for(
            "th", "en", {"store_name": service.settings.store_name})[0])
        assert sent["from"] == "staff:USTAFF"
        await eventually(lambda: any("shipping_costs" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="the thread says what was sent")
    finally:
        await session.close()


async def test_answer_in_the_thread_sends_the_entry_in_italian_and_refuses_hand_over_lines(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, "voglio parlare con una persona")
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        assert await staff_reply(service, ts, "answer: talk_to_human", ts="5.1") == 200
        await eventually(lambda: any("not an FAQ answer" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)), what="refused")
        assert await staff_reply(service, ts, "answer: delivery_time", ts="5.2") == 200
        entry = service.faq.get("delivery_time")
        assert entry is not None
        await reply_with(session, visitor, entry.answer_for(
            "it", "en", {"store_name": service.settings.store_name})[0])
        texts = [m["text"] for m in await transcript(session, visitor)]
        assert not any(t.startswith("answer:") for t in texts)  # the command never leaks
    finally:
        await session.close()


def test_cards_stay_within_block_kit_limits() -> None:
    """Slack refuses a message with a section over 3,000 characters, more than 50 blocks, a
    button or option label over 75, or more than 100 options."""
    now = datetime(2026, 12, 1, tzinfo=UTC)
    long = "x" * 5000
    data = cards.CardData(
        escalation_id=2**40, status="open", reason="no_match", customer=long, channel="webchat",
        language="th", stage="at_risk", team=long, created_at=now, now=now,
        out_of_hours=long, messages=[cards.CardMessage("customer", long, 3)] * 6,
        candidates=[(long, long, 0.5)] * 5, answer_options=[(f"e{i}", long) for i in range(300)],
        email=long, phone=long, last_order=(long, long, now), orders_count=3, total_spent=1e9)
    fallback, blocks = cards.card(data)
    assert len(blocks) <= 50 and len(fallback) <= 40_000
    for block in blocks:
        for text in _texts(block):
            assert len(text) <= 3000
        for element in block.get("elements", ()):
            if element.get("type") == "button":
                assert len(element["text"]["text"]) <= 75 and len(element["value"]) <= 2000
            if element.get("type") == "static_select":
                assert len(element["options"]) <= 100
                assert all(len(o["text"]["text"]) <= 75 and len(o["value"]) <= 150
                           for o in element["options"])
    for field in (f for b in blocks for f in b.get("fields", ())):
        assert len(field["text"]) <= 2000


def _texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["text"]] if isinstance(node.get("text"), str) else []
        return out + [t for v in node.values() for t in _texts(v)]
    if isinstance(node, list):
        return [t for v in node for t in _texts(v)]
    return []
