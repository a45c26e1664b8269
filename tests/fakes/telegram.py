"""A fake Telegram Bot API on 127.0.0.1, speaking the wire format aiogram uses.

`POST /bot{token}/{method}` with form fields (aiogram's default) or JSON; answers
`{"ok": true, "result": ...}`. Implements getMe, sendMessage, getUpdates (long-polls until an
update is pushed or `timeout` passes; an offset confirms earlier updates), setWebhook,
deleteWebhook, getFile and GET /file/bot{token}/{path}. Every call is recorded. Scripted
failures: 429 with `parameters.retry_after`, 400 "chat not found", a send that hangs until the
client gives up ("hang"), and chats whose sends hang until `release()` (`hold`), after which
they are accepted, as a platform that was merely slow would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bot.app import Service

TOKEN = "123456:TEST-TOKEN-abcdef"
SECRET = "webhook-secret_0123"
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Demo Shop Bot", "username": "demo_bot"}


@dataclass
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class FakeTelegram:
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    #: chat ids whose sendMessage hangs until `release()`
    held: set[int] = field(default_factory=set)
    #: random failures for sends with none scripted: kind -> probability (see `set_chaos`)
    chaos: dict[str, float] = field(default_factory=dict)
    #: how long a "late" send takes to answer (after it was accepted)
    late_seconds: float = 30.0
    #: what each sendMessage met: "ok" or the failure kind
    outcomes: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(default_factory=random.Random)
    _new_update: asyncio.Event = field(default_factory=asyncio.Event)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- test API --------------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> None:
        """Make `update` available to getUpdates."""
        self.updates.append(update)
        self._new_update.set()

    def fail_next(self, kind: str, count: int = 1) -> None:
        self.failures.extend([kind] * count)

    def set_chaos(self, *, seed: int | None = None, late_seconds: float | None = None,
                  **rates: float) -> None:
        """Fail sends at random, e.g. `set_chaos(rate_limited=0.3, **{"5xx": 0.1}, hang=0.05)`;
        kinds as for `fail_next`, plus "late". Scripted failures still come first."""
        unknown = set(rates) - {"rate_limited", "permanent", "blocked", "hang", "late", "5xx"}
        if unknown or sum(rates.values()) > 1:
            raise ValueError(f"bad chaos rates: {rates}")
        self.chaos = dict(rates)
        self._rng = random.Random(seed)
        if late_seconds is not None:
            self.late_seconds = late_seconds

    def _draw(self) -> str | None:
        r = self._rng.random()
        for kind, rate in self.chaos.items():
            if r < rate:
                return kind
            r -= rate
        return None

    def hold(self, *chat_ids: int) -> None:
        self.held.update(chat_ids)

    def release(self) -> None:
        self.held.clear()
        self._released.set()

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [c.params for c in self.calls if c.method == method]

    def sent_messages(self) -> list[dict[str, Any]]:
        """sendMessage calls that succeeded."""
        return [c.params for c in self.calls if c.method == "sendMessage" and c.params.get("_ok")]

    # --- server ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self.api)
        app.router.add_get("/file/bot{token}/{path:.+}", self.file)
        return app

    async def api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        if request.content_type == "application/json":
            params = dict(await request.json())
        else:
            params = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        method = request.match_info["method"]
        call = Call(method, params)
        self.calls.append(call)
        handler = getattr(self, f"m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        response: web.Response = await handler(params, call)
        return response

    async def file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        return web.Response(body=b"\xff\xd8fake-jpeg", content_type="image/jpeg")

    async def m_getMe(self, params: dict[str, Any], call: Call) -> web.Response:
        return _ok(BOT_USER)

    async def m_setWebhook(self, params: dict[str, Any], call: Call) -> web.Response:
        return _ok(True)

    async def m_deleteWebhook(self, params: dict[str, Any], call: Call) -> web.Response:
        return _ok(True)

    async def m_getFile(self, params: dict[str, Any], call: Call) -> web.Response:
        file_id = params.get("file_id", "")
        return _ok({"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": 9,
                    "file_path": f"photos/{file_id}.jpg"})

    async def m_sendMessage(self, params: dict[str, Any], call: Call) -> web.Response:
        kind = self.failures.pop(0) if self.failures else self._draw() if self.chaos else None
        self.outcomes[kind or "ok"] += 1
        if kind is not None and kind != "late":
            if kind == "rate_limited":
                return _error(429, "Too Many Requests: retry after 1",
                              parameters={"retry_after": 1}, headers={"Retry-After": "1"})
            if kind == "permanent":
                return _error(400, "Bad Request: chat not found")
            if kind == "blocked":
                return _error(403, "Forbidden: bot was blocked by the user")
            if kind == "hang":  # never answers: the client's timeout decides
                await asyncio.Event().wait()
            return _error(500, "Internal Server Error")
        chat_id = int(params["chat_id"])
        if chat_id in self.held:
            await self._released.wait()
        params["_ok"] = True
        params["_at"] = time.time()  # when the platform had it
        if kind == "late":  # accepted, but the answer comes after the client gave up
            await asyncio.sleep(self.late_seconds)
        return _ok({"message_id": next(self._ids), "date": int(time.time()),
                    "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
                    "from": BOT_USER, "text": params.get("text", "")})

    async def m_getUpdates(self, params: dict[str, Any], call: Call) -> web.Response:
        offset = int(params.get("offset") or 0)
        if offset:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        timeout = float(params.get("timeout") or 0)
        if not self.updates and timeout > 0:
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), timeout=timeout)
        return _ok(list(self.updates))


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(code: int, description: str, *, parameters: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code, headers=headers)


@contextlib.asynccontextmanager
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    runner = web.AppRunner(fake.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake._new_update.set()
        fake._released.set()
        await runner.cleanup()


def message_update(update_id: int, text: str | None = "hello", *, chat_id: int = 777,
                   user_id: int = 777, chat_type: str = "private",
                   **extra: Any) -> dict[str, Any]:
    """An Update carrying one message, as Telegram sends it."""
    message: dict[str, Any] = {
        "message_id": update_id, "date": int(time.time()),
        "chat": {"id": chat_id, "type": chat_type, "first_name": "Ann"},
        "from": {"id": user_id, "is_bot": False, "first_name": "Ann", "last_name": "Rossi",
                 "language_code": "en"}}
    if text is not None:
        message["text"] = text
    message.update(extra)
    return {"update_id": update_id, "message": message}


async def post_webhook(service: Service, update: dict[str, Any], *, secret: str | None = SECRET,
                       pad: int = 0) -> int:
    """POST an update to the service the way Telegram does; returns the HTTP status."""
    body = dict(update)
    if pad:
        body["pad"] = "x" * pad
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{service.port}/webhooks/telegram", data=json.dumps(body),
            headers=headers) as resp:
        await resp.read()
        return resp.status


class TelegramHarness:
    """The channel contract (tests/test_channels/contract.py) for Telegram webhooks."""

    name = "telegram"
    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake
        self.not_applicable: dict[str, str] = {}
        self._update_ids: dict[str, int] = {}

    def settings(self) -> dict[str, Any]:
        return {"telegram_token": TOKEN, "telegram_mode": "webhook",
                "telegram_webhook_secret": SECRET, "telegram_api_base": self.fake.url}

    async def deliver(self, service: Service, *, external_id: str, text: str,
                      signature: str = "good", size: int | None = None) -> int:
        update_id = self._update_ids.setdefault(external_id, 1000 + len(self._update_ids))
        secret = {"good": SECRET, "bad": "not-the-secret", "missing": None}[signature]
        return await post_webhook(service, message_update(update_id, text), secret=secret,
                                  pad=size or 0)

    def fail_next_sends(self, kind: str, count: int = 1) -> None:
        self.fake.fail_next(kind, count)

    def sent(self) -> list[str]:
        return [str(p.get("text")) for p in self.fake.sent_messages()]


@contextlib.asynccontextmanager
async def telegram_harness() -> AsyncIterator[TelegramHarness]:
    async with fake_telegram() as fake:
        yield TelegramHarness(fake)
