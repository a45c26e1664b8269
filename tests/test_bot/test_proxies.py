"""Behind a reverse proxy: visitors keep their own rate limit and Twilio's signature checks out,
but only when the proxy is one TRUSTED_PROXIES names."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from bot.app import Service
from bot.proxies import client_address
from bot.settings import load_settings
from core.errors import ConfigError

LOCAL = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(("remote", "header", "expected"), [
    ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # the client can prepend lies
    ("127.0.0.1", "203.0.113.9, 10.1.2.3", "203.0.113.9"),  # two proxies of ours
    ("192.0.2.7", "203.0.113.9", "192.0.2.7"),  # not a proxy of ours: header ignored
    ("127.0.0.1", "not-an-ip", "127.0.0.1"),
])
def test_the_client_is_the_first_untrusted_hop_from_the_right(
        remote: str, header: str, expected: str) -> None:
    assert client_address(remote, header, LOCAL) == expected


def test_a_bad_network_stops_the_service_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", "127.0.0.1/32,example.com")
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        load_settings()


async def _post(client: aiohttp.ClientSession, forwarded_for: str) -> int:
    body = {"text": "hello", "visitor_id": uuid.uuid4().hex}
    async with client.post("/api/webchat/messages", json=body,
                           headers={"X-Forwarded-For": forwarded_for}) as resp:
        return resp.status


@pytest.mark.parametrize("trusted", [True, False])
async def test_visitors_behind_the_proxy_have_their_own_rate_limit(
        start: Callable[..., Awaitable[Service]], trusted: bool) -> None:
    service = await start(webchat_rate_per_minute=1,
                          trusted_proxies="127.0.0.1/32" if trusted else "")
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
        first = [await _post(client, "203.0.113.1") for _ in range(4)]
        assert first[:3] == [202, 202, 202] and first[3] == 429  # one address: its bucket
        other = await _post(client, "203.0.113.2")
    assert other == (202 if trusted else 429)


@pytest.mark.parametrize(("trusted", "expected"), [(True, 200), (False, 403)])
async def test_twilio_signature_for_the_url_the_proxy_was_called_on(
        start: Callable[..., Awaitable[Service]], trusted: bool, expected: int) -> None:
    token = "t" * 32
    service = await start(twilio_account_sid="AC" + "0" * 32, twilio_auth_token=token,
                          twilio_whatsapp_from="whatsapp:+15550001111",
                          public_url="http://internal:8080",  # not what Twilio calls
                          trusted_proxies="127.0.0.1/32" if trusted else "")
    params = {"MessageSid": "SM" + "d" * 32, "From": "whatsapp:+393331112222",
              "To": "whatsapp:+15550001111", "Body": "hello", "NumMedia": "0"}
    public = "https://support.example.com/webhooks/twilio/whatsapp"
    signature = RequestValidator(token).compute_signature(public, params)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client, \
            client.post("/webhooks/twilio/whatsapp", data=params, headers={
                "X-Twilio-Signature": signature, "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "support.example.com"}) as resp:
        assert resp.status == expected
