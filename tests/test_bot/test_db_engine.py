"""PostgreSQL closing the service's connections (a restart, a failover, an operator ending
backends) costs no request: the pool replaces a connection the server closed when it is taken,
without pinging each one first."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy import make_url, text

from bot.app import Service
from bot.db.engine import Database
from tests.conftest import PG_ADMIN_DSN, chat, eventually

pytestmark = pytest.mark.postgres


async def _end_all_backends(url: str) -> set[int]:
    """What a PostgreSQL restart does to clients: every backend of the database is ended
    (FATAL "terminating connection due to administrator command"); returns their pids once
    they are gone."""
    name = make_url(url).database
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    try:
        rows = await admin.fetch("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
        pids = {int(r["pid"]) for r in rows}
        assert pids, "no connection to end"

        async def gone() -> bool:
            left = await admin.fetchval("SELECT count(*) FROM pg_stat_activity "
                                        "WHERE pid = ANY($1::int[])", list(pids))
            return bool(left == 0)

        await eventually(gone, what="the backends end")
        await admin.fetchval("SELECT 1")  # one more round trip: the client sockets saw EOF
        return pids
    finally:
        await admin.close()


async def test_pooled_connections_the_server_closed_are_replaced_at_the_first_try(
        pg_database_url: str) -> None:
    db = Database(pg_database_url)
    await db.upgrade()
    try:
        async def backend() -> int:
            async with db.read() as conn:
                await conn.execute(text("SELECT pg_sleep(0.05)"))  # several at once
                return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

        before = set(await asyncio.gather(*(backend() for _ in range(4))))
        assert len(before) == 4
        ended = await _end_all_backends(pg_database_url)
        assert before <= ended
        after = set(await asyncio.gather(*(backend() for _ in range(4))))  # no error
        assert not after & ended
        await db.check_writable()  # writes too
    finally:
        await db.close()


async def test_the_chat_answers_at_once_after_postgresql_ended_the_services_connections(
        make_settings: Any, pg_database_url: str) -> None:
    service = Service(make_settings(database_url=pg_database_url))
    await service.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            visitor, reply = await chat(client, "How much does shipping cost?")
            assert reply["from"] == "bot"
            await _end_all_backends(pg_database_url)
            # the post is accepted at the first try (chat asserts 202), and answered
            _, reply = await chat(client, "Do you ship to Italy?", visitor, timeout=15)
            assert reply["from"] == "bot"
    finally:
        await service.stop()
