"""Shared fixtures: a real service on SQLite (or PostgreSQL), a real HTTP client, helpers."""

from __future__ import annotations

import asyncio
import os
import socket
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


def pytest_configure(config: pytest.Config) -> None:
    # Tests never read a developer's .env or production variables.
    for name in list(os.environ):
        if name in {"DATABASE_URL", "REDIS_URL", "ADMIN_TOKEN", "FAQ_DIR", "PUBLIC_URL"}:
            del os.environ[name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def make_settings(tmp_path: Path):
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'storedesk.db'}",
            "host": "127.0.0.1", "port": 0, "admin_token": ADMIN_TOKEN,
            "public_url": "http://127.0.0.1:8080", "store_name": "Demo Shop",
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
