"""Whole conversations through the web chat API, as customers write them, in three languages.

Each test talks to the real service (queue, workers, pipeline, SQLite) over HTTP and checks
what the customer sees in the transcript and what the team would see in the database.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import Service
from bot.db.models import Customer, Escalation, Message
from tests.conftest import eventually, stays, transcript


class Chat:
    """One visitor on the web chat page."""

    def __init__(self, client: aiohttp.ClientSession) -> None:
        self.client = client
        self.visitor: str | None = None
        self.seen = 0

    async def say(self, text: str) -> list[str]:
        """Send `text`; return the texts the bot answered it with (possibly none)."""
        body: dict[str, Any] = {"text": text}
        if self.visitor:
            body["visitor_id"] = self.visitor
        async with self.client.post("/api/webchat/messages", json=body) as resp:
            assert resp.status == 202, await resp.text()
            self.visitor = (await resp.json())["visitor_id"]
        visitor, after = self.visitor, self.seen

        async def handled() -> list[dict[str, Any]] | None:
            messages = await transcript(self.client, visitor, after)
            mine = [m for m in messages if m["from"] == "you" and m["text"] == text.strip()]
            return messages if mine else None

        # The customer's message and the bot's replies are committed together.
        messages = await eventually(handled, what=f"{text!r} handled")
        self.seen = max(m["id"] for m in messages)
        return [m["text"] for m in messages if m["from"] != "you"]

    async def status(self) -> str:
        assert self.visitor is not None
        messages = await transcript(self.client, self.visitor)
        return str(messages[-1]["conversation_status"])


def answer(service: Service, entry_id: str, lang: str) -> str:
    entry = service.faq.get(entry_id)
    assert entry is not None
    return entry.answer_for(lang, "en", {"store_name": service.settings.store_name})[0]


async def escalations(service: Service) -> list[str]:
    async with service.db.read() as conn:
        return list((await conn.execute(select(Escalation.reason)
                                        .order_by(Escalation.id))).scalars())


GREETINGS = {"en": ("Hi!", "How much does shipping cost?"),
             "it": ("ciao", "quanto costa la spedizione?"),
             "th": ("สวัสดีค่ะ", "ค่าส่งเท่าไหร่คะ")}


@pytest.mark.parametrize("lang", ["en", "it", "th"])
async def test_a_greeting_gets_a_greeting_and_the_bot_keeps_answering(
        client: aiohttp.ClientSession, service: Service, lang: str) -> None:
    chat = Chat(client)
    hello, question = GREETINGS[lang]
    (greeting,) = await chat.say(hello)
    assert greeting == answer(service, "greeting", lang)
    assert await chat.say(question) == [answer(service, "shipping_costs", lang)]
    assert await chat.status() == "bot"
    assert await escalations(service) == []


@pytest.mark.parametrize(("lang", "thanks", "ok"), [
    ("en", "thanks!", "ok"), ("it", "grazie mille", "va bene"), ("th", "ขอบคุณค่ะ", "โอเคค่ะ"),
])
async def test_thanks_and_ok_are_small_talk_not_gaps(
        client: aiohttp.ClientSession, service: Service, lang: str, thanks: str,
        ok: str) -> None:
    chat = Chat(client)
    await chat.say(GREETINGS[lang][1])
    assert await chat.say(thanks) == [answer(service, "thanks", lang)]
    assert await chat.say(ok) == []  # "ok" needs no reply
    assert await chat.say("👍") == []
    assert await escalations(service) == []  # nothing for the team, no FAQ gap
    async with service.db.read() as conn:
        decisions = list((await conn.execute(select(Message.decision).where(
            Message.direction == "in").order_by(Message.id))).scalars())
    assert decisions == ["answer", "small_talk", "small_talk", "small_talk"]


@pytest.mark.parametrize(("text", "entry", "lang"), [
    ("Hi! how much is shipping?", "shipping_costs", "en"),
    ("ciao, quanto costa la spedizione?", "shipping_costs", "it"),
    ("สวัสดีค่ะ ค่าส่งเท่าไหร่คะ", "shipping_costs", "th"),
])
async def test_a_greeting_with_a_question_answers_the_question(
        client: aiohttp.ClientSession, service: Service, text: str, entry: str,
        lang: str) -> None:
    assert await Chat(client).say(text) == [answer(service, entry, lang)]


@pytest.mark.parametrize(("first", "follow_up", "lang"), [
    ("How much does shipping cost?", "and to Germany?", "en"),
    ("quanto costa la spedizione?", "e per la Germania?", "it"),
    ("ค่าส่งเท่าไหร่คะ", "แล้วส่งไปญี่ปุ่นล่ะคะ", "th"),
])
async def test_a_follow_up_with_a_new_detail_is_answered_not_escalated(
        client: aiohttp.ClientSession, service: Service, first: str, follow_up: str,
        lang: str) -> None:
    chat = Chat(client)
    await chat.say(first)
    (reply,) = await chat.say(follow_up)
    assert reply in {answer(service, e, lang) for e in ("shipping_costs",
                                                         "international_shipping")}
    assert await escalations(service) == []


async def test_the_same_topic_with_more_details_is_answered_again(
        client: aiohttp.ClientSession, service: Service) -> None:
    chat = Chat(client)
    await chat.say("How much does shipping cost?")
    assert await chat.say("How much is shipping to Germany?") == [
        answer(service, "shipping_costs", "en")]
    assert await escalations(service) == []


@pytest.mark.parametrize(("question", "complaint", "lang"), [
    ("How do I return an item?", "that doesn't answer my question", "en"),
    ("Come faccio un reso?", "non ho capito", "it"),
    ("คืนสินค้ายังไงคะ", "ไม่เข้าใจค่ะ", "th"),
])
async def test_saying_the_answer_did_not_help_hands_over(
        client: aiohttp.ClientSession, service: Service, question: str, complaint: str,
        lang: str) -> None:
    chat = Chat(client)
    assert await chat.say(question) == [answer(service, "returns", lang)]
    (reply,) = await chat.say(complaint)
    assert reply != answer(service, "returns", lang)
    assert await escalations(service) == ["repeated_question"]
    assert await chat.status() == "waiting"


@pytest.mark.parametrize(("text", "entries", "lang"), [
    ("How do I return an item? And how long does delivery take?",
     ["returns", "delivery_time"], "en"),
    ("Quanto costa la spedizione? E quanto ci mette ad arrivare?",
     ["shipping_costs", "delivery_time"], "it"),
])
async def test_two_questions_in_one_message_get_both_answers(
        client: aiohttp.ClientSession, service: Service, text: str, entries: list[str],
        lang: str) -> None:
    assert await Chat(client).say(text) == [answer(service, e, lang) for e in entries]


@pytest.mark.parametrize(("text", "lang", "apology"), [
    ("this is the third time my order is late, I want to cancel everything", "en", "sorry"),
    ("è la terza volta che il mio ordine arriva in ritardo, rimborso subito!", "it",
     "mi dispiace"),
    ("ส่งช้าอีกแล้ว แย่มากค่ะ", "th", "ขออภัย"),
])
async def test_a_complaint_gets_an_apology_escalates_and_marks_the_customer_at_risk(
        client: aiohttp.ClientSession, service: Service, text: str, lang: str,
        apology: str) -> None:
    chat = Chat(client)
    (reply,) = await chat.say(text)
    assert apology in reply.lower()
    assert "cancel" not in reply.lower()  # not the canned cancel-order answer
    assert await escalations(service) == ["complaint"]
    async with service.db.read() as conn:
        stage = (await conn.execute(select(Customer.stage))).scalar_one()
    assert stage == "at_risk"


@pytest.mark.parametrize(("lang", "unknown", "again", "person", "question"), [
    ("en", "Can you recommend a good dentist?", "hello? is anyone there?",
     "I want to talk to a person", "How much does shipping cost?"),
    ("it", "Mi consigliate un buon dentista?", "c'è qualcuno?",
     "voglio parlare con un operatore", "quanto costa la spedizione?"),
    ("th", "แนะนำหมอฟันดีๆ ให้หน่อยได้ไหมคะ", "อยู่ไหมคะ", "ขอคุยกับพนักงานค่ะ",
     "ค่าส่งเท่าไหร่คะ"),
])
async def test_while_waiting_the_customer_hears_once_they_are_queued_and_still_gets_answers(
        client: aiohttp.ClientSession, service: Service, lang: str, unknown: str, again: str,
        person: str, question: str) -> None:
    chat = Chat(client)
    await chat.say(unknown)
    assert await chat.status() == "waiting"
    (notice,) = await chat.say(again)
    assert await chat.say("???") == []  # one notice, not one per message
    assert await chat.say(person) == [notice]  # asking for a person again is not ignored
    assert await chat.say(question) == [answer(service, "shipping_costs", lang)]
    assert await chat.status() == "waiting"  # still waiting for the person
    assert len(await escalations(service)) == 1


@pytest.mark.parametrize(("lang", "vague", "words"), [
    ("en", "?", "tell me a little more"), ("it", "aiuto", "qualcosa in più"),
    ("th", "ช่วยด้วยค่ะ", "เพิ่มเติม")])
async def test_a_message_too_short_to_understand_gets_one_clarifying_question(
        client: aiohttp.ClientSession, service: Service, lang: str, vague: str,
        words: str) -> None:
    chat = Chat(client)
    (clarify,) = await chat.say(vague)
    assert words in clarify
    assert await escalations(service) == []
    (hand_over,) = await chat.say(vague + " ")  # still nothing to go on: hand over
    assert hand_over != clarify
    assert await escalations(service) == ["no_match"]


async def test_no_reply_is_written_for_an_acknowledgement(
        client: aiohttp.ClientSession, service: Service) -> None:
    chat = Chat(client)
    await chat.say("Where is my order?")
    await chat.say("ok")
    assert chat.visitor is not None
    visitor, seen = chat.visitor, chat.seen

    async def nothing_new() -> bool:
        return not await transcript(client, visitor, seen)
    await stays(nothing_new, window=0.5, what="no reply to 'ok'")
