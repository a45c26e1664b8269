"""A local fake of the Slack Web API, and signed requests into the service.

`FakeSlack` serves `/api/{method}` on 127.0.0.1 (query + form + JSON merged, like Slack), checks
the bot token, records every call and answers like Slack does: auth.test, chat.postMessage,
chat.update, users.info, chat.postEphemeral, anything else `{"ok": true}`. `fail_next` scripts
failures (429 + Retry-After, Slack error codes, 503). Inbound requests are signed exactly as
Slack signs them (`SignatureVerifier.generate_signature`), so bolt's real verification runs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from bot.app import Service

TOKEN = "xoxb-test-token"
SECRET = "slack-signing-secret-0123"
BOT_USER, BOT_ID = "UBOT", "BBOT"
CUSTOMER_DM = "D0CUSTOMER"
USERS = {
    "UCUST": {"id": "UCUST", "name": "ann", "real_name": "Ann Slack",
              "profile": {"display_name": "Ann", "real_name": "Ann Slack",
                          "email": "ann@slack.example"}},
    "UBEA": {"id": "UBEA", "name": "bea", "real_name": "Bea Rossi",
             "profile": {"display_name": "Bea", "real_name": "Bea Rossi",
                         "email": "bea@slack.example"}},
    "USTAFF": {"id": "USTAFF", "name": "sam", "real_name": "Sam Staff",
               "profile": {"display_name": "Sam", "real_name": "Sam Staff"}},
}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    accepted: bool = True
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeSlack:
    calls: list[Call] = field(default_factory=list)
    failures: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""
    _ts: Any = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, method: str, kind: str, count: int = 1, *,
                  channel: str | None = None) -> None:
        """kind: "ratelimited" (429, Retry-After: 1), "server_error" (503) or a Slack error code
        (HTTP 200, ok: false); only calls to `channel` if given."""
        self.failures += [(method, kind, channel)] * count

    def calls_to(self, method: str, *, accepted: bool = True, **match: Any) -> list[dict[str, Any]]:
        return [c.params for c in self.calls if c.method == method
                and (c.accepted or not accepted)
                and all(c.params.get(k) == v for k, v in match.items())]

    def posts(self, channel: str, *, thread: str | None = None) -> list[Call]:
        """Accepted chat.postMessage calls to `channel` (in `thread` if given)."""
        return [c for c in self.calls if c.method == "chat.postMessage" and c.accepted
                and c.params.get("channel") == channel
                and (thread is None or c.params.get("thread_ts") == thread)]

    def new_ts(self) -> str:
        return f"1700001000.{next(self._ts):06d}"

    async def api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            params.update(await request.post())
        for key in ("blocks", "attachments"):
            if isinstance(params.get(key), str):
                params[key] = json.loads(params[key])
        call = Call(method, params)
        self.calls.append(call)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            call.accepted = False
            return web.json_response({"ok": False, "error": "invalid_auth"})
        for i, (m, kind, channel) in enumerate(self.failures):
            if m == method and (channel is None or params.get("channel") == channel):
                del self.failures[i]
                call.accepted = False
                if kind == "ratelimited":
                    return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                             headers={"Retry-After": "1"})
                if kind == "server_error":
                    return web.Response(status=503, text="upstream down")
                return web.json_response({"ok": False, "error": kind})
        call.result = self.answer(method, params)
        return web.json_response(call.result)

    def answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "url": "https://fake.slack.test/", "team": "Fake",
                    "team_id": "T1", "user": "storedesk", "user_id": BOT_USER, "bot_id": BOT_ID}
        if method == "chat.postMessage":
            ts = self.new_ts()
            return {"ok": True, "channel": params.get("channel"), "ts": ts,
                    "message": {"text": params.get("text"), "ts": ts, "bot_id": BOT_ID}}
        if method == "chat.update":
            return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts"),
                    "text": params.get("text")}
        if method == "users.info":
            user = USERS.get(str(params.get("user")))
            return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self.new_ts()}
        return {"ok": True}


@contextlib.asynccontextmanager
async def fake_slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    app = web.Application()
    app.router.add_route("*", "/api/{method}", fake.api)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}/api/"
    try:
        yield fake
    finally:
        await runner.cleanup()


def slack_settings(fake: FakeSlack, **extra: Any) -> dict[str, Any]:
    return {"slack_bot_token": TOKEN, "slack_signing_secret": SECRET,
            "slack_api_base": fake.url, **extra}


def signed_headers(body: str, *, signature: str = "good", age: int = 0,
                   content_type: str = "application/json") -> dict[str, str]:
    ts = str(int(time.time()) - age)
    headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts}
    if signature == "good":
        headers["X-Slack-Signature"] = SignatureVerifier(SECRET).generate_signature(
            timestamp=ts, body=body)
    elif signature == "bad":
        headers["X-Slack-Signature"] = "v0=" + "0" * 64
    return headers


async def post_signed(service: Service, path: str, body: str, *, signature: str = "good",
                      age: int = 0, content_type: str = "application/json",
                      extra_headers: dict[str, str] | None = None) -> tuple[int, str]:
    headers = signed_headers(body, signature=signature, age=age, content_type=content_type)
    headers.update(extra_headers or {})
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{service.port}{path}", data=body.encode(),
            headers=headers) as resp:
        return resp.status, await resp.text()


def event_body(event: dict[str, Any], *, event_id: str) -> str:
    return json.dumps({"token": "x", "team_id": "T1", "api_app_id": "A1",
                       "type": "event_callback", "event_id": event_id, "event_time": 1700000000,
                       "authorizations": [{"team_id": "T1", "user_id": BOT_USER,
                                           "is_bot": True}],
                       "event": {"type": "message", "event_ts": event.get("ts"), "team": "T1",
                                 **event}})


async def send_event(service: Service, event: dict[str, Any], *, event_id: str,
                     signature: str = "good", retry: int | None = None) -> int:
    extra = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"} \
        if retry else None
    status, _ = await post_signed(service, "/slack/events", event_body(event, event_id=event_id),
                                  signature=signature, extra_headers=extra)
    return status


async def click(service: Service, action: str, value: str, *, user: str = "USTAFF",
                channel: str = "CSTAFF", message_ts: str = "1",
                **element: Any) -> int:
    """A block action; `element` overrides the button's fields (a menu's `selected_option`,
    a user picker's `selected_user` and `block_id`...)."""
    payload = {"type": "block_actions", "user": {"id": user, "username": user},
               "team": {"id": "T1"}, "api_app_id": "A1", "trigger_id": "t1",
               "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
               "channel": {"id": channel}, "message": {"ts": message_ts},
               "response_url": "http://127.0.0.1:9/hooks",
               "actions": [{"type": "button", "action_id": action, "block_id": "b",
                            "value": value, "action_ts": str(time.time()), **element}]}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    status, _ = await post_signed(service, "/slack/actions", body,
                                  content_type="application/x-www-form-urlencoded")
    return status


