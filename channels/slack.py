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

Staff messages in desk channels are handed to the desk (`StaffDesk`, bot/desk/slack.py), which
registers its own buttons and slash command on the same app; the Web API helpers both use are
in channels/slack_api.py.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from channels.base import (
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
)
from channels.edge import decode_utf8, form_fields, json_object, read_body
from channels.settings import ChannelSettings
from channels.slack_api import Profiles, call_slack, files_of, is_human_message
from core.errors import (
    ConfigError,
    SignatureError,
)

log = logging.getLogger(__name__)
PATHS = ("/slack/events", "/slack/actions", "/slack/commands")


class StaffDesk(Protocol):
    """What the channel needs from the desk to route staff messages to it (bot/desk/slack.py
    is one; the composition root hands it over with `SlackChannel.add_desk`)."""

    def is_staff_channel(self, channel: str) -> bool: ...

    def listen(self, app: AsyncApp) -> None:
        """Register the desk's own listeners (buttons, commands, shortcuts) on the app."""

    async def on_staff_message(self, event: Mapping[str, Any], *,
                               event_id: str | None) -> None: ...


def build_app(settings: ChannelSettings) -> AsyncApp:
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

    def add_desk(self, desk: StaffDesk) -> None:
        """Staff channels' messages go to `desk`, which also listens on the same app."""
        self.desk = desk
        desk.listen(self.app)

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
