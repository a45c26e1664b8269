"""WhatsApp via Twilio: signatures, replies, status callbacks, the 24-hour window, and one
customer across channels.

A real Service with the real twilio client pointed at tests/fakes/twilio.py; webhooks are
signed with twilio's RequestValidator for the public URL, as Twilio signs them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, update

from bot.app import Service
from bot.db.models import (
    Conversation,
    Customer,
    DeliveryReportRow,
    Identity,
    InboxItem,
    Message,
    OutboxItem,
)
from bot.replies import OutgoingReply, queue_replies
from tests.conftest import ADMIN_TOKEN, chat, eventually, signed
from tests.fakes.twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    INBOUND_PATH,
    OUR_NUMBER,
    PUBLIC_URL,
    FakeTwilio,
    fake_twilio,
    inbound_params,
    post_signed,
)

SHIPPING = "How much does shipping cost?"
TEMPLATE = "HX" + "b2" * 16


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with fake_twilio() as f:
        yield f


@pytest.fixture
async def start(make_settings: Any) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    services: list[Service] = []

    async def run(fake: FakeTwilio, **overrides: Any) -> Service:
        values = {"twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
                  "twilio_whatsapp_from": OUR_NUMBER, "twilio_api_base": fake.url,
                  "public_url": PUBLIC_URL}
        values.update(overrides)
        svc = Service(make_settings(**values))
        await svc.start()
        services.append(svc)
        return svc

    yield run
    for svc in services:
        await svc.stop()


async def deliver(service: Service, sid: str, text: str, **kw: Any) -> int:
    return await post_signed(service, PUBLIC_URL + INBOUND_PATH, inbound_params(sid, text, **kw))


async def outbound(service: Service) -> list[Any]:
    async with service.db.read() as conn:
        return list((await conn.execute(
            select(Message.id, Message.status, Message.error, Message.provider_id, Message.meta)
            .where(Message.direction == "out").order_by(Message.id))).all())


async def test_signed_message_is_answered_with_the_right_numbers(
        fake: FakeTwilio, start: Any) -> None:
    service = await start(fake)
    params = inbound_params("SM" + "1" * 32, SHIPPING, phone="+393331234567", name="Giulia")
    async with aiohttp.ClientSession() as session:
        from twilio.request_validator import RequestValidator
        sig = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + INBOUND_PATH, params)
        async with session.post(f"http://127.0.0.1:{service.port}{INBOUND_PATH}", data=params,
                                headers={"X-Twilio-Signature": sig}) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/xml"
            assert "<Response/>" in await resp.text()
    await eventually(lambda: len(fake.accepted) == 1)
    sent = fake.accepted[0]
    assert sent["To"] == "whatsapp:+393331234567"
    assert sent["From"] == OUR_NUMBER
    assert sent["StatusCallback"] == PUBLIC_URL + "/webhooks/twilio/status"
    assert "€60" in sent["Body"]
    await eventually(lambda: _async(fake.accepted) and outbound_has_sid(service, sent["_sid"]))
    async with service.db.read() as conn:
        conv = (await conn.execute(select(Conversation.address))).one()
        ident = (await conn.execute(select(Identity.display_name))).one()
        cust = (await conn.execute(select(Customer.phone))).one()
    assert conv.address == "+393331234567"
    assert ident.display_name == "Giulia"
    assert cust.phone == "+393331234567"


async def outbound_has_sid(service: Service, sid: str) -> bool:
    return any(r.provider_id == sid and r.status == "sent" for r in await outbound(service))


async def _async(value: Any) -> bool:
    return bool(value)


async def test_signature_for_http_when_twilio_called_https_is_refused(
        fake: FakeTwilio, start: Any) -> None:
    """Behind a TLS proxy the service sees http://, but Twilio signed https://: the
    configured public URL decides, and a signature made for another URL does not pass."""
    service = await start(fake)
    params = inbound_params("SM" + "2" * 32, SHIPPING)
    status = await post_signed(service, PUBLIC_URL.replace("https://", "http://") + INBOUND_PATH,
                               params)
    assert status == 403
    assert await post_signed(service, PUBLIC_URL + INBOUND_PATH, params) == 200
    async with service.db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(InboxItem))).scalar() == 1


async def test_media_become_attachments(fake: FakeTwilio, start: Any) -> None:
    service = await start(fake)
    media = [("https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM1/Media/ME1",
              "image/jpeg"),
             ("https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM1/Media/ME2",
              "application/pdf")]
    assert await deliver(service, "MM" + "3" * 32, "damaged on arrival", media=media) == 200
    await eventually(lambda: len(fake.accepted) == 1)
    async with service.db.read() as conn:
        got = (await conn.execute(select(Message.text, Message.attachments)
                                  .where(Message.direction == "in"))).one()
    assert got.text == "damaged on arrival"
    assert got.attachments == [
        {"kind": "image", "mime_type": "image/jpeg", "ref": media[0][0]},
        {"kind": "document", "mime_type": "application/pdf", "ref": media[1][0]}]


async def test_status_callbacks_keep_the_furthest_status(fake: FakeTwilio, start: Any) -> None:
    service = await start(fake)
    assert await deliver(service, "SM" + "4" * 32, SHIPPING) == 200
    await eventually(lambda: len(fake.accepted) == 1)
    sid = fake.accepted[0]["_sid"]
    await eventually(lambda: outbound_has_sid(service, sid))
    # out of order: read arrives before delivered, and a late "sent" too
    for status in ("read", "delivered", "sent"):
        assert await fake.emit_status(service, sid, status) == 200
    [row] = await outbound(service)
    assert row.status == "read"
    assert row.meta["twilio_status"] == "read"


async def test_callback_before_the_outbox_bookkeeping_is_not_lost(
        fake: FakeTwilio, start: Any) -> None:
    """Twilio may call back between our POST and the outbox marking the row "sent"."""
    service = await start(fake)
    channel = service.channels["whatsapp"]
    original = channel.send
    sids: list[str] = []

    async def send_then_callback(message: Any) -> Any:
        result = await original(message)
        sids.append(result.provider_id)
        assert await fake.emit_status(service, result.provider_id, "delivered") == 200
        return result

    channel.send = send_then_callback  # type: ignore[method-assign]
    assert await deliver(service, "SM" + "5" * 32, SHIPPING) == 200

    async def delivered() -> bool:
        rows = await outbound(service)
        return bool(rows) and rows[0].status == "delivered"

    await eventually(delivered)


async def test_callback_before_create_returns_is_kept_until_the_sid_is_known(
        fake: FakeTwilio, start: Any) -> None:
    service = await start(fake)
    fake.early_callback = (service, "delivered")
    assert await deliver(service, "SM" + "c" * 32, SHIPPING) == 200

    async def delivered() -> bool:
        rows = await outbound(service)
        return bool(rows) and rows[0].status == "delivered"

    await eventually(delivered)
    async with service.db.read() as conn:  # the parked report was used up
        assert (await conn.execute(select(func.count()).select_from(DeliveryReportRow))
                ).scalar() == 0


async def test_outside_24h_window_sends_the_template_and_records_63016(
        fake: FakeTwilio, start: Any) -> None:
    service = await start(fake, twilio_template_sid=TEMPLATE,
                          twilio_template_variables='{"1": "Demo Shop"}')
    assert await deliver(service, "SM" + "6" * 32, SHIPPING) == 200
    await eventually(lambda: len(fake.accepted) == 1)
    assert "Body" in fake.accepted[0] and "ContentSid" not in fake.accepted[0]  # inside

    # a day later, staff answer: the window has closed
    async with service.db.write() as conn:
        conv = (await conn.execute(select(Conversation.id))).scalar_one()
        await conn.execute(update(Conversation).where(Conversation.id == conv).values(
            last_inbound_at=datetime.now(UTC) - timedelta(hours=25)))
        (msg_id,) = await queue_replies(conn, [OutgoingReply(
            conversation_id=conv, channel="whatsapp", text="Your parcel left today.", language="en",
            author="staff:U1")], stored_delivery=(), now=datetime.now(UTC))
    service.outbox.wake()
    await eventually(lambda: len(fake.accepted) == 2)
    template = fake.accepted[1]
    assert template["ContentSid"] == TEMPLATE
    assert json.loads(template["ContentVariables"]) == {"1": "Demo Shop"}
    assert "Body" not in template
    assert template["To"] == "whatsapp:+15551234567"

    # the reopen request went out; the staff text itself waits for the customer
    sid = template["_sid"]

    async def held() -> bool:
        return any(r.id == msg_id and r.status == "held" and r.provider_id == sid
                   for r in await outbound(service))
    await eventually(held)

    # Twilio refuses it later, by callback
    assert await fake.emit_status(service, sid, "failed", error_code="63016",
                                  error_message="Failed to send freeform message") == 200
    row = next(r for r in await outbound(service) if r.id == msg_id)
    assert row.status == "failed"
    assert "63016" in row.error
    assert row.meta["whatsapp_template"] == TEMPLATE


async def test_outside_the_window_the_reply_is_held_and_goes_out_when_the_customer_writes(
        fake: FakeTwilio, start: Any) -> None:
    """No template to ask them to reopen: nothing is posted, the reply is held (never marked
    sent), and it is delivered, once, as soon as the customer writes again."""
    service = await start(fake)
    assert await deliver(service, "SM" + "7" * 32, SHIPPING) == 200
    await eventually(lambda: len(fake.accepted) == 1)
    async with service.db.write() as conn:
        conv = (await conn.execute(select(Conversation.id))).scalar_one()
        await conn.execute(update(Conversation).values(
            last_inbound_at=datetime.now(UTC) - timedelta(days=2)))
        (msg_id,) = await queue_replies(conn, [OutgoingReply(
            conversation_id=conv, channel="whatsapp", text="Any news? Your refund is done.",
            language="en", author="staff:U1")], stored_delivery=(), now=datetime.now(UTC))
    service.outbox.wake()

    async def held() -> bool:
        return any(r.id == msg_id and r.status == "held" for r in await outbound(service))

    await eventually(held)
    assert len(fake.requests) == 1  # nothing was posted for it

    assert await deliver(service, "SM" + "8" * 32, "hello?") == 200
    await eventually(lambda: len(fake.accepted) == 3)
    bodies = [m.get("Body") for m in fake.accepted]
    assert bodies[1] == "Any news? Your refund is done."  # the held text first, then the answer
    assert bodies.count("Any news? Your refund is done.") == 1
    row = next(r for r in await outbound(service) if r.id == msg_id)
    assert row.status in ("sent", "delivered")

async def test_invalid_number_21211_is_permanent_and_rate_limit_honours_retry_after(
        fake: FakeTwilio, start: Any) -> None:
    service = await start(fake)
    fake.fail_next("permanent")
    assert await deliver(service, "SM" + "8" * 32, SHIPPING, phone="+15550000001") == 200

    async def failed() -> bool:
        rows = await outbound(service)
        return bool(rows) and rows[0].status == "failed"

    await eventually(failed)
    assert "21211" in (await outbound(service))[0].error
    assert len(fake.requests) == 1

    fake.fail_next("rate_limited")
    t0 = time.monotonic()
    assert await deliver(service, "SM" + "9" * 32, SHIPPING, phone="+15550000002") == 200
    await eventually(lambda: len(fake.accepted) == 1, timeout=15)
    assert time.monotonic() - t0 >= 1.0  # Retry-After: 1
    assert len(fake.requests) == 3


async def test_dropped_connection_after_sending_is_retried_not_lost(
        fake: FakeTwilio, start: Any) -> None:
    """The POST reached Twilio but the answer was lost: the customer may get the answer twice,
    which is better than never; the outbox row says why it was sent again."""
    service = await start(fake)
    fake.fail_next("drop")
    assert await deliver(service, "SM" + "a" * 32, SHIPPING) == 200

    async def sent() -> bool:
        rows = await outbound(service)
        return bool(rows) and rows[0].status == "sent"

    await eventually(sent)
    assert len(fake.requests) == 2 and len(fake.accepted) == 1
    async with service.db.read() as conn:
        (error,) = (await conn.execute(select(OutboxItem.last_error))).scalars().all()
    assert "outcome unknown" in error and "twice" in error


async def test_one_customer_across_orders_whatsapp_and_web_chat(
        fake: FakeTwilio, start: Any) -> None:
    """The store knows Ann by email and phone; she writes on WhatsApp, then from the web chat
    with her email: one customer, both identities, one history."""
    service = await start(fake)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
        async with client.post("/api/orders", headers=headers, json={
                "email": "ann@example.com", "phone": "+39 333 765 4321", "name": "Ann",
                "order_id": "1001", "total": 42.0}) as resp:
            assert resp.status == 200, await resp.text()
            customer_id = (await resp.json())["customer_id"]
        assert await deliver(service, "SM" + "b" * 32, SHIPPING, phone="+393337654321") == 200
        await eventually(lambda: len(fake.accepted) == 1)
        await chat(client, "Do you ship to Germany?", **signed("ann", email="ann@example.com"))
    async with service.db.read() as conn:
        customers = (await conn.execute(select(Customer.id).where(
            Customer.merged_into.is_(None)))).scalars().all()
        identities = (await conn.execute(select(Identity.channel, Identity.customer_id)
                                         .order_by(Identity.channel))).all()
        conversations = (await conn.execute(select(Conversation.channel,
                                                   Conversation.customer_id))).all()
    assert customers == [customer_id]
    assert [(i.channel, i.customer_id) for i in identities] == [
        ("webchat", customer_id), ("whatsapp", customer_id)]
    assert {c.channel for c in conversations} == {"webchat", "whatsapp"}
    assert {c.customer_id for c in conversations} == {customer_id}


async def test_whatsapp_then_email_is_one_customer_with_one_history(
        fake: FakeTwilio, start: Any) -> None:
    """The same, with a real mail: Ann writes on WhatsApp, then emails from the address the
    store has on file (IMAP into Dovecot, replies to an SMTP sink)."""
    email_fake = pytest.importorskip("tests.fakes.email", reason="the email fakes are absent")
    async with email_fake.email_harness() as mail:
        service = await start(fake, **mail.settings())
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession() as client, client.post(
                f"http://127.0.0.1:{service.port}/api/orders", headers=headers, json={
                    "email": "ann@example.com", "phone": "+393337654321",
                    "order_id": "1002", "total": 80.0}) as resp:
            assert resp.status == 200, await resp.text()
            customer_id = (await resp.json())["customer_id"]
        assert await deliver(service, "SM" + "d" * 32, SHIPPING, phone="+393337654321") == 200
        await eventually(lambda: len(fake.accepted) == 1)
        await mail.deliver(service, external_id="ann-1", text="Do you ship to Germany?")
        await eventually(lambda: len(mail.sent()) == 1, timeout=20)
        async with service.db.read() as conn:
            customers = (await conn.execute(select(Customer.id).where(
                Customer.merged_into.is_(None)))).scalars().all()
            identities = (await conn.execute(select(Identity.channel, Identity.customer_id)
                                             .order_by(Identity.channel))).all()
            history = (await conn.execute(
                select(Message.channel, Message.direction).join(
                    Conversation, Conversation.id == Message.conversation_id)
                .where(Conversation.customer_id == customer_id).order_by(Message.id))).all()
    assert customers == [customer_id]
    assert [(i.channel, i.customer_id) for i in identities] == [
        ("email", customer_id), ("whatsapp", customer_id)]
    assert [(m.channel, m.direction) for m in history] == [
        ("whatsapp", "in"), ("whatsapp", "out"), ("email", "in"), ("email", "out")]