async def message_shortcut(service: Service, callback_id: str, message: dict[str, Any], *,
                           user: str = "USTAFF", channel: str = "CSTAFF") -> int:
    """A message shortcut ("…" menu on a message) as Slack posts it."""
    payload = {"type": "message_action", "callback_id": callback_id, "trigger_id": "t3",
               "user": {"id": user, "name": user}, "team": {"id": "T1"},
               "channel": {"id": channel, "name": "staff"}, "message_ts": message.get("ts"),
               "message": {"type": "message", **message},
               "response_url": "http://127.0.0.1:9/hooks", "action_ts": str(time.time())}
    body = urllib.parse.urlencode({"payload": json.dumps(payload)})
    status, _ = await post_signed(service, "/slack/actions", body,
                                  content_type="application/x-www-form-urlencoded")
    return status


async def slash(service: Service, text: str, *, user: str = "USTAFF") -> tuple[int, str]:
    body = urllib.parse.urlencode({
        "token": "x", "team_id": "T1", "channel_id": "CSTAFF", "user_id": user,
        "user_name": "sam", "command": "/inbox", "text": text, "api_app_id": "A1",
        "response_url": "http://127.0.0.1:9/hooks", "trigger_id": "t2"})
    return await post_signed(service, "/slack/commands", body,
                             content_type="application/x-www-form-urlencoded")


class SlackHarness:
    """The channel contract, for direct messages to the app."""

    name = "slack"

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        self.not_applicable: dict[str, str] = {}
        self._ts: dict[str, str] = {}

    def settings(self) -> dict[str, Any]:
        return slack_settings(self.fake)

    async def deliver(self, service: Service, *, external_id: str, text: str,
                      signature: str = "good", size: int | None = None) -> int:
        ts = self._ts.setdefault(external_id, f"1700000000.{len(self._ts) + 1:06d}")
        event = {"channel": CUSTOMER_DM, "channel_type": "im", "user": "UCUST", "text": text,
                 "ts": ts}
        body = event_body(event, event_id=f"Ev{external_id}")
        if size is not None and len(body) < size:
            event["padding"] = "x" * (size - len(body))
            body = event_body(event, event_id=f"Ev{external_id}")
        status, _ = await post_signed(service, "/slack/events", body, signature=signature)
        return status

    def fail_next_sends(self, kind: str, count: int = 1) -> None:
        self.fake.fail_next("chat.postMessage",
                            "ratelimited" if kind == "rate_limited" else "channel_not_found",
                            count, channel=CUSTOMER_DM)

    def sent(self) -> list[str]:
        return [str(c["text"]) for c in self.fake.calls_to("chat.postMessage",
                                                           channel=CUSTOMER_DM)]


@contextlib.asynccontextmanager
async def slack_harness() -> AsyncIterator[SlackHarness]:
    async with fake_slack() as fake:
        yield SlackHarness(fake)
