"""Slack: one app for the customer channel and the staff desk.

One signing secret, one slack-bolt `AsyncApp` in HTTP mode, mounted in the service's aiohttp app
at /slack/events, /slack/actions and /slack/commands (Slack may also use one URL for all three).
Bolt verifies every request's signature, answers url_verification and drops our own bot's
events; we also drop every other bot's messages and edits/deletions (no loops, no re-sends).

Customers: direct messages to the app (address = the DM channel id) and messages in
SLACK_CUSTOMER_CHANNELS, e.g. Slack Connect channels (address = channel id, thread = the
message's thread). The dedup key is `(channel, ts)`, the same across Slack's retries and across
event subscriptions. Bolt runs our listener before answering (`process_before_response`), so
Slack gets its 200 only once the message is committed to the queue, well within 3 s.

Staff messages in desk channels are handed to the desk (`bot.desk`), which registers its own
buttons and slash command on the same app.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.settings import Settings
from channels.base import (
    Attachment,
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
)
from channels.edge import decode_utf8, form_fields, json_object, read_body
from core.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelPermanentError,
    ChannelRateLimited,
    ChannelTemporaryError,
    ConfigError,
    SignatureError,
)

log = logging.getLogger(__name__)
PATHS = ("/slack/events", "/slack/actions", "/slack/commands")
#: Message subtypes that are a person writing; everything else (edits, deletions, joins, bot
#: messages) is ignored.
HUMAN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
_AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                          "token_expired", "no_permission", "missing_scope"})
_TEMPORARY_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable",
                               "request_timeout"})


class StaffDesk(Protocol):
    """What the channel needs from the desk to route staff messages to it."""

    def is_staff_channel(self, channel: str) -> bool: ...

    async def on_staff_message(self, event: Mapping[str, Any], *,
                               event_id: str | None) -> None: ...


def build_app(settings: Settings) -> AsyncApp:
    """The shared bolt app; its client talks to SLACK_API_BASE (a local fake in tests)."""
    if settings.slack_bot_token is None:
        raise ConfigError("SLACK_BOT_TOKEN is required for Slack")
    if settings.slack_signing_secret is None:
        raise ConfigError("SLACK_SIGNING_SECRET is required when SLACK_BOT_TOKEN is set")
    client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(),
                            base_url=settings.slack_api_base, timeout=10)
    return AsyncApp(client=client,
                    signing_secret=settings.slack_signing_secret.get_secret_value(),
                    process_before_response=True)


def signature_ok(secret: bytes, body: bytes, timestamp: str, signature: str,
                 now: float) -> bool:
    """Slack's v0 signature over the exact bytes, at most five minutes old (replays)."""
    if not secret or not timestamp.isdigit() or len(timestamp) > 12 or not signature:
        return False
    if abs(now - int(timestamp)) > 300:
        return False
    expected = "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body,
                                hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode("latin-1", "replace"))


def is_human_message(event: Mapping[str, Any]) -> bool:
    """False for any bot (not only ours), edits, deletions and other system subtypes."""
    return (not event.get("bot_id") and not event.get("bot_profile")
            and event.get("subtype") in HUMAN_SUBTYPES and bool(event.get("user")))


def slack_error(exc: SlackApiError) -> ChannelError:
    """Translate a Slack Web API error into the service's channel errors (the one place)."""
    response = exc.response
    status = int(getattr(response, "status_code", 200) or 200)
    error = ""
    try:
        error = str(response.get("error") or "")
    except (AttributeError, TypeError, ValueError):
        error = ""
    headers = {str(k).lower(): v for k, v in (getattr(response, "headers", None) or {}).items()}
    if status == 429 or error == "ratelimited":
        raw = headers.get("retry-after", "1")
        raw = raw[0] if isinstance(raw, list) else raw
        try:
            retry_after = float(raw)
        except (TypeError, ValueError):
            retry_after = 1.0
        return ChannelRateLimited(f"Slack rate limit ({error or status})", retry_after=retry_after)
    if error in _AUTH_ERRORS:
        return ChannelAuthError(f"Slack refused the token: {error}")
    if status >= 500 or error in _TEMPORARY_ERRORS:
        return ChannelTemporaryError(f"Slack error {status} {error}".strip())
    return ChannelPermanentError(f"Slack refused the message: {error or status}",
                                 code=error or str(status))


async def call_slack(coro: Any) -> Any:
    """Await a slack_sdk call, raising only ChannelError subclasses."""
    try:
        return await coro
    except SlackApiError as exc:
        raise slack_error(exc) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ChannelTemporaryError(f"Slack unreachable: {type(exc).__name__}") from None


