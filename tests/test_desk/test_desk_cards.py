"""The escalation card as staff read it in Slack: who, what was said, what they can do."""

from __future__ import annotations

from typing import Any

from bot.app import Service
from tests.conftest import next_reply
from tests.fakes.slack import FakeSlack, click
from tests.test_desk.conftest import (
    STAFF,
    action_ids,
    blocks_text,
    card_of,
    escalation,
    wait_for,
)
from tests.test_desk.test_desk import webchat


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
        update = await wait_for(taken_card, what="card shows taken")
        assert "desk_take" not in action_ids(update["blocks"])  # taken: no Take button
    finally:
        await session.close()


async def test_a_named_customer_with_email_is_shown_by_name_and_contact(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, "I want to talk to a person please",
                                     name="Bea Rossi", email="bea@example.com")
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
