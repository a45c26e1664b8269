"""Telegram through aiogram 3: a webhook or long polling in, `sendMessage` out.

POST /webhooks/telegram   an Update as JSON, with `X-Telegram-Bot-Api-Secret-Token`
                          -> 200 {} once the message is committed to the queue

Webhook mode checks the secret header (constant-time) and refuses the request before reading
the body; polling mode (`poll`) calls `getUpdates` and confirms an update (by asking for the
next offset) only after it is committed. The dedup key is `update_id`, so a redelivered update
is a no-op. A group message's address is the chat id, so the bot answers in the group.

The Bot API base URL is a setting (self-hosted Bot API servers, the tests' fake). aiogram's
errors become `core.errors` in `_translate` and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any

import aiohttp
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    AiogramError,
    TelegramAPIError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import Message, Update
from aiogram.utils.token import TokenValidationError
from aiohttp import web
from pydantic import ValidationError

from channels.base import (
    Attachment,
    Channel,
    ChannelContext,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
)
from channels.edge import json_object, read_body
from core.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelOutcomeUnknown,
    ChannelPermanentError,
    ChannelRateLimited,
    ChannelTemporaryError,
    ConfigError,
    InputError,
    PayloadTooLarge,
    SignatureError,
)

log = logging.getLogger(__name__)
WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT = 4096  # Telegram's limit for one message
POLL_TIMEOUT = 25  # seconds a getUpdates call may wait for news


class TelegramChannel(Channel):
    """Customers who write to the store's Telegram bot, privately or in a group.

    Args:
        intake: where inbound messages are committed.
        bot: the aiogram Bot (composed, never subclassed), already pointed at the API base.
        mode: "webhook" or "polling".
        secret: the webhook secret token (required in webhook mode).
        webhook_url: set with `setWebhook` on start, or None to leave registration to the
            operator.
        max_body: largest webhook body accepted, in bytes.
        max_text: longer customer texts are cut to this many characters.
    """

    name = "telegram"

    def __init__(self, intake: Intake, bot: Bot, *, mode: str, secret: str | None,
                 webhook_url: str | None, max_body: int, max_text: int) -> None:
        super().__init__(intake)
        self.bot = bot
        self.mode = mode
        self.secret = secret
        self.webhook_url = webhook_url
        self.max_body = max_body
        self.max_text = max_text

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> TelegramChannel | None:
        s = ctx.settings
        if s.telegram_token is None:
            return None
        secret = s.telegram_webhook_secret.get_secret_value() if s.telegram_webhook_secret \
            else None
        if s.telegram_mode == "webhook" and not secret:
            raise ConfigError("TELEGRAM_WEBHOOK_SECRET is required in webhook mode "
                              "(1-256 characters of A-Z a-z 0-9 _ -)")
        session = AiohttpSession(api=TelegramAPIServer.from_base(s.telegram_api_base.rstrip("/")))
        try:
            bot = Bot(s.telegram_token.get_secret_value(), session=session)
        except TokenValidationError:
            raise ConfigError("TELEGRAM_TOKEN does not look like a bot token "
                              "(<digits>:<letters>)") from None
        webhook_url = s.public_url.rstrip("/") + WEBHOOK_PATH if s.telegram_set_webhook else None
        return cls(ctx.intake, bot, mode=s.telegram_mode, secret=secret,
                   webhook_url=webhook_url, max_body=s.max_body_bytes, max_text=s.max_text_chars)

    def routes(self, app: web.Application) -> None:
        if self.mode == "webhook":
            app.router.add_post(WEBHOOK_PATH, self.webhook)

    async def start(self) -> None:
        """Register the webhook when asked to; a failure is logged, not fatal (the operator
        may have registered it already)."""
        if self.mode != "webhook" or self.webhook_url is None:
            return
        try:
            await self.bot.set_webhook(self.webhook_url, secret_token=self.secret,
                                       allowed_updates=["message"])
            log.info("telegram webhook registered at %s", self.webhook_url)
        except TelegramAPIError as exc:
            log.error("telegram: setWebhook failed: %s", _translate(exc))

    async def stop(self) -> None:
        await self.bot.session.close()

    async def send(self, message: OutboundMessage) -> SendResult:
        text = self.text_with_attachments(message)
        if len(text) > MAX_TEXT:
            log.warning("telegram: reply %d cut to %d characters", message.message_id, MAX_TEXT)
            text = text[:MAX_TEXT - 1] + "…"
        topic = message.meta.get("message_thread_id")
        try:
            chat_id = int(message.address)
        except ValueError:
            raise ChannelPermanentError(f"not a Telegram chat id: {message.address!r}") from None
        try:
            sent = await self.bot.send_message(
                chat_id=chat_id, text=text, message_thread_id=int(topic) if topic else None)
        except (AiogramError, aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from exc
        return SendResult(provider_id=f"{sent.chat.id}:{sent.message_id}", status="sent")

    # --- inbound ---------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not self.secret or not hmac.compare_digest(given.encode(), self.secret.encode()):
            raise SignatureError("missing or wrong Telegram secret token")
        if request.content_length is not None and request.content_length > self.max_body:
            raise PayloadTooLarge(f"body over {self.max_body} bytes")
        data = json_object(await read_body(request))
        try:
            update = Update.model_validate(data, context={"bot": self.bot})
        except ValidationError:
            raise InputError("the body is not a Telegram Update") from None
        message = self.normalise(update)
        if message is not None:
            await self.intake.put(message)
        return web.json_response({})

    async def poll(self, stop: asyncio.Event) -> None:
        """Long polling: fetch, commit, then confirm by asking for the next offset. Updates
        not yet committed when we stop are delivered again and deduplicated."""
        if self.mode != "polling":
            return
        with contextlib.suppress(TelegramAPIError, aiohttp.ClientError, TimeoutError):
            await self.bot.delete_webhook()  # polling and a webhook exclude each other
        offset: int | None = None
        failures = 0
        while not stop.is_set():
            try:
                updates = await _unless_stopped(stop, self.bot.get_updates(
                    offset=offset, timeout=POLL_TIMEOUT, allowed_updates=["message"],
                    request_timeout=POLL_TIMEOUT + 10))
                if updates is None:
                    return
                messages = [m for m in map(self.normalise, updates) if m is not None]
                # one group commit for the batch; puts queue up in order, so order holds
                await asyncio.gather(*(self.intake.put(m) for m in messages))
                if updates:
                    offset = updates[-1].update_id + 1
                failures = 0
            except (AiogramError, aiohttp.ClientError, TimeoutError) as exc:
                error = _translate(exc)
                failures += 1
                wait = error.retry_after if isinstance(error, ChannelRateLimited) \
                    else min(60.0, 2.0 ** failures)
                log.warning("telegram: getUpdates failed (%s); retrying in %.0f s", error, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)

    def normalise(self, update: Update) -> InboundMessage | None:
        """A customer message, or None for what we do not answer (other update kinds, bots,
        service messages such as "X joined the group")."""
        msg = update.message
        if msg is None or msg.from_user is None or msg.from_user.is_bot:
            return None
        text = (msg.text or msg.caption or "").strip()
        attachments = _attachments(msg)
        if not text and not attachments:
            return None
        if len(text) > self.max_text:
            log.warning("telegram: update %d text cut to %d characters", update.update_id,
                        self.max_text)
            text = text[:self.max_text]
        meta: dict[str, Any] = {"chat_type": msg.chat.type, "message_id": msg.message_id,
                                "user_id": msg.from_user.id}
        if msg.from_user.language_code:
            meta["language_code"] = msg.from_user.language_code
        if msg.is_topic_message and msg.message_thread_id:
            meta["message_thread_id"] = msg.message_thread_id
        phone = None
        if msg.contact is not None and msg.contact.user_id == msg.from_user.id:
            phone = msg.contact.phone_number  # the customer shared their own number
        return InboundMessage(
            channel=self.name, external_id=str(update.update_id), address=str(msg.chat.id),
            text=text, display_name=msg.from_user.full_name[:200], attachments=attachments,
            timestamp=msg.date, raw_ref=f"{msg.chat.id}:{msg.message_id}", phone=phone,
            meta=meta)


def _attachments(msg: Message) -> tuple[Attachment, ...]:
    """File metadata only; the bytes stay on Telegram (`ref` is the file_id for getFile)."""
    found: list[Attachment] = []
    if msg.photo:
        big = msg.photo[-1]  # sizes come smallest first
        found.append(Attachment("image", mime_type="image/jpeg", size=big.file_size,
                                ref=big.file_id))
    if msg.document is not None:
        d = msg.document
        found.append(Attachment("document", name=d.file_name, mime_type=d.mime_type,
                                size=d.file_size, ref=d.file_id))
    for kind, media in (("audio", msg.voice), ("audio", msg.audio), ("video", msg.video),
                        ("video", msg.video_note)):
        if media is not None:
            found.append(Attachment(kind, mime_type=getattr(media, "mime_type", None),
                                    size=media.file_size, ref=media.file_id))
    if msg.sticker is not None:
        found.append(Attachment("image", name=msg.sticker.emoji, ref=msg.sticker.file_id))
    if msg.contact is not None:
        c = msg.contact
        name = " ".join(p for p in (c.first_name, c.last_name) if p) or None
        found.append(Attachment("contact", name=name, ref=c.phone_number))
    if msg.location is not None:
        found.append(Attachment("location",
                                ref=f"{msg.location.latitude},{msg.location.longitude}"))
    return tuple(found)


async def _unless_stopped(stop: asyncio.Event, call: Any) -> Any:
    """Await `call`, or cancel it and return None as soon as `stop` is set."""
    task = asyncio.ensure_future(call)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


def _translate(exc: BaseException) -> ChannelError:
    """The one place aiogram's errors become ours.

    sendMessage is not idempotent and Telegram has no idempotency key: after a timeout or a
    dropped connection we cannot know whether the message went out. That is "outcome unknown",
    retried by the outbox: a customer may see an answer twice, but never misses one.
    """
    if isinstance(exc, TelegramRetryAfter):
        return ChannelRateLimited(f"telegram flood control: retry in {exc.retry_after} s",
                                  retry_after=float(exc.retry_after))
    if isinstance(exc, TelegramUnauthorizedError):
        return ChannelAuthError("telegram refused the bot token (401)")
    if isinstance(exc, TelegramMigrateToChat):
        return ChannelPermanentError(
            f"group moved to supergroup {exc.migrate_to_chat_id}: {exc.message}", code="migrated")
    if isinstance(exc, TelegramForbiddenError):
        return ChannelPermanentError(f"telegram 403: {exc.message}", code="403")
    if isinstance(exc, TelegramServerError):
        return ChannelTemporaryError(f"telegram server error: {exc.message}")
    cause = exc.__cause__ if isinstance(exc, TelegramNetworkError) else exc
    if isinstance(cause, aiohttp.ClientConnectorError):
        return ChannelTemporaryError(f"cannot reach the Telegram API: {cause}")
    if isinstance(exc, TelegramNetworkError | aiohttp.ClientError | TimeoutError):
        return ChannelOutcomeUnknown(
            f"outcome unknown (the request may have been delivered): {type(exc).__name__}")
    if isinstance(exc, TelegramAPIError):
        return ChannelPermanentError(f"telegram refused the message: {exc.message}",
                                     code="400")
    return ChannelPermanentError(f"outcome unknown (unreadable answer): {exc}", code="unknown")
