"""The Redis Streams backend and several worker processes on PostgreSQL, in one interpreter.

Each `Service` has its own database pool and Redis connections, so two of them behave like two
processes towards PostgreSQL (advisory locks are per connection) and Redis (distinct consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import event, func, select

from bot.app import Service
from bot.db.engine import Database
from bot.db.models import Conversation, InboxItem, Message
from bot.queue import Inbox
from bot.redis_queue import GROUP, RedisInbox, RedisWakeups
from channels.base import InboundMessage
from tests.conftest import eventually, stays

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
QUESTION = "How much does shipping cost?"


async def _post(client: aiohttp.ClientSession, visitor: str, seq: int) -> None:
    async with client.post("/api/webchat/messages", json={
            "visitor_id": visitor, "text": QUESTION,
            "client_message_id": f"m{seq:05d}-{uuid.uuid4().hex[:12]}"}) as resp:
        assert resp.status == 202, await resp.text()


async def _wait_done(db: Database, expected: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    done = 0
    while time.monotonic() < deadline:
        async with db.read() as conn:
            done = (await conn.execute(select(func.count()).select_from(InboxItem)
                                       .where(InboxItem.status == "done"))).scalar_one()
        if done >= expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {done} of {expected} messages handled")


async def _check_exactly_once_in_order(db: Database, visitors: list[str], per: int) -> None:
    """Every inbound message stored once, in posting order, each with exactly one reply."""
    async with db.read() as conn:
        rows = (await conn.execute(
            select(Conversation.address, Message.id, Message.direction, Message.external_id,
                   Message.meta)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .order_by(Message.id))).all()
    inbound: dict[str, list[str]] = {v: [] for v in visitors}
    replies: dict[int, int] = {}
    in_ids: set[int] = set()
    for r in rows:
        if r.direction == "in":
            inbound[r.address].append(r.external_id.split(":", 1)[1][:6])
            in_ids.add(r.id)
        else:
            key = int((r.meta or {})["in_reply_to"])
            replies[key] = replies.get(key, 0) + 1
    for visitor in visitors:
        assert inbound[visitor] == [f"m{i:05d}" for i in range(per)], visitor
    assert replies == {i: 1 for i in in_ids}


async def _run_split(make_settings: Any, database_url: str, *, workers: int, redis: bool,
                     prefix: str | None, conversations: int, per: int) -> None:
    extra: dict[str, Any] = {"webchat_rate_per_minute": 1_000_000,
                             "repeat_window_minutes": 1e-6, "workers": 2, "queue_batch": 16}
    if redis:
        extra.update(redis_url="redis://127.0.0.1:6379/0", redis_prefix=prefix)
    web = Service(make_settings(database_url=database_url, **extra))
    procs = [Service(make_settings(database_url=database_url, **extra)) for _ in range(workers)]
    await web.start(http=True, workers=False)
    for p in procs:
        await p.start(http=False, workers=True)
    try:
        visitors = [f"visitor-{uuid.uuid4().hex[:16]}" for _ in range(conversations)]
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{web.port}") as client:

            async def converse(v: str) -> None:
                for i in range(per):
                    await _post(client, v, i)

            await asyncio.gather(*(converse(v) for v in visitors))
        await _wait_done(web.db, conversations * per)
        await asyncio.sleep(0.5)  # let the outboxes mark replies sent
        await _check_exactly_once_in_order(web.db, visitors, per)
        handled = [p.metrics.handled_total() for p in procs]
        assert sum(handled) == conversations * per
        if redis:
            r = Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
            try:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    pending = (await r.xpending(f"{prefix}:inbox", GROUP))["pending"]
                    length = await r.xlen(f"{prefix}:inbox")
                    if pending == 0 and length == 0:
                        break
                    await asyncio.sleep(0.1)
                assert (pending, length) == (0, 0)
            finally:
                await r.aclose()
    finally:
        for p in procs:
            await p.stop()
        await web.stop()


async def test_two_worker_processes_on_postgres_without_redis_handle_each_message_once_in_order(
        make_settings: Any, pg_database_url: str) -> None:
    await _run_split(make_settings, pg_database_url, workers=2, redis=False, prefix=None,
                     conversations=12, per=15)


async def test_two_worker_processes_on_redis_streams_handle_each_message_once_in_order(
        make_settings: Any, pg_database_url: str, redis_prefix: str) -> None:
    await _run_split(make_settings, pg_database_url, workers=2, redis=True, prefix=redis_prefix,
                     conversations=12, per=15)


async def test_redis_backend_on_sqlite_single_process(
        make_settings: Any, tmp_path: Any, redis_prefix: str) -> None:
    await _run_split(make_settings, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", workers=1,
                     redis=True, prefix=redis_prefix, conversations=5, per=6)


def _msg(i: int, key: str = "alice") -> InboundMessage:
    return InboundMessage(channel="webchat", external_id=f"{key}:{i}", address=key,
                          text=QUESTION)


async def test_entries_of_a_dead_worker_are_taken_over_and_acknowledged(
        database_url: str, redis_url: str, redis_prefix: str) -> None:
    db = Database(database_url)
    await db.upgrade()
    dead = RedisInbox(db, redis_url, prefix=redis_prefix, reclaim_seconds=0.3)
    alive = RedisInbox(db, redis_url, prefix=redis_prefix, reclaim_seconds=0.3)
    try:
        assert await dead.put(_msg(1)) and await dead.put(_msg(2))
        assert not await dead.put(_msg(1))  # duplicate: no second entry
        taken = await dead.claim(0, 1, 10)
        assert [i.message.external_id for i in taken] == ["alice:1", "alice:2"]
        # `dead` never settles: its process "died" holding both entries.
        alive.block_ms = 50
        assert await alive.claim(0, 1, 10) == []  # not idle long enough yet
        await asyncio.sleep(0.4)
        alive._next_reclaim = 0.0
        items = await alive.claim(0, 1, 10)
        assert [i.message.external_id for i in items] == ["alice:1", "alice:2"]
        async with db.write() as conn:
            for item in await alive.lock(conn, items):
                await alive.complete(conn, item.id)
        await alive.settle(items)
        stats = await alive.stats()
        assert stats["done"] == 2 and stats["pending"] == 0
        assert stats["redis"]["pending"] == 0 and stats["redis"]["length"] == 0
    finally:
        await dead.close()
        await alive.close()
        await db.close()


async def test_entry_that_keeps_killing_workers_goes_to_the_dead_letter_stream(
        database_url: str, redis_url: str, redis_prefix: str) -> None:
    db = Database(database_url)
    await db.upgrade()
    inboxes = [RedisInbox(db, redis_url, prefix=redis_prefix, reclaim_seconds=0.1,
                          max_deliveries=2) for _ in range(4)]
    try:
        await inboxes[0].put(_msg(1, "bob"))
        assert len(await inboxes[0].claim(0, 1, 10)) == 1  # delivery 1, then "crash"
        for inbox in inboxes[1:]:
            await asyncio.sleep(0.15)
            inbox.block_ms = 10
            await inbox.claim(0, 1, 10)  # deliveries 2, 3: over the limit on the third
        stats = await inboxes[-1].stats()
        assert stats["dead"] == 1 and stats["pending"] == 0
        dead = stats["redis"]["dead_letter"]
        assert dead["length"] == 1 and dead["latest"][0]["x"] == "bob:1"
        assert "stopped 2 times" in dead["latest"][0]["error"]
        assert stats["redis"]["pending"] == 0
        # An admin gives it another round: it is announced again.
        fresh = RedisInbox(db, redis_url, prefix=redis_prefix)
        inboxes.append(fresh)
        assert await fresh.requeue_dead() == 1
        fresh.block_ms = 10
        items = await fresh.claim(0, 1, 10)
        assert [i.message.external_id for i in items] == ["bob:1"]
    finally:
        for inbox in inboxes:
            await inbox.close()
        await db.close()


async def test_sweeper_announces_rows_committed_while_redis_was_down(
        database_url: str, redis_url: str, redis_prefix: str) -> None:
    db = Database(database_url)
    await db.upgrade()
    broken = RedisInbox(db, "redis://127.0.0.1:1/0", prefix=redis_prefix)
    inbox = RedisInbox(db, redis_url, prefix=redis_prefix, sweep_age=0.0)
    try:
        assert await broken.put(_msg(1, "carol"))  # committed; the XADD failed
        inbox.block_ms = 10
        assert await inbox.claim(0, 1, 10) == []
        assert await inbox.sweep_once() == 1
        items = await inbox.claim(0, 1, 10)
        assert [i.message.external_id for i in items] == ["carol:1"]
    finally:
        await broken.close()
        await inbox.close()
        await db.close()


async def test_several_tasks_of_one_process_never_strand_a_message(
        database_url: str, redis_url: str, redis_prefix: str) -> None:
    """Worker tasks share what their process holds: an entry one task receives while another
    is reading the database must not be acknowledged by the other one's (older) read. With no
    sweeper running, every message must still be handled promptly."""
    db = Database(database_url)
    await db.upgrade()
    inbox = RedisInbox(db, redis_url, prefix=redis_prefix, sweep_age=3600)
    inbox.block_ms = 20
    total, keys = 600, [f"k{n}" for n in range(8)]
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        while not stop.is_set():
            items = await inbox.claim(index, 4, 8)
            done = []
            if items:
                async with db.write() as conn:
                    done = await inbox.lock(conn, items)
                    await inbox.complete_many(conn, [i.id for i in done])
            # as the worker pool does (what was handled needs no look), and with no help
            await inbox.settle(items, done if index % 2 else ())

    async def produce(start: int) -> None:  # concurrent producers, as web requests are
        for i in range(start, total, 4):
            await inbox.put(_msg(i, keys[i % len(keys)]))

    tasks = [asyncio.create_task(worker(i)) for i in range(4)]
    try:
        await asyncio.gather(*(produce(n) for n in range(4)))

        async def all_done() -> bool:
            return (await inbox.stats())["done"] == total
        await eventually(all_done, timeout=20, what=f"all {total} messages handled")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await inbox.close()
        await db.close()


async def test_only_the_entries_of_handled_rows_are_acknowledged_after_a_batch(
        database_url: str, redis_url: str, redis_prefix: str) -> None:
    """A batch that handled one of a conversation's two messages (the other failed)
    acknowledges that message's entry and keeps the other's: the second message is still
    announced, and taken next."""
    db = Database(database_url)
    await db.upgrade()
    inbox = RedisInbox(db, redis_url, prefix=redis_prefix, sweep_age=3600)
    inbox.block_ms = 50
    try:
        assert await inbox.put(_msg(1, "erin")) and await inbox.put(_msg(2, "erin"))
        items = await inbox.claim(0, 1, 10)
        assert [i.message.external_id for i in items] == ["erin:1", "erin:2"]
        async with db.write() as conn:
            done = (await inbox.lock(conn, items))[:1]
            await inbox.complete_many(conn, [i.id for i in done])
        await inbox.settle(items, done)
        stats = await inbox.stats()
        assert (stats["done"], stats["pending"]) == (1, 1)
        assert (stats["redis"]["pending"], stats["redis"]["length"]) == (1, 1)
        items = await eventually(lambda: inbox.claim(0, 1, 10), timeout=5,
                                 what="the second message claimed")
        assert [i.message.external_id for i in items] == ["erin:2"]
        async with db.write() as conn:
            done = await inbox.lock(conn, items)
            await inbox.complete_many(conn, [i.id for i in done])
        await inbox.settle(items, done)
        stats = await inbox.stats()
        assert (stats["redis"]["pending"], stats["redis"]["length"]) == (0, 0)
    finally:
        await inbox.close()
        await db.close()


async def test_a_row_whose_announcement_was_lost_is_picked_up_within_seconds(
        database_url: str, redis_url: str, redis_prefix: str) -> None:
    """No sweeper round needed: an idle worker finds pending rows nobody announces."""
    db = Database(database_url)
    await db.upgrade()
    broken = RedisInbox(db, "redis://127.0.0.1:1/0", prefix=redis_prefix)
    inbox = RedisInbox(db, redis_url, prefix=redis_prefix, sweep_age=3600)
    inbox.block_ms = 50
    try:
        assert await broken.put(_msg(1, "dave"))  # committed; the XADD failed
        items = await eventually(lambda: inbox.claim(0, 1, 10), timeout=10,
                                 what="the unannounced row claimed")
        assert [i.message.external_id for i in items] == ["dave:1"]
    finally:
        await broken.close()
        await inbox.close()
        await db.close()


async def test_a_reply_committed_by_a_worker_process_wakes_the_web_processs_long_poll(
        make_settings: Any, pg_database_url: str, redis_prefix: str) -> None:
    """The page's long-poll waits in the web process; the reply is committed by a worker
    process. The worker's wake-up reaches the waiter: without it the waiter would read again
    only at its safety-net interval, here longer than the poll."""
    async with _web_and_worker(make_settings, pg_database_url, redis_prefix) as (web, _):
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{web.port}") as client:
            visitor = f"visitor-{uuid.uuid4().hex[:16]}"
            await _post(client, visitor, 0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with client.get("/api/webchat/messages", params={
                    "visitor_id": visitor, "after": 0, "wait": 30}) as resp:
                messages = (await resp.json())["messages"]
            waited = loop.time() - started
        # The question and its reply are committed together by the worker process.
        assert [m["from"] for m in messages] == ["you", "bot"]
        # Woken by the commit, not by the poll running out (30 s) or a re-read (never here).
        assert waited < 15, waited


@contextlib.asynccontextmanager
async def _web_and_worker(make_settings: Any, database_url: str, redis_prefix: str,
                          **more: Any) -> AsyncIterator[tuple[Service, Service]]:
    """A web process and a worker process on PostgreSQL + Redis; the web chat's safety-net
    re-read set longer than any test, so only wake-ups can make it read."""
    extra: dict[str, Any] = {"redis_url": "redis://127.0.0.1:6379/0",
                             "redis_prefix": redis_prefix, **more}
    web = Service(make_settings(database_url=database_url, **extra))
    worker = Service(make_settings(database_url=database_url, **extra))
    await web.start(http=True, workers=False)
    try:
        await worker.start(http=False, workers=True)
        web.channels["webchat"].recheck = 3600.0  # type: ignore[attr-defined]
        yield web, worker
    finally:
        await worker.stop()
        await web.stop()


def _transcript_reads(service: Service) -> list[str]:
    """The statements of `service` that read web chat messages (its transcript query)."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM message" in statement:
            seen.append(statement)

    event.listen(service.db.engine.sync_engine, "before_cursor_execute", count)
    return seen


