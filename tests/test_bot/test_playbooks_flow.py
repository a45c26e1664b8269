"""Playbooks over HTTP against the real service: a signed Shopify order starts a
post-purchase step that reaches the customer's WhatsApp once (text inside the 24-hour window,
the approved template outside it, skipped without one), a reply or an opt-out cancels the
rest, and a stopped process neither loses nor repeats a step. Only the network edge is fake
(Twilio); the clock is injected."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.playbook_rules import NO_TEMPLATE
from core.clock import FrozenClock
from tests.conftest import eventually, stays
from tests.fakes.telegram import SECRET as TG_SECRET
from tests.fakes.telegram import TOKEN as TG_TOKEN
from tests.fakes.telegram import fake_telegram, message_update, post_webhook
from tests.fakes.twilio import PUBLIC_URL, FakeTwilio, fake_twilio, inbound_params, post_signed
from tests.test_bot.playbook_helpers import (
    PHONE,
    Start,
    clock,
    jobs,
    order,
    playbook_messages,
    post_order,
    start_shop,
    states,
    twilio_settings,
)

__all__ = ["clock", "start_shop"]

POST_PURCHASE = """\
playbooks:
  - name: post_purchase
    trigger: {order: delivered}
    stop: [replied, opted_out, staff_owns]
    steps:
      - delay: 30s
        kind: transactional
        message:
          en: "Hi $name, did order $order_number arrive well?"
          it: "Ciao $name, l'ordine $order_number è arrivato bene?"
          th: "สวัสดีคุณ$name คำสั่งซื้อ $order_number ถึงเรียบร้อยไหมคะ"
        whatsapp_template:
          content_sid: HXcheckin0001
          variables: {"1": "$name", "2": "$order_number"}
      - delay: 2m
        kind: transactional
        message:
          en: "Second check on $order_number"
          it: "Secondo controllo su $order_number"
          th: "ตรวจสอบอีกครั้ง $order_number"
