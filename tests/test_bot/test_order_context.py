"""Order-aware answer variables: the order a message names, among this customer's only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.customers import OrderIn, find_or_create_by_contact, record_order
from bot.db.engine import Database
from bot.order_context import (
    OrderFacts,
    named_numbers,
    order_context,
    order_problem,
    order_variables,
    variables_for,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("Where is my order #1001?", ["1001"]),
    ("where is order 1001", ["1001"]),
    ("order number: 1001 please", ["1001"]),
    ("dov'è il mio ordine 1001?", ["1001"]),
    ("ordine n. 1001", ["1001"]),
    ("คำสั่งซื้อ 1001 อยู่ที่ไหน", ["1001"]),
    ("คำสั่งซื้อเลขที่1001", ["1001"]),
    ("Where is my order #A-1001?", ["a-1001"]),
    ("I ordered A-1001 last week", ["a-1001"]),
    ("where is my parcel?", []),
    ("order history", []),  # a word after "order" is not a number
])
def test_named_numbers(text: str, expected: list[str]) -> None:
    found = named_numbers(text)
    if expected:
        assert found[:1] == expected
    else:
        assert found == []


def facts(**kw: object) -> OrderFacts:
    base: dict[str, object] = {"number": "1001", "status": "fulfilled",
                               "placed_at": NOW - timedelta(days=5)}
    base.update(kw)
    return OrderFacts(**base)  # type: ignore[arg-type]


def test_variables_and_labels() -> None:
    assert variables_for(None) == {}
    v = variables_for(facts(carrier="DHL", tracking_url="https://t.example/1", total=12.5,
                            currency="EUR"), "it")
    assert v["order_status"] == "spedito" and v["carrier"] == "DHL"
    assert v["order_date"] == "2026-11-26" and v["order_total"] == "12.50 EUR"
    assert v["tracking_number"] == "" and v["delivered_date"] == ""
    assert variables_for(facts(shipment_status="delivered"), "th")["order_status"] == \
        "จัดส่งถึงแล้ว"


@pytest.mark.parametrize(("order", "text", "lang", "problem"), [
    (facts(expected_delivery_at=NOW - timedelta(days=1)), "where is it?", "en", True),
    (facts(expected_delivery_at=NOW + timedelta(days=1)), "where is it?", "en", False),
    (facts(status="cancelled", expected_delivery_at=NOW - timedelta(days=1)), "?", "en", False),
    (facts(status="delivered"), "It says delivered but it never arrived", "en", True),
    (facts(status="delivered"), "risulta consegnato ma non l'ho ricevuto", "it", True),
    (facts(status="delivered"), "ยังไม่ได้รับของเลยค่ะ", "th", True),
    (facts(status="delivered"), "thanks, it arrived!", "en", False),
    (facts(status="fulfilled"), "it never arrived", "en", False),  # on its way, no date
    (None, "it never arrived", "en", False),
])
def test_order_problem(order: OrderFacts | None, text: str, lang: str, problem: bool) -> None:
    assert order_problem(order, text, NOW, lang) is problem


async def test_only_this_customers_orders(database_url: str) -> None:
    db = Database(database_url)
    await db.upgrade()
    try:
        async with db.write() as conn:
            ann = await find_or_create_by_contact(conn, email="ann@example.com", phone=None)
            bob = await find_or_create_by_contact(conn, email="bob@example.com", phone=None)
            await record_order(conn, ann, OrderIn("A-1001", 20.0, placed_at=NOW
                                                  - timedelta(days=9)), now=NOW)
            await record_order(conn, ann, OrderIn(
                "A-1002", 30.0, placed_at=NOW - timedelta(days=2), tracking_number="TRK2",
                carrier="GLS", tracking_url="https://gls.example/TRK2"), now=NOW)
            await record_order(conn, bob, OrderIn(
                "B-2001", 99.0, placed_at=NOW - timedelta(days=1), tracking_number="SECRET",
                carrier="UPS", tracking_url="https://ups.example/SECRET"), now=NOW)
        async with db.read() as conn:
            named = await order_context(conn, customer_id=ann, text="where is #A-1001?")
            latest = await order_variables(conn, customer_id=ann, text="where is my order?")
            # Ann names Bob's order: nothing of Bob's comes back, only her own latest
            other = await order_context(conn, customer_id=ann, text="where is order B-2001")
            unverified = await order_variables(conn, customer_id=bob, text="#B-2001",
                                               channel_verified=False)
            nobody = await order_variables(conn, customer_id=bob + 1000, text="#B-2001")
    finally:
        await db.close()
    assert named.named and named.variables["order_number"] == "A-1001"
    assert named.variables["tracking_number"] == ""
    assert latest["order_number"] == "A-1002" and latest["carrier"] == "GLS"
    assert not other.named and other.variables["order_number"] == "A-1002"
    assert "SECRET" not in str(other) and "UPS" not in str(other)
    assert unverified == {} and nobody == {}
