"""The channel registry: every channel the service knows, by name (explicit, greppable)."""

from __future__ import annotations

from channels.base import Channel
from channels.email import EmailChannel
from channels.slack import SlackChannel
from channels.telegram import TelegramChannel
from channels.webchat import WebChatChannel
from channels.whatsapp import WhatsAppChannel

CHANNELS: dict[str, type[Channel]] = {c.name: c for c in (
    WebChatChannel,
    TelegramChannel,
    WhatsAppChannel,
    SlackChannel,
    EmailChannel,
)}
