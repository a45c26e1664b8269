"""What a channel may keep in, or ask of, the core's database, as a narrow interface: the
channel runs no SQL and never sees the tables; the composition root passes an implementation
(bot/channel_store.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from core.messages import OutboundMessage


class ChannelStore(Protocol):
    async def get_state(self, key: str) -> dict[str, Any] | None:
        """A channel's own small record (a poller's cursor), or None."""
        ...

    async def put_state(self, key: str, value: Mapping[str, Any]) -> None: ...

    async def reply_context(self, message: OutboundMessage
                            ) -> tuple[str, Mapping[str, Any] | None]:
        """Who wrote this reply (bot, playbook, staff:<id>), and what the channel kept of
        the customer message it answers: the one named in its meta, else the customer's
        latest before it in the conversation."""
        ...

    async def bot_replies_since(self, channel: str, address: str,
                                since: datetime) -> set[int]:
        """The ids of the bot's replies sent to this address since then."""
        ...
