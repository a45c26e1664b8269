"""Slack as a customer channel: signed events in, chat.postMessage out (real bolt + slack_sdk,
fake Slack Web API on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Conversation, Customer, InboxItem, Message
from channels.base import ChannelContext, InboundMessage, OutboundMessage
from channels.slack import SlackChannel
from core.errors import (
    ChannelAuthError,
    ChannelPermanentError,
    ChannelRateLimited,
    ChannelTemporaryError,
)
from tests.conftest import eventually
from tests.fakes.slack import (
    CUSTOMER_DM,
    FakeSlack,
    fake_slack,
    post_signed,
    send_event,
    slack_settings,
)

SHIPPING = "How much does shipping cost?"
SHARED = "CSHARED"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack() as fake:
        yield fake


@pytest.fixture
async def svc(make_settings: Any, slack: FakeSlack) -> AsyncIterator[Service]:
    service = Service(make_settings(**slack_settings(slack, slack_customer_channels=[SHARED])))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def inbox_count(service: Service) -> int:
    async with service.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(InboxItem))).scalar_one())


def dm(text: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {"channel": CUSTOMER_DM, "channel_type": "im", "user": "UCUST", "text": text,
            "ts": ts, **extra}


async def test_url_verification_must_be_signed_and_fresh(svc: Service) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "x"})
    status, text = await post_signed(svc, "/slack/events", body)
    assert status == 200 and json.loads(text) == {"challenge": "abc123"}
    assert (await post_signed(svc, "/slack/events", body, signature="missing"))[0] == 401
    assert (await post_signed(svc, "/slack/events", body, signature="bad"))[0] == 401
    assert (await post_signed(svc, "/slack/events", body, age=301))[0] == 401


async def test_direct_message_is_answered_in_the_dm(svc: Service, slack: FakeSlack) -> None:
    assert await send_event(svc, dm(SHIPPING, "1700000100.000100"), event_id="Ev100") == 200
    assert await inbox_count(svc) == 1  # committed before Slack got its 200
    posts = await eventually(lambda: slack.posts(CUSTOMER_DM))
    assert "shipping" in posts[0].params["text"].lower()
    assert "thread_ts" not in posts[0].params  # a DM is answered in the conversation itself
    assert slack.calls_to("auth.test")  # bolt's lazy auth.test went to the fake too
    async with svc.db.read() as conn:
        customer = (await conn.execute(select(Customer.display_name, Customer.email))).one()
    assert (customer.display_name, customer.email) == ("Ann", "ann@slack.example")


async def test_customer_channel_is_answered_in_the_thread(svc: Service,
                                                          slack: FakeSlack) -> None:
    event = {"channel": SHARED, "channel_type": "channel", "user": "UCUST",
             "text": SHIPPING, "ts": "1700000200.000200"}
    assert await send_event(svc, event, event_id="Ev200") == 200
    posts = await eventually(lambda: slack.posts(SHARED))
    assert posts[0].params["thread_ts"] == "1700000200.000200"


async def test_each_top_level_message_in_a_customer_channel_is_its_own_conversation(
        svc: Service, slack: FakeSlack) -> None:
    """Two members of a shared channel, each asking on their own: two customers, and every
    top-level question a conversation of its own, answered in its own thread."""
    asks = [("UCUST", "Hi!", "1700000300.000100"),
            ("UBEA", "Quanto costa la spedizione?", "1700000301.000100"),
            ("UCUST", "How do I return an item?", "1700000302.000100")]
    for n, (user, text, ts) in enumerate(asks):
        event = {"channel": SHARED, "channel_type": "channel", "user": user, "text": text,
                 "ts": ts}
        assert await send_event(svc, event, event_id=f"Ev30{n}") == 200
    posts = await eventually(lambda: len(slack.posts(SHARED)) >= 3 and slack.posts(SHARED))
    by_thread = {p.params["thread_ts"]: p.params["text"] for p in posts}
    assert set(by_thread) == {ts for _, _, ts in asks}  # each answered in its own thread
    assert "How can I help" in by_thread["1700000300.000100"]  # small talk, not a hand-over
    assert "spedizione" in by_thread["1700000301.000100"]
    assert "30 days" in by_thread["1700000302.000100"]
    # A reply inside a thread continues that thread's conversation.
    event = {"channel": SHARED, "channel_type": "channel", "user": "UCUST",
             "text": "How much does shipping cost?", "ts": "1700000303.000100",
             "thread_ts": "1700000300.000100"}
    assert await send_event(svc, event, event_id="Ev303") == 200
    posts = await eventually(lambda: len(slack.posts(SHARED)) >= 4 and slack.posts(SHARED))
    assert posts[3].params["thread_ts"] == "1700000300.000100"
    async with svc.db.read() as conn:
        conversations = (await conn.execute(select(
            Conversation.thread, Customer.display_name).join(
            Customer, Customer.id == Conversation.customer_id)  # type: ignore[arg-type]
            .order_by(Conversation.id))).all()
    assert [tuple(c) for c in conversations] == [
        ("1700000300.000100", "Ann"), ("1700000301.000100", "Bea"),
        ("1700000302.000100", "Ann")]


async def test_other_bots_edits_and_foreign_channels_are_ignored(
        svc: Service, slack: FakeSlack) -> None:
    ignored = [
        dm("from another bot", "1.1", bot_id="BOTHER"),
        dm("legacy bot", "1.2", subtype="bot_message", bot_id="BOTHER"),
        dm("our own bot", "1.3", bot_id="BBOT", user="UBOT"),
        dm("edited", "1.4", subtype="message_changed",
           message={"text": "edited", "user": "UCUST", "ts": "1.0"}),
        dm("", "1.5", subtype="message_deleted"),
        dm("joined", "1.6", subtype="channel_join"),
        {"channel": "CRANDOM", "channel_type": "channel", "user": "UCUST", "text": "hi",
         "ts": "1.7"},
    ]
    for i, event in enumerate(ignored):
        assert await send_event(svc, event, event_id=f"EvIgn{i}") == 200
    await asyncio.sleep(0.3)
    assert await inbox_count(svc) == 0
    assert slack.posts(CUSTOMER_DM) == []


async def test_slack_retries_are_handled_once(svc: Service, slack: FakeSlack) -> None:
    event = dm(SHIPPING, "1700000300.000300")
    assert await send_event(svc, event, event_id="Ev300") == 200
    assert await send_event(svc, event, event_id="Ev300", retry=1) == 200
    assert await send_event(svc, event, event_id="Ev300", retry=2) == 200
    await eventually(lambda: slack.posts(CUSTOMER_DM))
    await asyncio.sleep(0.5)
    assert await inbox_count(svc) == 1
    assert len(slack.posts(CUSTOMER_DM)) == 1


async def test_files_are_kept_as_attachment_metadata(svc: Service, slack: FakeSlack) -> None:
    event = dm("here is the photo", "1700000400.000400", subtype="file_share", files=[
        {"id": "F1", "name": "broken.jpg", "mimetype": "image/jpeg", "size": 2048,
         "permalink": "https://fake.slack.test/files/F1"}])
    assert await send_event(svc, event, event_id="Ev400") == 200
    await eventually(lambda: slack.posts(CUSTOMER_DM))
    async with svc.db.read() as conn:
        attachments = (await conn.execute(select(Message.attachments).where(
            Message.direction == "in"))).scalar_one()
    assert attachments == [{"kind": "image", "name": "broken.jpg", "mime_type": "image/jpeg",
                            "size": 2048, "ref": "https://fake.slack.test/files/F1"}]


class _NoIntake:
    async def put(self, message: InboundMessage) -> bool:
        raise AssertionError("not used by send")


@pytest.mark.parametrize("kind, error, code", [
    ("ratelimited", ChannelRateLimited, None),
    ("server_error", ChannelTemporaryError, None),
    ("channel_not_found", ChannelPermanentError, "channel_not_found"),
    ("not_in_channel", ChannelPermanentError, "not_in_channel"),
    ("is_archived", ChannelPermanentError, "is_archived"),
    ("invalid_auth", ChannelAuthError, None),
])
async def test_send_errors_are_translated(make_settings: Any, slack: FakeSlack, kind: str,
                                          error: type[Exception], code: str | None) -> None:
    settings = make_settings(**slack_settings(slack))
    channel = SlackChannel.from_context(ChannelContext(settings, _NoIntake()))  # type: ignore[arg-type]
    assert channel is not None
    msg = OutboundMessage(channel="slack", address="C1", text="hi", message_id=1,
                          conversation_id=1, thread="1.0")
    slack.fail_next("chat.postMessage", kind)
    with pytest.raises(error) as exc:
        await channel.send(msg)
    if isinstance(exc.value, ChannelRateLimited):
        assert exc.value.retry_after == 1.0
    if code:
        assert getattr(exc.value, "code", None) == code
    result = await channel.send(msg)  # the next one goes through, in the thread
    assert result.provider_id and slack.calls_to("chat.postMessage")[-1]["thread_ts"] == "1.0"
