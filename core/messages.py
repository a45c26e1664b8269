"""The message envelopes: what every channel hands in and gets to send, and nothing else.

A channel turns platform traffic into `InboundMessage`s for the `Intake` (which commits them to
the durable queue before the platform gets its acknowledgement) and an `OutboundMessage` into
one platform call. Everything else (FAQ, lifecycle, escalation) never sees a platform payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


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
    attachments: tuple[dict[str, Any], ...] = ()


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
    #: the channel vouches for this message's contact details although it does not in
    #: general (a web chat visitor whose identity the store signed)
    vouched: bool = False

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
    #: the customer's last message on this channel and address, any conversation (filled
    #: for channels whose platform limits replies to a window after it, e.g. WhatsApp)
    last_inbound_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the platform told us about a successful send; `meta` is kept on the message
    (e.g. the platform's own status word, the template sent instead of the text)."""

    provider_id: str | None = None
    status: str = "sent"
    meta: Mapping[str, Any] = field(default_factory=dict)


#: how far along a message we sent is; a report never moves it back
DELIVERY_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The platform's later word on a message we sent (a Twilio status callback...): its
    provider id, our status for it, what to keep on the message, and the failure reason."""

    channel: str
    provider_id: str
    status: str  # a DELIVERY_RANK key other than pending
    meta: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


class Deliveries(Protocol):
    """Where channels hand delivery reports. The core records each in one transaction, and
    keeps one that arrives before the send itself is recorded until it is."""

    async def report(self, report: DeliveryReport) -> None: ...


class Intake(Protocol):
    """Where channels put inbound messages. Returns False for a duplicate (already queued)."""

    async def put(self, message: InboundMessage) -> bool: ...
