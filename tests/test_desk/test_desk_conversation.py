"""Conversations that involve the desk: what the customer hears while waiting, what staff see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bot.app import Service
from bot.db.models import Customer
from tests.conftest import eventually, next_reply, signed, stays, transcript
from tests.fakes.slack import FakeSlack, click
from tests.test_desk.conftest import STAFF, blocks_text, card_of, escalation
from tests.test_desk.test_desk import conversation_status, last_id, new_reply, say, webchat

HUMAN = "I want to talk to a human please"


async def test_while_waiting_the_bot_answers_and_the_staff_thread_shows_it(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN, **signed("c-ann", name="Ann Web"))
    try:
        hand_over = await next_reply(session, visitor)
        # a desk exists: the FAQ's own hand-over line, which promises a person
        assert "connecting you with a person" in hand_over["text"]
        ts, _ = await card_of(service, slack)

        seen = await last_id(session, visitor)
        await say(service, "How much does shipping cost?", visitor)
        answer = await new_reply(session, visitor, seen)
        assert answer["from"] == "bot" and "€60" in answer["text"]

        def thread_texts() -> list[str]:
            return [str(c.params.get("text")) for c in slack.posts(STAFF, thread=ts)]
        await eventually(lambda: any("How much does shipping cost?" in t
                                     for t in thread_texts()), what="question mirrored")
        await eventually(lambda: any("*Bot*" in t and "€60" in t for t in thread_texts()),
                         what="bot answer mirrored")

        seen = await last_id(session, visitor)
        await say(service, "hello? anyone there?", visitor)
        notice = await new_reply(session, visitor, seen)
        assert "still in the queue" in notice["text"]
        seen = await last_id(session, visitor)
        await say(service, "hmm", visitor)
        await eventually(lambda: _has_text(session, visitor, "hmm"), what="'hmm' stored")

        async def no_reply() -> bool:
            return not [m for m in await transcript(session, visitor, seen) if m["from"] != "you"]
        await stays(no_reply, window=0.5, what="one queue notice only")
    finally:
        await session.close()


async def test_a_complaint_gets_the_faq_apology_and_reaches_the_desk_as_a_complaint(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    complaint = service.faq.get("complaint")
    assert complaint is not None
    session, visitor = await webchat(
        service, "è la terza volta che il mio ordine arriva in ritardo, rimborso subito!")
    try:
        reply = await next_reply(session, visitor)
        assert reply["text"] == complaint.answers["it"]
        _, card = await card_of(service, slack)
        assert "complaint" in blocks_text(card.params["blocks"]).lower()
        esc = await escalation(service)
        assert esc.reason == "complaint"
        assert reply["stage"] == "at_risk"
    finally:
        await session.close()


async def test_outside_business_hours_the_queue_notice_says_when_the_team_is_back(
        desk_settings: Any, slack: FakeSlack) -> None:
    routing = """
default_team: support
teams:
  support:
    timezone: Europe/Rome
    hours:
      mon-fri: "09:00-18:00"
"""
    sunday_noon = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)  # a Sunday
    service = Service(desk_settings(routing), clock=lambda: sunday_noon)
    await service.start()
    session, visitor = await webchat(service, "Can you recommend a dentist in Milan?")
    try:
        await next_reply(session, visitor)  # the hand-over line, then the English away notice
        await eventually(lambda: _has_text_part(session, visitor, "Our team is away"),
                         what="the away notice for the first message")
        seen = await last_id(session, visitor)
        await say(service, "c'è qualcuno?", visitor)
        notice = await new_reply(session, visitor, seen)
        assert "lunedì 09:00" in notice["text"].lower() or "lun" in notice["text"].lower()
        assert "Europe/Rome" in notice["text"]
    finally:
        await session.close()
        await service.stop()


async def _has_text_part(session: Any, visitor: str, part: str) -> bool:
    return any(part in m["text"] for m in await transcript(session, visitor))


async def _has_text(session: Any, visitor: str, text: str) -> bool:
    return any(m["text"] == text for m in await transcript(session, visitor))


async def test_a_complaint_while_a_person_owns_the_conversation_marks_the_customer_at_risk(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, HUMAN, **signed("c-cleo", name="Cleo"))
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert await click(service, "desk_take", str(esc.id), message_ts=ts) == 200
        assert await conversation_status(service) == "human"
        seen = await last_id(session, visitor)
        await say(service, "worst shop ever, I want my money back", visitor)

        async def at_risk() -> bool:
            async with service.db.read() as conn:
                return (await conn.execute(select(Customer.stage))).scalar_one() == "at_risk"
        await eventually(at_risk, what="the customer is at_risk")

        async def bot_silent() -> bool:
            return not [m for m in await transcript(session, visitor, seen) if m["from"] != "you"]
        await stays(bot_silent, window=0.5, what="the bot stays out while a person owns it")
        await eventually(lambda: any("worst shop ever" in str(c.params.get("text"))
                                     for c in slack.posts(STAFF, thread=ts)),
                         what="the complaint reaches the staff thread")
    finally:
        await session.close()

