"""The channel registry: every channel the service knows, by name (explicit, greppable).

Each entry names the class by import path and says which setting switches it on, so a service
running only the web chat never imports aiogram, slack-bolt or twilio (seconds of start-up).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels.base import Channel
    from channels.settings import ChannelSettings


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    path: str  # "module:Class"
    configured: Callable[[ChannelSettings], bool]

    def load(self) -> type[Channel]:
        module, _, cls = self.path.partition(":")
        loaded: type[Channel] = getattr(importlib.import_module(module), cls)
        return loaded


CHANNELS: dict[str, ChannelSpec] = {
    "webchat": ChannelSpec("channels.webchat:WebChatChannel", lambda s: s.webchat_enabled),
    "telegram": ChannelSpec("channels.telegram:TelegramChannel",
                            lambda s: s.telegram_token is not None),
    "whatsapp": ChannelSpec("channels.whatsapp:WhatsAppChannel",
                            lambda s: bool(s.twilio_account_sid)),
    "slack": ChannelSpec("channels.slack:SlackChannel", lambda s: s.slack_bot_token is not None),
    "email": ChannelSpec("channels.email:EmailChannel",
                         lambda s: bool(s.imap_host or s.smtp_host)),
}
