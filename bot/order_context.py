"""What an answer may say about the customer's order: `$order_number`, `$tracking_url`...

`order_variables` finds the order a message names ("#1001", "order 1001", "ordine 1001",
"คำสั่งซื้อ 1001", "A-1001") among *this customer's* orders only, else takes the customer's
latest order, and returns its fields as answer variables; with no order known (or a customer
whose link to this conversation is not verified) it returns {} and the FAQ entry's plain text
applies. An order number that belongs to someone else is simply not found: nothing about
another customer's order can come out of here.

`order_problem` tells whether the order needs a person (reason `order_problem`): past its
expected delivery and not delivered, or marked delivered while the customer says it never
came.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import order_number
from bot.db.models import Order

O = Order.__table__.c  # noqa: E741
ORDER_PROBLEM = "order_problem"  # the escalation reason
VARIABLES = ("order_number", "order_status", "order_date", "order_total", "tracking_number",
             "tracking_url", "carrier", "expected_delivery", "delivered_date")

_TOKEN = r"([A-Za-z0-9][A-Za-z0-9-]{0,40})"
_NAMED = (
    re.compile(r"#\s?" + _TOKEN),
    re.compile(r"(?:\border|\bordine|\bordinazione|\bpedido|\bcommande|คำสั่งซื้อ|ออเดอร์)"
               r"\s*(?:number|num\.?|no\.?|nr\.?|n\.|n°|numero|เลขที่|หมายเลข)?\s*[:#]?\s*"
               + _TOKEN, re.IGNORECASE),
    re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{1,5}-\d{2,12})(?![A-Za-z0-9])"),
    re.compile(r"(?<![\d-])(\d{3,12})(?![\d-])"),
)

STATUS_LABELS: dict[str, dict[str, str]] = {
    "en": {"placed": "received", "paid": "paid", "fulfilled": "shipped",
           "delivered": "delivered", "cancelled": "cancelled", "refunded": "refunded",
           "returned": "returned"},
    "it": {"placed": "ricevuto", "paid": "pagato", "fulfilled": "spedito",
           "delivered": "consegnato", "cancelled": "annullato", "refunded": "rimborsato",
           "returned": "reso"},
    "th": {"placed": "ได้รับคำสั่งซื้อแล้ว", "paid": "ชำระเงินแล้ว", "fulfilled": "จัดส่งแล้ว",
           "delivered": "จัดส่งถึงแล้ว", "cancelled": "ยกเลิกแล้ว", "refunded": "คืนเงินแล้ว",
           "returned": "คืนสินค้าแล้ว"},
}

#: the customer says a parcel marked delivered never came
NOT_RECEIVED = {
    "en": ("never arrived", "never came", "never received", "never got", "not received",
           "didn't arrive", "did not arrive", "didn't receive", "did not receive",
           "haven't received", "have not received", "hasn't arrived", "has not arrived",
           "not arrived", "still waiting", "says delivered", "but i didn't get",
           "didn't get it", "not delivered", "wasn't delivered"),
    "it": ("mai arrivato", "mai arrivata", "non è arrivato", "non è arrivata",
           "non è mai arrivato", "non è mai arrivata", "non ho ricevuto", "mai ricevuto",
           "non mi è arrivato", "non mi è arrivata", "non l'ho ricevuto", "risulta consegnato",
           "ancora niente", "non consegnato"),
    "th": ("ยังไม่ได้รับ", "ไม่ได้รับ", "ของไม่มา", "ยังไม่มา", "ไม่ถึง", "ไม่เคยได้รับ",
           "ยังไม่ถึง"),
}
_FINISHED = ("delivered", "cancelled", "refunded", "returned")


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """The fields of one order an answer or the escalation check may use."""

    number: str
    status: str
    placed_at: datetime | None = None
    total: float = 0.0
    currency: str = ""
    tracking_number: str | None = None
    tracking_url: str | None = None
    carrier: str | None = None
    shipment_status: str | None = None
    expected_delivery_at: datetime | None = None
    delivered_at: datetime | None = None

    @property
    def delivered(self) -> bool:
        return self.status == "delivered" or self.shipment_status == "delivered"


@dataclass(frozen=True, slots=True)
class OrderContext:
    """The order a message is about: `named` when the message named it (and it is this
    customer's); `variables` empty when no order is known."""

    order: OrderFacts | None = None
    named: bool = False
    variables: dict[str, str] = field(default_factory=dict)


def named_numbers(text: str) -> list[str]:
    """Order numbers a message may name, normalised as stored ("#A-1001" -> "a-1001"); only
    tokens with a digit count."""
    found: list[str] = []
    for pattern in _NAMED:
        for match in pattern.finditer(text):
            number = order_number(match.group(1))
            if number and any(c.isdigit() for c in number) and number not in found:
                found.append(number)
    return found


def variables_for(order: OrderFacts | None, lang: str = "en") -> dict[str, str]:
    """Answer variables of one order ({} without one); unknown fields are ""."""
    if order is None:
        return {}
    labels = STATUS_LABELS.get(lang, STATUS_LABELS["en"])
    status = order.status
    if status == "fulfilled" and order.shipment_status == "delivered":
        status = "delivered"
    return {
        "order_number": order.number.upper(),
        "order_status": labels.get(status, status),
        "order_date": _date(order.placed_at),
        "order_total": f"{order.total:.2f} {order.currency}".strip(),
        "tracking_number": order.tracking_number or "",
        "tracking_url": order.tracking_url or "",
        "carrier": order.carrier or "",
        "expected_delivery": _date(order.expected_delivery_at),
        "delivered_date": _date(order.delivered_at) if order.delivered else "",
    }


def order_problem(order: OrderFacts | None, text: str, now: datetime,
                  language: str | None = None) -> bool:
    """True when the order needs a person: late (past its expected delivery, not delivered,
    not cancelled), or marked delivered while the customer says it never came."""
    if order is None:
        return False
    if (order.expected_delivery_at is not None and now > order.expected_delivery_at
            and not order.delivered and order.status not in _FINISHED):
        return True
    if not order.delivered:
        return False
    lowered = text.lower()
    langs = [language] if language in NOT_RECEIVED else list(NOT_RECEIVED)
    return any(phrase in lowered for lang in langs for phrase in NOT_RECEIVED[lang or "en"])


async def order_context(conn: AsyncConnection, *, customer_id: int, text: str,
                        channel_verified: bool = True, lang: str = "en") -> OrderContext:
    """The order this message is about, among this customer's orders only.

    `channel_verified`: whether the conversation's link to this customer rests on a verified
    identity (the channel's own address, or an email/phone the platform vouches for). An
    email typed into the web chat is not: then nothing is told about any order.
    """
    if not channel_verified:
        return OrderContext()
    cols = (O.number, O.external_id, O.status, O.placed_at, O.total, O.currency,
            O.tracking_number, O.tracking_url, O.carrier, O.shipment_status,
            O.expected_delivery_at, O.delivered_at)
    mine = select(*cols).where(O.customer_id == customer_id) \
        .order_by(O.placed_at.desc(), O.id.desc())
    named = named_numbers(text)
    row = None
    if named:
        row = (await conn.execute(mine.where(O.number.in_(named)).limit(1))).first()
    is_named = row is not None
    if row is None:
        row = (await conn.execute(mine.limit(1))).first()
    if row is None:
        return OrderContext()
    order = _facts(row._mapping)
    return OrderContext(order, is_named, variables_for(order, lang))


async def order_variables(conn: AsyncConnection, *, customer_id: int, text: str,
                          channel_verified: bool = True, lang: str = "en") -> dict[str, str]:
    """`$order_number`, `$order_status`, `$order_date`, `$order_total`, `$tracking_number`,
    `$tracking_url`, `$carrier`, `$expected_delivery`, `$delivered_date` of the order the
    message names (if it is this customer's) or of the customer's latest order; {} when no
    order is known or the identity is not verified."""
    found = await order_context(conn, customer_id=customer_id, text=text,
                                channel_verified=channel_verified, lang=lang)
    return found.variables


def _facts(row: Any) -> OrderFacts:
    return OrderFacts(
        number=row["number"] or order_number(row["external_id"]) or "", status=row["status"],
        placed_at=row["placed_at"], total=float(row["total"] or 0.0),
        currency=row["currency"] or "", tracking_number=row["tracking_number"],
        tracking_url=row["tracking_url"], carrier=row["carrier"],
        shipment_status=row["shipment_status"], expected_delivery_at=row["expected_delivery_at"],
        delivered_at=row["delivered_at"])


def _date(when: datetime | None) -> str:
    return "" if when is None else when.astimezone(UTC).date().isoformat()
