"""Telegram: webhook secret, long polling end to end, attachments, groups, send errors.

A real Service with the real aiogram Bot pointed at tests/fakes/telegram.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Customer, Identity, InboxItem, Message
from channels.base import InboundMessage
from core.errors import ConfigError
from tests.conftest import eventually
from tests.fakes.telegram import (
    SECRET,
    TOKEN,
    FakeTelegram,
    fake_telegram,
    message_update,
    post_webhook,
)

SHIPPING = "How much does shipping cost?"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as f:
        yield f


@pytest.fixture
async def start(make_settings: Any) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """Start a Service with Telegram pointed at the fake; stopped after the test."""
    services: list[Service] = []

    async def run(fake: FakeTelegram, **overrides: Any) -> Service:
        values = {"telegram_token": TOKEN, "telegram_mode": "webhook",
                  "telegram_webhook_secret": SECRET, "telegram_api_base": fake.url}
        values.update(overrides)
        svc = Service(make_settings(**values))
        await svc.start()
        services.append(svc)
        return svc

    yield run
    for svc in services:
        if not svc.stop_event.is_set():
            await svc.stop()


async def rows(service: Service, *columns: Any, **where: Any) -> list[Any]:
    stmt = select(*columns)
    for name, value in where.items():
        stmt = stmt.where(getattr(Message, name) == value)
    async with service.db.read() as conn:
        return list((await conn.execute(stmt.order_by(Message.id))).all())


async def queued(service: Service) -> int:
    async with service.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(InboxItem))).scalar_one())


async def test_webhook_with_secret_answers_faq_in_the_same_chat(
        fake: FakeTelegram, start: Any) -> None:
    service = await start(fake)
    try:
        assert await post_webhook(service, message_update(501, SHIPPING, chat_id=4242,
                                                          user_id=4242)) == 200
        await eventually(lambda: len(fake.sent_messages()) == 1)
        sent = fake.sent_messages()[0]
        assert sent["chat_id"] == "4242"
        assert "€60" in sent["text"]  # the sample FAQ's shipping answer

        async def marked_sent() -> bool:
            got = await rows(service, Message.status, direction="out")
            return bool(got) and got[0].status == "sent"

        await eventually(marked_sent)
        [reply] = await rows(service, Message.provider_id, direction="out")
        assert reply.provider_id.startswith("4242:")
        [inbound] = await rows(service, Message.external_id, Message.text, direction="in")
        assert inbound.external_id == "501" and inbound.text == SHIPPING
    finally:
        await service.stop()


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
async def test_webhook_without_the_secret_is_refused(fake: FakeTelegram, start: Any,
                                                     secret: str | None) -> None:
    service = await start(fake)
    try:
        assert await post_webhook(service, message_update(502, SHIPPING), secret=secret) == 401
        assert await queued(service) == 0
    finally:
        await service.stop()


async def test_webhook_refuses_junk_with_400_and_ignores_other_updates(
        fake: FakeTelegram, start: Any) -> None:
    service = await start(fake)
    try:
        assert await post_webhook(service, {"update_id": "not a number"}) == 400
        # an edited message or a "joined the group" service message: acknowledged, not queued
        edited = {"update_id": 503, "edited_message": message_update(503)["message"]}
        assert await post_webhook(service, edited) == 200
        assert await post_webhook(service, message_update(504, None,
                                                          new_chat_members=[])) == 200
        assert await queued(service) == 0
    finally:
        await service.stop()


async def test_photo_and_document_with_caption_become_attachments(
        fake: FakeTelegram, start: Any) -> None:
    service = await start(fake)
    try:
        photo = message_update(601, None, caption="is this in stock?", photo=[
            {"file_id": "small", "file_unique_id": "s", "width": 90, "height": 60,
             "file_size": 1000},
            {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 853,
             "file_size": 90000}])
        document = message_update(602, None, caption="my invoice", document={
            "file_name": "r.pdf", "mime_type": "application/pdf", "file_id": "D",
            "file_unique_id": "d", "file_size": 1234})
        assert await post_webhook(service, photo) == 200
        assert await post_webhook(service, document) == 200
        await eventually(lambda: len(fake.sent_messages()) == 2)
        got = await rows(service, Message.text, Message.attachments, direction="in")
        assert [r.text for r in got] == ["is this in stock?", "my invoice"]
        assert got[0].attachments == [{"kind": "image", "mime_type": "image/jpeg",
                                       "size": 90000, "ref": "big"}]
        assert got[1].attachments == [{"kind": "document", "name": "r.pdf",
                                       "mime_type": "application/pdf", "size": 1234,
                                       "ref": "D"}]
        # the file_id is what getFile needs to fetch the bytes later
        data = await service.channels["telegram"].bot.download("big")  # type: ignore[attr-defined]
        assert data is not None and data.read().startswith(b"\xff\xd8")
    finally:
        await service.stop()


async def test_group_message_is_answered_in_the_group(fake: FakeTelegram, start: Any) -> None:
    service = await start(fake)
    try:
        update = message_update(701, SHIPPING, chat_id=-100123, user_id=55,
                                chat_type="supergroup")
        assert await post_webhook(service, update) == 200
        await eventually(lambda: len(fake.sent_messages()) == 1)
        assert fake.sent_messages()[0]["chat_id"] == "-100123"
    finally:
        await service.stop()


async def test_polling_end_to_end_confirms_and_deduplicates(
        fake: FakeTelegram, start: Any) -> None:
    service = await start(fake, telegram_mode="polling", telegram_webhook_secret=None)
    try:
        fake.push_update(message_update(801, SHIPPING, chat_id=900, user_id=900))
        await eventually(lambda: len(fake.sent_messages()) == 1)
        assert fake.sent_messages()[0]["chat_id"] == "900"
        assert fake.calls_to("deleteWebhook"), "polling must remove a stale webhook first"
        # the next getUpdates confirms update 801
        await eventually(lambda: any(p.get("offset") == "802"
                                   for p in fake.calls_to("getUpdates")))
        # Telegram re-sends an unconfirmed update after a crash: answered once only
        fake.push_update(message_update(801, SHIPPING, chat_id=900, user_id=900))
        fake.push_update(message_update(802, "grazie, e quanto costa la spedizione?",
                                        chat_id=900, user_id=900))
        await eventually(lambda: len(fake.sent_messages()) == 2)
        await asyncio.sleep(0.3)
        assert len(fake.sent_messages()) == 2
        assert await queued(service) == 2
        # the webhook route does not exist in polling mode
        assert await post_webhook(service, message_update(803, "hi")) in (404, 405)
    finally:
        t0 = time.monotonic()
        await service.stop()
        assert time.monotonic() - t0 < 3, "stop must not wait for a long poll to time out"


async def test_blocked_user_is_a_recorded_permanent_failure(fake: FakeTelegram,
                                                            start: Any) -> None:
    service = await start(fake)
    try:
        fake.fail_next("blocked")
        assert await post_webhook(service, message_update(901, SHIPPING)) == 200

        async def failed() -> bool:
            got = await rows(service, Message.status, Message.error, direction="out")
            return bool(got) and got[0].status == "failed"

        await eventually(failed)
        [reply] = await rows(service, Message.error, direction="out")
        assert "blocked" in reply.error
        assert len(fake.calls_to("sendMessage")) == 1  # not retried
    finally:
        await service.stop()


async def test_rate_limit_waits_for_retry_after(fake: FakeTelegram, start: Any) -> None:
    service = await start(fake)
    try:
        fake.fail_next("rate_limited")
        t0 = time.monotonic()
        assert await post_webhook(service, message_update(902, SHIPPING)) == 200
        await eventually(lambda: len(fake.sent_messages()) == 1, timeout=15)
        assert time.monotonic() - t0 >= 1.0  # retry_after: 1
        assert len(fake.calls_to("sendMessage")) == 2
    finally:
        await service.stop()


async def test_set_webhook_on_start_when_asked(fake: FakeTelegram, start: Any) -> None:
    service = await start(fake, telegram_set_webhook=True,
                          public_url="https://shop.example.test")
    try:
        [call] = fake.calls_to("setWebhook")
        assert call["url"] == "https://shop.example.test/webhooks/telegram"
        assert call["secret_token"] == SECRET
    finally:
        await service.stop()


def test_webhook_mode_needs_a_secret(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET"):
        Service(make_settings(telegram_token=TOKEN, telegram_mode="webhook"))


async def test_a_shared_contact_links_the_customer_to_their_whatsapp(
        fake: FakeTelegram, start: Any) -> None:
    """Telegram's "share my contact" carries the customer's phone: the bot says it has it, and a
    WhatsApp message from that number is the same customer."""
    service = await start(fake)
    contact = {"phone_number": "+39 333 123 4567", "first_name": "Ann", "user_id": 777}
    assert await post_webhook(service, message_update(70, None, contact=contact)) == 200
    await eventually(lambda: len(fake.sent_messages()) == 1)
    assert "saved your number" in str(fake.sent_messages()[0]["text"])

    whatsapp = InboundMessage(channel="whatsapp", external_id="SM" + "c" * 32,
                              address="whatsapp:+393331234567", text="hello again",
                              phone="+393331234567")
    async with service.db.write() as conn:
        await service.pipeline.handle(conn, [whatsapp])
    async with service.db.read() as conn:
        owners = dict((await conn.execute(select(Identity.channel, Identity.customer_id)))
                      .tuples().all())
    assert owners["telegram"] == owners["whatsapp"]


async def test_someone_elses_contact_card_links_nothing(fake: FakeTelegram, start: Any) -> None:
    service = await start(fake)
    card = {"phone_number": "+39 333 999 0000", "first_name": "Bob", "user_id": 4242}
    assert await post_webhook(service, message_update(71, None, contact=card)) == 200
    await eventually(lambda: len(fake.sent_messages()) == 1)
    assert "saved your number" not in str(fake.sent_messages()[0]["text"])
    async with service.db.read() as conn:
        phones = (await conn.execute(select(Customer.phone))).scalars().all()
    assert phones == [None]