async def _poll(client: aiohttp.ClientSession, visitor: str, after: int,
                wait: int = 30) -> list[dict[str, Any]]:
    async with client.get("/api/webchat/messages", params={
            "visitor_id": visitor, "after": after, "wait": wait}) as resp:
        assert resp.status == 200
        return list((await resp.json())["messages"])


async def _conversation(db: Database, visitor: str) -> list[tuple[int, str, str]]:
    async with db.read() as conn:
        rows = (await conn.execute(
            select(Message.id, Message.direction, Message.text)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Conversation.address == visitor).order_by(Message.id))).all()
    return [(r.id, r.direction, r.text) for r in rows]


async def test_replies_committed_by_a_worker_process_reach_the_page_without_a_read(
        make_settings: Any, pg_database_url: str, redis_prefix: str) -> None:
    """The worker's wake-up carries what it committed: the web process shows the next
    replies from what it knows, without reading the transcript again; each visitor sees
    exactly their own conversation, as stored."""
    async with _web_and_worker(make_settings, pg_database_url, redis_prefix,
                               repeat_window_minutes=1e-6) as (web, _):
        reads = _transcript_reads(web)
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{web.port}") as client:
            visitors = [f"visitor-{uuid.uuid4().hex[:16]}" for _ in range(3)]
            pages: dict[str, list[dict[str, Any]]] = {v: [] for v in visitors}

            async def exchange(visitor: str, seq: int) -> None:
                await _post(client, visitor, seq)
                after = pages[visitor][-1]["id"] if pages[visitor] else 0
                got: list[dict[str, Any]] = []
                while not any(m["from"] != "you" for m in got):
                    got += await _poll(client, visitor, got[-1]["id"] if got else after)
                pages[visitor] += got

            await asyncio.gather(*(exchange(v, 0) for v in visitors))
            first = len(reads)
            for seq in range(1, 4):
                await asyncio.gather(*(exchange(v, seq) for v in visitors))
            assert len(reads) == first, reads[first:]
        for visitor in visitors:
            stored = await _conversation(web.db, visitor)
            assert [(m["id"], "in" if m["from"] == "you" else "out", m["text"])
                    for m in pages[visitor]] == stored
            assert [d for _, d, _ in stored] == ["in", "out"] * 4


