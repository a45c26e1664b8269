"""One contract, every channel: dedup, signatures, 429 then success, permanent errors, size."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Conversation, InboxItem, Message
from bot.replies import OutgoingReply, queue_replies
from core.messages import Attachment
from tests.conftest import eventually, stays
from tests.fakes.email import email_harness
from tests.fakes.slack import slack_harness
from tests.fakes.telegram import telegram_harness
from tests.fakes.twilio import whatsapp_harness
from tests.fakes.webchat import webchat_harness
from tests.test_channels.contract import Harness, HarnessFactory

#: every channel's harness; an import that fails is a failing suite, not a skipped channel
HARNESS_FACTORIES: list[tuple[str, HarnessFactory]] = [
    ("telegram", telegram_harness), ("whatsapp", whatsapp_harness), ("slack", slack_harness),
    ("email", email_harness), ("webchat", webchat_harness)]


@pytest.fixture(params=[f for _, f in HARNESS_FACTORIES], ids=[n for n, _ in HARNESS_FACTORIES])
async def rig(request: pytest.FixtureRequest, make_settings: Any
              ) -> AsyncIterator[tuple[Harness, Service]]:
    async with request.param() as harness:
        service = Service(make_settings(**harness.settings()))
        await service.start()
        try:
            yield harness, service
        finally:
            await service.stop()


def _skip_if_na(harness: Harness, behaviour: str) -> None:
    if behaviour in harness.not_applicable:
        pytest.skip(f"{harness.name}: {harness.not_applicable[behaviour]}")


async def _queued(service: Service) -> int:
    async with service.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(InboxItem))).scalar_one())


async def sent(harness: Harness) -> list[str]:
    """What the customer received (a harness may need to ask the service, as the page does)."""
    value = harness.sent()
    return await value if inspect.isawaitable(value) else value


async def _sent_count(harness: Harness) -> int:
    return len(await sent(harness))


async def test_redelivered_message_is_handled_once(rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "dedup")
    for _ in range(3):
        status = await harness.deliver(service, external_id="dup-1",
                                       text="How much does shipping cost?")
        assert 200 <= status < 300
    await eventually(lambda: _sent_count(harness), what="the answer reaches the customer")

    async def once() -> bool:
        return await _queued(service) == 1 and await _sent_count(harness) == 1

    await stays(once, window=1.0, what="one queued message, one answer")


@pytest.mark.parametrize("signature", ["bad", "missing"])
async def test_bad_signature_is_rejected_and_nothing_queued(
        rig: tuple[Harness, Service], signature: str) -> None:
    harness, service = rig
    _skip_if_na(harness, "signature")
    status = await harness.deliver(service, external_id="sig-1", text="hello",
                                   signature=signature)
    assert status in (401, 403)
    assert await _queued(service) == 0


async def test_rate_limited_send_is_retried_and_delivered_once(
        rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "rate_limit")
    harness.fail_next_sends("rate_limited", 1)
    assert 200 <= await harness.deliver(service, external_id="rl-1",
                                        text="How much does shipping cost?") < 300
    await eventually(lambda: _sent_count(harness), timeout=15,
                     what="the answer delivered after the 429")
    await stays(lambda: _async_eq(_sent_count(harness), 1), window=1.0,
                what="delivered once")


async def test_permanent_send_error_is_recorded(rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "permanent")
    harness.fail_next_sends("permanent", 1)
    assert 200 <= await harness.deliver(service, external_id="perm-1",
                                        text="How much does shipping cost?") < 300

    async def failed() -> bool:
        async with service.db.read() as conn:
            row = (await conn.execute(select(Message.status, Message.error)
                                      .where(Message.direction == "out"))).first()
        return row is not None and row.status == "failed" and bool(row.error)

    await eventually(failed, timeout=15, what="the permanent failure recorded")
    assert await sent(harness) == []


async def test_oversized_payload_is_rejected(rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "size")
    status = await harness.deliver(service, external_id="big-1", text="hello",
                                   size=service.settings.max_body_bytes + 1024)
    assert status == 413
    assert await _queued(service) == 0


async def _async_eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_a_reply_with_a_file_reaches_the_customer_with_its_link(
        rig: tuple[Harness, Service]) -> None:
    """A staff reply carrying a file: where the platform is not given the file itself, the
    customer gets its link under the text, once."""
    harness, service = rig
    _skip_if_na(harness, "attachment_link")
    assert 200 <= await harness.deliver(service, external_id="file-1",
                                        text="How much does shipping cost?") < 300
    await eventually(lambda: _sent_count(harness), what="the answer reaches the customer")
    link = "https://files.example.test/invoice-1001.pdf"
    cv = Conversation.__table__.c
    async with service.db.write() as conn:
        conversation = (await conn.execute(select(cv.id, cv.channel))).one()
        await queue_replies(conn, [OutgoingReply(
            conversation_id=conversation.id, channel=conversation.channel,
            text="Here is your invoice.", language="en", author="staff:U1",
            attachments=(Attachment(kind="document", mime_type="application/pdf", ref=link,
                                    name="invoice-1001.pdf"),))],
            stored_delivery=(), now=service.clock())
    service.outbox.wake()

    async def with_link() -> list[str]:
        return [t.replace("\r\n", "\n") for t in await sent(harness)  # mail has CRLF
                if "Here is your invoice." in t]
    got = await eventually(with_link, what="the reply with the file")
    assert got == [f"Here is your invoice.\n📎 invoice-1001.pdf: {link}"]
