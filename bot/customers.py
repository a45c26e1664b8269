"""One customer across channels: identities, merging by email or phone, and order facts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import Conversation, Customer, Identity, Order, StageChange
from core.contacts import normalise_email, normalise_phone
from core.errors import InputError

C = Customer.__table__.c
I = Identity.__table__.c  # noqa: E741
O = Order.__table__.c  # noqa: E741

@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What lifecycle rules may use about a customer."""

    orders_count: int = 0
    total_spent: float = 0.0
    last_order_at: datetime | None = None


async def resolve_customer(conn: AsyncConnection, *, channel: str, address: str,
                           display_name: str | None, email: str | None,
                           phone: str | None) -> tuple[int, int]:
    """Return (customer_id, identity_id), creating or linking them as needed.

    A new address joins the customer who already has that email or phone; a known address that
    brings a new email/phone shared with another customer merges the two into the older one.
    """
    email, phone = normalise_email(email), normalise_phone(phone)
    row = (await conn.execute(select(I.id, I.customer_id, C.merged_into)
                              .join(Customer.__table__, C.id == I.customer_id)
                              .where(I.channel == channel, I.address == address))).first()
    if row is not None:
        customer_id = row.customer_id if row.merged_into is None else \
            await _follow_merge(conn, row.customer_id)
        if email or phone:
            customer_id = await _attach_contact(conn, customer_id, email, phone, display_name)
        return customer_id, row.id
    customer_id = await _find_by_contact(conn, email, phone)
    if customer_id is None:
        customer_id = (await conn.execute(insert(Customer.__table__).values(
            display_name=display_name, email=email, phone=phone, orders_count=0,
            total_spent=0.0, created_at=datetime.now(UTC)).returning(C.id))).scalar_one()
    else:
        await _attach_contact(conn, customer_id, email, phone, display_name)
    identity_id = (await conn.execute(insert(Identity.__table__).values(
        customer_id=customer_id, channel=channel, address=address, display_name=display_name,
        created_at=datetime.now(UTC)).returning(I.id))).scalar_one()
    return customer_id, identity_id


async def _follow_merge(conn: AsyncConnection, customer_id: int) -> int:
    for _ in range(10):
        merged = (await conn.execute(select(C.merged_into).where(C.id == customer_id))).scalar()
        if merged is None:
            return customer_id
        customer_id = merged
    return customer_id


async def _find_by_contact(conn: AsyncConnection, email: str | None,
                           phone: str | None) -> int | None:
    for column, value in ((C.email, email), (C.phone, phone)):
        if value:
            found = (await conn.execute(select(C.id).where(column == value, C.merged_into.is_(None))
                                        .order_by(C.id).limit(1))).scalar()
            if found is not None:
                return int(found)
    return None


async def _attach_contact(conn: AsyncConnection, customer_id: int, email: str | None,
                          phone: str | None, display_name: str | None) -> int:
    other = await _find_by_contact(conn, email, phone)
    if other is not None and other != customer_id:
        keep, drop = sorted((customer_id, other))
        await merge_customers(conn, keep=keep, drop=drop)
        customer_id = keep
    current = (await conn.execute(select(C.email, C.phone, C.display_name)
                                  .where(C.id == customer_id))).one()
    values: dict[str, Any] = {}
    if email and not current.email:
        values["email"] = email
    if phone and not current.phone:
        values["phone"] = phone
    if display_name and not current.display_name:
        values["display_name"] = display_name
    if values:
        await conn.execute(update(Customer.__table__).where(C.id == customer_id).values(values))
    return customer_id