def files_of(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """Metadata of the files on a Slack message (the bytes stay on Slack)."""
    out = []
    for f in event.get("files") or ():
        if not isinstance(f, dict):
            continue
        mime = f.get("mimetype") or ""
        kind = next((k for k in ("image", "audio", "video") if mime.startswith(k)), "document")
        out.append(Attachment(kind=kind, name=f.get("name") or f.get("title"),
                              mime_type=mime or None, size=f.get("size"),
                              ref=f.get("permalink") or f.get("url_private")))
    return tuple(out)


class Profiles:
    """users.info with a small cache and a short timeout: names are nice, never required."""

    def __init__(self, client: AsyncWebClient, *, size: int = 2000) -> None:
        self.client = client
        self.size = size
        self._cache: dict[str, dict[str, str | None]] = {}

    async def get(self, user: str | None) -> dict[str, str | None]:
        if not user:
            return {}
        if user in self._cache:
            return self._cache[user]
        try:
            resp = await asyncio.wait_for(self.client.users_info(user=user), timeout=1.0)
        except (SlackApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("users.info for %s failed: %s", user, type(exc).__name__)
            return {}
        u = resp.get("user") or {}
        profile = u.get("profile") or {}
        info = {"name": profile.get("display_name") or profile.get("real_name")
                or u.get("real_name") or u.get("name"), "email": profile.get("email")}
        if len(self._cache) >= self.size:
            self._cache.clear()
        self._cache[user] = info
        return info


class SlackChannel(Channel):
    name = "slack"
    threads_are_conversations = True

    def __init__(self, intake: Intake, app: AsyncApp, *, signing_secret: str,
                 customer_channels: list[str], max_text: int) -> None:
        super().__init__(intake)
        self.app = app
        self.signing_secret = signing_secret.encode()
        self.client: AsyncWebClient = app.client
        self.customer_channels = set(customer_channels)
        self.max_text = max_text
        self.profiles = Profiles(self.client)
        self.desk: StaffDesk | None = None
        app.event("message")(self._on_message)

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> SlackChannel | None:
        if ctx.settings.slack_bot_token is None:
            return None
        secret = ctx.settings.slack_signing_secret
        return cls(ctx.intake, build_app(ctx.settings),
                   signing_secret=secret.get_secret_value() if secret else "",
                   customer_channels=ctx.settings.slack_customer_channels,
                   max_text=ctx.settings.max_text_chars)

    def routes(self, app: web.Application) -> None:
        for path in PATHS:
            app.router.add_post(path, self.dispatch)

    async def dispatch(self, request: web.Request) -> web.Response:
        """Verify the signature over the exact bytes, then check the body is what Slack sends
        (UTF-8; JSON for events, a form with a JSON `payload` for actions), then hand it to
        bolt: junk is refused here with a 4xx, before any parser sees it."""
        body = await read_body(request)  # over-size bodies raise 413 here
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not signature_ok(self.signing_secret, body, timestamp, signature, time.time()):
            raise SignatureError("Slack signature missing, wrong or stale", status=401)
        text = decode_utf8(body)
        if request.content_type == "application/json":
            json_object(body)
        else:
            form = form_fields(body, request.content_type)
            if "payload" in form:
                json_object(form["payload"].encode())
        response = await self.app.async_dispatch(AsyncBoltRequest(
            body=text, query=request.query_string, headers=dict(request.headers)))
        return await to_aiohttp_response(response)

    async def send(self, message: OutboundMessage) -> SendResult:
        kwargs: dict[str, Any] = {"channel": message.address,
                                  "text": self.text_with_attachments(message)}
        if message.thread:
            kwargs["thread_ts"] = message.thread
        resp = await call_slack(self.client.chat_postMessage(**kwargs))
        return SendResult(provider_id=resp.get("ts"), status="sent")

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if not is_human_message(event):
            return
        channel = str(event.get("channel") or "")
        if self.desk is not None and self.desk.is_staff_channel(channel):
            await self.desk.on_staff_message(event, event_id=body.get("event_id"))
            return
        is_dm = event.get("channel_type") == "im"
        if not is_dm and channel not in self.customer_channels:
            return
        ts = str(event.get("ts") or "")
        if not channel or not ts:
            log.warning("Slack message event without channel or ts ignored")
            return
        # In a customer channel every top-level message starts its own thread (and so its own
        # conversation); in a direct message the DM itself is the conversation.
        thread = event.get("thread_ts") or (None if is_dm else ts)
        user = event.get("user")
        profile = await self.profiles.get(user)
        try:
            when = datetime.fromtimestamp(float(ts), UTC)
        except ValueError:
            when = datetime.now(UTC)
        await self.intake.put(InboundMessage(
            channel=self.name, external_id=f"{channel}:{ts}", address=channel,
            text=str(event.get("text") or "")[:self.max_text], display_name=profile.get("name"),
            attachments=files_of(event), timestamp=when, raw_ref=body.get("event_id"),
            thread=thread, email=profile.get("email"), sender=str(user) if user else None,
            meta={"slack_user": user, "slack_team": body.get("team_id")}))
