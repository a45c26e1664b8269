"""What reaches the service from outside is checked at the door: a 4xx for what is wrong with
the request, and nothing queued that could never be handled."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bot.app import Service
from tests.conftest import chat, eventually
from tests.fakes import slack as fake_slack
from tests.fakes.slack import FakeSlack, slack_settings
from tests.fakes.telegram import (
    SECRET,
    TOKEN,
    FakeTelegram,
    fake_telegram,
    message_update,
    post_webhook,
)

SHIPPING = "How much does shipping cost?"


async def post_raw(client: aiohttp.ClientSession, path: str, body: bytes,
                   headers: dict[str, str]) -> tuple[int, str]:
    async with client.post(path, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_web_chat_refuses_text_that_is_not_text_and_the_visitor_goes_on(
        client: aiohttp.ClientSession) -> None:
    json_headers = {"Content-Type": "application/json"}
    for body in (b'{"text": "hi \\ud800 there"}', b'{"text": "a\\u0000b"}'):
        status, text = await post_raw(client, "/api/webchat/messages", body, json_headers)
        assert status == 400, text
    visitor, _ = await chat(client, "hello")
    _, reply = await chat(client, SHIPPING, visitor)
    assert "shipping" in reply["text"].lower()


@pytest.mark.parametrize("after", [str(2**63), "9" * 40, "-1"])
async def test_web_chat_transcript_refuses_ids_no_database_holds(
        client: aiohttp.ClientSession, after: str) -> None:
    visitor, _ = await chat(client, "hello")
    async with client.get("/api/webchat/messages",
                          params={"visitor_id": visitor, "after": after}) as resp:
        assert resp.status == 400
        assert "after" in (await resp.json())["error"]


async def test_a_compressed_or_wrongly_encoded_body_is_a_415(
        client: aiohttp.ClientSession) -> None:
    for encoding in ("gzip", "bogus"):
        status, _ = await post_raw(client, "/api/webchat/messages", b'{"text": "hi"}', {
            "Content-Type": "application/json", "Content-Encoding": encoding})
        assert status == 415


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as fake:
        yield fake


async def test_telegram_text_with_a_nul_is_answered(
        start: Callable[..., Awaitable[Service]], telegram: FakeTelegram) -> None:
    service = await start(telegram_token=TOKEN, telegram_mode="webhook",
                          telegram_webhook_secret=SECRET, telegram_api_base=telegram.url)
    assert await post_webhook(service, message_update(1, "How much\x00 does shipping cost?")) \
        == 200
    (sent,) = await eventually(telegram.sent_messages, what="the answer sent")
    assert "shipping" in str(sent["text"]).lower()


def _slack_headers(body: bytes, *, content_type: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(fake_slack.SECRET.encode(), b"v0:" + ts.encode() + b":" + body,
                      hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": f"v0={digest}"}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack.fake_slack() as fake:
        yield fake


async def test_slack_checks_the_signature_before_reading_the_body(
        start: Callable[..., Awaitable[Service]], slack: FakeSlack) -> None:
    service = await start(**slack_settings(slack))
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
        status, _ = await post_raw(client, "/slack/events", b"\xff{not json",
                                   {"Content-Type": "application/json"})
        assert status == 401
        stale = _slack_headers(b"{}", content_type="application/json")
        stale["X-Slack-Request-Timestamp"] = str(int(time.time()) - 600)
        assert (await post_raw(client, "/slack/events", b"{}", stale))[0] == 401
        for body, content_type in ((b"\xff{", "application/json"), (b"[1]", "application/json"),
                                   (b"payload=%7B", "application/x-www-form-urlencoded"),
                                   (b"payload=%FF", "application/x-www-form-urlencoded")):
            status, text = await post_raw(client, "/slack/actions", body,
                                          _slack_headers(body, content_type=content_type))
            assert status == 400, (body, text)


async def test_twilio_forms_are_read_strictly_after_the_signature(
        start: Callable[..., Awaitable[Service]]) -> None:
    service = await start(twilio_account_sid="AC" + "0" * 32, twilio_auth_token="t" * 32,
                          twilio_whatsapp_from="whatsapp:+15550001111",
                          public_url="https://support.example.com")
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
        status, _ = await post_raw(client, "/webhooks/twilio/whatsapp", b"--x\r\n\r\n", {
            "Content-Type": "multipart/form-data; boundary=zz", "X-Twilio-Signature": "x"})
        assert status == 415
        status, _ = await post_raw(client, "/webhooks/twilio/whatsapp", b"Body=%FF", {
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"})
        assert status == 400


def _immutable(path: Path, on: bool) -> bool:
    """chattr +i / -i: even root cannot write the file (a stand-in for a full disk)."""
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
    return done.returncode == 0


async def test_readyz_fails_while_the_database_cannot_be_written_and_recovers(
        start: Callable[..., Awaitable[Service]], tmp_path: Path) -> None:
    service = await start()
    wal = tmp_path / "storedesk.db-wal"
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
        async with client.get("/readyz") as resp:
            assert resp.status == 200
        assert wal.exists()
        if not _immutable(wal, True):
            pytest.skip("chattr +i is not available here (needs ext4-like filesystem and root)")
        try:
            async with client.get("/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503 and "cannot write" in body["database"]
        finally:
            _immutable(wal, False)
        async with client.get("/readyz") as resp:
            assert resp.status == 200


async def test_silent_connections_are_closed_and_the_chat_keeps_working(
        start: Callable[..., Awaitable[Service]]) -> None:
    service = await start(http_header_timeout=0.5, http_max_connections=50)
    silent = []
    for _ in range(120):  # more than the cap, none sending a byte
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        silent.append((reader, writer))
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
        _, reply = await chat(client, SHIPPING)
        assert "shipping" in reply["text"].lower()

    async def all_closed() -> bool:
        ends = await asyncio.gather(*(asyncio.wait_for(r.read(), 5) for r, _ in silent))
        return all(end == b"" for end in ends)
    assert await eventually(all_closed, what="the server closed every silent connection")
    for _, writer in silent:
        writer.close()
    assert service.connections is not None and service.connections.closed >= 120