async def merge_customers(conn: AsyncConnection, *, keep: int, drop: int) -> None:
    """Move everything of `drop` to `keep`; `drop` stays as a pointer for old references."""
    for table in (Identity.__table__, Conversation.__table__, Order.__table__,
                  StageChange.__table__):
        await conn.execute(update(table).where(table.c.customer_id == drop)
                           .values(customer_id=keep))
    dropped = (await conn.execute(select(C.email, C.phone, C.orders_count, C.total_spent,
                                         C.last_order_at).where(C.id == drop))).one()
    await conn.execute(update(Customer.__table__).where(C.id == drop)
                       .values(merged_into=keep, email=None, phone=None))
    kept = (await conn.execute(select(C.email, C.phone).where(C.id == keep))).one()
    await conn.execute(update(Customer.__table__).where(C.id == keep).values(
        email=kept.email or dropped.email, phone=kept.phone or dropped.phone))
    await refresh_order_facts(conn, keep)


async def customer_facts(conn: AsyncConnection, customer_id: int) -> CustomerFacts:
    row = (await conn.execute(select(C.orders_count, C.total_spent, C.last_order_at)
                              .where(C.id == customer_id))).one()
    return CustomerFacts(row.orders_count or 0, row.total_spent or 0.0, row.last_order_at)


async def refresh_order_facts(conn: AsyncConnection, customer_id: int) -> CustomerFacts:
    row = (await conn.execute(
        select(func.count(), func.coalesce(func.sum(O.total), 0.0), func.max(O.placed_at))
        .where(O.customer_id == customer_id, O.status.not_in(NOT_BOUGHT)))).one()
    last = row[2]
    if isinstance(last, str):  # SQLite max() over a typed column returns the raw string
        last = datetime.fromisoformat(last)
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    await conn.execute(update(Customer.__table__).where(C.id == customer_id).values(
        orders_count=row[0], total_spent=float(row[1]), last_order_at=last))
    return CustomerFacts(int(row[0]), float(row[1]), last)


ORDER_STATUSES = ("placed", "paid", "fulfilled", "delivered", "returned", "cancelled",
                  "refunded")
#: orders that no longer count as bought: not in orders_count, total_spent, last_order_at
NOT_BOUGHT = ("cancelled", "refunded")
#: store platforms whose order ids are unique store-wide (prefixed "<source>:")
PLATFORM_SOURCES = ("shopify", "woocommerce")


def order_number(value: str | None) -> str | None:
    """How an order number is kept and compared: "#A-1001 " -> "a-1001"."""
    if not value:
        return None
    cleaned = str(value).strip().lstrip("#").strip().lower()
    return cleaned[:64] or None


@dataclass(frozen=True, slots=True)
class OrderIn:
    """One order as the store knows it, from the API, a CSV row or a platform webhook."""

    order_id: str
    total: float
    currency: str = "EUR"
    placed_at: datetime | None = None
    status: str = "placed"
    source: str = "api"
    number: str | None = None
    financial_status: str | None = None
    fulfillment_status: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    carrier: str | None = None
    shipment_status: str | None = None
    expected_delivery_at: datetime | None = None
    delivered_at: datetime | None = None
    cancelled_at: datetime | None = None
    line_items: tuple[dict[str, Any], ...] | None = None
    updated_at: datetime | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], *, source: str = "api") -> OrderIn:
        """Validate one order from the API or a CSV row; raises InputError naming the field."""
        order_id = str(data.get("order_id") or data.get("id") or "").strip()
        if not order_id or len(order_id) > 128:
            raise InputError("order_id is required (1-128 characters)")
        try:
            total = float(data.get("total", 0) or 0)
        except (TypeError, ValueError):
            raise InputError(f"total must be a number, got {data.get('total')!r}") from None
        if total < 0:
            raise InputError("total must not be negative")
        status = str(data.get("status") or "placed")
        if status not in ORDER_STATUSES:
            raise InputError(f"status must be one of {', '.join(ORDER_STATUSES)}")
        currency = str(data.get("currency") or "EUR").upper()[:8]
        text = {k: (str(data[k]).strip()[:500] or None) if data.get(k) else None
                for k in ("tracking_number", "tracking_url", "carrier")}
        if text["tracking_url"] and not text["tracking_url"].startswith(("https://", "http://")):
            raise InputError("tracking_url must be an http(s) URL")
        return cls(order_id, total, currency, parse_time(data, "placed_at"), status,
                   source=source, number=order_number(str(data.get("number") or order_id)),
                   expected_delivery_at=parse_time(data, "expected_delivery_at"),
                   delivered_at=parse_time(data, "delivered_at"),
                   tracking_number=text["tracking_number"], tracking_url=text["tracking_url"],
                   carrier=text["carrier"])


