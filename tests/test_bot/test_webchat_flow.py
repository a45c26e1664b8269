"""A customer on the web chat: answers in their language, escalation, duplicates, bad input."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Conversation, Escalation, InboxItem, Message, OutboxItem
from tests.conftest import chat, transcript


def faq_answer(service: Service, entry_id: str, lang: str) -> str:
    entry = service.faq.get(entry_id)
    assert entry is not None, f"the sample FAQ has no {entry_id!r}"
    assert lang in entry.answers, f"{entry_id} has no {lang} answer"
    return entry.answer_for(lang, "en", {"store_name": service.settings.store_name})[0]


@pytest.mark.parametrize(("question", "lang"), [
    ("How much does shipping cost?", "en"),
    ("Quanto costa la spedizione?", "it"),
    ("ค่าส่งเท่าไหร่", "th"),
])
async def test_question_gets_the_faq_answer_in_the_customer_language(
        client: aiohttp.ClientSession, service: Service, question: str, lang: str) -> None:
    _, reply = await chat(client, question)
    assert reply["from"] == "bot"
    assert reply["text"] == faq_answer(service, "shipping_costs", lang)
    assert reply["language"] == lang


async def test_answer_fills_store_name(client: aiohttp.ClientSession) -> None:
    _, reply = await chat(client, "Where is my order?")
    assert "Demo Shop" in reply["text"] and "$store_name" not in reply["text"]


async def test_unknown_question_is_recorded_without_promising_a_reply(
        client: aiohttp.ClientSession, service: Service) -> None:
    """No desk is configured: the question is kept for the team, and the customer is not told
    that a person will reply here."""
    _, reply = await chat(client, "Can you recommend a good dentist in Milan?")
    assert "noted your question" in reply["text"]
    assert "reply" not in reply["text"].lower()
    assert reply["conversation_status"] == "waiting"
    async with service.db.read() as conn:
        esc = (await conn.execute(select(Escalation.reason, Escalation.question))).one()
    assert esc.reason == "no_match"
    assert esc.question == "Can you recommend a good dentist in Milan?"


async def test_asking_for_a_person_escalates_in_the_customer_language(
        client: aiohttp.ClientSession, service: Service) -> None:
    _, reply = await chat(client, "Voglio parlare con un operatore")
    assert "vuoi parlare con una persona" in reply["text"].lower()
    async with service.db.read() as conn:
        reason = (await conn.execute(select(Escalation.reason))).scalar_one()
    assert reason == "asked_for_human"


async def test_while_waiting_for_a_person_faq_questions_are_still_answered(
        client: aiohttp.ClientSession, service: Service) -> None:
    visitor, _ = await chat(client, "I want to talk to a person")
    _, reply = await chat(client, "How much does shipping cost?", visitor)
    assert reply["text"] == faq_answer(service, "shipping_costs", "en")
    assert reply["conversation_status"] == "waiting"


async def test_same_question_again_verbatim_after_an_answer_escalates(
        client: aiohttp.ClientSession, service: Service) -> None:
    visitor, first = await chat(client, "How do I return an item?")
    assert first["text"] == faq_answer(service, "returns", "en")
    _, again = await chat(client, "how can I return an item?", visitor)
    assert again["text"] == first["text"]  # other words, same topic: answered again
    _, third = await chat(client, "How can I return an item??", visitor)
    assert "noted your question" in third["text"]
    async with service.db.read() as conn:
        reason = (await conn.execute(select(Escalation.reason))).scalar_one()
    assert reason == "repeated_question"


async def test_duplicate_message_is_handled_once(client: aiohttp.ClientSession,
                                                 service: Service) -> None:
    body = {"text": "How much does shipping cost?", "client_message_id": "a" * 32}
    async with client.post("/api/webchat/messages", json=body) as resp:
        first = await resp.json()
    body["visitor_id"] = first["visitor_id"]
    results = []
    for _ in range(3):
        async with client.post("/api/webchat/messages", json=body) as resp:
            assert resp.status == 202
            results.append((await resp.json())["duplicate"])
    assert results == [True, True, True]
    await asyncio.sleep(0.8)
    messages = await transcript(client, first["visitor_id"])
    assert [m["from"] for m in messages] == ["you", "bot"]
    async with service.db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(InboxItem))).scalar() == 1


async def test_conversation_is_tagged_with_a_lifecycle_stage(
        client: aiohttp.ClientSession, service: Service) -> None:
    visitor, first = await chat(client, "How much does shipping cost?")
    assert first["stage"] == "awareness"
    entry = service.faq.get("size_guide")
    assert entry is not None and entry.stage == "consideration"
    _, reply = await chat(client, "Which size should I take?", visitor)
    assert reply["text"] == faq_answer(service, "size_guide", "en")
    assert reply["stage"] == "consideration"
    async with service.db.read() as conn:
        stage = (await conn.execute(select(Conversation.stage))).scalar_one()
    assert stage == "consideration"


async def test_malformed_requests_get_clear_4xx(client: aiohttp.ClientSession) -> None:
    cases = [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
        ({"data": b"text=hi", "headers": {"Content-Type": "text/plain"}}, 415, "JSON"),
        ({"json": {"text": ""}}, 400, "text"),
        ({"json": {"text": 42}}, 400, "text"),
        ({"json": {"text": "hi", "visitor_id": "short"}}, 400, "visitor_id"),
        ({"json": {"text": "x" * 4001}}, 413, "longer than"),
        ({"json": ["not", "an", "object"]}, 400, "object"),
    ]
    for kwargs, status, words in cases:
        async with client.post("/api/webchat/messages", **kwargs) as resp:
            assert resp.status == status, kwargs
            assert words in (await resp.json())["error"]
    async with client.get("/api/webchat/messages", params={"visitor_id": "x"}) as resp:
        assert resp.status == 400


async def test_oversized_body_is_rejected(client: aiohttp.ClientSession,
                                          service: Service) -> None:
    body = b'{"text": "' + b"a" * (service.settings.max_body_bytes + 10) + b'"}'
    async with client.post("/api/webchat/messages", data=body,
                           headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413


async def test_visitor_over_the_rate_limit_gets_429(make_settings) -> None:
    service = Service(make_settings(webchat_rate_per_minute=6))
    await service.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            statuses = []
            visitor = None
            for i in range(6):
                body = {"text": f"hello {i}"}
                if visitor:
                    body["visitor_id"] = visitor
                async with client.post("/api/webchat/messages", json=body) as resp:
                    statuses.append(resp.status)
                    if resp.status == 202:
                        visitor = (await resp.json())["visitor_id"]
                    else:
                        assert int(resp.headers["Retry-After"]) >= 1
        assert statuses[:2] == [202, 202]
        assert 429 in statuses
    finally:
        await service.stop()


async def test_chat_page_is_served(client: aiohttp.ClientSession) -> None:
    async with client.get("/") as resp:
        assert resp.status == 200
        html = await resp.text()
    assert "<textarea" in html and "/api/webchat/messages" in html


async def test_web_chat_reply_is_delivered_by_its_commit(client: aiohttp.ClientSession,
                                                         service: Service) -> None:
    """The web chat serves its transcript from the database: the bot's reply is delivered when
    it is committed (no outbox round trip), and a waiting long-poll wakes up with it."""
    visitor = "visitor-longpoll-000001"
    async with client.post("/api/webchat/messages", json={
            "visitor_id": visitor, "text": "Where is my order?"}) as resp:
        assert resp.status == 202
    async with client.get("/api/webchat/messages",
                          params={"visitor_id": visitor, "after": 0, "wait": 20}) as resp:
        first = (await resp.json())["messages"]
    after = max(m["id"] for m in first)
    if not any(m["from"] == "bot" for m in first):  # the question alone came back first
        async with client.get("/api/webchat/messages",
                              params={"visitor_id": visitor, "after": after, "wait": 20}) as resp:
            first += (await resp.json())["messages"]
    bot = [m for m in first if m["from"] == "bot"]
    assert len(bot) == 1 and "Demo Shop" in bot[0]["text"]
    async with service.db.read() as conn:
        ms = Message.__table__.c
        reply = (await conn.execute(select(ms.status, ms.sent_at, ms.id).where(
            ms.id == bot[0]["id"]))).one()
        queued = (await conn.execute(select(func.count()).select_from(OutboxItem)
                                     .where(OutboxItem.message_id == reply.id))).scalar_one()
    assert reply.status == "delivered" and reply.sent_at is not None
    assert queued == 0


async def test_reply_still_in_the_outbox_is_not_skipped_by_the_cursor(
        client: aiohttp.ClientSession, service: Service) -> None:
    """A staff reply queued before the customer's next message gets a smaller id: the
    transcript must not hand out the newer message first, or the client's cursor passes the
    reply and it is never shown."""
    visitor, _ = await chat(client, "Where is my order?")
    seen = max(m["id"] for m in await transcript(client, visitor))
    ms, cv = Message.__table__.c, Conversation.__table__.c
    async with service.db.write() as conn:
        conversation = (await conn.execute(select(cv.id).where(
            cv.channel == "webchat", cv.address == visitor))).scalar_one()
        reply = (await conn.execute(Message.__table__.insert().values(
            conversation_id=conversation, direction="out", channel="webchat",
            author="staff:U123", text="Let me check that for you.", status="pending",
        ).returning(ms.id))).scalar_one()
    async with client.post("/api/webchat/messages", json={
            "visitor_id": visitor, "text": "hello? anyone there?"}) as resp:
        assert resp.status == 202
    for _ in range(100):  # until the worker has stored the question
        async with service.db.read() as conn:
            stored = (await conn.execute(select(func.count()).where(
                ms.conversation_id == conversation, ms.text == "hello? anyone there?"))
                ).scalar_one()
        if stored:
            break
        await asyncio.sleep(0.1)
    assert stored
    assert all(m["id"] < reply for m in await transcript(client, visitor, seen))
    async with service.db.write() as conn:
        await conn.execute(Message.__table__.update().where(ms.id == reply)
                           .values(status="sent"))
    later = await transcript(client, visitor, seen)
    texts = [m["text"] for m in later]
    assert "Let me check that for you." in texts and "hello? anyone there?" in texts
    assert [m["id"] for m in later] == sorted(m["id"] for m in later)
