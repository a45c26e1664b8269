"""The email channel against a real Dovecot (IMAP APPEND in) and an aiosmtpd sink (SMTP out)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import ChannelState, InboxItem, Message
from tests.conftest import eventually
from tests.fakes.email import (
    Dovecot,
    SmtpSink,
    dovecot_server,
    email_settings,
    imap_append,
    make_mail,
    smtp_sink,
    stop_dovecot,
)

pytestmark = pytest.mark.imap


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    server = dovecot_server()
    try:
        yield server
    finally:
        stop_dovecot()


@pytest.fixture
def sink() -> Iterator[tuple[SmtpSink, int]]:
    with smtp_sink() as pair:
        yield pair


class Rig:
    """One mailbox user, one SMTP sink, and a service that can be stopped and started again."""

    def __init__(self, dovecot: Dovecot, sink: SmtpSink, smtp_port: int, make_settings: Any,
                 **extra: Any) -> None:
        self.dovecot = dovecot
        self.sink = sink
        self.user = dovecot.new_user()
        self.settings = make_settings(**email_settings(dovecot, self.user, smtp_port, **extra))
        self.service: Service | None = None

    async def start(self) -> Service:
        self.service = Service(self.settings)
        await self.service.start()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    async def append(self, raw: bytes) -> None:
        await imap_append(self.dovecot.port, self.user, raw)

    async def replies(self, count: int, wait: float = 15.0) -> list[EmailMessage]:
        await eventually(lambda: len(self.sink.messages) >= count, timeout=wait)
        return list(self.sink.messages)

    async def rows(self, *columns: Any, direction: str | None = None) -> list[Any]:
        assert self.service is not None
        stmt = select(*columns).order_by(Message.id)
        if direction:
            stmt = stmt.where(Message.direction == direction)
        async with self.service.db.read() as conn:
            return list((await conn.execute(stmt)).all())

    async def queued(self) -> int:
        assert self.service is not None
        async with self.service.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(InboxItem)))
                       .scalar_one())


@pytest.fixture
async def make_rig(dovecot: Dovecot, sink: tuple[SmtpSink, int], make_settings: Any
                   ) -> AsyncIterator[Any]:
    rigs: list[Rig] = []

    async def build(**extra: Any) -> Rig:
        r = Rig(dovecot, sink[0], sink[1], make_settings, **extra)
        rigs.append(r)
        await r.start()
        return r

    try:
        yield build
    finally:
        for r in rigs:
            await r.stop()


@pytest.fixture
async def rig(make_rig: Any) -> Rig:
    return await make_rig()  # type: ignore[no-any-return]


async def test_mail_is_answered_in_thread(rig: Rig) -> None:
    await rig.append(make_mail(subject="Shipping?", message_id="<q1@example.com>",
                               body="Hello,\nhow much does shipping cost?\n\nThanks\nAnn"))
    (reply,) = await rig.replies(1)
    assert reply["To"] == "ann@example.com"
    assert reply["Subject"] == "Re: Shipping?"
    assert reply["In-Reply-To"] == "<q1@example.com>"
    assert reply["References"] == "<q1@example.com>"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Auto-Response-Suppress"] == "All"
    assert rig.user in reply["From"]
    assert "shipping" in reply.get_body(("plain",)).get_content().lower()

    async def recorded() -> bool:
        rows = await rig.rows(Message.status, Message.provider_id, direction="out")
        return rows == [("sent", reply["Message-ID"])]

    await eventually(recorded, timeout=5)



async def test_customer_reply_joins_the_conversation(rig: Rig) -> None:
    await rig.append(make_mail(subject="Shipping?", message_id="<q1@example.com>"))
    (first,) = await rig.replies(1)
    ours = first["Message-ID"]
    await rig.append(make_mail(
        subject="Re: Shipping?", message_id="<q2@example.com>",
        headers={"In-Reply-To": ours, "References": f"<q1@example.com> {ours}"},
        body="Great, and how do I return an item?\n\n"
             "On Sun, 22 Nov 2026 at 10:00, Demo Shop <support@shop.test> wrote:\n"
             "> Shipping is free on orders over 60 EUR.\n> \n"))
    second = (await rig.replies(2))[1]
    assert second["Subject"] == "Re: Shipping?"
    assert second["In-Reply-To"] == "<q2@example.com>"
    assert second["References"].split() == ["<q1@example.com>", ours, "<q2@example.com>"]
    inbound = await rig.rows(Message.conversation_id, Message.text, direction="in")
    assert [r.text for r in inbound] == ["How much does shipping cost?",
                                         "Great, and how do I return an item?"]
    assert inbound[0].conversation_id == inbound[1].conversation_id


async def test_restart_loses_and_repeats_nothing(rig: Rig) -> None:
    await rig.append(make_mail(sender="a@example.com", message_id="<r1@example.com>"))
    await rig.replies(1)
    await rig.stop()
    for n in (2, 3):
        await rig.append(make_mail(sender=f"c{n}@example.com", message_id=f"<r{n}@example.com>"))
    await rig.start()
    replies = await rig.replies(3)
    await asyncio.sleep(1.0)  # a repeat would have arrived by now
    assert len(rig.sink.messages) == 3
    assert sorted(r["In-Reply-To"] for r in replies) == [f"<r{n}@example.com>" for n in (1, 2, 3)]
    assert await rig.queued() == 3


async def test_uidvalidity_change_is_handled_without_duplicates(rig: Rig) -> None:
    await rig.append(make_mail(sender="a@example.com", message_id="<v1@example.com>"))
    await rig.replies(1)
    await rig.stop()
    rig.dovecot.set_uidvalidity(rig.user, 424242)
    await rig.append(make_mail(sender="b@example.com", message_id="<v2@example.com>"))
    service = await rig.start()
    replies = await rig.replies(2)
    await asyncio.sleep(1.0)
    assert [r["In-Reply-To"] for r in replies] == ["<v1@example.com>", "<v2@example.com>"]
    assert len(rig.sink.messages) == 2
    assert await rig.queued() == 2
    async with service.db.read() as conn:
        cursor = (await conn.execute(select(ChannelState.value))).scalars().all()
    assert {"uidvalidity": 424242, "last_uid": 2} in cursor


DSN = b"""From: Mail Delivery System <MAILER-DAEMON@mx.example.com>
To: support@shop.test
Subject: Undelivered Mail Returned to Sender
Message-ID: <bounce1@mx.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.
How much does shipping cost?
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
Final-Recipient: rfc822; nobody@example.com
Action: failed
Status: 5.1.1
--B--
"""


async def test_automatic_mail_gets_no_answer(rig: Rig) -> None:
    question = "How much does shipping cost?"
    await rig.append(make_mail(message_id="<auto@example.com>", body=question,
                               subject="Out of office",
                               headers={"Auto-Submitted": "auto-replied"}))
    await rig.append(DSN)
    await rig.append(make_mail(message_id="<list@example.com>", body=question,
                               headers={"List-Id": "<news.example.com>"}))
    await rig.append(make_mail(message_id="<oof@example.com>", body=question,
                               headers={"X-Autoreply": "yes"}))
    await rig.append(make_mail(message_id="<bulk@example.com>", body=question,
                               headers={"Precedence": "bulk"}))
    await rig.append(make_mail(sender=f"Demo Shop <{rig.user}>", message_id="<own@x.test>",
                               body=question))
    await rig.append(make_mail(message_id="<person@example.com>", body=question))
    (reply,) = await rig.replies(1)
    await asyncio.sleep(1.0)
    assert len(rig.sink.messages) == 1
    assert reply["In-Reply-To"] == "<person@example.com>"
    assert await rig.queued() == 1


async def test_our_own_reply_coming_back_is_not_answered(rig: Rig) -> None:
    await rig.append(make_mail(message_id="<e1@example.com>"))
    (reply,) = await rig.replies(1)
    await rig.append(reply.as_bytes())  # e.g. a BCC of our answer lands in the inbox
    await rig.append(make_mail(sender="zed@example.com", message_id="<e2@example.com>"))
    await rig.replies(2)
    await asyncio.sleep(0.5)
    assert len(rig.sink.messages) == 2 and await rig.queued() == 2


async def test_auto_reply_cap_records_the_skipped_answer(make_rig: Any) -> None:
    rig = await make_rig(email_max_auto_replies_per_day=1)
    await rig.append(make_mail(message_id="<c1@example.com>"))
    await rig.replies(1)
    await rig.append(make_mail(message_id="<c2@example.com>", subject="Returns",
                               body="How do I return an item?"))

    async def capped() -> bool:
        rows = await rig.rows(Message.status, Message.error, direction="out")
        return len(rows) == 2 and rows[1].status == "failed"

    await eventually(capped, timeout=15.0)
    rows = await rig.rows(Message.status, Message.error, direction="out")
    assert rows[0].status == "sent"
    assert "auto-reply cap reached" in rows[1].error
    assert len(rig.sink.messages) == 1
    assert await rig.queued() == 2  # the mail itself is queued and handled


async def test_oversized_mail_is_skipped(make_rig: Any) -> None:
    rig = await make_rig(email_max_bytes=4096)
    await rig.append(make_mail(message_id="<big@example.com>",
                               body="How much does shipping cost?\n" + "x" * 8000))
    await rig.append(make_mail(message_id="<small@example.com>"))
    (reply,) = await rig.replies(1)
    await asyncio.sleep(0.5)
    assert reply["In-Reply-To"] == "<small@example.com>"
    assert len(rig.sink.messages) == 1 and await rig.queued() == 1


async def test_polling_without_idle(make_rig: Any) -> None:
    rig = await make_rig(imap_idle=False, imap_poll_seconds=0.2)
    await rig.append(make_mail(message_id="<p1@example.com>"))
    (reply,) = await rig.replies(1)
    assert reply["In-Reply-To"] == "<p1@example.com>"


async def test_wrong_password_is_logged_and_retried(make_rig: Any,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="channels.email")
    await make_rig(imap_password="wrong-password")
    await eventually(lambda: any("login refused" in r.getMessage() for r in caplog.records),
                     timeout=10)
    assert "wrong-password" not in caplog.text


async def test_first_start_leaves_old_history_alone(dovecot: Dovecot, sink: tuple[SmtpSink, int],
                                                    make_settings: Any) -> None:
    rig = Rig(dovecot, sink[0], sink[1], make_settings)
    old = datetime.now(UTC) - timedelta(days=30)
    await imap_append(dovecot.port, rig.user, make_mail(message_id="<old@example.com>"),
                      date=old)
    await rig.append(make_mail(sender="new@example.com", message_id="<new@example.com>"))
    await rig.start()
    try:
        (reply,) = await rig.replies(1)
        await asyncio.sleep(0.5)
        assert reply["In-Reply-To"] == "<new@example.com>"
        assert len(rig.sink.messages) == 1 and await rig.queued() == 1
    finally:
        await rig.stop()


async def test_reconnects_after_the_server_drops_the_session(
        sink: tuple[SmtpSink, int], make_settings: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="channels.email")
    if reason := Dovecot.available():
        pytest.skip(reason)
    server = Dovecot()  # a private server: this test disconnects its clients
    server.start()
    rig = Rig(server, sink[0], sink[1], make_settings)
    try:
        await rig.start()
        await rig.append(make_mail(sender="a@example.com", message_id="<k1@example.com>"))
        await rig.replies(1)
        server.doveadm("kick", rig.user)  # the server drops our IMAP session
        await rig.append(make_mail(sender="b@example.com", message_id="<k2@example.com>"))
        replies = await rig.replies(2, wait=20)
        assert [r["In-Reply-To"] for r in replies] == ["<k1@example.com>", "<k2@example.com>"]
        lines = [r.getMessage() for r in caplog.records if r.name == "channels.email"]
        assert sum("(IDLE)" in ln for ln in lines) == 2  # IDLE before and after the drop
        assert any("reconnecting in" in ln for ln in lines)
    finally:
        await rig.stop()
        server.stop()