def parse_time(data: dict[str, Any], key: str) -> datetime | None:
    """An ISO date/time field as aware UTC (naive means UTC); InputError names the field."""
    raw = data.get(key)
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{key} must be an ISO date/time, got {raw!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class OrderWrite:
    """What storing one order did: whether it was new, its status before, whether the data
    was older than what we hold (then nothing changed)."""

    order_row_id: int
    customer_id: int
    created: bool
    previous_status: str | None
    stale: bool = False


_OPTIONAL = ("financial_status", "fulfillment_status", "tracking_number", "tracking_url",
             "carrier", "shipment_status", "expected_delivery_at", "delivered_at",
             "cancelled_at", "updated_at")


async def upsert_order(conn: AsyncConnection, customer_id: int, order: OrderIn, *,
                       now: datetime | None = None) -> OrderWrite:
    """Insert or update one order (idempotent on the store's order id).

    A platform order is found by its id alone and stays with the customer it was first
    linked to (a later payload with an edited email does not hand it to someone else). Fields
    the new data leaves empty keep what we had; data older than the stored `updated_at` is
    ignored, since platforms do not promise delivery order."""
    now = now or datetime.now(UTC)
    where = [O.external_id == order.order_id]
    if order.source not in PLATFORM_SOURCES:
        where.append(O.customer_id == customer_id)
    existing = (await conn.execute(select(O.id, O.customer_id, O.status, O.updated_at)
                                   .where(*where).limit(1))).first()
    values: dict[str, Any] = {"total": order.total, "currency": order.currency,
                              "status": order.status, "source": order.source,
                              "number": order.number or order_number(order.order_id)}
    if order.line_items is not None:
        values["line_items"] = list(order.line_items)
    values.update({k: getattr(order, k) for k in _OPTIONAL if getattr(order, k) is not None})
    if existing is None:
        row_id = (await conn.execute(insert(Order.__table__).values(
            customer_id=customer_id, external_id=order.order_id,
            placed_at=order.placed_at or now, **values).returning(O.id))).scalar_one()
        return OrderWrite(int(row_id), customer_id, True, None)
    if (order.updated_at is not None and existing.updated_at is not None
            and order.updated_at < existing.updated_at):
        return OrderWrite(existing.id, existing.customer_id, False, existing.status, stale=True)
    if order.placed_at is not None:
        values["placed_at"] = order.placed_at
    await conn.execute(update(Order.__table__).where(O.id == existing.id).values(values))
    return OrderWrite(existing.id, existing.customer_id, False, existing.status)


async def record_order(conn: AsyncConnection, customer_id: int, order: OrderIn, *,
                       now: datetime | None = None) -> CustomerFacts:
    """Insert or update one order and return the customer's refreshed order facts."""
    written = await upsert_order(conn, customer_id, order, now=now)
    return await refresh_order_facts(conn, written.customer_id)


async def find_or_create_by_contact(conn: AsyncConnection, *, email: str | None,
                                    phone: str | None, name: str | None = None) -> int:
    email, phone = normalise_email(email), normalise_phone(phone)
    if not email and not phone:
        raise InputError("a valid email or phone is required to find the customer")
    found = await _find_by_contact(conn, email, phone)
    if found is not None:
        return await _attach_contact(conn, found, email, phone, name)
    return int((await conn.execute(insert(Customer.__table__).values(
        display_name=name, email=email, phone=phone, orders_count=0, total_spent=0.0,
        created_at=datetime.now(UTC)).returning(C.id))).scalar_one())