async def test_a_wake_up_that_does_not_follow_what_the_web_process_knows_makes_it_read(
        make_settings: Any, pg_database_url: str, redis_prefix: str) -> None:
    """A wake-up whose messages do not start where the visitor's known transcript ends (a
    late or reordered one, or one that says nothing usable) is not shown: the web process
    forgets what it knew and reads what is really stored."""
    async with _web_and_worker(make_settings, pg_database_url, redis_prefix) as (web, _):
        reads = _transcript_reads(web)
        r = Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{web.port}") as client:
                visitor = f"visitor-{uuid.uuid4().hex[:16]}"
                await _post(client, visitor, 0)
                shown = await _poll(client, visitor, 0)
                while len(shown) < 2:
                    shown += await _poll(client, visitor, shown[-1]["id"])
                last = shown[-1]["id"]
                assert await _poll(client, visitor, last, wait=0) == []
                before = len(reads)
                at = "2026-03-04T10:30:00+00:00"
                gap = [f"webchat/{visitor}", last + 1,
                       [[last + 3, "out", "bot", "not stored anywhere", at, "en", "new", "open",
                         []]]]
                undecodable = [f"webchat/{visitor}", last, [["x"]]]
                for part in (gap, undecodable):
                    waiting = asyncio.create_task(_poll(client, visitor, last))
                    n = len(reads)
                    await r.publish(f"{redis_prefix}:wake",
                                    "stored " + orjson.dumps([part]).decode())
                    # woken (or asked after the wake-up): it reads, finds nothing new, waits on
                    await eventually(lambda n=n: len(reads) > n, what="a transcript read")
                    await stays(lambda w=waiting: not w.done(), window=0.3, what="the poll waits")
                    waiting.cancel()
                    assert await _poll(client, visitor, last, wait=0) == []
                assert len(reads) > before  # what is new was read from the database
                assert await _poll(client, visitor, 0, wait=0) == shown  # what is stored, only
        finally:
            await r.aclose()


