"""The desk without Slack: staff answer waiting customers from the dashboard's API, through
the same actions as the Slack desk, and the dashboard counts who did what."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.app import Service
from core.phrases import text_for
from faq.models import FaqEntry
from tests.conftest import ADMIN_TOKEN, eventually, next_reply, stays, transcript

ASK_PERSON = {"en": "I want to talk to a person please",
              "it": "Voglio parlare con una persona per favore",
              "th": "ขอคุยกับพนักงานหน่อยค่ะ"}
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def service(make_settings: Any) -> AsyncIterator[Service]:
    svc = Service(make_settings(desk_in_dashboard=True))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def customer(service: Service, text: str) -> tuple[aiohttp.ClientSession, str]:
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}")
    async with session.post("/api/webchat/messages", json={"text": text}) as resp:
        assert resp.status == 202
        visitor = str((await resp.json())["visitor_id"])
    return session, visitor


async def act(service: Service, conversation_id: int, status: int = 200,
              **body: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{service.port}/api/dashboard/conversations/"
            f"{conversation_id}/actions", json=body, headers=AUTH) as resp:
        data = await resp.json()
        assert resp.status == status, data
        return dict(data)


async def get(service: Service, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{service.port}{path}", params=params, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else \
            await resp.text()


async def waiting_conversation(service: Service) -> int:
    data = await eventually(lambda: _waiting(service), what="someone waiting")
    return int(data["oldest"]["conversation_id"])


async def _waiting(service: Service) -> Any:
    data = await get(service, "/api/dashboard/waiting")
    return data if data["waiting"] else None


def entry(service: Service, entry_id: str) -> FaqEntry:
    found = service.faq.get(entry_id)
    assert found is not None
    return found


@pytest.mark.parametrize("lang", ["en", "it", "th"])
async def test_a_waiting_customer_is_answered_from_the_dashboard_in_their_language(
        service: Service, lang: str) -> None:
    session, visitor = await customer(service, ASK_PERSON[lang])
    try:
        promise = await next_reply(session, visitor)
        # told a person will reply (the dashboard is the desk), in their language
        hand_over = entry(service, "talk_to_human").answer_for(
            lang, "en", {"store_name": service.settings.store_name})[0]
        assert promise["text"] == hand_over
        conv = await waiting_conversation(service)
        waiting = await get(service, "/api/dashboard/waiting")
        assert waiting["waiting"] == 1 and waiting["oldest"]["language"] == lang
        assert waiting["oldest"]["customer"] == "Web chat visitor"  # never the token

        await act(service, conv, action="note", staff="Anna", text="refund pending")
        await act(service, conv, action="take", staff="Anna")
        detail = await get(service, f"/api/dashboard/conversations/{conv}")
        options = [o["id"] for o in detail["desk"]["answer_options"]]
        assert "shipping_costs" in options and "talk_to_human" not in options
        said = await act(service, conv, action="answer", staff="Anna", faq_id="shipping_costs")
        assert f"({lang})" in said["message"]
        text = entry(service, "shipping_costs").answer_for(
            lang, "en", {"store_name": service.settings.store_name})[0]
        await eventually(lambda: _has(session, visitor, text), what="FAQ text on the page")

        await act(service, conv, action="resolve", staff="Anna")
        question = text_for("csat_question", lang)
        await eventually(lambda: _has(session, visitor, question), what="survey")
        texts = [m["text"] for m in await transcript(session, visitor)]
        assert not any("refund pending" in t for t in texts)  # the note never reaches them
        assert (await get(service, "/api/dashboard/waiting"))["waiting"] == 0

        staff = await get(service, "/api/dashboard/staff", period="today")
        anna = next(r for r in staff["rows"] if r["kind"] == "person" and r["who"] == "Anna")
        assert anna["taken"] == 1 and anna["replied"] == 1 and anna["resolved"] == 1
        assert anna["first_response_p50_s"] is not None
    finally:
        await session.close()


async def _has(session: aiohttp.ClientSession, visitor: str, text: str) -> bool:
    return any(m["text"] == text for m in await transcript(session, visitor))


async def test_staff_can_step_into_a_bot_conversation_and_hand_it_back(
        service: Service) -> None:
    session, visitor = await customer(service, "How much does shipping cost?")
    try:
        await next_reply(session, visitor)
        listed = await get(service, "/api/conversations")
        conv = listed["conversations"][0]["id"]
        await act(service, conv, action="reply", staff="Luca", text="Hi, Luca here.")
        await eventually(lambda: _has(session, visitor, "Hi, Luca here."), what="staff reply")
        detail = await get(service, f"/api/dashboard/conversations/{conv}")
        assert detail["status"] == "human"
        assert detail["escalations"][-1]["reason"] == "staff_opened"
        count = len(await transcript(session, visitor))
        async with session.post("/api/webchat/messages",
                                json={"text": "thanks!", "visitor_id": visitor}) as resp:
            assert resp.status == 202
        await eventually(lambda: _has(session, visitor, "thanks!"), what="message stored")
        await stays(lambda: _count_is(session, visitor, count + 1), window=1.0,
                    what="the bot stays silent while a person owns it")

        await act(service, conv, action="back", staff="Luca")
        assert (await get(service, f"/api/dashboard/conversations/{conv}"))["status"] == "bot"
        refused = await act(service, conv, 409, action="resolve", staff="Luca")
        assert "Nobody is waiting" in refused["error"]
        await act(service, conv, action="reopen", staff="Luca")
        assert (await get(service, f"/api/dashboard/conversations/{conv}"))["status"] == "human"
    finally:
        await session.close()


async def _count_is(session: aiohttp.ClientSession, visitor: str, n: int) -> bool:
    return len(await transcript(session, visitor)) == n


async def test_bad_desk_requests_get_a_clear_4xx(service: Service) -> None:
    session, _visitor = await customer(service, ASK_PERSON["en"])
    try:
        conv = await waiting_conversation(service)
        assert "action must be" in (await act(service, conv, 400, action="delete",
                                              staff="Anna"))["error"]
        assert "say who you are" in (await act(service, conv, 400, action="take"))["error"]
        assert "say who you are" in (await act(service, conv, 400, action="take",
                                               staff="<script>"))["error"]
        assert "reply needs text" in (await act(service, conv, 400, action="reply",
                                                staff="Anna"))["error"]
        assert "not an FAQ answer" in (await act(service, conv, 409, action="answer",
                                                 staff="Anna", faq_id="talk_to_human"))["error"]
        assert "no conversation" in (await act(service, 999_999, 409, action="take",
                                               staff="Anna"))["error"].lower()
        url = f"http://127.0.0.1:{service.port}/api/dashboard/conversations/{conv}/actions"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json={"action": "take", "staff": "Anna"}) as resp:
                assert resp.status == 401  # signed in only
            async with s.post(url, data={"action": "take", "staff": "Anna"},
                              headers=AUTH) as resp:
                assert resp.status == 415  # no cross-site form posts
        assert (await get(service, "/api/dashboard/waiting"))["waiting"] == 1  # nothing changed
    finally:
        await session.close()


async def test_staff_figures_as_csv(service: Service) -> None:
    session, _visitor = await customer(service, ASK_PERSON["it"])
    try:
        conv = await waiting_conversation(service)
        await act(service, conv, action="reply", staff="Giulia", text="Eccomi!")
        csv_text = await get(service, "/api/dashboard/staff", period="today", format="csv")
        header, *rows = csv_text.strip().splitlines()
        assert header.split(",")[:4] == ["who", "kind", "taken", "replied"]
        assert any(r.startswith("Giulia,person,1,1,") for r in rows)
    finally:
        await session.close()
