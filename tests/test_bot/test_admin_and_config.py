"""Admin API authentication, the escalations list (HTTP and CLI), settings validation,
migrations that match the models, and FAQ reloads in a running service."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from bot.app import Service
from bot.db.engine import Database
from bot.settings import SAMPLE_FAQ_DIR, load_settings
from core.errors import ConfigError
from tests.conftest import ADMIN_TOKEN, ROOT, chat, eventually


async def test_admin_api_needs_the_token(client: aiohttp.ClientSession) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        async with client.get("/api/escalations", headers=headers) as resp:
            assert resp.status == 401
            assert "admin token" in (await resp.json())["error"]


async def test_admin_api_is_off_without_a_token(make_settings) -> None:
    service = Service(make_settings(admin_token=None))
    await service.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as c, \
                c.get("/api/escalations") as resp:
            assert resp.status == 403
    finally:
        await service.stop()


async def test_escalations_listed_over_http_and_cli(
        client: aiohttp.ClientSession, service: Service, admin_headers: dict[str, str]) -> None:
    await chat(client, "Do you repair vintage motorcycles?")
    async with client.get("/api/escalations", headers=admin_headers) as resp:
        items = (await resp.json())["escalations"]
    assert len(items) == 1
    assert items[0]["reason"] == "no_match" and items[0]["channel"] == "webchat"
    async with client.get(f"/api/conversations/{items[0]['conversation_id']}",
                          headers=admin_headers) as resp:
        detail = await resp.json()
    assert detail["status"] == "waiting"
    assert [m["author"] for m in detail["messages"]] == ["customer", "bot"]
    assert detail["stage_history"][0]["to"] == "awareness"

    env = {**os.environ, "DATABASE_URL": service.settings.database_url,
           "ADMIN_TOKEN": ADMIN_TOKEN}
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "bot", "escalations"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no_match" in done.stdout and "vintage motorcycles" in done.stdout
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "bot", "escalations", "--json"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)[0]["question"] == "Do you repair vintage motorcycles?"


def test_bad_settings_stop_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, database_url="mysql://x", port=70000,
                      admin_token="short")
    text = str(err.value)
    assert "DATABASE_URL" in text and "PORT" in text
    env = {"PATH": "/usr/bin:/bin", "WORKERS": "zero", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "WORKERS" in done.stderr and "Traceback" not in done.stderr


def test_bad_neural_mode_settings_stop_the_service_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAQ_SEMANTIC_THREADS", "many")
    monkeypatch.setenv("FAQ_SEMANTIC_INT8", "perhaps")
    load_settings(_env_file=None)  # the neural mode is off: its settings are not read
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, faq_semantic_model="minilm")
    assert "FAQ_SEMANTIC_THREADS" in str(err.value) and "FAQ_SEMANTIC_INT8" in str(err.value)


async def test_migrations_match_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await db.upgrade()

    def diff(sync_conn):  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(sync_conn), SQLModel.metadata)

    async with db.read() as conn:
        changes = await conn.run_sync(diff)
    await db.close()
    assert changes == []


async def test_broken_faq_keeps_the_last_good_one_and_a_fix_is_picked_up(
        make_settings, tmp_path: Path) -> None:
    faq_dir = tmp_path / "faq"
    shutil.copytree(SAMPLE_FAQ_DIR, faq_dir)
    service = Service(make_settings(faq_dir=faq_dir))
    await service.start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            extra = faq_dir / "zz_extra.yaml"
            extra.write_text("- id: gift_wrap\n  questions:\n    - Do you offer gift wrapping?\n"
                             "  answer:\n    en: Yes, gift wrapping is free.\n"
                             "    broken: [\n")
            await eventually(lambda: service.faq.last_error is not None, timeout=15.0)
            async with client.get("/api/faq", headers=headers) as resp:
                status = await resp.json()
            assert status["last_error"]["file"].endswith("zz_extra.yaml")
            assert status["last_error"]["line"] >= 5
            _, reply = await chat(client, "How much does shipping cost?")
            shipping = service.faq.get("shipping_costs")
            assert shipping is not None and reply["text"].startswith(
                shipping.answers["en"].split("$")[0][:30])  # last good FAQ still answers

            extra.write_text("- id: gift_wrap\n  questions:\n    - Do you offer gift wrapping?\n"
                             "  answer:\n    en: Yes, gift wrapping is free.\n")
            await eventually(
                lambda: service.faq.last_error is None and service.faq.get("gift_wrap"),
                timeout=15.0)
            _, reply = await chat(client, "Do you offer gift wrapping?")
            assert reply["text"] == "Yes, gift wrapping is free."
    finally:
        await service.stop()


async def test_serve_says_when_no_desk_is_configured(
        make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Without a desk nobody can answer an escalation: the admin is told at start."""
    service = Service(make_settings())
    with caplog.at_level("WARNING", logger="bot.app"):
        await service.start()
    try:
        assert any("no staff desk configured" in r.getMessage() for r in caplog.records)
    finally:
        await service.stop()
