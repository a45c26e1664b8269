"""Answers that know the customer's order: store webhooks in, "where is my order?" out.

The order arrives as Shopify sends it (signed, over HTTP); the customer writes on WhatsApp from
the phone number the order carries, so the channel itself vouches for who they are.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import aiohttp
from sqlalchemy import select

from bot.app import Service
from bot.db.models import Escalation, Message
from channels.base import InboundMessage
from core.clock import FrozenClock
from tests.test_bot.test_store_webhooks import SHOPIFY_ORDER, post_shopify

PHONE = "+16135551111"


def shipped(number: int, phone: str, *, status: str = "in_transit",
            order_id: int = 820982911946154508) -> dict[str, Any]:
    order = copy.deepcopy(SHOPIFY_ORDER)
    order.update(id=order_id, order_number=number, name=f"#{number}",
                 fulfillment_status="fulfilled")
    order["customer"] = {**order["customer"], "phone": phone, "id": order_id + 1,
                         "email": f"c{number}@example.com"}
    order["email"] = order["contact_email"] = f"c{number}@example.com"
    order["fulfillments"] = [{
        "id": order_id + 7, "status": "success", "tracking_company": "UPS",
        "tracking_number": f"1Z{number}", "tracking_url": f"https://ups.example/{number}",
        "shipment_status": status, "created_at": "2026-11-29T09:00:00-05:00"}]
    return order


async def ask(shop: Service, phone: str, text: str, n: int) -> tuple[list[str], list[str]]:
    """A WhatsApp message from `phone`: the bot's replies and the escalation reasons so far."""
    msg = InboundMessage(channel="whatsapp", external_id=f"SM{n:032d}",
                         address=f"whatsapp:{phone}", text=text, phone=phone)
    async with shop.db.write() as conn:
        (outcome,) = await shop.pipeline.handle(conn, [msg])
    async with shop.db.read() as conn:
        replies = list((await conn.execute(select(Message.text).where(
            Message.id.in_(outcome.reply_ids)).order_by(Message.id))).scalars())
        reasons = list((await conn.execute(select(Escalation.reason))).scalars())
    return replies, reasons


async def test_where_is_my_order_tells_this_customers_order_and_no_one_elses(
        shop: Service, http: aiohttp.ClientSession) -> None:
    assert (await post_shopify(http, shipped(1001, PHONE), "orders/fulfilled", "w1"))[0] == 200
    other = shipped(1002, "+393331234567", order_id=820982911946154600)
    assert (await post_shopify(http, other, "orders/fulfilled", "w2"))[0] == 200

    (reply,), _ = await ask(shop, PHONE, "Where is my order #1001?", 1)
    assert "1001" in reply and "https://ups.example/1001" in reply and "UPS" in reply

    # The other customer names Jon's order number: they hear about their own order only.
    (reply,), _ = await ask(shop, "+393331234567", "Where is my order #1001?", 2)
    assert "1001" not in reply and "ups.example/1001" not in reply
    assert "1002" in reply


async def test_a_customer_without_orders_gets_the_plain_answer(
        shop: Service, http: aiohttp.ClientSession) -> None:
    (reply,), _ = await ask(shop, "+447700900123", "Where is my order?", 3)
    entry = shop.faq.get("order_tracking")
    assert entry is not None
    assert reply == entry.answer_for(
        "en", "en", {"store_name": shop.settings.store_name})[0]
    assert "$order" not in reply


async def test_delivered_but_never_came_goes_to_a_person(
        shop: Service, http: aiohttp.ClientSession) -> None:
    order = shipped(1001, PHONE, status="delivered")
    assert (await post_shopify(http, order, "orders/fulfilled", "w3"))[0] == 200
    _, reasons = await ask(shop, PHONE, "my order 1001 says delivered but it never arrived", 4)
    assert reasons == ["order_problem"]


async def test_an_order_update_changes_the_answer(shop: Service, http: aiohttp.ClientSession,
                                                  clock: FrozenClock) -> None:
    paid = shipped(1001, PHONE)
    paid.update(fulfillment_status=None, fulfillments=[])
    assert (await post_shopify(http, paid, "orders/paid", "w5"))[0] == 200
    (before,), _ = await ask(shop, PHONE, "Where is my order #1001?", 5)
    assert "1001" in before and "ups.example" not in before

    clock.advance(timedelta(days=1))  # the next day the order ships and they ask again
    assert (await post_shopify(http, shipped(1001, PHONE), "orders/fulfilled", "w6"))[0] == 200
    (after,), _ = await ask(shop, PHONE, "Where is my order #1001?", 6)
    assert "https://ups.example/1001" in after and after != before
