"""Another process holding SQLite's write lock (a CLI import, a backup) must not freeze the
service: customers keep reading their chat while a new message waits for the lock, and the
message is taken once the lock is free."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp

from bot.app import Service
from tests.conftest import chat, eventually, stays, transcript


async def test_a_held_write_lock_delays_the_message_but_not_the_service(
        service: Service, client: aiohttp.ClientSession) -> None:
    reader, _ = await chat(client, "How long does shipping take?")
    path = Path(service.settings.database_url.split("///", 1)[1])
    other = sqlite3.connect(path, isolation_level=None, timeout=0)  # the "other process"
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock until COMMIT
        post = asyncio.create_task(client.post("/api/webchat/messages",
                                               json={"text": "Do you ship to Italy?"}))

        served = 0

        async def served_while_waiting() -> bool:
            nonlocal served
            served += bool(await transcript(client, reader))
            return not post.done()

        # for a whole second the message waits for the lock, and meanwhile the loop is free:
        # another customer's transcript is read again and again (a frozen loop serves none)
        await stays(served_while_waiting, window=1.0, what="the post waits, reads go on")
        assert served >= 5
        other.execute("COMMIT")
        resp = await asyncio.wait_for(post, timeout=10)
        assert resp.status == 202
        visitor = (await resp.json())["visitor_id"]
    finally:
        other.close()

    async def answered() -> bool:
        return any(m["from"] != "you" for m in await transcript(client, visitor))

    await eventually(answered, what="the delayed message answered")



async def test_the_services_commits_leave_wal_checkpoints_to_a_thread(tmp_path: Path) -> None:
    """A commit on the event loop never copies the WAL back into the database file (with an
    fsync); the service's checkpoint thread does, so the WAL does not keep growing."""
    from sqlalchemy import text

    from bot.db.engine import Database

    path = tmp_path / "wal.db"
    db = Database(f"sqlite+aiosqlite:///{path}", background_checkpoints=True)
    stop = asyncio.Event()
    checkpoints: asyncio.Task[None] | None = None
    try:
        await db.upgrade()
        empty = path.stat().st_size
        for n in range(300):  # ~6 MB: well over the 1,000 pages SQLite checkpoints at
            async with db.write() as conn:
                await conn.execute(text("INSERT INTO channel_state (key, value, updated_at) "
                                        "VALUES (:k, :v, '2026-01-01')"),
                                   {"k": f"k{n}", "v": "x" * 20_000})
        # all of it is still in the WAL: no commit copied it back
        assert Path(f"{path}-wal").stat().st_size > 5_000_000
        assert path.stat().st_size == empty
        checkpoints = asyncio.create_task(db.checkpoints(stop, every=0.05))
        await eventually(lambda: path.stat().st_size > 5_000_000, timeout=10,
                         what="the WAL copied back into the database file by the thread")
    finally:
        stop.set()
        if checkpoints is not None:
            await checkpoints
        await db.close()


async def test_a_long_background_write_leaves_the_loop_free_and_other_writes_wait_for_it(
        tmp_path: Path) -> None:
    """The dashboard's rollups aggregate whole days inside a write transaction: on SQLite its
    statements run on a thread, so the loop keeps serving, and the service's own writes queue
    for the write lock instead of failing on SQLite's."""
    from sqlalchemy import text

    from bot.db.engine import Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bg.db'}", background_checkpoints=True)
    ticks = 0

    async def loop_turns() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    insert = text("INSERT INTO channel_state (key, value, updated_at) "
                  "VALUES (:k, '{}', '2026-01-01')")
    turning = asyncio.create_task(loop_turns())
    try:
        await db.upgrade()
        async with db.background_write() as conn:
            before = ticks
            await conn.execute(text(  # a long aggregate
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 2000000) SELECT count(*) FROM n"))
            during = ticks - before

            async def write_meanwhile() -> None:
                async with db.write() as other:
                    await other.execute(insert, {"k": "live"})

            live = asyncio.create_task(write_meanwhile())
            await stays(lambda: not live.done(), window=0.2, what="the live write waits")
            await conn.execute(insert, {"k": "rollup"})
        await asyncio.wait_for(live, timeout=10)  # then goes through, without an error
        async with db.read() as conn:
            keys = (await conn.execute(text("SELECT key FROM channel_state"))).scalars().all()
        assert sorted(keys) == ["live", "rollup"]
        assert during > 100, "the loop stood still while the aggregate ran"
    finally:
        turning.cancel()
        await db.close()
