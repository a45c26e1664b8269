"""The channel registry: every channel the service knows, by name (explicit, greppable)."""

from __future__ import annotations

from channels.base import Channel
from channels.webchat import WebChatChannel

CHANNELS: dict[str, type[Channel]] = {c.name: c for c in (WebChatChannel,)}
