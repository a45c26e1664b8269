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
