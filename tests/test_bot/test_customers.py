"""One customer across channels: identities link by email or phone, and merge."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from bot.customers import resolve_customer
from bot.db.engine import Database
from bot.db.models import Conversation, Customer, Identity, Order
from core.contacts import normalise_phone


async def _db(database_url: str) -> Database:
    """Runs on SQLite and PostgreSQL (the `database_url` fixture is parametrized)."""
    db = Database(database_url)
    await db.upgrade()
    return db


async def test_new_address_with_known_email_joins_that_customer(database_url: str) -> None:
    db = await _db(database_url)
    async with db.write() as conn:
        a, _ = await resolve_customer(conn, channel="email", address="ann@example.com",
                                      display_name="Ann", email="Ann@Example.com", phone=None)
        b, _ = await resolve_customer(conn, channel="webchat", address="visitor-1",
                                      display_name=None, email="ann@example.com", phone=None)
        c, _ = await resolve_customer(conn, channel="webchat", address="visitor-2",
                                      display_name=None, email=None, phone=None)
    assert a == b != c
    await db.close()


async def test_phone_links_whatsapp_and_email_identities(database_url: str) -> None:
    db = await _db(database_url)
    async with db.write() as conn:
        wa, _ = await resolve_customer(conn, channel="whatsapp", address="+393331234567",
                                       display_name="Ann", email=None,
                                       phone="whatsapp:+39 333 123 4567")
        mail, _ = await resolve_customer(conn, channel="email", address="ann@example.com",
                                         display_name=None, email="ann@example.com",
                                         phone="+393331234567")
    assert wa == mail
    async with db.read() as conn:
        customer = (await conn.execute(select(Customer.email, Customer.phone)
                                       .where(Customer.id == wa))).one()
        identities = (await conn.execute(select(Identity.channel)
                                         .where(Identity.customer_id == wa))).scalars().all()
    assert customer == ("ann@example.com", "+393331234567")
    assert sorted(identities) == ["email", "whatsapp"]
    await db.close()


async def test_known_address_bringing_anothers_email_merges_the_two(database_url: str) -> None:
    db = await _db(database_url)
    async with db.write() as conn:
        first, _ = await resolve_customer(conn, channel="email", address="bob@example.com",
                                          display_name="Bob", email="bob@example.com", phone=None)
        await conn.execute(Order.__table__.insert().values(
            customer_id=first, external_id="o1", total=10.0, currency="EUR", status="placed",
            placed_at=datetime.now(UTC)))
        second, ident = await resolve_customer(conn, channel="telegram", address="777",
                                               display_name="Bobby", email=None, phone=None)
        await conn.execute(Conversation.__table__.insert().values(
            customer_id=second, identity_id=ident, channel="telegram", address="777",
            status="bot"))
        assert first != second
        merged, _ = await resolve_customer(conn, channel="telegram", address="777",
                                           display_name="Bobby", email="bob@example.com",
                                           phone=None)
    assert merged == first
    async with db.read() as conn:
        conv_owner = (await conn.execute(select(Conversation.customer_id))).scalar_one()
        pointer = (await conn.execute(select(Customer.merged_into)
                                      .where(Customer.id == second))).scalar_one()
        orders = (await conn.execute(select(Customer.orders_count)
                                     .where(Customer.id == first))).scalar_one()
    assert conv_owner == first and pointer == first and orders == 1
    await db.close()


def test_phone_normalisation() -> None:
    assert normalise_phone("whatsapp:+39 333-123 4567") == "+393331234567"
    assert normalise_phone("12") is None
    assert normalise_phone(None) is None
