"""The durable queue: order within a conversation, no loss, no double handling, dead letters."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, insert, select

from bot.app import Service
from bot.db.engine import Database
from bot.db.models import Conversation, InboxItem, Message
from bot.queue import shard_of
from tests.conftest import ADMIN_TOKEN, ROOT, free_port

QUESTIONS = ["How much does shipping cost?", "How long does delivery take?",
             "Where is my order?", "How do I return an item?"]


async def _post(client: aiohttp.ClientSession, visitor: str, text: str, cid: str) -> int:
    async with client.post("/api/webchat/messages", json={
            "visitor_id": visitor, "text": text, "client_message_id": cid}) as resp:
        return resp.status


async def _wait_handled(db: Database, expected: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with db.read() as conn:
            done = (await conn.execute(select(func.count()).select_from(InboxItem)
                                       .where(InboxItem.status == "done"))).scalar_one()
        if done >= expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {done} of {expected} messages handled")


async def _inbound_order_per_conversation(db: Database) -> dict[str, list[str]]:
    async with db.read() as conn:
        rows = (await conn.execute(
            select(Conversation.address, Message.text)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.direction == "in").order_by(Message.id))).all()
    result: dict[str, list[str]] = {}
    for address, text in rows:
        result.setdefault(address, []).append(text)
    return result


async def test_messages_keep_their_order_within_each_conversation(
        make_settings: Any, database_url: str) -> None:
    service = Service(make_settings(workers=4, webchat_rate_per_minute=10_000))
    await service.start()
    visitors = [f"visitor-{i:02d}-aaaaaaaaaaaa" for i in range(12)]
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            sends = [_post(client, v, f"{n}: {QUESTIONS[n % 4]}", f"{v}-{n:03d}")
                     for n in range(15) for v in visitors]
            # Interleave conversations: each conversation's messages are posted in order.
            for batch_start in range(0, len(sends), len(visitors)):
                statuses = await asyncio.gather(*sends[batch_start:batch_start + len(visitors)])
                assert set(statuses) == {202}
        await _wait_handled(service.db, 15 * len(visitors))
        order = await _inbound_order_per_conversation(service.db)
        assert set(order) == set(visitors)
        for texts in order.values():
            assert [int(t.split(":")[0]) for t in texts] == list(range(15))
        async with service.db.read() as conn:
            replies = (await conn.execute(select(func.count()).select_from(Message)
                                          .where(Message.direction == "out"))).scalar_one()
        assert replies == 15 * len(visitors)
    finally:
        await service.stop()


async def test_undecodable_message_is_dead_lettered_and_others_continue(
        database_url: str, service: Service, client: aiohttp.ClientSession,
        admin_headers: dict[str, str]) -> None:
    async with service.db.write() as conn:
        await conn.execute(insert(InboxItem.__table__).values(
            channel="webchat", external_id="broken-1", conversation_key="webchat:broken",
            shard=shard_of("webchat:broken"), payload={"channel": "webchat"},
            status="pending", attempts=0))
    service.inbox.wakeup.set()
    assert await _post(client, "healthy-visitor-000000", QUESTIONS[0], "c" * 20) == 202
    await _wait_handled(service.db, 1)
    async with client.get("/api/queue", headers=admin_headers) as resp:
        stats = (await resp.json())["inbox"]
    assert stats["dead"] == 1 and stats["done"] == 1


def _spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bot", command], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def _wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listening on {port}")


@pytest.mark.timeout(180)
async def test_killed_process_answers_every_accepted_message_once_after_restart(
        tmp_path: Path) -> None:
    """Accept messages, SIGKILL the process mid-stream, restart: each answered exactly once."""
    db_path = tmp_path / "crash.db"
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{db_path}", "PORT": str(port),
           "ADMIN_TOKEN": ADMIN_TOKEN, "WEBCHAT_RATE_PER_MINUTE": "100000", "WORKERS": "2"}
    log = tmp_path / "service.log"
    accepted: list[tuple[str, str]] = []

    # Round 1: only the web role runs, so messages are accepted but nobody answers them.
    web = _spawn("web", env, log)
    try:
        await _wait_port(port)
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as client:
            for n in range(40):
                visitor = f"crash-visitor-{n % 8:02d}-xxxx"
                question = QUESTIONS[(n // 8) % 4]  # never the same question twice in a row
                if await _post(client, visitor, question, f"m{n:04d}-yyyyyyyyyyyy") == 202:
                    accepted.append((visitor, f"m{n:04d}"))
    finally:
        web.send_signal(signal.SIGKILL)
        web.wait()

    # Round 2: everything runs; kill it while it is answering a second burst.
    serve = _spawn("serve", env, log)
    try:
        await _wait_port(port)
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as client:
            for n in range(40, 400):
                visitor = f"crash-visitor-{n % 8:02d}-xxxx"
                question = QUESTIONS[(n // 8) % 4]  # never the same question twice in a row
                if await _post(client, visitor, question, f"m{n:04d}-yyyyyyyyyyyy") == 202:
                    accepted.append((visitor, f"m{n:04d}"))
    finally:
        serve.send_signal(signal.SIGKILL)
        serve.wait()

    # Round 3: restart and let it drain.
    serve = _spawn("serve", env, log)
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    try:
        await _wait_port(port)
        await _wait_handled(db, len(accepted), timeout=90)
        async with db.read() as conn:
            inbound = (await conn.execute(select(Message.id, Message.external_id)
                                          .where(Message.direction == "in"))).all()
            replies = (await conn.execute(select(Message.meta)
                                          .where(Message.direction == "out"))).all()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
        await db.close()
    external_ids = [e for _, e in inbound]
    assert len(external_ids) == len(set(external_ids)) == len(accepted)
    reply_targets = [m["in_reply_to"] for (m,) in replies]
    assert sorted(reply_targets) == sorted(i for i, _ in inbound)  # one reply per message


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_housekeeping_forgets_old_handled_rows_and_nothing_else(make_settings: Any) -> None:
    """Handled rows go after the dedup window; pending and dead rows stay, and a redelivery
    inside the window is still recognised."""
    from datetime import UTC, datetime, timedelta

    from channels.base import InboundMessage

    service = Service(make_settings())
    await service.db.upgrade()
    inbox = service.inbox
    try:
        for n in range(7):
            assert await inbox.put(InboundMessage(channel="webchat", external_id=f"v:{n}",
                                                  address="v", text="hi"))
        now = datetime.now(UTC)
        t = InboxItem.__table__.c
        async with service.db.write() as conn:
            for n, (status, done_at) in enumerate([
                    ("done", now - timedelta(days=5)), ("done", now - timedelta(days=4)),
                    ("done", now - timedelta(hours=1)), ("dead", now - timedelta(days=9)),
                    ("pending", None), ("done", now - timedelta(days=9)),
                    ("done", now - timedelta(days=3, hours=1))]):
                await conn.execute(InboxItem.__table__.update().where(
                    t.external_id == f"v:{n}").values(status=status, done_at=done_at))
        assert await inbox.purge_done(before=now - timedelta(hours=72), chunk=2) == 4
        async with service.db.read() as conn:
            left = sorted((await conn.execute(select(t.external_id))).scalars())
        assert left == ["v:2", "v:3", "v:4"]
        assert not await inbox.put(InboundMessage(channel="webchat", external_id="v:2",
                                                  address="v", text="hi"))  # still a duplicate
    finally:
        await service.db.close()
