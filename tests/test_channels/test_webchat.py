"""The web chat's HTTP API: signed shopper identity, uploads, business hours, typing, and staff
replies emailed to visitors who left (against a local SMTP sink)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Customer, Identity, Message, WebchatVisitor
from core.clock import FrozenClock
from core.errors import ConfigError
from tests.conftest import (
    ADMIN_TOKEN,
    IDENTITY_SECRET,
    chat,
    eventually,
    next_reply,
    signed,
    stays,
    transcript,
)
from tests.fakes.email import smtp_sink

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + b"1 0 obj <<>> endobj\n" * 4
HUMAN = "I want to talk to a person please"


@asynccontextmanager
async def running(make_settings: Any, clock: Any = None,
                  **overrides: Any) -> AsyncIterator[tuple[Service, aiohttp.ClientSession]]:
    service = Service(make_settings(**overrides), **({"clock": clock} if clock else {}))
    await service.start()
    try:
        async with aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{service.port}") as client:
            yield service, client
    finally:
        await service.stop()


async def post(client: aiohttp.ClientSession, **body: Any) -> dict[str, Any]:
    async with client.post("/api/webchat/messages", json=body) as resp:
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())


async def customer_of(service: Service, visitor: str) -> Any:
    async with service.db.read() as conn:
        return (await conn.execute(
            select(Customer.id, Customer.display_name, Customer.email)
            .join(Identity, Identity.customer_id == Customer.id)
            .where(Identity.channel == "webchat", Identity.address == visitor))).first()


async def store_customer(client: aiohttp.ClientSession, email: str) -> int:
    async with client.post("/api/orders", headers=AUTH, json={
            "email": email, "name": "Ann", "order_id": "A-1", "total": 42.0}) as resp:
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["customer_id"])


# --- identity ----------------------------------------------------------------------------

@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_a_signed_identity_links_the_visitor_to_the_stores_customer(
        make_settings: Any) -> None:
    async with running(make_settings) as (service, client):
        ann = await store_customer(client, "ann@example.com")
        sent = await post(client, text="Do you ship to Germany?",
                          **signed("cust-17", name="Ann Rossi", email="Ann@Example.com"))
        assert sent["verified"] is True
        await next_reply(client, sent["visitor_id"])
        linked = await customer_of(service, sent["visitor_id"])
        assert linked.id == ann and linked.email == "ann@example.com"


async def test_a_forged_hash_is_accepted_as_a_message_but_never_links(
        make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with running(make_settings) as (service, client):
        ann = await store_customer(client, "ann@example.com")
        forged = signed("cust-17", name="Mallory", email="ann@example.com")
        forged["identity_hash"] = "0" * 64
        with caplog.at_level(logging.WARNING, logger="channels.webchat"):
            sent = await post(client, text="Where is my order?", **forged)
        assert sent["verified"] is False
        await next_reply(client, sent["visitor_id"])
        linked = await customer_of(service, sent["visitor_id"])
        assert linked.id != ann and linked.email is None and linked.display_name is None
        lines = [r.getMessage() for r in caplog.records if "hash does not match" in r.getMessage()]
        assert len(lines) == 1
        assert IDENTITY_SECRET not in caplog.text and "0" * 64 not in caplog.text
        async with service.db.read() as conn:
            kept = (await conn.execute(select(WebchatVisitor.email, WebchatVisitor.verified,
                                              WebchatVisitor.customer_ref))).one()
        assert tuple(kept) == ("ann@example.com", False, None)  # contact info only


async def test_a_typed_email_and_name_are_contact_info_only(make_settings: Any) -> None:
    async with running(make_settings) as (service, client):
        ann = await store_customer(client, "ann@example.com")
        sent = await post(client, text="Do you ship to Germany?", name="Ann",
                          email="ann@example.com")
        await next_reply(client, sent["visitor_id"])
        linked = await customer_of(service, sent["visitor_id"])
        assert linked.id != ann and linked.email is None and linked.display_name is None
        async with service.db.read() as conn:
            row = (await conn.execute(select(WebchatVisitor.name, WebchatVisitor.email))).one()
        assert tuple(row) == ("Ann", "ann@example.com")


async def test_a_visitor_signed_as_one_customer_is_not_relinked_to_another(
        make_settings: Any) -> None:
    async with running(make_settings) as (service, client):
        ann = await store_customer(client, "ann@example.com")
        sent = await post(client, text="Do you ship to Germany?",
                          **signed("cust-17", email="ann@example.com"))
        visitor = sent["visitor_id"]
        await next_reply(client, visitor)
        again = await post(client, text="And to Austria?", visitor_id=visitor,
                           **signed("cust-99", email="bob@example.com"))
        assert again["verified"] is False
        await eventually(lambda: _inbound(service, 2), what="both messages handled")
        async with service.db.read() as conn:
            bob = (await conn.execute(select(func.count()).select_from(Customer)
                                      .where(Customer.email == "bob@example.com"))).scalar()
        assert bob == 0 and (await customer_of(service, visitor)).id == ann


async def test_without_the_secret_no_identity_links(make_settings: Any) -> None:
    async with running(make_settings, webchat_identity_secret=None) as (service, client):
        ann = await store_customer(client, "ann@example.com")
        sent = await post(client, text="Do you ship to Germany?",
                          **signed("cust-17", email="ann@example.com"))
        assert sent["verified"] is False
        await next_reply(client, sent["visitor_id"])
        assert (await customer_of(service, sent["visitor_id"])).id != ann


def test_an_upload_dir_that_is_a_file_stops_the_start(make_settings: Any,
                                                      tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="WEBCHAT_UPLOAD_DIR"):
        Service(make_settings(webchat_upload_dir=tmp_path / "taken"))


def test_a_weak_identity_secret_stops_the_start(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="WEBCHAT_IDENTITY_SECRET"):
        make_settings(webchat_identity_secret="short")


async def _inbound(service: Service, count: int) -> bool:
    async with service.db.read() as conn:
        n = await conn.scalar(select(func.count()).select_from(Message)
                              .where(Message.direction == "in"))
    return n == count


# --- uploads -----------------------------------------------------------------------------

async def upload(client: aiohttp.ClientSession, data: bytes, *, visitor: str | None = None,
                 content_type: str = "image/png", name: str = "photo.png",
                 cid: str | None = None) -> tuple[int, dict[str, Any]]:
    params = {"name": name}
    if visitor:
        params["visitor_id"] = visitor
    if cid:
        params["client_message_id"] = cid
    async with client.post("/api/webchat/files", params=params, data=data,
                           headers={"Content-Type": content_type}) as resp:
        return resp.status, dict(await resp.json())


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_an_image_becomes_a_message_with_an_unguessable_link(
        make_settings: Any, tmp_path: Path) -> None:
    async with running(make_settings, webchat_upload_dir=tmp_path / "webchat-files") as (
            _, client):
        status, sent = await upload(client, PNG, content_type="text/html")  # sniffed, not told
        assert status == 202, sent
        visitor = sent["visitor_id"]
        messages = await eventually(lambda: transcript(client, visitor), what="transcript")
        (mine,) = [m for m in messages if m["from"] == "you"]
        (file,) = mine["files"]
        assert re.fullmatch(r"/webchat/files/[A-Za-z0-9_-]{32}\.png", file["url"])
        assert file["name"] == "photo.png" and file["type"] == "image/png"
        async with client.get(file["url"]) as resp:
            assert resp.status == 200 and await resp.read() == PNG
            assert resp.headers["Content-Type"] == "image/png"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Content-Disposition"].startswith("inline;")
            assert "sandbox" in resp.headers["Content-Security-Policy"]
        status, _ = await upload(client, PNG, visitor=visitor)
        assert status == 202
        messages = await eventually(
            lambda: _files(client, visitor, 2), what="the second file in the transcript")
        assert len({f["url"] for f in messages}) == 2
        stored = sorted(p.name for p in (tmp_path / "webchat-files").iterdir())
        assert len(stored) == 2 and all(f["url"].rpartition("/")[2] in stored for f in messages)
        for guess in ("/webchat/files/" + "a" * 32 + ".png", "/webchat/files/..%2Fstoredesk.db",
                      "/webchat/files/" + stored[0].replace(".png", ".html")):
            async with client.get(guess) as resp:
                assert resp.status == 404, guess


async def _files(client: aiohttp.ClientSession, visitor: str, count: int) -> list[Any]:
    files = [f for m in await transcript(client, visitor) for f in m.get("files", ())]
    return files if len(files) == count else []


async def test_a_pdf_is_served_as_a_download(make_settings: Any) -> None:
    async with running(make_settings) as (_, client):
        status, sent = await upload(client, PDF, content_type="application/pdf",
                                    name="../../etc/invoice 12.pdf")
        assert status == 202
        files = await eventually(lambda: _files(client, sent["visitor_id"], 1), what="file")
        assert files[0]["name"] == "invoice 12.pdf"
        async with client.get(files[0]["url"]) as resp:
            assert resp.headers["Content-Type"] == "application/pdf"
            assert resp.headers["Content-Disposition"].startswith("attachment;")


async def test_wrong_types_and_too_big_files_are_refused_and_nothing_kept(
        make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(make_settings, webchat_upload_max_bytes=2048) as (service, client):
        with caplog.at_level(logging.WARNING):
            html = b"<html><script>alert(1)</script></html>"
            assert (await upload(client, html, content_type="image/png"))[0] == 415
            svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
            assert (await upload(client, svg, content_type="image/svg+xml"))[0] == 415
            assert (await upload(client, PNG + b"\x00" * 2048))[0] == 413
        assert "-> 415" in caplog.text and "-> 413" in caplog.text
        kept = tmp_path / "webchat-files"
        assert not kept.exists() or list(kept.iterdir()) == []
        assert await _inbound(service, 0)


async def test_uploads_are_rate_limited_like_messages(make_settings: Any) -> None:
    async with running(make_settings, webchat_rate_per_minute=3) as (_, client):
        _, sent = await upload(client, PNG)
        statuses = [(await upload(client, PNG, visitor=sent["visitor_id"]))[0]
                    for _ in range(3)]
        assert 429 in statuses


async def test_the_same_upload_twice_is_one_message_and_one_file(
        make_settings: Any, tmp_path: Path) -> None:
    async with running(make_settings) as (service, client):
        cid = "c" * 24
        status, sent = await upload(client, PNG, cid=cid)
        status2, again = await upload(client, PNG, visitor=sent["visitor_id"], cid=cid)
        assert (status, status2, again["duplicate"]) == (202, 202, True)
        await eventually(lambda: _inbound(service, 1), what="one message")
        assert len(list((tmp_path / "webchat-files").iterdir())) == 1


# --- business hours ----------------------------------------------------------------------

async def test_the_welcome_says_the_reply_time_inside_hours_and_when_it_opens_outside(
        make_settings: Any) -> None:
    clock = FrozenClock(datetime(2026, 11, 23, 9, 30, tzinfo=UTC))  # Monday, 10:30 in Rome
    async with running(make_settings, clock, business_hours="mon-fri 09:00-18:00",
                       store_timezone="Europe/Rome", desk_in_dashboard=True,
                       webchat_reply_minutes=15) as (_, client):
        async with client.get("/api/webchat/welcome") as resp:
            open_now = await resp.json()
        assert open_now["open"] is True and open_now["reply_minutes"] == 15
        clock.set(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))  # Saturday
        async with client.get("/api/webchat/welcome") as resp:
            away = await resp.json()
        assert away["open"] is False and away["reply_minutes"] is None
        assert away["opens_at"] == "2026-11-30T08:00:00+00:00"  # Monday 09:00 in Rome
        assert away["timezone"] == "Europe/Rome"


@pytest.mark.parametrize("hours", ["mon-fri 9-18", "someday 09:00-18:00", "mon 18:00-09:00"])
def test_unreadable_business_hours_stop_the_start(make_settings: Any, hours: str) -> None:
    with pytest.raises(ConfigError, match="BUSINESS_HOURS"):
        make_settings(business_hours=hours)


def test_an_unknown_timezone_stops_the_start(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="STORE_TIMEZONE"):
        make_settings(store_timezone="Europe/Atlantis")


# --- typing ------------------------------------------------------------------------------

async def test_the_desk_text_box_shows_typing_in_the_long_poll(make_settings: Any) -> None:
    async with running(make_settings, desk_in_dashboard=True) as (service, client):
        sent = await post(client, text=HUMAN)
        visitor = sent["visitor_id"]
        await next_reply(client, visitor)
        last = max(m["id"] for m in await transcript(client, visitor))
        conversation = await _conversation(service)

        async def poll() -> Any:
            async with client.get("/api/webchat/messages", params={
                    "visitor_id": visitor, "after": last, "wait": 20, "typing": 0}) as resp:
                return await resp.json()
        waiting = asyncio.create_task(poll())
        await stays(lambda: not waiting.done(), window=0.3, what="the poll waits")
        async with client.post(f"/api/dashboard/conversations/{conversation}/typing",
                               json={}, headers=AUTH) as resp:
            assert resp.status == 200
        answer = await asyncio.wait_for(waiting, 5)
        assert answer == {"messages": [], "staffed": True, "typing": True}


async def _conversation(service: Service) -> int:
    from bot.db.models import Conversation
    async with service.db.read() as conn:
        return int((await conn.execute(select(Conversation.id))).scalar_one())


# --- continuity by email -----------------------------------------------------------------

async def staff_reply(client: aiohttp.ClientSession, conversation: int, text: str) -> None:
    async with client.post(f"/api/dashboard/conversations/{conversation}/actions",
                           json={"action": "reply", "staff": "Sam", "text": text},
                           headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()


def mail_settings(port: int) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "none",
            "email_from": "Demo Shop <support@shop.test>", "desk_in_dashboard": True,
            "webchat_email_after_minutes": 0.02,  # 1.2 s
            "webchat_allowed_origins": "https://shop.example"}


@pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL
async def test_a_staff_reply_after_the_visitor_left_is_emailed_once(
        make_settings: Any) -> None:
    with smtp_sink() as (sink, port):
        async with running(make_settings, **mail_settings(port)) as (service, client):
            sent = await post(client, text=HUMAN, email="ann@example.com",
                              page="https://shop.example/teapots")
            await next_reply(client, sent["visitor_id"])
            # the visitor closes the tab: nobody polls any more
            await staff_reply(client, await _conversation(service), "Your parcel left today.")
            await eventually(lambda: sink.messages, timeout=10, what="the mail")
            await stays(lambda: len(sink.messages) == 1, window=3.0, what="one mail only")
        (mail,) = sink.messages
        assert mail["To"] == "ann@example.com" and "Demo Shop" in mail["Subject"]
        body = mail.get_body(preferencelist=("plain",)).get_content()
        assert "Your parcel left today." in body and "https://shop.example/teapots" in body


async def test_no_email_while_the_visitor_is_still_connected(make_settings: Any) -> None:
    with smtp_sink() as (sink, port):
        async with running(make_settings, **mail_settings(port)) as (service, client):
            sent = await post(client, text=HUMAN, **signed("cust-5", email="bea@example.com"))
            visitor = sent["visitor_id"]
            await next_reply(client, visitor)
            stop = asyncio.Event()

            async def keep_polling() -> None:  # the open tab's long-poll, again and again
                after = 0
                while not stop.is_set():
                    async with client.get("/api/webchat/messages", params={
                            "visitor_id": visitor, "after": after, "wait": 1}) as resp:
                        got = (await resp.json())["messages"]
                    after = max([after, *(m["id"] for m in got)])
            tab = asyncio.create_task(keep_polling())
            try:
                await staff_reply(client, await _conversation(service), "Checking it now.")
                await stays(lambda: not sink.messages, window=4.0, what="no mail")
            finally:
                stop.set()
                await tab


async def test_no_email_without_an_address(make_settings: Any) -> None:
    with smtp_sink() as (sink, port):
        async with running(make_settings, **mail_settings(port)) as (service, client):
            sent = await post(client, text=HUMAN)
            await next_reply(client, sent["visitor_id"])
            await staff_reply(client, await _conversation(service), "Hello?")
            await stays(lambda: not sink.messages, window=3.0, what="no mail")


async def test_only_a_signed_customer_is_told_about_their_order(make_settings: Any) -> None:
    async with running(make_settings) as (_, client):
        async with client.post("/api/orders", headers=AUTH, json={
                "email": "ann@example.com", "order_id": "A-1001", "total": 42.0,
                "status": "fulfilled", "carrier": "UPS", "tracking_number": "1ZA1001",
                "tracking_url": "https://ups.example/A-1001"}) as resp:
            assert resp.status == 200, await resp.text()
        _, signed_reply = await chat(client, "Where is my order?",
                                     **signed("cust-17", email="ann@example.com"))
        _, typed_reply = await chat(client, "Where is my order?", email="ann@example.com")
    assert "https://ups.example/A-1001" in signed_reply["text"]
    assert "ups.example" not in typed_reply["text"] and "A-1001" not in typed_reply["text"]
