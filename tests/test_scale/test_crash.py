"""A worker process killed with SIGKILL mid-run loses nothing and doubles nothing.

One `python -m bot web` and two `python -m bot worker` processes on PostgreSQL + Redis; 10,000
web chat messages over 200 conversations; one worker is killed midway. Every message must be
answered exactly once, in order within its conversation, and the stream must be empty.

Slow (minutes; on a shared, busy machine much more), so it is opt-in: it runs when selected
with `-m crash` or when STOREDESK_CRASH_MESSAGES is set (e.g. 1000 for a quick look):

    python -m pytest -m crash tests/test_scale/test_crash.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import REDIS_TEST_URL, ROOT, free_port

sys.path.insert(0, str(ROOT))
from bench.scale import Cluster, base_env, post_all

pytestmark = [pytest.mark.crash, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.timeout(1800)]
MESSAGES = int(os.environ.get("STOREDESK_CRASH_MESSAGES", "10000"))
CONVERSATIONS = 200


async def _count(engine: object, sql: str) -> int:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        return int((await conn.execute(text(sql))).scalar_one())


@pytest.fixture
def crash_opt_in(request: pytest.FixtureRequest) -> None:
    selected = "crash" in (request.config.getoption("markexpr") or "").replace("not crash", "")
    if not selected and "STOREDESK_CRASH_MESSAGES" not in os.environ:
        pytest.skip("opt-in (minutes of CPU): run with -m crash or set STOREDESK_CRASH_MESSAGES")


async def test_sigkill_of_a_worker_loses_and_doubles_nothing(
        crash_opt_in: None, pg_database_url: str, redis_prefix: str, tmp_path: Path) -> None:
    per = MESSAGES // CONVERSATIONS
    total = per * CONVERSATIONS
    port = free_port()
    env = base_env(pg_database_url, port, REDIS_URL=REDIS_TEST_URL, REDIS_PREFIX=redis_prefix,
                   REDIS_RECLAIM_SECONDS="3", WORKERS="4", LEADER_TTL_SECONDS="3")
    await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "db", "upgrade"],
                            cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    cluster = Cluster(env, port, logs=tmp_path)
    cluster.start("web", "web")
    victim = cluster.start("worker1", "worker")
    cluster.start("worker2", "worker")
    engine = create_async_engine(pg_database_url)
    redis = Redis.from_url(REDIS_TEST_URL, decode_responses=True)
    killed_at: list[int] = []
    try:
        await cluster.wait_ready()

        async def kill_midway(posted: int) -> None:
            if not killed_at and posted >= total // 2:
                done = await _count(engine, "SELECT count(*) FROM inbox WHERE status = 'done'")
                victim.send_signal(signal.SIGKILL)
                killed_at.append(done)

        await post_all(port, CONVERSATIONS, per, on_progress=kill_midway)
        assert killed_at and victim.wait(timeout=10) == -signal.SIGKILL

        deadline = time.monotonic() + 600
        while True:
            done = await _count(engine, "SELECT count(*) FROM inbox WHERE status = 'done'")
            sent = await _count(engine, "SELECT count(*) FROM message "
                                        "WHERE direction = 'out' AND status = 'delivered'")
            if done == total and sent == total:
                break
            assert time.monotonic() < deadline, f"{done} handled, {sent} delivered of {total}"
            await asyncio.sleep(1.0)

        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT c.address, m.id, m.direction, m.external_id, m.status, "
                "m.meta ->> 'in_reply_to' AS reply_to FROM message m "
                "JOIN conversation c ON c.id = m.conversation_id ORDER BY m.id"))).all()
            dead = await conn.execute(text("SELECT count(*) FROM inbox WHERE status <> 'done'"))
            assert dead.scalar_one() == 0
        inbound: dict[str, list[int]] = defaultdict(list)
        replies: dict[int, int] = defaultdict(int)
        in_ids = set()
        for r in rows:
            if r.direction == "in":
                inbound[r.address].append(int(r.external_id.split(":", 1)[1][1:6]))
                in_ids.add(r.id)
            else:
                assert r.status == "delivered"
                replies[int(r.reply_to)] += 1
        assert len(in_ids) == total  # each message stored once
        assert len(inbound) == CONVERSATIONS
        for address, seqs in inbound.items():
            assert seqs == list(range(per)), f"{address} out of order: {seqs[:10]}..."
        assert set(replies) == in_ids and set(replies.values()) == {1}  # one answer each

        stream = f"{redis_prefix}:inbox"
        deadline = time.monotonic() + 30  # the dead worker's entries: reclaimed, acknowledged
        while True:
            pending = (await redis.xpending(stream, "workers"))["pending"]
            length = await redis.xlen(stream)
            if (pending, length) == (0, 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert (pending, length) == (0, 0)
        assert 0 < killed_at[0] < total  # it really died midway
    finally:
        cluster.stop()
        await redis.aclose()
        await engine.dispose()
