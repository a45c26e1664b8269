"""One small channel interface, shared by every channel; the message model it speaks is the
kernel's (core/messages.py), re-exported here for the channels.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.messages import (
    Attachment,
    Deliveries,
    DeliveryReport,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
    StoredMessage,
)

__all__ = ["Attachment", "Channel", "ChannelContext", "Deliveries", "DeliveryReport",
           "InboundMessage", "Intake", "OnStatus", "OutboundMessage", "SendResult",
           "StoredMessage", "with_links"]

from core.clock import Clock, system_clock
from core.stores import ChannelStore

if TYPE_CHECKING:
    from aiohttp import web

    from channels.settings import ChannelSettings


OnStatus = Callable[[str, str, str | None, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a channel may use to build itself: its settings, the queue, the service's clock,
    where delivery reports go, and the narrow store it may keep state in (no database)."""

    settings: ChannelSettings
    intake: Intake
    clock: Clock = system_clock
    deliveries: Deliveries | None = None
    store: ChannelStore | None = None


class Channel(abc.ABC):
    """The interface every channel implements: start, stop, send; routes if it has webhooks.

    Subclasses set `name`. `send` raises the `ChannelError` subclasses from `core.errors` so the
    outbox can tell "retry later" from "failed for good".
    """

    name: ClassVar[str]
    #: True when storing a reply is delivering it (the web chat serves its transcript from the
    #: database): the bot's replies then skip the outbox and `replies_stored` wakes the reader.
    delivers_by_storing: ClassVar[bool] = False
    #: True when each platform thread is a conversation of its own (a Slack channel where
    #: every top-level message starts one); elsewhere a new thread joins the open conversation
    threads_are_conversations: ClassVar[bool] = False
    #: False when the customer's address and contact details are only what they typed (the
    #: web chat): nothing about their orders is told there
    vouches_for_contacts: ClassVar[bool] = True
    #: True when the platform only takes free text for a while after the customer's last
    #: message (WhatsApp's 24 hours): the outbox then fills `last_inbound_at` on its messages
    reply_window: ClassVar[bool] = False
    #: True when the platform reports deliveries later (`Deliveries.report`), so the outbox
    #: looks for reports that came before it recorded the send
    reports_deliveries: ClassVar[bool] = False

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def text_with_attachments(self, message: OutboundMessage) -> str:
        """The text to send when the platform is not given the files themselves: the text
        and a line with the link of each attachment it does not already name (as Rasa's
        OutputChannel falls back to text)."""
        return with_links(message.text, message.attachments)

    def replies_stored(self, address: str,  # noqa: B027 - optional hook
                       messages: Sequence[StoredMessage] = (), *,
                       after: int | None = None) -> None:
        """Messages of `address` were committed (only for `delivers_by_storing` channels):
        `messages`, which directly follow message `after` of their conversation, when the
        core knows them all; else nothing (read them again)."""

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> Channel | None:
        """Build the channel from settings, or None when its settings are not given.

        Raise `ConfigError` when they are given but incomplete or invalid.
        """
        raise NotImplementedError

    def routes(self, app: web.Application) -> None:  # noqa: B027 - optional hook
        """Add this channel's webhook routes to the service's HTTP app (if it has any)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections and start pollers. Must return quickly."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Close connections; pending work stays in the queue."""

    async def poll(self, stop: asyncio.Event) -> None:  # noqa: B027 - optional hook
        """A long-running pull loop (IMAP, Telegram long polling) until `stop` is set.

        The service runs it in exactly one process (elected with a lock when several worker
        processes run), so two replicas never poll the same mailbox. Channels without a pull
        loop keep this default, which returns at once.
        """

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver one message, or raise a ChannelError subclass."""


def with_links(text: str, attachments: Sequence[Attachment]) -> str:
    """Text plus one line per attachment, for platforms where we only pass links."""
    lines = [text] if text else []
    for a in attachments:
        if a.ref and a.ref in text:  # already linked in the text
            continue
        label = a.name or a.kind
        lines.append(f"📎 {label}: {a.ref}" if a.ref else f"📎 {label}")
    return "\n".join(lines)
