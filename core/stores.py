"""What a channel may keep in, or ask of, the core's database, as a narrow interface: the
channel runs no SQL and never sees the tables; the composition root passes an implementation
(bot/channel_store.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from core.messages import OutboundMessage


@dataclass(frozen=True, slots=True)
class VisitorContact:
    """What a web chat visitor told us, or the store signed."""

    customer_ref: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    verified: bool = False
    page: str | None = None


@dataclass(frozen=True, slots=True)
class MissedReply:
    """A staff reply sent to a visitor who was not connected to see it."""

    visitor: str
    email: str
    page: str | None
    message_id: int
    text: str
    language: str | None


@dataclass(frozen=True, slots=True)
class TranscriptRow:
    """One message of a visitor's conversations, with its conversation's stage and status."""

    id: int
    conversation_id: int
    direction: str
    author: str
    text: str
    created_at: datetime
    status: str
    language: str | None
    attachments: Sequence[dict[str, Any]]
    stage: str | None
    conversation_status: str


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

    # --- the web chat, which serves its transcript itself --------------------------------

    async def transcript(self, channel: str, address: str, after: int,
                         limit: int) -> list[TranscriptRow]:
        """The messages (no staff notes) of this address's conversations after id `after`,
        oldest first, at most `limit`: two indexed reads, whatever the history."""
        ...

    async def visitor(self, visitor: str) -> VisitorContact | None: ...

    async def save_visitor(self, visitor: str, contact: VisitorContact, *, new: bool,
                           now: datetime) -> None: ...

    async def visitors_seen(self, seen: Mapping[str, datetime]) -> None:
        """These visitors were connected then."""
        ...

    async def missed_replies(self, channel: str, *, before: datetime,
                             since: datetime) -> list[MissedReply]:
        """Staff replies sent between `since` and `before` to visitors with an email who
        were not connected after them and were not emailed them yet, by visitor and id."""
        ...

    async def emailed_through(self, visitor: str, message_id: int) -> None:
        """The visitor was emailed every missed reply up to this one."""
        ...
