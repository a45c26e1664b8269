"""A fake Twilio REST API on 127.0.0.1, plus signed webhooks towards the service.

`POST /2010-04-01/Accounts/{sid}/Messages.json` (form, Basic auth checked) -> 201 JSON as
Twilio answers. Scripted failures: 429 code 20429 with Retry-After, 400 code 21211, 500,
and a dropped connection after the request was read.
`emit_status` plays Twilio's status callback (signed with RequestValidator against the URL
the service gave as StatusCallback), e.g. `failed` with ErrorCode 63016.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from bot.app import Service

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
OUR_NUMBER = "whatsapp:+14155238886"
PUBLIC_URL = "https://shop.example.test"
INBOUND_PATH = "/webhooks/twilio/whatsapp"
STATUS_PATH = "/webhooks/twilio/status"


@dataclass
class FakeTwilio:
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    requests: list[dict[str, str]] = field(default_factory=list)
    accepted: list[dict[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    url: str = ""
    #: (service, status): call back with `status` before answering the create (Twilio can)
    early_callback: tuple[Service, str] | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, kind: str, count: int = 1) -> None:
        self.failures.extend([kind] * count)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.create_message)
        return app

    async def create_message(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(
            f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected or \
                request.match_info["sid"] != self.account_sid:
            return _error(401, 20003, "Authenticate")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.requests.append(form)
        if self.failures:
            kind = self.failures.pop(0)
            if kind == "rate_limited":
                return _error(429, 20429, "Too Many Requests", headers={"Retry-After": "1"})
            if kind == "drop":  # the request arrived; the answer never does
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=201)
            if kind == "permanent":
                return _error(400, 21211, f"The 'To' number {form.get('To')} is not a valid "
                                          "phone number.")
            return _error(500, 20500, "Internal Server Error")
        sid = f"SM{next(self._ids):032x}"
        form["_sid"] = sid
        self.accepted.append(form)
        if self.early_callback is not None:
            service, status = self.early_callback
            assert await self.emit_status(service, sid, status) == 200
        return web.json_response({
            "sid": sid, "account_sid": self.account_sid, "from": form.get("From"),
            "to": form.get("To"), "body": form.get("Body", ""), "status": "queued",
            "num_media": "0", "num_segments": "1", "direction": "outbound-api",
            "api_version": "2010-04-01", "date_created": formatdate(usegmt=True),
            "date_updated": formatdate(usegmt=True), "date_sent": None, "price": None,
            "error_code": None, "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"}, status=201)

    async def emit_status(self, service: Service, sid: str, status: str, *,
                          error_code: str | None = None, error_message: str | None = None) -> int:
        """Send the status callback Twilio would send for message `sid`."""
        sent = next(m for m in self.accepted if m["_sid"] == sid)
        params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status,
                  "SmsStatus": status, "AccountSid": self.account_sid, "From": sent["From"],
                  "To": sent["To"], "ChannelPrefix": "whatsapp", "ApiVersion": "2010-04-01"}
        if error_code:
            params["ErrorCode"] = error_code
            params["ErrorMessage"] = error_message or ""
        return await post_signed(service, sent["StatusCallback"], params,
                                 auth_token=self.auth_token)


def _error(status: int, code: int, message: str, *,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message, "status": status,
                              "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                             status=status, headers=headers)


@contextlib.asynccontextmanager
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def post_signed(service: Service, signed_url: str, params: Mapping[str, str], *,
                      auth_token: str = AUTH_TOKEN, signature: str | None = None) -> int:
    """POST `params` to the service path of `signed_url`, signed for `signed_url` (the public
    URL Twilio knows), as Twilio does. Returns the HTTP status."""
    parts = urlsplit(signed_url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if signature is None:
        signature = RequestValidator(auth_token).compute_signature(signed_url, dict(params))
    headers = {"X-Twilio-Signature": signature} if signature else {}
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{service.port}{path}", data=dict(params),
            headers=headers) as resp:
        await resp.read()
        return resp.status


def inbound_params(sid: str, text: str, *, phone: str = "+15551234567", name: str = "Ann",
                   media: list[tuple[str, str]] | None = None, **extra: Any) -> dict[str, str]:
    """The form Twilio posts for an inbound WhatsApp message."""
    params = {"SmsMessageSid": sid, "MessageSid": sid, "SmsSid": sid, "AccountSid": ACCOUNT_SID,
              "MessagingServiceSid": "", "From": f"whatsapp:{phone}", "To": OUR_NUMBER,
              "Body": text, "NumMedia": str(len(media or [])), "NumSegments": "1",
              "ProfileName": name, "WaId": phone.lstrip("+"), "SmsStatus": "received",
              "MessageType": "image" if media else "text", "ApiVersion": "2010-04-01",
              "ReferralNumMedia": "0"}
    for i, (url, mime) in enumerate(media or []):
        params[f"MediaUrl{i}"] = url
        params[f"MediaContentType{i}"] = mime
    params.update({k: str(v) for k, v in extra.items()})
    return {k: v for k, v in params.items() if v != ""}


class WhatsAppHarness:
    """The channel contract (tests/test_channels/contract.py) for WhatsApp via Twilio."""

    name = "whatsapp"
    def __init__(self, fake: FakeTwilio) -> None:
        self.fake = fake
        self.not_applicable: dict[str, str] = {}

    def settings(self) -> dict[str, Any]:
        return {"twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
                "twilio_whatsapp_from": OUR_NUMBER, "twilio_api_base": self.fake.url,
                "public_url": PUBLIC_URL}

    async def deliver(self, service: Service, *, external_id: str, text: str,
                      signature: str = "good", size: int | None = None) -> int:
        params = inbound_params(external_id, text)
        if size:
            params["Pad"] = "x" * size
        sig = {"good": None, "bad": "bm90LXRoZS1zaWduYXR1cmU=", "missing": ""}[signature]
        return await post_signed(service, PUBLIC_URL + INBOUND_PATH, params, signature=sig)

    def fail_next_sends(self, kind: str, count: int = 1) -> None:
        self.fake.fail_next(kind, count)

    def sent(self) -> list[str]:
        return [m.get("Body") or f"template:{m.get('ContentSid')}" for m in self.fake.accepted]


@contextlib.asynccontextmanager
async def whatsapp_harness() -> AsyncIterator[WhatsAppHarness]:
    async with fake_twilio() as fake:
        yield WhatsAppHarness(fake)
