"""Shopify and WooCommerce webhooks over HTTP against the real service: the platforms'
documented payloads, signed as they sign them (base64 HMAC-SHA256 of the raw body)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Checkout, Customer, Order, StageChange, StoreEvent
from bot.order_context import order_variables
from bot.settings import Settings
from core.clock import FrozenClock

SHOPIFY_SECRET = "shpss_test_0123456789abcdef"
WOO_SECRET = "wc-secret-0123456789"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# Shaped like Shopify's REST Order resource as its orders/* webhooks send it (trimmed).
SHOPIFY_ORDER: dict[str, Any] = {
    "id": 820982911946154508,
    "admin_graphql_api_id": "gid://shopify/Order/820982911946154508",
    "email": "Jon.Snow@Example.com",
    "contact_email": "jon.snow@example.com",
    "created_at": "2026-11-28T10:00:00-05:00",
    "updated_at": "2026-11-28T10:00:05-05:00",
    "processed_at": "2026-11-28T10:00:00-05:00",
    "number": 1,
    "order_number": 1001,
    "name": "#1001",
    "phone": None,
    "currency": "USD",
    "total_price": "59.90",
    "subtotal_price": "49.90",
    "total_tax": "0.00",
    "financial_status": "paid",
    "fulfillment_status": None,
    "cancelled_at": None,
    "cancel_reason": None,
    "customer": {"id": 115310627314723954, "email": "jon.snow@example.com",
                 "first_name": "Jon", "last_name": "Snow", "phone": "+16135551111"},
    "billing_address": {"first_name": "Jon", "last_name": "Snow", "phone": "555-625-1199"},
    "shipping_address": {"first_name": "Jon", "last_name": "Snow", "city": "Ottawa"},
    "line_items": [{"id": 866550311766439020, "title": "Linen shirt", "name": "Linen shirt - M",
                    "quantity": 1, "price": "49.90", "sku": "LS-M"}],
    "fulfillments": [],
    "refunds": [],
}

# WooCommerce REST API v3 order, as order.created / order.updated deliver it (trimmed).
WOO_ORDER: dict[str, Any] = {
    "id": 727, "parent_id": 0, "number": "727", "order_key": "wc_order_58d2d042d1d",
    "created_via": "checkout", "status": "processing", "currency": "EUR",
    "date_created": "2026-11-27T16:28:02", "date_created_gmt": "2026-11-27T15:28:02",
    "date_modified": "2026-11-27T16:30:00", "date_modified_gmt": "2026-11-27T15:30:00",
    "date_paid_gmt": "2026-11-27T15:29:00", "total": "29.35", "customer_id": 0,
    "billing": {"first_name": "Maria", "last_name": "Rossi", "email": "maria@example.it",
                "phone": "+39 333 123 4567"},
    "shipping": {"first_name": "Maria", "last_name": "Rossi", "city": "Roma"},
    "line_items": [{"id": 315, "name": "Woo Single #1", "product_id": 93, "quantity": 2,
                    "total": "6.00", "sku": "", "price": 3}],
    "meta_data": [],
    "refunds": [],
}


def shopify_headers(body: bytes, topic: str, webhook_id: str, *,
                    secret: str = SHOPIFY_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"Content-Type": "application/json", "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
            "X-Shopify-Shop-Domain": "demo.myshopify.com", "X-Shopify-API-Version": "2025-10",
            "X-Shopify-Webhook-Id": webhook_id}


def woo_headers(body: bytes, topic: str, *, secret: str = WOO_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    resource, _, event = topic.partition(".")
    return {"Content-Type": "application/json", "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource, "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": base64.b64encode(digest).decode(),
            "X-WC-Webhook-Source": "https://shop.example/", "X-WC-Webhook-ID": "12",
            "X-WC-Webhook-Delivery-ID": hashlib.md5(body).hexdigest()}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
async def shop(make_settings: Any, database_url: str,
               clock: FrozenClock) -> AsyncIterator[Service]:
    settings: Settings = make_settings(shopify_webhook_secret=SHOPIFY_SECRET,
                                       woocommerce_webhook_secret=WOO_SECRET)
    svc = Service(settings, clock=clock)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def http(shop: Service) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as session:
        yield session


async def post_shopify(http: aiohttp.ClientSession, payload: Any, topic: str,
                       webhook_id: str, **kw: Any) -> tuple[int, Any]:
    body = json.dumps(payload).encode()
    headers = shopify_headers(body, topic, webhook_id, **kw)
    async with http.post("/webhooks/shopify", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def post_woo(http: aiohttp.ClientSession, payload: Any, topic: str,
                   **kw: Any) -> tuple[int, Any]:
    body = json.dumps(payload).encode()
    async with http.post("/webhooks/woocommerce", data=body,
                         headers=woo_headers(body, topic, **kw)) as resp:
        return resp.status, await resp.json()


async def counts(shop: Service) -> dict[str, int]:
    out = {}
    async with shop.db.read() as conn:
        for name, model in (("orders", Order), ("events", StoreEvent), ("customers", Customer),
                            ("changes", StageChange), ("checkouts", Checkout)):
            out[name] = int((await conn.execute(
                select(func.count()).select_from(model.__table__))).scalar_one())
    return out


async def stage_history(shop: Service) -> list[tuple[str | None, str]]:
    async with shop.db.read() as conn:
        return [tuple(r) for r in (await conn.execute(  # type: ignore[misc]
            select(StageChange.from_stage, StageChange.to_stage)
            .order_by(StageChange.id))).all()]


async def test_shopify_order_lifecycle(http: aiohttp.ClientSession, shop: Service) -> None:
    status, result = await post_shopify(http, SHOPIFY_ORDER, "orders/create", "wh-1")
    assert status == 200 and result["status"] == "applied", result
    async with shop.db.read() as conn:
        customer = (await conn.execute(select(Customer.email, Customer.phone, Customer.stage,
                                              Customer.orders_count))).one()
        order = (await conn.execute(select(Order.number, Order.status, Order.total,
                                           Order.currency, Order.line_items))).one()
    assert customer == ("jon.snow@example.com", "+16135551111", "purchase", 1)
    assert order.number == "1001" and order.status == "paid" and order.total == 59.9
    assert order.currency == "USD" and order.line_items[0]["name"] == "Linen shirt - M"

    # Shopify retries with the same webhook id: applied once
    status, result = await post_shopify(http, SHOPIFY_ORDER, "orders/create", "wh-1")
    assert (status, result["status"]) == (200, "duplicate")
    assert await stage_history(shop) == [(None, "purchase")]

    fulfilled = copy.deepcopy(SHOPIFY_ORDER)
    fulfilled.update(fulfillment_status="fulfilled", updated_at="2026-11-29T09:00:00-05:00")
    fulfilled["fulfillments"] = [{
        "id": 255858046, "order_id": SHOPIFY_ORDER["id"], "status": "success",
        "created_at": "2026-11-29T09:00:00-05:00", "updated_at": "2026-11-29T09:00:00-05:00",
        "tracking_company": "UPS", "tracking_number": "1Z2345",
        "tracking_numbers": ["1Z2345"],
        "tracking_url": "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1Z2345",
        "tracking_urls": ["https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1Z2345"],
        "shipment_status": "in_transit", "line_items": []}]
    async with shop.db.read() as conn:
        cid = (await conn.execute(select(Customer.id))).scalar_one()
        before = await order_variables(conn, customer_id=cid, text="where is my order #1001?")
    assert before["order_status"] == "paid" and before["tracking_url"] == ""
    status, _ = await post_shopify(http, fulfilled, "orders/fulfilled", "wh-2")
    assert status == 200
    async with shop.db.read() as conn:
        after = await order_variables(conn, customer_id=cid, text="where is my order #1001?")
    assert after["order_status"] == "shipped" and after["carrier"] == "UPS"
    assert after["tracking_number"] == "1Z2345" and after["tracking_url"].startswith(
        "https://www.ups.com/")
    # an older orders/updated that arrives late does not undo the fulfilment
    status, _ = await post_shopify(http, SHOPIFY_ORDER, "orders/updated", "wh-3")
    assert status == 200
    async with shop.db.read() as conn:
        still = await order_variables(conn, customer_id=cid, text="#1001")
    assert still["tracking_number"] == "1Z2345"

    cancelled = copy.deepcopy(fulfilled)
    cancelled.update(cancelled_at="2026-11-30T08:00:00-05:00", cancel_reason="customer",
                     financial_status="voided", updated_at="2026-11-30T08:00:00-05:00")
    status, result = await post_shopify(http, cancelled, "orders/cancelled", "wh-4")
    assert status == 200 and result["stage_changes"][0]["to"] == "at_risk"
    async with shop.db.read() as conn:
        assert (await conn.execute(select(Customer.orders_count))).scalar_one() == 0
    assert await stage_history(shop) == [(None, "purchase"), ("purchase", "at_risk")]


async def test_bad_or_missing_signature_stores_nothing(http: aiohttp.ClientSession,
                                                       shop: Service) -> None:
    body = json.dumps(SHOPIFY_ORDER).encode()
    wrong = shopify_headers(body, "orders/create", "wh-9", secret="not-the-secret")
    missing = {k: v for k, v in wrong.items() if k != "X-Shopify-Hmac-Sha256"}
    tampered = shopify_headers(body, "orders/create", "wh-9")
    for headers, data in ((wrong, body), (missing, body),
                          (tampered, body.replace(b"59.90", b"0.01"))):
        async with http.post("/webhooks/shopify", data=data, headers=headers) as resp:
            assert resp.status == 401, await resp.text()
    woo = json.dumps(WOO_ORDER).encode()
    for headers in (woo_headers(woo, "order.created", secret="nope"),
                    {"X-WC-Webhook-Topic": "order.created"}):
        async with http.post("/webhooks/woocommerce", data=woo, headers=headers) as resp:
            assert resp.status == 401
    # signed but not JSON, or JSON without an id: refused, nothing kept
    junk = b"{not json"
    async with http.post("/webhooks/shopify", data=junk,
                         headers=shopify_headers(junk, "orders/create", "wh-10")) as resp:
        assert resp.status == 400
    status, _ = await post_shopify(http, {"email": "x@example.com"}, "orders/create", "wh-11")
    assert status == 400
    status, _ = await post_shopify(http, {**SHOPIFY_ORDER, "total_price": "lots"},
                                   "orders/create", "wh-12")
    assert status == 400
    assert await counts(shop) == {"orders": 0, "events": 0, "customers": 0, "changes": 0,
                                  "checkouts": 0}


async def test_refund_and_checkout(http: aiohttp.ClientSession, shop: Service) -> None:
    checkout = {
        "id": 450789469, "token": "2a1ace52255252df566af0faaedfbfa7",
        "cart_token": "68778783ad298f1c80c3bafcddeea02f", "email": "bob.norman@example.com",
        "created_at": "2026-11-30T10:00:00-05:00", "updated_at": "2026-11-30T10:01:00-05:00",
        "completed_at": None, "currency": "USD", "total_price": "398.00",
        "abandoned_checkout_url": "https://demo.myshopify.com/690933842/checkouts/"
                                  "2a1ace52255252df566af0faaedfbfa7/recover?key=abc",
        "line_items": [{"title": "IPod Nano - 8GB", "quantity": 1, "price": "199.00"}],
        "customer": {"id": 207119551, "email": "bob.norman@example.com",
                     "first_name": "Bob", "last_name": "Norman"}}
    status, result = await post_shopify(http, checkout, "checkouts/create", "wh-c1")
    assert status == 200 and result["stage_changes"] == [{"from": None, "to": "purchase"}]
    status, result = await post_shopify(http, {**checkout, "updated_at": "2026-11-30T11:00:00Z"},
                                        "checkouts/update", "wh-c2")
    assert status == 200 and result["stage_changes"] == []
    async with shop.db.read() as conn:
        url = (await conn.execute(select(Checkout.abandoned_checkout_url))).scalar_one()
    assert url.endswith("/recover?key=abc")

    order = {**SHOPIFY_ORDER, "email": "bob.norman@example.com", "contact_email": None,
             "customer": checkout["customer"], "total_price": "398.00"}
    status, result = await post_shopify(http, order, "orders/paid", "wh-c3")
    assert status == 200 and result["stage_changes"] == []  # already at purchase
    refund = {"id": 509562969, "order_id": SHOPIFY_ORDER["id"],
              "created_at": "2026-12-01T10:00:00-05:00", "note": "it broke", "restock": True,
              "refund_line_items": [],
              "transactions": [{"id": 179259969, "order_id": SHOPIFY_ORDER["id"],
                                "kind": "refund", "status": "success", "amount": "398.00",
                                "currency": "USD"}]}
    status, result = await post_shopify(http, refund, "refunds/create", "wh-c4")
    assert status == 200 and result["stage_changes"] == [{"from": "purchase", "to": "at_risk"}]
    async with shop.db.read() as conn:
        row = (await conn.execute(select(Order.status, Order.financial_status))).one()
    assert tuple(row) == ("refunded", "refunded")


async def test_woocommerce_ping_order_and_redelivery(http: aiohttp.ClientSession,
                                                     shop: Service, clock: FrozenClock) -> None:
    async with http.post("/webhooks/woocommerce", data=b"webhook_id=12",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        assert resp.status == 200
    assert (await counts(shop))["events"] == 0

    status, result = await post_woo(http, WOO_ORDER, "order.created")
    assert status == 200 and result["stage_changes"][0]["to"] == "purchase", result
    status, result = await post_woo(http, WOO_ORDER, "order.created")
    assert (status, result["status"]) == (200, "duplicate")

    shipped = copy.deepcopy(WOO_ORDER)
    shipped.update(status="completed", date_modified_gmt="2026-11-28T09:00:00",
                   date_completed_gmt="2026-11-28T09:00:00")
    shipped["meta_data"] = [{"id": 1, "key": "_wc_shipment_tracking_items", "value": [
        {"tracking_provider": "Poste Italiane", "custom_tracking_provider": "",
         "tracking_number": "RR123456789IT", "custom_tracking_link": "", "date_shipped":
         "1764288000", "tracking_id": "a1"}]}]
    status, _ = await post_woo(http, shipped, "order.updated")
    assert status == 200
    async with shop.db.read() as conn:
        cid = (await conn.execute(select(Customer.id).where(
            Customer.email == "maria@example.it"))).scalar_one()
        phone = (await conn.execute(select(Customer.phone).where(Customer.id == cid))).scalar()
        found = await order_variables(conn, customer_id=cid, text="dov'è l'ordine 727?",
                                      lang="it")
    assert phone == "+393331234567"
    assert found["order_number"] == "727" and found["carrier"] == "Poste Italiane"
    assert found["tracking_number"] == "RR123456789IT" and found["order_status"] == "spedito"

    second = {**WOO_ORDER, "id": 731, "number": "731",
              "date_created_gmt": "2026-11-30T10:00:00",
              "date_modified_gmt": "2026-11-30T10:00:00"}
    clock.advance(timedelta(days=1))
    status, result = await post_woo(http, second, "order.created")
    assert result["stage_changes"][0] == {"conversation_id": None, "from": "purchase",
                                          "to": "retention",
                                          "reason": "repeat order (order 731)"}
    status, result = await post_woo(http, {"id": 25, "email": "luca@example.it",
                                           "first_name": "Luca", "billing": {}},
                                    "customer.created")
    assert status == 200 and result["stage_changes"] == [{"from": None, "to": "awareness"}]


async def test_webhooks_are_off_without_their_secret(client: aiohttp.ClientSession) -> None:
    body = json.dumps(SHOPIFY_ORDER).encode()
    async with client.post("/webhooks/shopify", data=body,
                           headers=shopify_headers(body, "orders/create", "w")) as resp:
        assert resp.status == 404
