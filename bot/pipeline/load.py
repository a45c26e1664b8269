"""Step one inside the transaction: read, set-based, everything the rules need for a batch.

One query for the senders (identity + customer), one for their open conversations; senders
never seen before are created with one multi-row insert each for customers and identities.
Only a message whose contact details may link or merge customers (a new email or phone) goes
through `resolve_customer` on its own, in message order, and the senders are read again after
it, because a merge can change anyone's customer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import CustomerFacts, resolve_customer
from bot.db.models import Conversation, ConversationStatus, Customer, Identity, Message
from bot.pipeline.rules import ConversationState, PendingSurvey, Survey
from bot.replies import insert_returning_ids
from bot.surveys import open_question
from channels.base import InboundMessage
from core.contacts import normalise_email, normalise_phone

CV = Conversation.__table__.c
CU = Customer.__table__.c
ID = Identity.__table__.c
MS = Message.__table__.c

# A lone 1-5 may answer the desk's satisfaction question.
RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5)?\s*[.!]?\s*$")

_SENDERS = (
    select(ID.id, ID.channel, ID.address, ID.customer_id, CU.merged_into, CU.email, CU.phone,
           CU.display_name, CU.stage, CU.orders_count, CU.total_spent, CU.last_order_at)
    .join(Customer.__table__, CU.id == ID.customer_id)
    # Both columns, so the (channel, address) unique index serves the lookup.
    .where(ID.channel.in_(bindparam("channels", expanding=True)),
           ID.address.in_(bindparam("addresses", expanding=True))))
_OPEN_CONVERSATIONS = (
    select(CV.id, CV.identity_id, CV.status, CV.language, CV.stage, CV.last_faq_id,
           CV.last_answer_at, CV.thread, CV.customer_id, CV.channel, CV.address, CV.meta)
    .where(CV.identity_id.in_(bindparam("identities", expanding=True)),
           CV.status != ConversationStatus.RESOLVED)
    .order_by(CV.id.desc()))
_LAST_IDS = (select(MS.conversation_id, func.max(MS.id))
             .where(MS.conversation_id.in_(bindparam("conversations", expanding=True)))
             .group_by(MS.conversation_id))
_INSERT_CUSTOMER = insert(Customer.__table__).returning(CU.id)
_INSERT_IDENTITY = insert(Identity.__table__).returning(ID.id)


class SurveySource(Protocol):
    async def pending_survey(self, conn: AsyncConnection, *, identity_id: int,
                             rating: int) -> PendingSurvey | None: ...


@dataclass(slots=True)
class Sender:
    """One customer identity as the rules and the lifecycle see it."""

    identity_id: int
    customer_id: int
    merged: bool
    email: str | None
    phone: str | None
    display_name: str | None
    stage: str | None
    facts: CustomerFacts
    #: open conversations, newest first; the batch adds the ones it opens
    conversations: list[ConversationState] = field(default_factory=list)
    #: identity ids whose open conversations are this sender's
    identity_ids: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Loaded:
    senders: dict[tuple[str, str], Sender]
    surveys: dict[int, Survey]  # by message index
    #: conversation id -> its newest message id before this batch (the conversations whose
    #: channel serves its own transcript: it may extend what it knows only from there)
    last_ids: dict[int, int] = field(default_factory=dict)


async def load(conn: AsyncConnection, messages: Sequence[InboundMessage], *,
               surveys: SurveySource | None, now: datetime,
               stored_delivery: frozenset[str] = frozenset()) -> Loaded:
    senders = await _senders(conn, messages)
    pending_new: list[InboundMessage] = []
    for msg in messages:
        key = (msg.channel, msg.who)
        known = senders.get(key)
        if known is not None and not known.merged and _contact_known(msg, known):
            continue
        if known is None and not (normalise_email(msg.email) or normalise_phone(msg.phone)):
            if all((m.channel, m.who) != key for m in pending_new):
                pending_new.append(msg)
            continue
        # May link or merge customers: in message order, after the new senders before it.
        await _create(conn, pending_new, now)
        pending_new = []
        await resolve_customer(conn, channel=msg.channel, address=msg.who,
                               display_name=msg.display_name, email=msg.email, phone=msg.phone)
        senders = await _senders(conn, messages)
    if pending_new:
        await _create(conn, pending_new, now)
        senders = await _senders(conn, messages)
    await _conversations(conn, senders)
    found = await _surveys(conn, messages, senders, surveys, now)
    stored = sorted(c.id for s in senders.values() for c in s.conversations
                    if c.id is not None and c.channel in stored_delivery)
    last_ids: dict[int, int] = {}
    if stored:
        last_ids = {int(r[0]): int(r[1]) for r in (await conn.execute(
            _LAST_IDS, {"conversations": stored})).all()}
    return Loaded(senders, found, last_ids)


async def _surveys(conn: AsyncConnection, messages: Sequence[InboundMessage],
                   senders: dict[tuple[str, str], Sender], desk: SurveySource | None,
                   now: datetime) -> dict[int, Survey]:
    """The messages that answer a question: the desk's rating after a person resolved first,
    then a playbook's CSAT or NPS question in one of the sender's open conversations."""
    found: dict[int, Survey] = {}
    for index, msg in enumerate(messages):
        sender = senders[(msg.channel, msg.who)]
        rating = RATING.match(msg.text)
        survey: Survey | None = None
        if rating and desk is not None:
            survey = await desk.pending_survey(conn, identity_id=sender.identity_id,
                                               rating=int(rating.group(1)))
        if survey is None and any(ch.isdigit() for ch in msg.text[:12]):
            survey = await open_question(conn, customer_id=sender.customer_id,
                                         channel=msg.channel, text=msg.text, now=now)
        if survey is not None:
            found[index] = survey
    return found


async def _senders(conn: AsyncConnection,
                   messages: Sequence[InboundMessage]) -> dict[tuple[str, str], Sender]:
    wanted = {(m.channel, m.who) for m in messages}
    params = {"channels": sorted({c for c, _ in wanted}),
              "addresses": sorted({a for _, a in wanted})}
    senders: dict[tuple[str, str], Sender] = {}
    for row in (await conn.execute(_SENDERS, params)).all():
        if (row.channel, row.address) in wanted:
            senders[(row.channel, row.address)] = Sender(
                row.id, row.customer_id, row.merged_into is not None, row.email, row.phone,
                row.display_name, row.stage,
                CustomerFacts(row.orders_count or 0, row.total_spent or 0.0, row.last_order_at),
                identity_ids={row.id})
    return senders


async def _create(conn: AsyncConnection, messages: Sequence[InboundMessage],
                  now: datetime) -> None:
    """Customers and identities for addresses never seen, without contact details."""
    if not messages:
        return
    customer_ids = await insert_returning_ids(conn, _INSERT_CUSTOMER, [
        {"display_name": m.display_name, "email": None, "phone": None, "orders_count": 0,
         "total_spent": 0.0, "created_at": now} for m in messages])
    await insert_returning_ids(conn, _INSERT_IDENTITY, [
        {"channel": m.channel, "address": m.who, "display_name": m.display_name,
         "customer_id": customer_id, "created_at": now}
        for m, customer_id in zip(messages, customer_ids, strict=True)])


async def _conversations(conn: AsyncConnection, senders: dict[tuple[str, str], Sender]) -> None:
    by_identity = {s.identity_id: s for s in senders.values()}
    if not by_identity:
        return
    rows = (await conn.execute(_OPEN_CONVERSATIONS,
                               {"identities": sorted(by_identity)})).all()
    for row in rows:  # newest first
        by_identity[row.identity_id].conversations.append(ConversationState(
            id=row.id, status=str(row.status), language=row.language, stage=row.stage,
            channel=row.channel, address=row.address, thread=row.thread,
            customer_id=row.customer_id, last_faq_id=row.last_faq_id,
            last_answer_at=row.last_answer_at, meta=dict(row.meta or {})))


def _contact_known(msg: InboundMessage, sender: Sender) -> bool:
    """True when `resolve_customer` would change nothing about the customer (no link, no
    merge, no new email, phone or name)."""
    email, phone = normalise_email(msg.email), normalise_phone(msg.phone)
    if not email and not phone:
        return True
    return (email in (None, sender.email) and phone in (None, sender.phone)
            and not (msg.display_name and not sender.display_name))


def pick_conversation(sender: Sender, msg: InboundMessage, *,
                      threads_own: bool) -> ConversationState:
    """The open conversation a message belongs to, or a new one (id None until written).

    Where threads are conversations (Slack customer channels) a new thread is a new
    conversation; elsewhere a message outside any known thread joins the newest open one.
    """
    if msg.thread:
        for conv in sender.conversations:
            if conv.thread == msg.thread:
                return conv
    if not (msg.thread and threads_own):
        for conv in sender.conversations:
            if conv.customer_id is not None and conv.customer_id != sender.customer_id:
                conv.customer_id = sender.customer_id  # the identity was merged
            return conv
    conv = ConversationState(
        id=None, status=ConversationStatus.BOT, language=msg.language_hint, stage=None,
        channel=msg.channel, address=msg.address, thread=msg.thread,
        customer_id=sender.customer_id, meta=dict(msg.meta))
    sender.conversations.insert(0, conv)
    return conv


def row_for(conv: ConversationState, sender: Sender, now: datetime) -> dict[str, Any]:
    """The insert row of a conversation the batch opened."""
    return {"customer_id": sender.customer_id, "identity_id": sender.identity_id,
            "channel": conv.channel, "address": conv.address, "thread": conv.thread,
            "status": conv.status, "language": conv.language, "meta": conv.meta,
            "created_at": now, "updated_at": now}
