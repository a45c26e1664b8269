"""Tables. Timestamps are UTC everywhere (stored naive in SQLite, timestamptz in PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Column, DateTime, Index, Table, UniqueConstraint
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel


class _SQLiteText(sqlite.DATETIME):
    """SQLite's DATETIME whose bind values `UTCDateTime` has already formatted."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None


_SQLITE_TEXT = _SQLiteText()  # type: ignore[no-untyped-call]  # SQLAlchemy's untyped __init__


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python, whatever the database keeps.

    On SQLite the value is formatted here, in SQLAlchemy's own storage format
    ("2026-11-23 09:30:00.000000"), in one step: its generic DATETIME formatting cost more than
    the rest of writing a row.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLITE_TEXT
        return dialect.type_descriptor(self.impl)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def ts(*, index: bool = False, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), index=index, nullable=nullable))


def created(*, index: bool = False) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), index=index,
                                                          nullable=False, default=utcnow))


def json_field(default: Any = None) -> Any:
    factory = (lambda: dict(default)) if isinstance(default, dict) else (lambda: default)
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=True))


class Model(SQLModel):
    """Base of our tables: tells the type checker about the `__table__` SQLAlchemy adds."""

    __table__: ClassVar[Table]


class ConversationStatus:
    BOT = "bot"
    WAITING = "waiting"  # escalated, nobody has taken it yet
    HUMAN = "human"  # a person owns it; the bot stays silent
    RESOLVED = "resolved"
    OPEN = (BOT, WAITING, HUMAN)


class Customer(Model, table=True):
    id: int | None = Field(default=None, primary_key=True)
    display_name: str | None = None
    email: str | None = Field(default=None, index=True)
    phone: str | None = Field(default=None, index=True)
    language: str | None = None
    stage: str | None = Field(default=None, index=True)  # dashboard: customers per stage now
    orders_count: int = 0
    total_spent: float = 0.0
    last_order_at: datetime | None = ts(index=True)  # the schedule's time rules
    merged_into: int | None = Field(default=None, foreign_key="customer.id")
    created_at: datetime = created()


