"""The outbox as customers feel it: every reply once, none stuck behind a slow one, none lost.

The platform is a fake Telegram Bot API on 127.0.0.1 (tests/fakes/telegram.py) that can hold
a chat's sends (they hang, and are accepted when released, as a merely slow platform would) or
hang one send for good. Replies are queued the way the bot queues them (`queue_replies`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import insert, select

from bot.app import Service
from bot.db.engine import Database
from bot.db.models import Conversation, Customer, Identity, Message, OutboxItem
from bot.replies import OutgoingReply, queue_replies
from tests.conftest import ADMIN_TOKEN, ROOT, eventually, free_port, stays
from tests.fakes.telegram import SECRET, TOKEN, FakeTelegram, fake_telegram

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as telegram:
        yield telegram


def telegram_settings(fake: FakeTelegram) -> dict[str, Any]:
    return {"telegram_token": TOKEN, "telegram_mode": "webhook",
            "telegram_webhook_secret": SECRET, "telegram_api_base": fake.url}


@pytest.fixture
async def start(make_settings: Any, fake: FakeTelegram
                ) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    services: list[Service] = []

    async def run(**overrides: Any) -> Service:
        service = Service(make_settings(**telegram_settings(fake), **overrides))
        await service.start()
        services.append(service)
        return service

    yield run
    for service in services:
        await service.stop()


async def queue_answers(db: Database, chats: range) -> None:
    """One bot answer queued for each Telegram chat in `chats`."""
    async with db.write() as conn:
        replies = []
        for chat in chats:
            customer = (await conn.execute(insert(Customer.__table__).values(
                orders_count=0, total_spent=0.0, created_at=NOW)
                .returning(Customer.__table__.c.id))).scalar_one()
            identity = (await conn.execute(insert(Identity.__table__).values(
                customer_id=customer, channel="telegram", address=str(chat), created_at=NOW)
                .returning(Identity.__table__.c.id))).scalar_one()
            conversation = (await conn.execute(insert(Conversation.__table__).values(
                customer_id=customer, identity_id=identity, channel="telegram",
                address=str(chat), status="bot", created_at=NOW, updated_at=NOW)
                .returning(Conversation.__table__.c.id))).scalar_one()
            replies.append(OutgoingReply(conversation, "telegram", f"answer for {chat}", "en"))
        await queue_replies(conn, replies, stored_delivery=(), now=NOW)


async def statuses(db: Database) -> Counter[str]:
    async with db.read() as conn:
        return Counter((await conn.execute(select(Message.status).where(
            Message.direction == "out"))).scalars())


def accepted_per_chat(fake: FakeTelegram) -> Counter[int]:
    return Counter(int(p["chat_id"]) for p in fake.sent_messages())


async def test_a_hanging_send_holds_back_no_other_customer(
        start: Callable[..., Awaitable[Service]], fake: FakeTelegram) -> None:
    service = await start()
    fake.hold(1)
    await queue_answers(service.db, range(1, 41))
    service.outbox.wake()
    await eventually(lambda: len(fake.sent_messages()) == 39, timeout=5,
                     what="the 39 other customers answered while chat 1 hangs")
    await eventually(lambda: _is(statuses(service.db), Counter(sent=39, pending=1)),
                     what="their sends recorded")
    fake.release()
    await eventually(lambda: _is(statuses(service.db), Counter(sent=40)),
                     what="the slow one recorded once the platform answers")
    assert accepted_per_chat(fake) == Counter(range(1, 41))


async def test_a_send_that_times_out_is_retried_and_delivered(
        start: Callable[..., Awaitable[Service]], fake: FakeTelegram) -> None:
    service = await start(send_timeout=1)
    fake.fail_next("hang")
    await queue_answers(service.db, range(7, 8))
    service.outbox.wake()
    await eventually(lambda: _is(statuses(service.db), Counter(sent=1)), timeout=15,
                     what="delivered on the retry")
    assert len(fake.calls_to("sendMessage")) == 2
    async with service.db.read() as conn:
        error = (await conn.execute(select(OutboxItem.last_error))).scalar_one()
    assert "within 1 s" in error and "twice" in error


async def test_a_graceful_stop_mid_round_repeats_only_the_send_in_flight(
        start: Callable[..., Awaitable[Service]], fake: FakeTelegram) -> None:
    service = await start()
    service.outbox.stop_grace = 0.5
    fake.hold(100)
    await queue_answers(service.db, range(1, 101))
    service.outbox.wake()
    await eventually(lambda: len(fake.sent_messages()) == 99, what="99 accepted, 1 hanging")
    await eventually(lambda: _is(statuses(service.db), Counter(sent=99, pending=1)),
                     what="the 99 recorded")
    await service.stop()
    fake.release()  # the platform got the hanging one after all

    again = await start()
    await eventually(lambda: _is(statuses(again.db), Counter(sent=100)), what="all sent")
    await stays(lambda: len(fake.sent_messages()) <= 101, window=0.5,
                what="nothing but the in-flight send repeated")
    per_chat = accepted_per_chat(fake)
    assert set(per_chat) == set(range(1, 101))
    assert {chat for chat, n in per_chat.items() if n > 1} <= {100}


async def test_sigkill_mid_round_repeats_at_most_the_sends_in_flight(
        fake: FakeTelegram, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'storedesk.db'}"
    db = Database(url)
    await db.upgrade()
    await queue_answers(db, range(1, 101))
    fake.hold(100)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "PORT"))},
           "DATABASE_URL": url, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING",
           "PYTHONPATH": str(ROOT), "TELEGRAM_TOKEN": TOKEN, "TELEGRAM_MODE": "webhook",
           "TELEGRAM_WEBHOOK_SECRET": SECRET, "TELEGRAM_API_BASE": fake.url,
           "SEND_CONCURRENCY": "16"}

    def serve() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open(
                                    "ab"))
    first = serve()
    try:
        await eventually(lambda: len(fake.sent_messages()) == 99, timeout=60,
                         what="99 accepted, 1 hanging")
        first.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    fake.release()
    second = serve()
    try:
        await eventually(lambda: _is(statuses(db), Counter(sent=100)), timeout=60,
                         what="every reply sent after the restart")
        await _ready(port)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.to_thread(second.wait, 30)
        await db.close()
    per_chat = accepted_per_chat(fake)
    repeated = sum(per_chat.values()) - 100
    assert set(per_chat) == set(range(1, 101))
    assert repeated <= 16, f"{repeated} replies sent twice; at most the 16 in flight may be"


async def _ready(port: int) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/readyz") as resp:
        assert resp.status == 200


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_flood_control_uses_up_no_attempt(
        start: Callable[..., Awaitable[Service]], fake: FakeTelegram) -> None:
    """Telegram says "retry in 1 s" more times than the attempts allowed: the reply still goes
    out, because "later" is not a failure."""
    service = await start(send_max_attempts=2)
    fake.fail_next("rate_limited", 3)
    await queue_answers(service.db, range(9, 10))
    service.outbox.wake()
    await eventually(lambda: _is(statuses(service.db), Counter(sent=1)), timeout=20,
                     what="delivered after the flood control")
    assert len(fake.sent_messages()) == 1


async def test_an_admin_requeues_a_reply_that_failed_for_good_once_the_cause_is_fixed(
        start: Callable[..., Awaitable[Service]], fake: FakeTelegram) -> None:
    """The bot was blocked (a permanent error): the reply is failed, and stays so. Once the
    customer unblocks it, the admin's requeue sends it, once."""
    service = await start()
    fake.fail_next("blocked")
    await queue_answers(service.db, range(21, 22))
    service.outbox.wake()
    await eventually(lambda: _is(statuses(service.db), Counter(failed=1)), what="failed")
    await stays(lambda: _is(statuses(service.db), Counter(failed=1)), window=0.3,
                what="a permanent error is not retried by itself")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}") as http:
        async with http.get("/api/queue", headers=headers) as resp:
            assert (await resp.json())["outbox"] == {"pending": 0, "sent": 0, "failed": 1}
        async with http.post("/api/queue/requeue-failed", params={"queue": "inbox"},
                             headers=headers) as resp:
            assert resp.status == 400  # the inbox's dead letters have their own action
        async with http.post("/api/queue/requeue-failed", params={"queue": "outbox"},
                             headers=headers) as resp:
            assert resp.status == 200
            assert await resp.json() == {"queue": "outbox", "requeued": 1}
    await eventually(lambda: _is(statuses(service.db), Counter(sent=1)), what="sent")
    await stays(lambda: len(fake.sent_messages()) == 1, window=0.3, what="sent once")
    async with service.db.read() as conn:
        assert (await conn.execute(select(Message.error).where(
            Message.direction == "out"))).scalar() is None
