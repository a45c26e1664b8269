"""Ratings the playbooks ask for, over HTTP against the real service: a recommend (0-10)
question after delivery and a satisfaction (1-5) question after the bot answered alone reach
the customer's channel; a lone number is the answer, thanked for in the customer's language,
kept for the dashboard's store figures and able to start a playbook of its own. Anything that
is not an answer is an ordinary message. Only the network edge is fake (Twilio, Telegram);
the clock is injected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import Service
from bot.db.models import Message, SurveyAnswer, SurveyQuestion
from core.clock import FrozenClock
from tests.conftest import ADMIN_TOKEN, eventually, stays
from tests.fakes.telegram import SECRET as TG_SECRET
from tests.fakes.telegram import TOKEN as TG_TOKEN
from tests.fakes.telegram import FakeTelegram, fake_telegram, message_update, post_webhook
from tests.fakes.twilio import PUBLIC_URL, FakeTwilio, fake_twilio, inbound_params, post_signed
from tests.test_bot.playbook_helpers import (
    PHONE,
    Start,
    clock,
    jobs,
    order,
    post_order,
    start_shop,
    states,
    twilio_settings,
)

__all__ = ["clock", "start_shop"]

RECOMMEND = """\
playbooks:
  - name: recommend
    trigger: {order: delivered}
    stop: [opted_out, staff_owns]
    steps:
      - delay: 30s
        kind: transactional
        ask: nps
        message:
          en: "Hi $name, how likely are you to recommend us? Reply 0 to 10."
          it: "Ciao $name, quanto ci consiglieresti? Rispondi da 0 a 10."
          th: "คุณ$name จะแนะนำเราไหมคะ ตอบ 0 ถึง 10"
  - name: promoter_thanks
    trigger: {nps: {min: 9}}
    stop: [opted_out]
    steps:
      - delay: 0s
        kind: transactional
        message:
          en: "So glad to hear it, $name! Here is a code for a friend: FRIEND10"
          it: "Che bello, $name! Ecco un codice per un amico: FRIEND10"
          th: "ดีใจมากค่ะคุณ$name นี่คือโค้ดสำหรับเพื่อน: FRIEND10"
"""

ANSWER_CHECK = """\
playbooks:
  - name: answer_check
    trigger: bot_answered
    stop: [replied, opted_out, staff_owns]
    steps:
      - delay: 1m
        kind: transactional
        ask: csat
        message:
          en: "Did that answer your question? Reply 1 to 5."
          it: "Ti ho risposto? Rispondi da 1 a 5."
          th: "คำตอบนี้ช่วยได้ไหมคะ ตอบ 1 ถึง 5"
