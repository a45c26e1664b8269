"""The staff desk end to end: a real service, real slack-bolt/slack_sdk, a fake Slack Web API,
signed Slack requests, customers on web chat and Telegram."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.db.models import Conversation, DeskJob, Message
from core.phrases import text_for
from tests.conftest import eventually, next_reply, signed, transcript
from tests.fakes.slack import FakeSlack, click, send_event, slash
from tests.test_desk.conftest import (
    STAFF,
    action_ids,
    blocks_text,
    card_of,
    escalation,
    updates,
)

HUMAN = "I want to talk to a human please"
SHIPPING = "How much does shipping cost?"


async def webchat(service: Any, text: str, visitor: str | None = None,
                  **extra: Any) -> tuple[aiohttp.ClientSession, str]:
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}")
    body: dict[str, Any] = {"text": text, **extra}
    if visitor:
        body["visitor_id"] = visitor
    async with session.post("/api/webchat/messages", json=body) as resp:
        assert resp.status == 202, await resp.text()
        visitor = (await resp.json())["visitor_id"]
    return session, str(visitor)


async def say(service: Any, text: str, visitor: str) -> None:
    session, _ = await webchat(service, text, visitor)
    await session.close()


async def staff_reply(service: Any, card_ts: str, text: str, *, ts: str,
                      user: str = "USTAFF", event_id: str | None = None,
                      **extra: Any) -> int:
    event = {"channel": STAFF, "channel_type": "channel", "user": user, "text": text, "ts": ts,
             "thread_ts": card_ts, **extra}
    return await send_event(service, event, event_id=event_id or f"Ev{ts}")


async def reply_with(session: aiohttp.ClientSession, visitor: str, text: str) -> dict[str, Any]:
    """Wait until the web chat transcript shows a reply with exactly `text`."""
    async def find() -> dict[str, Any] | None:
        return next((m for m in await transcript(session, visitor)
                     if m["from"] != "you" and m["text"] == text), None)
    return dict(await eventually(find, what=f"reply {text!r}"))


async def new_reply(session: aiohttp.ClientSession, visitor: str, after: int) -> dict[str, Any]:
    """Wait for a reply newer than message id `after`."""
    async def find() -> dict[str, Any] | None:
        return next((m for m in await transcript(session, visitor)
                     if m["from"] != "you" and m["id"] > after), None)
    return dict(await eventually(find, what="a new reply"))


async def last_id(session: aiohttp.ClientSession, visitor: str) -> int:
    return max((m["id"] for m in await transcript(session, visitor)), default=0)


async def conversation_status(service: Any) -> str:
    async with service.db.read() as conn:
        return str((await conn.execute(select(Conversation.status)
                                       .order_by(Conversation.id.desc()))).scalars().first())


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_escalation_card_then_thread_reply_reaches_web_chat_customer(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN, **signed("c-ann", name="Ann Web"))
    try:
        reply = await next_reply(session, visitor)
        assert reply["from"] == "bot"
        ts, card = await card_of(service, slack)
        text = blocks_text(card.params["blocks"])
        for expected in ("Ann Web", "Web chat", "asked for a person", "Waiting", HUMAN):
            assert expected in text, expected
        assert action_ids(card.params["blocks"]) == [
            "desk_take", "desk_resolve", "desk_back"] or set(action_ids(
                card.params["blocks"])) >= {"desk_take", "desk_resolve", "desk_back"}
        esc = await escalation(service)
        assert (esc.staff_channel, esc.staff_thread, esc.status) == (STAFF, ts, "open")

        assert await staff_reply(service, ts, "Hi Ann, Sam here. How can I help?",
                                 ts="1700002000.000001") == 200
        staff = await reply_with(session, visitor, "Hi Ann, Sam here. How can I help?")
        assert staff["from"] == "staff:USTAFF"

        # a reply takes the escalation; the card says by whom, with the waiting time
        esc = await eventually(lambda: _taken(service), what="taken")
        assert esc.taken_by == "USTAFF" and esc.first_response_at is not None
        await eventually(lambda: any("Taken by <@USTAFF>" in t for t in updates(slack, ts)),
                         what="card update")
        async with service.db.read() as conn:
            row = (await conn.execute(select(Message.author, Message.meta)
                                      .where(Message.author == "staff:USTAFF"))).one()
        assert row.meta["staff_name"] == "Sam"
    finally:
        await session.close()


async def _taken(service: Any) -> Any:
    esc = await escalation(service)
    return esc if esc.status == "taken" else None


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_note_stays_internal_and_edits_and_bots_do_not_resend(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN)
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        assert await staff_reply(service, ts, "note: looks like order 1234", ts="1.1") == 200
        assert await staff_reply(service, ts, "edited", ts="1.2", subtype="message_changed") \
            == 200
        assert await staff_reply(service, ts, "I am a bot", ts="1.3", bot_id="BOTHER",
                                 subtype="bot_message") == 200
        assert await staff_reply(service, ts, "bot without subtype", ts="1.4",
                                 bot_id="BOTHER") == 200
        assert await staff_reply(service, ts, "Real answer", ts="1.5") == 200
        # Slack retries the same event (and it may arrive under another subscription)
        assert await staff_reply(service, ts, "Real answer", ts="1.5", event_id="Ev1.5") == 200
        assert await staff_reply(service, ts, "Real answer", ts="1.5", event_id="EvOther") == 200
        await reply_with(session, visitor, "Real answer")
        await asyncio.sleep(0.5)  # give duplicates time to show up, if they were sent
        texts = [m["text"] for m in await transcript(session, visitor)]
        assert texts.count("Real answer") == 1
        assert not {"note: looks like order 1234", "edited", "I am a bot",
                    "bot without subtype"} & set(texts)
        async with service.db.read() as conn:
            notes = (await conn.execute(select(Message.text, Message.direction)
                                        .where(Message.direction == "note"))).all()
            outs = (await conn.execute(select(Message.text).where(
                Message.author == "staff:USTAFF", Message.direction == "out"))).scalars().all()
        assert [n.text for n in notes] == ["looks like order 1234"]
        assert outs == ["Real answer"]
    finally:
        await session.close()


async def test_take_silence_mirror_back_to_bot(start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN, **signed("c-bea", name="Bea"))
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert await click(service, "desk_take", str(esc.id), message_ts=ts) == 200
        esc = await escalation(service)
        assert (esc.status, esc.taken_by) == ("taken", "USTAFF")
        assert await conversation_status(service) == "human"
        await eventually(lambda: any("Taken by <@USTAFF>" in t for t in updates(slack, ts)),
                         what="card shows taken")

        # the bot stays silent while a person owns it; the message is mirrored in the thread
        await say(service, SHIPPING, visitor)
        await eventually(lambda: any(SHIPPING in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)), what="mirror")
        messages = await transcript(session, visitor)
        assert messages[-1]["text"] == SHIPPING and messages[-1]["from"] == "you"

        assert await click(service, "desk_back", str(esc.id), message_ts=ts) == 200
        assert (await escalation(service)).status == "returned"
        assert await conversation_status(service) == "bot"
        await eventually(lambda: any("Back to the bot" in t for t in updates(slack, ts)),
                         what="card shows back to bot")
        last_card = slack.calls_to("chat.update", ts=ts)[-1]
        assert action_ids(last_card["blocks"]) == ["desk_reopen"]  # only Reopen once handed back

        seen = await last_id(session, visitor)
        await say(service, SHIPPING, visitor)
        answer = await new_reply(session, visitor, seen)
        assert answer["from"] == "bot" and "shipping" in answer["text"].lower()
    finally:
        await session.close()


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_resolve_asks_for_rating_and_records_it(start_desk: Any,
                                                      slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN)
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert await click(service, "desk_resolve", str(esc.id), message_ts=ts) == 200
        assert (await escalation(service)).status == "resolved"
        assert await conversation_status(service) == "resolved"
        question = await reply_with(session, visitor, text_for("csat_question", "en"))
        assert "1" in question["text"] and "5" in question["text"]
        await eventually(lambda: any("Resolved" in t for t in updates(slack, ts)), what="resolved")

        await say(service, "4", visitor)
        await reply_with(session, visitor, text_for("csat_thanks", "en"))
        esc = await escalation(service)
        assert esc.csat == 4 and esc.resolved_at is not None
        assert esc.id == 1  # the rating did not open a new escalation
        await eventually(lambda: any("satisfaction 4/5" in t for t in updates(slack, ts)),
                         what="card shows rating")

        # after the rating, digits are ordinary messages again (the bot handles them)
        seen = await last_id(session, visitor)
        await say(service, "5", visitor)
        await new_reply(session, visitor, seen)
        assert (await escalation(service, esc.id)).csat == 4
    finally:
        await session.close()


async def test_buttons_on_closed_escalation_tell_the_clicker(start_desk: Any,
                                                             slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN)
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert await click(service, "desk_resolve", str(esc.id), message_ts=ts) == 200
        assert await click(service, "desk_take", str(esc.id), user="UOTHER",
                           message_ts=ts) == 200
        ephemeral = slack.calls_to("chat.postEphemeral", user="UOTHER")
        assert ephemeral and "already closed" in ephemeral[0]["text"]
        assert (await escalation(service)).status == "resolved"
    finally:
        await session.close()


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_inbox_command_lists_takes_assigns_and_resolves(start_desk: Any,
                                                              slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN, **signed("c-cleo", name="Cleo"))
    try:
        await next_reply(session, visitor)
        await card_of(service, slack)
        esc = await escalation(service)
        status, body = await slash(service, "")
        assert status == 200
        assert f"#{esc.id}" in body and "Cleo" in body and "1 escalated" in body

        status, body = await slash(service, f"take {esc.id}")
        assert status == 200 and "USTAFF" in body
        assert (await escalation(service)).taken_by == "USTAFF"

        status, body = await slash(service, f"assign {esc.id} <@U0BOB|bob>")
        assert status == 200
        esc = await escalation(service)
        assert (esc.status, esc.taken_by) == ("taken", "U0BOB")
        await eventually(lambda: any("assigned this to <@U0BOB>" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF)), what="assignment note")

        status, body = await slash(service, f"resolve {esc.id}")
        assert status == 200 and "resolved" in body
        assert (await escalation(service)).status == "resolved"
        _, body = await slash(service, "")
        assert "Nobody is waiting" in body and "1 resolved" in body
        _, body = await slash(service, "take 999")
        assert "no escalation #999" in body
        _, body = await slash(service, "dance")
        assert "/inbox take 12" in body
    finally:
        await session.close()


async def test_card_survives_slack_outage(start_desk: Any, slack: FakeSlack) -> None:
    slack.fail_next("chat.postMessage", "server_error", 1, channel=STAFF)
    slack.fail_next("chat.postMessage", "ratelimited", 1, channel=STAFF)
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN)
    try:
        reply = await next_reply(session, visitor)  # the customer is not held up by Slack
        assert reply["from"] == "bot"
        ts, _ = await card_of(service, slack)
        assert (await escalation(service)).staff_thread == ts
        refused = [c for c in slack.calls if c.method == "chat.postMessage" and not c.accepted]
        assert len(refused) == 2
        async with service.db.read() as conn:
            job = (await conn.execute(select(DeskJob.attempts, DeskJob.status)
                                      .where(DeskJob.kind == "card"))).one()
        assert (job.status, job.attempts) == ("done", 3)
    finally:
        await session.close()


async def test_slack_staff_requests_must_be_signed(start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN)
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        event = {"channel": STAFF, "user": "USTAFF", "text": "forged", "ts": "9.1",
                 "thread_ts": ts}
        assert await send_event(service, event, event_id="EvForged", signature="bad") == 401
        assert await send_event(service, event, event_id="EvForged",
                                signature="missing") == 401
        async with service.db.read() as conn:
            assert (await conn.execute(select(Message.id).where(
                Message.text == "forged"))).first() is None
    finally:
        await session.close()


@pytest.mark.parametrize("value", [str(2**64), "99999999999999999999999", "-1", "x", "1:2:3"])
async def test_a_desk_button_with_an_id_no_database_holds_is_refused_politely(
        start_desk: Any, slack: FakeSlack, value: str) -> None:
    service, _ = await start_desk()
    assert await click(service, "desk_take", value) == 200
    await eventually(lambda: slack.calls_to("chat.postEphemeral"), what="the staff member told")
