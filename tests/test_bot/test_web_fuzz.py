"""Every public endpoint, fed random requests, answers 4xx for what is wrong with the request and
never a 5xx; the service keeps serving.

The service runs on its own event loop in a thread (Hypothesis drives plain functions); requests
go over raw HTTP/1.1 (`http.client`) so that bodies, encodings and headers can be anything.
Unsigned requests test the doors; signed ones (valid signatures over random bodies) test what
comes after the signature check. The count per endpoint is FUZZ_EXAMPLES (500 in CI).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from bot.app import Service
from bot.openapi import openapi_document
from tests.conftest import ADMIN_TOKEN
from tests.fakes import slack as fake_slack_module
from tests.fakes import telegram as fake_telegram_module
from tests.fakes.slack import fake_slack, slack_settings
from tests.fakes.telegram import fake_telegram

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
SHOPIFY_SECRET = "shopify-secret-for-fuzzing-0123"
WOO_SECRET = "woo-secret-for-fuzzing-0123"
TWILIO_TOKEN = "twilio-auth-token-fuzz-0123456789"
PUBLIC_URL = "https://support.example.com"


@dataclass
class Running:
    service: Service
    port: int
    errors: list[str]

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The service with every channel and store webhook on, in a thread of its own."""
    from bot.settings import Settings

    folder = tmp_path_factory.mktemp("fuzz")
    started = threading.Event()
    stop: dict[str, Any] = {}
    box: dict[str, Any] = {}

    async def main() -> None:
        async with fake_slack() as slack, fake_telegram() as telegram:
            settings = Settings(
                database_url=f"sqlite+aiosqlite:///{folder / 'storedesk.db'}", port=0,
                host="127.0.0.1", admin_token=ADMIN_TOKEN, public_url=PUBLIC_URL,
                telegram_token=fake_telegram_module.TOKEN, telegram_mode="webhook",
                telegram_webhook_secret=fake_telegram_module.SECRET,
                telegram_api_base=telegram.url, twilio_account_sid="AC" + "0" * 32,
                twilio_auth_token=TWILIO_TOKEN, twilio_whatsapp_from="whatsapp:+15550001111",
                twilio_api_base="http://127.0.0.1:9", shopify_webhook_secret=SHOPIFY_SECRET,
                woocommerce_webhook_secret=WOO_SECRET,
                **slack_settings(slack, slack_staff_channel="CSTAFF"))
            service = Service(settings)
            await service.start()
            box["running"] = Running(service, service.port, [])
            loop = asyncio.get_running_loop()
            done = asyncio.Event()
            stop["set"] = lambda: loop.call_soon_threadsafe(done.set)
            started.set()
            try:
                await done.wait()
            finally:
                await service.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(60), "the service did not start"
    try:
        yield box["running"]
    finally:
        stop["set"]()
        thread.join(30)


# --- what a request can be ---------------------------------------------------------------

CONTENT_TYPES = st.sampled_from([
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data",
    "multipart/form-data; boundary=", "multipart/form-data; boundary=zz", "text/plain",
    "application/json; charset=latin-1", "application/json; charset=bogus", "", "*/*",
    "application/x-www-form-urlencoded; charset=utf-16"])
ENCODINGS = st.sampled_from(["", "gzip", "deflate", "br", "bogus", "gzip, gzip", "identity"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5), max_leaves=12)
TEXTS = st.text(alphabet=st.characters(codec=None, categories=None), max_size=60) | st.sampled_from(
    ["\ud800", "a\x00b", "\udfff\ud800", "x" * 5000, "", " "])
BIG_INTS = st.sampled_from(["0", "-1", "9" * 30, str(2**63), str(2**64), "1e9", "abc", "",
                            str(2**63 - 1), "00", "+5", "0x10"])


def _raw_json(value: Any) -> bytes:
    """JSON with lone surrogates and NULs allowed (ensure_ascii escapes them as \\uXXXX)."""
    return json.dumps(value).encode()


BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(_raw_json),
    st.dictionaries(st.text(max_size=10), TEXTS, max_size=5).map(
        lambda d: urlencode(d, errors="surrogatepass").encode()),
    st.sampled_from([b"\xff\xfe\x00", b"{", b"[]", b"null", b"\"x\"", b"payload={", b"%ff=%fe",
                     b"--zz\r\nContent-Disposition: form-data\r\n\r\n", b"{\"\\ud800\": 1}"]))


