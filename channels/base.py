"""One small message model and one small channel interface, shared by every channel.

A channel turns platform traffic into `InboundMessage`s and hands them to the `Intake` (which
commits them to the durable queue before the platform gets its acknowledgement), and turns an
`OutboundMessage` into one platform call in `send`. Everything else (FAQ, lifecycle, escalation)
never sees a platform payload.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from bot.db.engine import Database
    from bot.settings import Settings


@dataclass(frozen=True, slots=True)
class Attachment:
    """Metadata of a file the customer sent; the bytes stay on the platform."""

    kind: str  # image, document, audio, video, location, contact, other
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None
    ref: str | None = None  # platform file id or URL

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("name", self.name),
                                  ("mime_type", self.mime_type), ("size", self.size),
                                  ("ref", self.ref)) if v is not None}


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message just committed to a conversation, as a channel that serves its own
    transcript (the web chat) shows it."""

    id: int
    direction: str  # "in" or "out"
    author: str
    text: str
    created_at: datetime
    language: str | None
    stage: str | None
    conversation_status: str


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer message, normalised. `(channel, external_id)` is the dedup key.

    `address` is the sender on that channel (chat id, phone, email address, Slack user...);
    `thread` groups messages into one conversation where the platform has threads (email thread
    root, Slack thread ts); `raw_ref` points back to the platform object (update id, UID...).
    `email` / `phone` are contact details the channel learned, used to link one customer
    across channels. `sender` is the person when `address` is a place several people write in
    (a Slack channel): the customer is known by the sender, replies go to the address.
    """

    channel: str
    external_id: str
    address: str
    text: str
    display_name: str | None = None
    attachments: tuple[Attachment, ...] = ()
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    raw_ref: str | None = None
    thread: str | None = None
    email: str | None = None
    phone: str | None = None
    language_hint: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    sender: str | None = None

    @property
    def who(self) -> str:
        """The address the customer is known by on this channel."""
        return self.sender or self.address

    @property
    def conversation_key(self) -> str:
        """Messages with the same key are handled strictly in order."""
        return f"{self.channel}:{self.address}"


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A reply to send on `channel` to `address`, inside `thread` when the channel has threads.

    `meta` carries what the channel stored on the way in (e.g. the email subject and
    Message-IDs it needs to thread the reply).
    """

    channel: str
    address: str
    text: str
    message_id: int
    conversation_id: int
    thread: str | None = None
    attachments: tuple[Attachment, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the platform told us about a successful send."""

    provider_id: str | None = None
    status: str = "sent"


class Intake(Protocol):
    """Where channels put inbound messages. Returns False for a duplicate (already queued)."""

    async def put(self, message: InboundMessage) -> bool: ...


OnStatus = Callable[[str, str, str | None, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a channel may use to build itself: settings, the queue, the database."""

    settings: Settings
    intake: Intake
    db: Database
    #: the service's clock (what "now" is for windows measured on times it stamped)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


class Channel(abc.ABC):
    """The interface every channel implements: start, stop, send; routes if it has webhooks.

    Subclasses set `name`. `send` raises the `ChannelError` subclasses from `bot.errors` so the
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

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

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