"""


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with fake_twilio() as f:
        yield f


def bodies(fake: FakeTwilio, needle: str) -> list[dict[str, str]]:
    return [m for m in fake.accepted if needle in (m.get("Body") or "")]


async def customer_writes(service: Any, sid: str, text: str) -> None:
    assert await post_signed(service, PUBLIC_URL + "/webhooks/twilio/whatsapp",
                             inbound_params(sid, text, phone=PHONE, name="Jon")) == 200


async def deliver_order(service: Any) -> None:
    await post_order(service, order("paid"), "orders/create", "wh-create-1")
    await post_order(service, order("delivered"), "orders/updated", "wh-delivered-1")


async def test_an_order_delivered_reaches_whatsapp_once_and_a_reply_cancels_the_rest(
        start_shop: Start, fake: FakeTwilio, clock: FrozenClock) -> None:
    shop = await start_shop(POST_PURCHASE, **twilio_settings(fake))
    await customer_writes(shop, "SMhello01", "hi")  # the 24-hour window opens now
    await eventually(lambda: fake.accepted, what="the greeting answered")
    await deliver_order(shop)
    # the platform retries the webhook: nothing is scheduled twice
    await post_order(shop, order("delivered"), "orders/updated", "wh-delivered-1")
    assert [(r.step, r.state) for r in await jobs(shop)] == [(1, "scheduled"), (2, "scheduled")]
    await stays(lambda: not bodies(fake, "arrive well"), window=0.3, what="not due yet")

    clock.advance(timedelta(seconds=31))
    sent = await eventually(lambda: bodies(fake, "did order 1001 arrive well?"),
                            what="the check-in on WhatsApp")
    assert sent[0]["Body"] == "Hi Jon, did order 1001 arrive well?"
    assert "ContentSid" not in sent[0]  # inside the window: the text, not the template
    await stays(lambda: len(bodies(fake, "arrive well")) == 1, window=0.5, what="sent once")

    clock.advance(timedelta(seconds=5))
    await customer_writes(shop, "SMreply01", "yes all good thanks")
    clock.advance(timedelta(minutes=3))

    async def second_step() -> Any:
        rows = await jobs(shop)
        return rows[1].state != "scheduled" and rows
    rows = await eventually(second_step, what="the second step decided")
    assert states(rows) == [("post_purchase", 1, "sent", None),
                            ("post_purchase", 2, "cancelled", "stop: replied")]
    assert not bodies(fake, "Second check")
    assert len(await playbook_messages(shop)) == 1


async def test_an_opt_out_word_is_confirmed_in_its_language_and_cancels_the_rest(
        start_shop: Start, fake: FakeTwilio, clock: FrozenClock) -> None:
    shop = await start_shop(POST_PURCHASE, **twilio_settings(fake))
    await customer_writes(shop, "SMhello02", "ciao")
    await eventually(lambda: fake.accepted, what="the greeting answered")
    await deliver_order(shop)
    clock.advance(timedelta(seconds=31))
    first = await eventually(lambda: bodies(fake, "1001"), what="the first step")
    assert first[0]["Body"] == "Ciao Jon, l'ordine 1001 è arrivato bene?"  # their language

    await customer_writes(shop, "SMstop02", "Disiscrivimi")
    confirmed = await eventually(lambda: bodies(fake, "Fatto: non riceverai più messaggi"),
                                 what="the opt-out confirmed in Italian")
    assert len(confirmed) == 1
    clock.advance(timedelta(minutes=3))

    async def cancelled() -> Any:
        rows = await jobs(shop)
        return rows[1].state == "cancelled" and rows
    rows = await eventually(cancelled, what="the second step cancelled")
    assert rows[1].reason == "stop: opted_out"
    assert not bodies(fake, "Secondo controllo")


async def test_outside_the_window_the_template_goes_and_a_step_without_one_is_skipped(
        start_shop: Start, fake: FakeTwilio, clock: FrozenClock) -> None:
    shop = await start_shop(POST_PURCHASE, **twilio_settings(fake))
    await deliver_order(shop)  # the store knows the customer's phone; they never wrote
    clock.advance(timedelta(seconds=31))
    sent = await eventually(lambda: [m for m in fake.accepted if m.get("ContentSid")],
                            what="the template")
    assert sent[0]["ContentSid"] == "HXcheckin0001"
    assert json.loads(sent[0]["ContentVariables"]) == {"1": "Jon", "2": "1001"}
    assert sent[0]["To"] == f"whatsapp:{PHONE}" and not sent[0].get("Body")

    clock.advance(timedelta(minutes=3))

    async def skipped() -> Any:
        rows = await jobs(shop)
        return rows[1].state == "skipped" and rows
    rows = await eventually(skipped, what="the step without a template skipped")
    assert rows[1].reason == NO_TEMPLATE
    assert len(fake.accepted) == 1


async def test_a_stopped_process_neither_loses_nor_repeats_a_step(
        start_shop: Start, fake: FakeTwilio, clock: FrozenClock, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = await start_shop(POST_PURCHASE, database_url=database, **twilio_settings(fake))
    await customer_writes(first, "SMhello03", "hi")
    await eventually(lambda: fake.accepted, what="the greeting answered")
    await deliver_order(first)
    clock.advance(timedelta(seconds=31))
    await eventually(lambda: bodies(fake, "arrive well"), what="the first step")
    await first.stop()  # mid-schedule: step 2 is still to come

    clock.advance(timedelta(minutes=3))
    second = await start_shop(POST_PURCHASE, database_url=database, **twilio_settings(fake))
    await eventually(lambda: bodies(fake, "Second check on 1001"), what="the second step")
    await stays(lambda: len(bodies(fake, "arrive well")) == 1
                and len(bodies(fake, "Second check")) == 1, window=0.6,
                what="each step sent once")
    assert [r.state for r in await jobs(second)] == ["sent", "sent"]


async def test_a_telegram_customer_who_wrote_first_gets_the_step_there_once(
        start_shop: Start, clock: FrozenClock) -> None:
    async with fake_telegram() as tg:
        shop = await start_shop(POST_PURCHASE, telegram_token=TG_TOKEN,
                                telegram_mode="webhook", telegram_webhook_secret=TG_SECRET,
                                telegram_api_base=tg.url)
        assert await post_webhook(shop, message_update(1, "hi")) == 200
        contact = {"phone_number": PHONE, "first_name": "Jon", "user_id": 777}
        assert await post_webhook(shop, message_update(2, None, contact=contact)) == 200
        await eventually(lambda: len(tg.sent_messages()) >= 2, what="both answered")
        await deliver_order(shop)
        clock.advance(timedelta(seconds=31))
        sent = await eventually(lambda: [m for m in tg.sent_messages()
                                         if "1001" in str(m.get("text"))],
                                what="the check-in on Telegram")
        assert str(sent[0]["chat_id"]) == "777"
        assert sent[0]["text"] == "Hi Ann, did order 1001 arrive well?"  # her Telegram name
        await stays(lambda: len([m for m in tg.sent_messages()
                                 if "arrive well" in str(m.get("text"))]) == 1,
                    window=0.5, what="sent once")