@st.composite
def request_parts(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    body = draw(BODIES)
    headers = {"Content-Type": draw(CONTENT_TYPES)}
    encoding = draw(ENCODINGS)
    if encoding:
        headers["Content-Encoding"] = encoding
    return body, headers


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _check(running: Running, method: str, path: str, body: bytes,
           headers: dict[str, str]) -> None:
    status = running.request(method, path, body, headers)
    assert status < 500, f"{method} {path} {headers} {body[:200]!r} -> {status}"


POSTS = ["/webhooks/telegram", "/webhooks/twilio/whatsapp", "/webhooks/twilio/status",
         "/slack/events", "/slack/actions", "/slack/commands", "/webhooks/shopify",
         "/webhooks/woocommerce", "/api/webchat/messages", "/api/webchat/files",
         "/api/dashboard/conversations/1/typing", "/api/orders",
         "/api/customers/1/orders", "/api/customers/99999999999999999999999/orders",
         "/api/queue/requeue-dead", "/dashboard/login", "/dashboard/logout"]


@pytest.mark.parametrize("path", POSTS)
def test_unsigned_posts_never_get_a_5xx(running: Running, path: str) -> None:
    @FUZZ
    @given(parts=request_parts())
    def fuzz(parts: tuple[bytes, dict[str, str]]) -> None:
        body, headers = parts
        if path.startswith("/api/") and not path.startswith("/api/webchat"):
            headers = {**headers, "Authorization": f"Bearer {ADMIN_TOKEN}"}
        _check(running, "POST", path, body, headers)
    fuzz()
    assert running.request("GET", "/healthz") == 200


def _slack_signed(body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(fake_slack_module.SECRET.encode(), b"v0:" + ts.encode() + b":" + body,
                      hashlib.sha256).hexdigest()  # over the bytes, as Slack signs them
    signature = f"v0={digest}"
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


def _hmac64(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


SIGNERS: dict[str, Any] = {
    "/slack/events": _slack_signed, "/slack/actions": _slack_signed,
    "/slack/commands": _slack_signed,
    "/webhooks/telegram": lambda _b: {
        "X-Telegram-Bot-Api-Secret-Token": fake_telegram_module.SECRET},
    "/webhooks/shopify": lambda b: {
        "X-Shopify-Hmac-Sha256": _hmac64(SHOPIFY_SECRET, b), "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": hashlib.sha1(b).hexdigest()},
    "/webhooks/woocommerce": lambda b: {
        "X-WC-Webhook-Signature": _hmac64(WOO_SECRET, b), "X-WC-Webhook-Topic": "order.created"},
}


@pytest.mark.parametrize("path", sorted(SIGNERS))
def test_signed_junk_is_a_4xx_never_a_5xx(running: Running, path: str) -> None:
    @FUZZ
    @given(parts=request_parts())
    def fuzz(parts: tuple[bytes, dict[str, str]]) -> None:
        body, headers = parts
        _check(running, "POST", path, body, {**headers, **SIGNERS[path](body)})
    fuzz()
    assert running.request("GET", "/healthz") == 200


@pytest.mark.parametrize("path", ["/webhooks/twilio/whatsapp", "/webhooks/twilio/status"])
def test_signed_twilio_forms_with_odd_values_are_never_a_5xx(running: Running,
                                                             path: str) -> None:
    @FUZZ
    @given(params=st.dictionaries(st.sampled_from(
        ["MessageSid", "From", "To", "Body", "NumMedia", "MediaUrl0", "MediaContentType0",
         "MessageStatus", "ErrorCode", "ProfileName", "WaId", "Latitude", "Longitude", "x"]),
        TEXTS, max_size=8))
    def fuzz(params: dict[str, str]) -> None:
        clean = {k: v.encode("utf-8", "replace").decode() for k, v in params.items()}
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + path, clean)
        body = urlencode(clean).encode()
        _check(running, "POST", path, body, {
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
    fuzz()


GETS = ["/api/webchat/messages", "/api/webchat/welcome", "/webchat/files/{s}",
        "/api/escalations", "/api/queue",
        "/api/conversations", "/api/dashboard/stages", "/api/dashboard/flow",
        "/api/dashboard/performance", "/api/dashboard/faq", "/api/conversations/{n}",
        "/api/dashboard/conversations/{n}", "/api/faq", "/dashboard/assets/{s}", "/metrics",
        "/readyz"]
QUERY_KEYS = st.sampled_from(["visitor_id", "after", "wait", "status", "period", "days",
                              "from", "to", "limit", "offset", "q", "stage", "channel", "by",
                              "page", "cursor", "language", "typing", "client_message_id",
                              "name"])


@pytest.mark.parametrize("path", GETS)
def test_queries_never_get_a_5xx(running: Running, path: str) -> None:
    @FUZZ
    @given(query=st.dictionaries(QUERY_KEYS, BIG_INTS | TEXTS.filter(lambda t: len(t) < 50),
                                 max_size=4),
           n=BIG_INTS, s=TEXTS)
    def fuzz(query: dict[str, str], n: str, s: str) -> None:
        target = path.replace("{n}", n or "0").replace("{s}", s or "x")
        if "events" in target:
            query = {**query, "wait": "0"}
        if "visitor_id" in query and "webchat" in target:
            query.setdefault("wait", "0")
        query_string = urlencode(query, errors="surrogatepass")
        target = target.encode("utf-8", "surrogatepass").decode("latin-1")
        with contextlib.suppress(http.client.InvalidURL, UnicodeEncodeError):
            status = running.request("GET", f"{_quote_path(target)}?{query_string}",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert status < 500, f"GET {target}?{query_string} -> {status}"
    fuzz()


def _quote_path(path: str) -> str:
    from urllib.parse import quote
    return quote(path, safe="/%")


# --- the published OpenAPI document, fuzzed by schemathesis -------------------------------

API = schemathesis.openapi.from_dict(openapi_document())


@API.parametrize()
@settings(max_examples=max(EXAMPLES // 5, 20), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_documented_operation_answers_4xx_or_success(case: Any, running: Running) -> None:
    if case.query and "wait" in case.query:
        case.query["wait"] = 0  # a long-poll that waits is right, and slow
    response = case.call(base_url=f"http://127.0.0.1:{running.port}",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert response.status_code < 500, (case.method, case.formatted_path, case.query,
                                        case.body, response.status_code, response.text[:300])


def test_the_document_is_served(running: Running) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    conn.request("GET", "/api/openapi.json")
    response = conn.getresponse()
    document = json.loads(response.read())
    assert response.status == 200 and "/api/webchat/messages" in document["paths"]