async def test_a_conversation_another_worker_holds_is_left_to_it_the_others_are_taken(
        pg_database_url: str) -> None:
    """Two worker processes claimed the same conversations: each message is handled by one
    transaction only, and a worker never waits for the other's conversation."""
    db = Database(pg_database_url)
    await db.upgrade()
    inbox = Inbox(db)
    other = Database(pg_database_url)  # another process: its own connections
    try:
        for i, key in enumerate(["alice", "bob", "alice", "carol"]):
            assert await inbox.put(_msg(i, key))
        items = await inbox.claim(0, 1, 10)
        assert len(items) == 4
        async with other.write() as first:
            mine = await inbox.lock(first, [i for i in items
                                            if i.message.address == "alice"])
            assert [i.message.external_id for i in mine] == ["alice:0", "alice:2"]
            async with db.write() as second:
                theirs = await inbox.lock(second, items)
                assert [i.message.external_id for i in theirs] == ["bob:1", "carol:3"]
                await inbox.complete_many(second, [i.id for i in theirs])
            await inbox.complete_many(first, [i.id for i in mine])
        async with db.write() as again:  # all handled: nothing is handed out twice
            assert await inbox.lock(again, items) == []
    finally:
        await other.close()
        await db.close()


async def test_a_processs_wake_ups_arrive_in_the_order_they_were_published(
        redis_url: str, redis_prefix: str) -> None:
    """What a process commits one after the other reaches the others in that order (a
    reordered pair would cost the web process a transcript read)."""
    publisher, listener = Redis.from_url(redis_url), Redis.from_url(redis_url,
                                                                    decode_responses=True)
    wakeups = RedisWakeups(publisher, redis_prefix)
    got: list[str] = []
    stop = asyncio.Event()
    listening = asyncio.create_task(RedisWakeups(listener, redis_prefix).listen(
        stop, {"n": got.append}))
    try:
        async def subscribed() -> bool:
            return bool((await publisher.pubsub_numsub(f"{redis_prefix}:wake"))[0][1])
        await eventually(subscribed, what="the listener subscribed")
        for i in range(300):
            wakeups.publish_soon(f"n {i}")
            if i % 7 == 0:
                await asyncio.sleep(0)  # let some go out while more are queued
        await eventually(lambda: len(got) == 300, what="all wake-ups received")
        assert got == [str(i) for i in range(300)]
    finally:
        stop.set()
        await listening
        await publisher.aclose()
        await listener.aclose()