"""

PERIOD = "?period=custom&from=2026-03-01&to=2026-03-31"  # the frozen clock's month


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with fake_twilio() as f:
        yield f


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as tg:
        yield tg


def telegram_settings(tg: FakeTelegram) -> dict[str, Any]:
    return {"telegram_token": TG_TOKEN, "telegram_mode": "webhook",
            "telegram_webhook_secret": TG_SECRET, "telegram_api_base": tg.url}


def whatsapp_bodies(fake: FakeTwilio, needle: str) -> list[str]:
    return [str(m.get("Body")) for m in fake.accepted if needle in str(m.get("Body") or "")]


def telegram_texts(tg: FakeTelegram, needle: str) -> list[str]:
    return [str(m.get("text")) for m in tg.sent_messages() if needle in str(m.get("text"))]


async def whatsapp_writes(service: Service, sid: str, text: str) -> None:
    assert await post_signed(service, PUBLIC_URL + "/webhooks/twilio/whatsapp",
                             inbound_params(sid, text, phone=PHONE, name="Jon")) == 200


async def answers(service: Service) -> list[tuple[str, int, str]]:
    t = SurveyAnswer.__table__
    async with service.db.read() as conn:
        return [(r.kind, r.score, r.source) for r in (await conn.execute(
            select(t).order_by(t.c.id))).all()]


async def store_figures(service: Service) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{service.port}/api/dashboard/kpis{PERIOD}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        return dict((await resp.json())["store"])


async def test_a_recommend_question_after_delivery_is_answered_thanked_and_counted(
        start_shop: Start, twilio: FakeTwilio, clock: FrozenClock) -> None:
    shop = await start_shop(RECOMMEND, **twilio_settings(twilio))
    await whatsapp_writes(shop, "SMhi0001", "hi")  # the 24-hour window opens
    await eventually(lambda: twilio.accepted, what="the greeting answered")
    await post_order(shop, order("paid"), "orders/create", "wh-create-1")
    await post_order(shop, order("delivered"), "orders/updated", "wh-delivered-1")
    clock.advance(timedelta(seconds=31))
    asked = await eventually(lambda: whatsapp_bodies(twilio, "recommend us"),
                             what="the question on WhatsApp")
    assert asked == ["Hi Jon, how likely are you to recommend us? Reply 0 to 10."]

    await whatsapp_writes(shop, "SMnps0001", "9/10")
    thanks = await eventually(lambda: whatsapp_bodies(twilio, "rating"), what="the thanks")
    assert thanks == ["Thank you for your rating! It helps us get better."]
    assert await answers(shop) == [("nps", 9, "playbook")]
    # a promoter's answer starts the playbook that waits for one, once
    code = await eventually(lambda: whatsapp_bodies(twilio, "FRIEND10"), what="promoter step")
    assert code == ["So glad to hear it, Jon! Here is a code for a friend: FRIEND10"]

    figures = await store_figures(shop)
    assert (figures["nps"], figures["nps_answers"]) == (100.0, 1)
    # the platform redelivers the answer: nothing is counted or thanked twice
    await whatsapp_writes(shop, "SMnps0001", "9/10")
    await stays(lambda: len(whatsapp_bodies(twilio, "rating")) == 1, window=0.4,
                what="thanked once")
    assert await answers(shop) == [("nps", 9, "playbook")]


async def test_the_bot_asks_how_it_did_after_answering_alone_in_the_customers_language(
        start_shop: Start, telegram: FakeTelegram, clock: FrozenClock) -> None:
    shop = await start_shop(ANSWER_CHECK, **telegram_settings(telegram))
    question = "quanto costa la spedizione?"
    assert await post_webhook(shop, message_update(1, question)) == 200
    await eventually(lambda: telegram.sent_messages(), what="the FAQ answer")
    await eventually(lambda: _scheduled(shop), what="the check scheduled")
    await stays(lambda: not telegram_texts(telegram, "Ti ho risposto"), window=0.3,
                what="not due yet")
    clock.advance(timedelta(seconds=61))
    asked = await eventually(lambda: telegram_texts(telegram, "Ti ho risposto"),
                             what="the question in Italian")
    assert asked == ["Ti ho risposto? Rispondi da 1 a 5."]

    assert await post_webhook(shop, message_update(2, "4")) == 200
    thanks = await eventually(lambda: telegram_texts(telegram, "valutazione"),
                              what="thanks in Italian")
    assert thanks == ["Grazie per la tua valutazione! Ci aiuta a migliorare."]
    assert await answers(shop) == [("csat", 4, "bot")]
    figures = await store_figures(shop)
    assert figures["csat_by_source"] == {"bot": {"csat": 4.0, "answers": 1}}
    # the next answer within the week is not followed by another question
    assert await post_webhook(shop, message_update(3, "come faccio un reso?")) == 200
    await eventually(lambda: _count(shop, 2), what="the second check scheduled")
    clock.advance(timedelta(seconds=61))
    rows = await eventually(lambda: _decided_second(shop), what="the second check decided")
    assert states(rows)[1] == ("answer_check", 1, "skipped", "asked for a csat rating lately")


async def test_a_number_that_answers_no_open_question_is_an_ordinary_message(
        start_shop: Start, telegram: FakeTelegram, clock: FrozenClock) -> None:
    shop = await start_shop(ANSWER_CHECK, **telegram_settings(telegram))
    assert await post_webhook(shop, message_update(1, "how much is shipping?")) == 200
    await eventually(lambda: telegram.sent_messages(), what="the FAQ answer")
    await eventually(lambda: _scheduled(shop), what="the check scheduled")
    clock.advance(timedelta(seconds=61))
    await eventually(lambda: telegram_texts(telegram, "Did that answer"), what="the question")

    # off the 1-5 scale: not an answer, and the question stays open
    assert await post_webhook(shop, message_update(2, "9")) == 200
    await eventually(lambda: _inbound_decided(shop, "9"), what="the 9 handled")
    assert await answers(shop) == []
    # the customer wrote something else after the question: a later "5" is not its answer
    assert await post_webhook(shop, message_update(3, "5")) == 200
    await eventually(lambda: _inbound_decided(shop, "5"), what="the 5 handled")
    assert await answers(shop) == []
    assert not telegram_texts(telegram, "Thank you for your rating")
    async with shop.db.read() as conn:
        open_questions = (await conn.execute(select(SurveyQuestion.__table__.c.id).where(
            SurveyQuestion.__table__.c.answered_at.is_(None)))).all()
    assert len(open_questions) == 1


async def _scheduled(service: Service) -> bool:
    return any(r.state == "scheduled" for r in await jobs(service, "answer_check"))


async def _count(service: Service, n: int) -> bool:
    return len(await jobs(service, "answer_check")) == n


async def _decided_second(service: Service) -> list[Any] | None:
    rows = await jobs(service, "answer_check")
    return rows if len(rows) == 2 and rows[1].state != "scheduled" else None


async def _inbound_decided(service: Service, text: str) -> bool:
    t = Message.__table__
    async with service.db.read() as conn:
        row = (await conn.execute(select(t.c.decision).where(
            t.c.direction == "in", t.c.text == text))).first()
    return row is not None and row.decision not in (None, "survey")
