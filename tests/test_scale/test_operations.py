"""Singletons elected across processes, /metrics, /readyz, graceful stop."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from bot.app import Service
from bot.db.engine import Database
from bot.leader import Leader, PostgresLeader, RedisLeader
from core.errors import QueueError
from tests.conftest import chat


async def _only_one_leads(a: Leader, b: Leader) -> None:
    running: list[str] = []

    def work(name: str) -> Any:
        async def run(stop: asyncio.Event) -> None:
            running.append(name)
            try:
                await stop.wait()
            finally:
                running.remove(name)
        return run

    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run("poll:email", stop_a, work("a")))
    await asyncio.sleep(0.3)
    task_b = asyncio.create_task(b.run("poll:email", stop_b, work("b")))
    await asyncio.sleep(0.6)
    assert running == ["a"]  # b waits: two replicas never poll the same mailbox
    stop_a.set()
    await asyncio.wait_for(task_a, 5)
    for _ in range(50):
        if running == ["b"]:
            break
        await asyncio.sleep(0.1)
    assert running == ["b"]  # a stepped down; b took over
    stop_b.set()
    await asyncio.wait_for(task_b, 5)
    assert running == []


@pytest.mark.redis
async def test_redis_lock_elects_one_poller_and_hands_over(redis_url: str,
                                                           redis_prefix: str) -> None:
    a = RedisLeader(redis_url, prefix=redis_prefix, ttl=1.5)
    b = RedisLeader(redis_url, prefix=redis_prefix, ttl=1.5)
    try:
        await _only_one_leads(a, b)
        # A leader that dies without releasing is replaced once its lock expires.
        assert await a.acquire("poll:imap") is not None
        assert await b.acquire("poll:imap") is None
        await asyncio.sleep(1.7)
        assert await b.acquire("poll:imap") is not None
    finally:
        await a.close()
        await b.close()


@pytest.mark.postgres
async def test_postgres_advisory_lock_elects_one_poller_and_hands_over(
        pg_database_url: str) -> None:
    db_a, db_b = Database(pg_database_url), Database(pg_database_url)
    try:
        await _only_one_leads(PostgresLeader(db_a, ttl=1.5), PostgresLeader(db_b, ttl=1.5))
        # The lock dies with its connection: a crashed leader frees it at once.
        lease = await PostgresLeader(db_a).acquire("poll:imap")
        assert lease is not None
        assert await PostgresLeader(db_b).acquire("poll:imap") is None
        await lease.conn.invalidate()  # type: ignore[attr-defined]  # the process died
        again = await PostgresLeader(db_b).acquire("poll:imap")
        assert again is not None
        await again.release()
    finally:
        await db_a.close()
        await db_b.close()


async def test_metrics_count_answers_sends_and_queue_depth(
        client: aiohttp.ClientSession) -> None:
    await chat(client, "How much does shipping cost?")
    await chat(client, "I want to talk to a human please")
    await asyncio.sleep(0.3)
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = await resp.text()
    assert 'storedesk_messages_handled_total{channel="webchat",decision="answer"} 1.0' in body
    assert 'storedesk_messages_handled_total{channel="webchat",decision="escalate"} 1.0' in body
    assert 'storedesk_sends_total{channel="webchat",result="ok"} 2.0' in body
    assert 'storedesk_queue_depth{queue="inbox",status="done"} 2.0' in body
    assert 'storedesk_handling_seconds_count{channel="webchat"} 2.0' in body


async def test_an_unreachable_redis_stops_the_start_with_the_fix(make_settings: Any) -> None:
    """A deployment whose Redis is not there fails at once, saying so (tests/test_bot/
    test_cli_errors.py checks the one line and exit code of the command)."""
    service = Service(make_settings(redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(QueueError, match=r"cannot reach Redis at 127\.0\.0\.1:1.*REDIS_URL"):
        await service.start(workers=False)
    await service.stop()


async def test_worker_process_serves_probes_and_metrics_on_metrics_port(
        make_settings: Any) -> None:
    from tests.conftest import free_port

    port = free_port()
    service = Service(make_settings(metrics_port=port))
    await service.start(http=False, workers=True)
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, path
    finally:
        await service.stop()


def test_queue_command_shows_depth_stream_and_dead_letters(tmp_path: Any) -> None:
    import json
    import uuid

    import redis
    from typer.testing import CliRunner

    from bot.cli import app
    from tests.conftest import REDIS_TEST_URL

    try:
        redis.Redis.from_url(REDIS_TEST_URL).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}: {exc}")
    prefix = f"sdtest-{uuid.uuid4().hex[:10]}"
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
           "REDIS_URL": REDIS_TEST_URL, "REDIS_PREFIX": prefix, "LOG_LEVEL": "WARNING"}
    try:
        result = CliRunner().invoke(app, ["queue"], env=env)
        assert result.exit_code == 0, result.output
        stats = json.loads(result.output)
        assert stats["pending"] == 0 and stats["dead"] == 0
        assert stats["redis"]["stream"] == f"{prefix}:inbox"
        assert stats["redis"]["dead_letter"]["length"] == 0
        result = CliRunner().invoke(app, ["queue", "--requeue-dead"], env=env)
        assert result.exit_code == 0 and json.loads(result.output)["requeued"] == 0
    finally:
        client = redis.Redis.from_url(REDIS_TEST_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
