"""Shared fixtures: a real service on SQLite (or PostgreSQL), a real HTTP client, helpers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import Service
from bot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
ADMIN_TOKEN = "test-admin-token-0123456789"
#: the key the test store signs its logged-in customers with (WEBCHAT_IDENTITY_SECRET)
IDENTITY_SECRET = "test-identity-secret-0123456789"
PG_HOST = os.environ.get("STOREDESK_TEST_PG_HOST", "postgres@127.0.0.1:5432")
PG_ADMIN_DSN = f"postgresql://{PG_HOST}/postgres"
REDIS_TEST_URL = os.environ.get("STOREDESK_TEST_REDIS", "redis://127.0.0.1:6379/0")


def pytest_configure(config: pytest.Config) -> None:
    # Tests never read a developer's .env or production variables.
    for name in list(os.environ):
        if name in {"DATABASE_URL", "REDIS_URL", "ADMIN_TOKEN", "FAQ_DIR", "PUBLIC_URL"}:
            del os.environ[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def throwaway_pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards; skips when the server is
    unreachable."""
    import asyncpg

    name = f"storedesk_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://{PG_HOST}/{name}"
    finally:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    async with throwaway_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Request this fixture (or `usefixtures("database_url")`) to run a test on both SQLite and
    PostgreSQL: `make_settings` then uses it."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'storedesk.db'}"
        return
    async with throwaway_pg_database() as url:
        yield url


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The local Redis; skips when it is unreachable."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_TEST_URL)
    try:
        await client.ping()
    except Exception as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}: {exc}")
    finally:
        await client.aclose()
    yield REDIS_TEST_URL


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A per-test key prefix (REDIS_PREFIX); its keys are deleted afterwards."""
    from redis.asyncio import Redis

    prefix = f"sdtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest):
    default_url = f"sqlite+aiosqlite:///{tmp_path / 'storedesk.db'}"
    if "database_url" in request.fixturenames:
        default_url = request.getfixturevalue("database_url")

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": default_url,
            "host": "127.0.0.1", "port": 0, "admin_token": ADMIN_TOKEN,
            "public_url": "http://127.0.0.1:8080", "store_name": "Demo Shop",
            "webchat_identity_secret": IDENTITY_SECRET,
            # each start would spawn a matching helper: tests/test_bot/test_pipeline_offload.py
            # runs it, the rest match in-process
            "match_processes": 0,
        }
        values.update(overrides)
        return load_settings(_env_file=None, **values)
    return build


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    svc = Service(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as session:
        yield session


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def chat(client: aiohttp.ClientSession, text: str, visitor: str | None = None,
               *, timeout: float = 10.0, **extra: Any) -> tuple[str, dict[str, Any]]:
    """Send a web chat message and wait for the next reply; returns (visitor_id, reply)."""
    body: dict[str, Any] = {"text": text, **extra}
    seen = 0
    if visitor:
        body["visitor_id"] = visitor
        seen = max((m["id"] for m in await transcript(client, visitor)), default=0)
    async with client.post("/api/webchat/messages", json=body) as resp:
        assert resp.status == 202, await resp.text()
        data = await resp.json()
    visitor = data["visitor_id"]
    reply = await next_reply(client, visitor, after=seen, timeout=timeout)
    return visitor, reply


def signed(customer_id: str, **fields: str) -> dict[str, Any]:
    """The web chat fields of a customer the store signed, as its server would compute them."""
    digest = hmac.new(IDENTITY_SECRET.encode(), customer_id.encode(), hashlib.sha256)
    return {"customer": {"id": customer_id, **fields}, "identity_hash": digest.hexdigest()}


async def transcript(client: aiohttp.ClientSession, visitor: str,
                     after: int = 0) -> list[dict[str, Any]]:
    async with client.get("/api/webchat/messages",
                          params={"visitor_id": visitor, "after": after}) as resp:
        assert resp.status == 200
        return list((await resp.json())["messages"])


async def next_reply(client: aiohttp.ClientSession, visitor: str, *, after: int = 0,
                     timeout: float = 10.0) -> dict[str, Any]:
    """The first bot/staff message after the visitor's first message with id > `after`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        messages = await transcript(client, visitor, after)
        last_in = min((m["id"] for m in messages if m["from"] == "you"), default=None)
        if last_in is None:
            await asyncio.sleep(0.05)
            continue
        replies = [m for m in messages if m["from"] != "you" and m["id"] > last_in]
        if replies:
            return replies[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no reply for visitor {visitor} within {timeout} s")


async def eventually(check: Any, *, timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Wait until `check()` (sync or async) returns something truthy, and return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value: Any = None
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


async def stays(check: Any, *, window: float = 0.5, interval: float = 0.05,
                what: str = "condition") -> None:
    """Assert that `check()` stays truthy for the whole `window` (absence over a bounded
    window, not a sleep that hopes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if not value:
            raise AssertionError(f"{what} stopped holding (got {value!r})")
        if loop.time() >= deadline:
            return
        await asyncio.sleep(interval)
