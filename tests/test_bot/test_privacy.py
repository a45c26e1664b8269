"""What an admin does for a customer's privacy request, over HTTP and the CLI against the real
service: export everything held on them, erase it, and blank old message bodies on a schedule.

The customer is Jon: the store's Shopify webhook brings his order, email and phone, and he
writes on WhatsApp (signed Twilio webhooks, replies through a local fake Twilio API). Ann, on
the web chat, is the customer whose data must stay untouched.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.clock import FrozenClock
from bot.db.models import Customer, Erasure, Identity, Message
from tests.conftest import chat, eventually
from tests.fakes.twilio import (
    INBOUND_PATH,
    PUBLIC_URL,
    FakeTwilio,
    WhatsAppHarness,
    fake_twilio,
    inbound_params,
    post_signed,
)
from tests.test_bot.test_store_webhooks import SHOPIFY_ORDER, SHOPIFY_SECRET, post_shopify

JON_EMAIL = "jon.snow@example.com"
JON_PHONE = "+16135551111"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with fake_twilio() as fake:
        yield fake


@pytest.fixture
async def store(make_settings: Any, twilio: FakeTwilio) -> AsyncIterator[Service]:
    settings = make_settings(shopify_webhook_secret=SHOPIFY_SECRET,
                             **WhatsAppHarness(twilio).settings())
    service = Service(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def http(store: Service) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{store.port}") as session:
        yield session


async def jon_writes(store: Service, twilio: FakeTwilio, sid: str, text: str) -> None:
    before = len(twilio.accepted)
    status = await post_signed(store, PUBLIC_URL + INBOUND_PATH,
                               inbound_params(sid, text, phone=JON_PHONE, name="Jon Snow"))
    assert status == 200
    await eventually(lambda: len(twilio.accepted) > before, what="the reply reaches WhatsApp")


async def jon_and_ann(store: Service, twilio: FakeTwilio,
                      http: aiohttp.ClientSession) -> tuple[int, str]:
    """Jon's order and WhatsApp conversation, Ann's web chat; returns Jon's id, Ann's visitor."""
    order = copy.deepcopy(SHOPIFY_ORDER)
    assert (await post_shopify(http, order, "orders/create", "w-privacy-1"))[0] == 200
    await jon_writes(store, twilio, "SM" + "1" * 32, "Where is my order #1001?")
    await jon_writes(store, twilio, "SM" + "2" * 32, "I want to talk to a person please")
    ann, _ = await chat(http, "What are your opening hours?")
    async with store.db.read() as conn:
        jon = (await conn.execute(select(Customer.id).where(Customer.email == JON_EMAIL))
               ).scalar_one()
    return jon, ann


async def test_export_holds_the_customers_data_and_nobody_elses(
        store: Service, twilio: FakeTwilio, http: aiohttp.ClientSession,
        admin_headers: dict[str, str], database_url: str) -> None:
    jon, _ann = await jon_and_ann(store, twilio, http)

    async with http.get(f"/api/customers/{jon}/export") as resp:
        assert resp.status == 401  # the admin token is required
    async with http.get(f"/api/customers/{jon}/export", headers=admin_headers) as resp:
        assert resp.status == 200
        assert "attachment" in resp.headers["Content-Disposition"]
        document = await resp.json()

    (customer,) = document["customers"]
    assert customer["email"] == JON_EMAIL and customer["phone"] == JON_PHONE
    assert [o["number"] for o in document["orders"]] == ["1001"]
    texts = [m["text"] for m in document["messages"]]
    assert "Where is my order #1001?" in texts
    assert any("1001" in t for t in texts if t != "Where is my order #1001?")  # the answer
    assert {i["channel"] for i in document["identities"]} == {"whatsapp"}
    assert document["escalations"] and document["escalations"][0]["reason"] == "asked_for_human"
    assert len(document["queued_messages"]) == 2  # the two WhatsApp webhooks as received
    everything = json.dumps(document)
    assert "opening hours" not in everything  # Ann's words are not in Jon's export

    async with http.get("/api/customers/999999/export", headers=admin_headers) as resp:
        assert resp.status == 404


async def test_delete_leaves_nothing_of_the_customer_in_the_database(
        store: Service, twilio: FakeTwilio, http: aiohttp.ClientSession,
        admin_headers: dict[str, str], database_url: str) -> None:
    jon, ann = await jon_and_ann(store, twilio, http)

    async with http.delete(f"/api/customers/{jon}", headers=admin_headers) as resp:
        assert resp.status == 200
        erased = (await resp.json())["erased"]
    assert erased["customers"] == 1 and erased["orders"] == 1 and erased["messages"] >= 4

    async with http.get(f"/api/customers/{jon}/export", headers=admin_headers) as resp:
        assert resp.status == 404
    async with store.db.read() as conn:
        channels = (await conn.execute(select(Identity.channel))).scalars().all()
        (counts,) = (await conn.execute(select(Erasure.rows))).scalars().all()
    assert channels == ["webchat"]  # Ann is still here
    assert counts == erased  # only how many rows went is kept
    _, reply = await chat(http, "Do you ship to Italy?", ann)  # and Ann's chat goes on
    assert reply["text"]

    if database_url.startswith("sqlite"):
        path = Path(database_url.split("///", 1)[1])
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                raw = file.read_bytes().lower()
                for needle in (JON_EMAIL, JON_PHONE, "where is my order"):
                    assert needle.encode() not in raw, f"{needle!r} is still in {file.name}"


async def test_the_cli_exports_and_deletes_with_confirmation(
        store: Service, twilio: FakeTwilio, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    jon, _ = await jon_and_ann(store, twilio, http)
    env = {"DATABASE_URL": store.settings.database_url, "PATH": "/usr/bin:/bin",
           "PUBLIC_URL": "http://127.0.0.1:8080"}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot", "customer", *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])

    out = tmp_path / "jon.json"
    done = cli("export", str(jon), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["customers"][0]["email"] == JON_EMAIL

    refused = cli("delete", str(jon), stdin="n\n")
    assert refused.returncode == 1
    assert cli("export", str(jon)).returncode == 0  # still there

    done = cli("delete", str(jon), "--yes")
    assert done.returncode == 0, done.stderr
    assert f"customer {jon} erased" in done.stdout and "1 orders" in done.stdout
    missing = cli("export", str(jon))
    assert missing.returncode == 2 and f"no customer {jon}" in missing.stderr


async def test_message_bodies_past_the_retention_period_are_blanked(
        make_settings: Any, http: aiohttp.ClientSession, store: Service) -> None:
    await chat(http, "Do you ship to Italy?")
    await store.stop()
    async with store.db.read() as conn:
        newest = (await conn.execute(select(func.max(Message.created_at)))).scalar_one()

    later = Service(make_settings(message_retention_days=30),
                    clock=FrozenClock(newest + timedelta(days=31)))
    await later.start()
    try:
        async def bodies() -> list[str]:
            async with later.db.read() as conn:
                return list((await conn.execute(select(Message.text))).scalars())

        async def blanked() -> bool:
            texts = await bodies()
            return bool(texts) and all(t == "" for t in texts)

        await eventually(blanked, what="old message bodies blanked by housekeeping")
        async with later.db.read() as conn:  # the conversation and its counts stay
            assert (await conn.execute(select(func.count()).select_from(
                Message.__table__))).scalar_one() >= 2
    finally:
        await later.stop()