class Identity(Model, table=True):
    """One customer address on one channel."""

    __table_args__ = (UniqueConstraint("channel", "address"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    channel: str
    address: str
    display_name: str | None = None
    created_at: datetime = created()


class Conversation(Model, table=True):
    __table_args__ = (
        Index("ix_conversation_identity_status", "identity_id", "status"),
        Index("ix_conversation_stage_created", "stage", "created_at"),
        # dashboard conversation list: each filter walks its index newest first (id order)
        Index("ix_conversation_stage_id", "stage", "id"),
        Index("ix_conversation_status_id", "status", "id"),
        Index("ix_conversation_language_id", "language", "id"),
        Index("ix_conversation_channel_id", "channel", "id"),
        # the web chat transcript: a visitor's conversations without a scan
        Index("ix_conversation_channel_address", "channel", "address", "id"),
        # dashboard: conversations opened per stage in the live part of a period, index only
        Index("ix_conversation_created_cover", "created_at", "stage", "customer_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    identity_id: int = Field(foreign_key="identity.id")
    channel: str = Field(index=True)
    address: str
    thread: str | None = None
    status: str = ConversationStatus.BOT
    language: str | None = None
    stage: str | None = None
    assigned_to: str | None = None
    last_faq_id: str | None = None
    last_answer_at: datetime | None = ts()
    last_inbound_at: datetime | None = ts()
    meta: dict[str, Any] | None = json_field({})
    created_at: datetime = created(index=True)
    updated_at: datetime = created()
    resolved_at: datetime | None = ts()


class Message(Model, table=True):
    __table_args__ = (
        Index("ix_message_conversation_id", "conversation_id", "id"),
        Index("ix_message_provider", "channel", "provider_id"),
        # dashboard: covers the per-period aggregates over inbound messages (bot/metrics_queries)
        Index("ix_message_dir_created", "direction", "created_at", "decision", "faq_id",
              "channel", "language", "conversation_id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id")
    direction: str  # "in" or "out"
    channel: str
    external_id: str | None = None
    author: str  # customer, bot, staff:<slack user id>
    text: str
    attachments: list[dict[str, Any]] | None = json_field(None)
    language: str | None = None
    faq_id: str | None = Field(default=None, index=True)
    score: float | None = None
    decision: str | None = None  # answer, escalate, ambiguous, silent (a human owns it)
    status: str = "received"  # in: received; out: pending, sent, delivered, read, failed
    error: str | None = None
    provider_id: str | None = None
    meta: dict[str, Any] | None = json_field(None)
    created_at: datetime = created(index=True)
    sent_at: datetime | None = ts()


class InboxItem(Model, table=True):
    """The durable inbound queue: one row per accepted platform message."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_inbox_status_id", "status", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str
    external_id: str
    conversation_key: str
    shard: int
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = "pending"  # pending, done, dead
    attempts: int = 0
    next_attempt_at: datetime | None = ts()
    last_error: str | None = None
    created_at: datetime = created()
    done_at: datetime | None = ts()


class OutboxItem(Model, table=True):
    """The outbound queue: one row per message to deliver, retried with backoff."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_id", "status", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    conversation_id: int
    channel: str
    status: str = "pending"  # pending, sent, failed
    attempts: int = 0
    next_attempt_at: datetime | None = ts()
    last_error: str | None = None
    created_at: datetime = created()
    sent_at: datetime | None = ts()


class StageChange(Model, table=True):
    __tablename__ = "stage_change"
    __table_args__ = (
        Index("ix_stage_change_created", "created_at"),
        # dashboard (bot/metrics_queries): covering indexes for the stage flow and history
        Index("ix_stage_change_customer_created", "customer_id", "created_at", "id", "to_stage"),
        Index("ix_stage_change_created_customer", "created_at", "customer_id", "to_stage", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id", index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    from_stage: str | None = None
    to_stage: str
    reason: str
    created_at: datetime = created()


class Escalation(Model, table=True):
    __table_args__ = (
        Index("ix_escalation_status_created", "status", "created_at"),
        Index("ix_escalation_created", "created_at"),  # dashboard: escalations per period
        # dashboard: performance reads only this index (no table rows) for a period
        Index("ix_escalation_created_cover", "created_at", "conversation_id", "reason", "csat",
              "first_response_at", "resolved_at"),
        Index("ix_escalation_reason_created", "reason", "created_at"),  # unanswered questions
    )
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id", index=True)
    reason: str  # no_match, ambiguous, asked_for_human, repeated_question, entry_escalates
    detail: str | None = None
    question: str | None = None
    candidates: list[dict[str, Any]] | None = json_field(None)
    status: str = "open"  # open, taken, resolved, returned
    team: str | None = None
    staff_channel: str | None = None
    staff_thread: str | None = None
    taken_by: str | None = None
    taken_at: datetime | None = ts()
    first_response_at: datetime | None = ts()
    resolved_at: datetime | None = ts()
    reposted_at: datetime | None = ts()
    csat: int | None = None
    csat_asked_at: datetime | None = ts()
    created_at: datetime = created()
    #: set by the routing rule (bot/data/routing.yaml): a valued or at-risk customer
    priority: bool = False
    #: the routing rule's reminder time; None = the team's repost_after_minutes
    repost_after_minutes: float | None = None
    #: staff snoozed it: no reminders until then (the customer writing ends it early)
    snoozed_until: datetime | None = ts()


class DeskJob(Model, table=True):
    """A Slack post the staff desk owes (card, card update, thread message), written in the
    same transaction as the change it reports and delivered by the desk loop with retries."""

    __tablename__ = "desk_job"
    __table_args__ = (Index("ix_desk_job_status_id", "status", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    kind: str  # card, update, post
    escalation_id: int = Field(foreign_key="escalation.id", index=True)
    payload: dict[str, Any] | None = json_field(None)
    status: str = "pending"  # pending, done, failed
    attempts: int = 0
    next_attempt_at: datetime | None = ts()
    last_error: str | None = None
    created_at: datetime = created()
    done_at: datetime | None = ts()


class Order(Model, table=True):
    """What the store told us a customer bought: by API, CSV import or a store's webhooks.

    `external_id` is the store's id (prefixed "shopify:" / "woocommerce:" for webhook orders);
    `number` is what the customer sees and types ("1001" for Shopify's "#1001", "A-1001"),
    kept lower case without "#" so a message's order number finds it."""

    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("customer_id", "external_id"),
                      Index("ix_orders_customer_number", "customer_id", "number"),
                      Index("ix_orders_external_id", "external_id"))
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    external_id: str
    total: float = 0.0
    currency: str = "EUR"
    #: placed, paid, fulfilled, delivered, returned, cancelled, refunded
    status: str = "placed"
    placed_at: datetime = created()
    source: str = "api"  # api, csv, shopify, woocommerce
    number: str | None = None
    financial_status: str | None = None  # the store's own words (paid, pending, refunded...)
    fulfillment_status: str | None = None  # the store's own words (fulfilled, partial...)
    tracking_number: str | None = None
    tracking_url: str | None = None
    carrier: str | None = None
    shipment_status: str | None = None  # in_transit, out_for_delivery, delivered, failure...
    expected_delivery_at: datetime | None = ts()
    delivered_at: datetime | None = ts()
    cancelled_at: datetime | None = ts()
    line_items: list[dict[str, Any]] | None = json_field(None)
    #: the store's last-modified time of the data we hold: older webhooks do not overwrite it
    updated_at: datetime | None = ts()


class Checkout(Model, table=True):
    """A checkout the store told us about (Shopify checkouts/create, checkouts/update)."""

    __table_args__ = (UniqueConstraint("external_id"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int | None = Field(default=None, foreign_key="customer.id", index=True)
    external_id: str
    abandoned_checkout_url: str | None = None
    total: float = 0.0
    currency: str = "EUR"
    line_items: list[dict[str, Any]] | None = json_field(None)
    completed_at: datetime | None = ts()
    created_at: datetime = created()
    updated_at: datetime | None = ts()


class StoreEvent(Model, table=True):
    """A store webhook we applied, by the platform's delivery id: a redelivery is a no-op."""

    __tablename__ = "store_event"
    __table_args__ = (UniqueConstraint("source", "event_id"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str  # shopify, woocommerce
    event_id: str
    topic: str
    received_at: datetime = created()


class ScheduledStage(Model, table=True):
    """A time rule the schedule applied to a customer, once per customer per transition:
    `basis` is the customer's last order time the rule counted from, so a customer who orders
    again and lapses again is moved again, and never twice for the same lapse."""

    __tablename__ = "scheduled_stage"
    __table_args__ = (UniqueConstraint("customer_id", "rule", "basis"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    rule: str
    basis: str
    created_at: datetime = created()


class PlaybookJob(Model, table=True):
    """One playbook step owed to one customer for one trigger occurrence (bot/playbook_jobs).

    `occurrence` names what fired it (an order's delivery, a stage change, a lapse...): the
    unique key makes a redelivered webhook or an overlapping sweep schedule nothing twice.
    The runner claims a due row with a conditional UPDATE in the transaction that queues its
    message, so across processes and restarts a step is sent once or not at all."""

    __tablename__ = "playbook_job"
    __table_args__ = (UniqueConstraint("customer_id", "playbook", "step", "occurrence"),
                      Index("ix_playbook_job_state_due", "state", "due_at"),
                      Index("ix_playbook_job_playbook_step", "playbook", "step", "state"))
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    channel: str | None = None
    playbook: str
    step: int
    occurrence: str
    kind: str  # transactional, marketing
    state: str = "scheduled"  # scheduled, sent, cancelled, skipped
    reason: str | None = None
    attempts: int = 0
    due_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    fired_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    data: dict[str, Any] | None = json_field(None)
    message_id: int | None = Field(default=None, foreign_key="message.id")
    created_at: datetime = created()
    done_at: datetime | None = ts()


class Consent(Model, table=True):
    """A customer's marketing consent on one channel (bot/consent.py): the latest opt-in and
    opt-out with their time and source; opted in = an opt-in later than any opt-out."""

    __table_args__ = (UniqueConstraint("customer_id", "channel"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    channel: str
    opted_in_at: datetime | None = ts()
    opt_in_source: str | None = None
    opted_out_at: datetime | None = ts()
    opt_out_source: str | None = None


class DoNotContact(Model, table=True):
    """A customer nothing is sent to unprompted, transactional or not."""

    __tablename__ = "do_not_contact"
    customer_id: int = Field(foreign_key="customer.id", primary_key=True)
    source: str
    created_at: datetime = created()


class ChannelState(Model, table=True):
    """Small durable state a channel keeps (e.g. the IMAP UID cursor)."""

    __tablename__ = "channel_state"
    key: str = Field(primary_key=True)
    value: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_at: datetime = created()


class Erasure(Model, table=True):
    """A customer erased on request: when, and how many rows per table went; nothing else."""

    id: int | None = Field(default=None, primary_key=True)
    erased_at: datetime = created()
    rows: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class SurveyAnswer(Model, table=True):
    """A customer's answer to a satisfaction (1-5) or recommend (0-10) question the bot or a
    playbook asked; the desk's survey after a person resolved is `escalation.csat`."""

    __tablename__ = "survey_answer"
    __table_args__ = (Index("ix_survey_answer_answered", "answered_at", "kind"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    kind: str  # csat, nps
    score: int
    source: str = "bot"  # bot, playbook
    answered_at: datetime = created()


class SurveyQuestion(Model, table=True):
    """A satisfaction (1-5) or recommend (0-10) question a playbook step asked: the
    customer's next message in that conversation, if it is a lone number on its scale, is
    the answer."""

    __tablename__ = "survey_question"
    __table_args__ = (Index("ix_survey_question_customer", "customer_id", "asked_at"),)
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id")
    conversation_id: int = Field(foreign_key="conversation.id")
    kind: str  # csat, nps
    source: str = "bot"  # bot: after the bot answered alone; playbook: any other step
    playbook: str | None = None
    asked_at: datetime = created()
    answered_at: datetime | None = ts()


class DeliveryReportRow(Model, table=True):
    """A delivery report that came before its send was recorded (a Twilio callback racing
    the outbox): applied, and deleted, in the transaction that records the send."""

    __tablename__ = "delivery_report"
    channel: str = Field(primary_key=True)
    provider_id: str = Field(primary_key=True)
    status: str
    meta: dict[str, Any] | None = json_field(None)
    error: str | None = None
    received_at: datetime = created(index=True)


class WebchatVisitor(Model, table=True):
    """What a web chat visitor told us: contact details (typed, or signed by the store), the
    store's customer id when signed, when they were last connected, and the last staff reply
    emailed to them."""

    __tablename__ = "webchat_visitor"
    visitor: str = Field(primary_key=True)
    customer_ref: str | None = None  # the store's customer id, only from a signed identity
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    verified: bool = False
    page: str | None = None  # the store page they last wrote from: the email links back to it
    seen_at: datetime | None = ts()
    emailed_through: int = 0  # message id: staff replies up to it need no email
    updated_at: datetime = created()


# --- dashboard rollups (bot/rollups.py): per-day aggregates of closed UTC days ------------------

class RollupInbound(Model, table=True):
    """Inbound messages per day x conversation stage x channel x language."""

    __tablename__ = "rollup_inbound"
    day: str = Field(primary_key=True)  # "YYYY-MM-DD" (UTC)
    stage: str = Field(primary_key=True)
    channel: str = Field(primary_key=True)
    language: str = Field(primary_key=True)
    messages: int = 0
    answered: int = 0


class RollupFaq(Model, table=True):
    """Inbound messages the bot answered, per day x FAQ entry."""

    __tablename__ = "rollup_faq"
    day: str = Field(primary_key=True)
    faq_id: str = Field(primary_key=True)
    hits: int = 0


class RollupConversation(Model, table=True):
    """Conversations opened per day x their current stage, and how many customers opened them."""

    __tablename__ = "rollup_conversation"
    day: str = Field(primary_key=True)
    stage: str = Field(primary_key=True)
    conversations: int = 0
    customers: int = 0


class RollupTransition(Model, table=True):
    """Customers' stage transitions per day (from the customer's previous stage or "new").

    `repeat_after` is when the same customer last made the same transition (NULL if never), so
    distinct customers over any period starting at S = the sum of rows with repeat_after < S."""

    __tablename__ = "rollup_transition"
    __table_args__ = (Index("ix_rollup_transition_day", "day", "from_stage", "to_stage"),)
    id: int | None = Field(default=None, primary_key=True)
    day: str
    from_stage: str
    to_stage: str
    repeat_after: datetime | None = ts()
    changes: int = 0


class RollupEscalation(Model, table=True):
    """Escalations per day x dimension ("stage", "channel" or "language") x group: counts,
    CSAT sums and the sorted durations (seconds), so exact percentiles of a period merge days.
    """

    __tablename__ = "rollup_escalation"
    day: str = Field(primary_key=True)
    dim: str = Field(primary_key=True)
    grp: str = Field(primary_key=True)
    escalations: int = 0
    reasons: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    csat_sum: int = 0
    csat_count: int = 0
    first_response_s: list[float] = Field(sa_column=Column(JSON, nullable=False))
    resolution_s: list[float] = Field(sa_column=Column(JSON, nullable=False))


class RollupEscalationCheck(Model, table=True):
    """A day's escalations summed up when rolled up (counts, CSAT, answer and resolution
    times): escalations keep changing as people answer them, and a day whose sums differ now
    is answered live."""

    __tablename__ = "rollup_escalation_check"
    day: str = Field(primary_key=True)
    fingerprint: str


class RollupState(Model, table=True):
    """How far the rollups go (every day before `rolled_until`) and what they have seen."""

    __tablename__ = "rollup_state"
    key: str = Field(primary_key=True)
    rolled_until: datetime | None = ts()
    seen: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_at: datetime = created()
