"""What the playbook tests share: a service started on a playbooks file of the test's own,
with a frozen clock, and small readers of the jobs and messages it wrote."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import Service
from bot.db.models import Message, PlaybookJob
from core.clock import FrozenClock
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, PUBLIC_URL, FakeTwilio
from tests.test_bot.test_store_webhooks import SHOPIFY_ORDER, SHOPIFY_SECRET, shopify_headers

#: a Monday, 10:00 UTC: no quiet hours unless a test sets them
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PHONE = "+16135551111"  # the customer's phone in SHOPIFY_ORDER

Start = Callable[..., Awaitable[Service]]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
async def start_shop(make_settings: Any, tmp_path: Path,
                     clock: FrozenClock) -> AsyncIterator[Start]:
    """start_shop(yaml, **settings): a service with Shopify webhooks on, those playbooks and
    a fast tick; `database_url` may name another service's database (a restart)."""
    services: list[Service] = []

    async def run(playbooks: str, **values: Any) -> Service:
        path = tmp_path / "playbooks.yaml"
        path.write_text(playbooks, encoding="utf-8")
        settings = make_settings(shopify_webhook_secret=SHOPIFY_SECRET, playbooks_file=path,
                                 playbook_tick_seconds=0.05, **values)
        service = Service(settings, clock=clock)
        await service.start()
        services.append(service)
        return service

    yield run
    for service in services:
        if not service.stop_event.is_set():
            await service.stop()


def twilio_settings(fake: FakeTwilio) -> dict[str, Any]:
    return {"twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
            "twilio_whatsapp_from": OUR_NUMBER, "twilio_api_base": fake.url,
            "public_url": PUBLIC_URL}


def order(status: str = "paid", *, customer: dict[str, Any] | None = None,
          **extra: Any) -> dict[str, Any]:
    """SHOPIFY_ORDER as orders/create (paid) or orders/updated once delivered."""
    data = copy.deepcopy(SHOPIFY_ORDER)
    if customer is not None:
        data["customer"].update(customer)
    if status == "delivered":
        data["fulfillment_status"] = "fulfilled"
        data["fulfillments"] = [{"id": 1, "status": "success", "shipment_status": "delivered",
                                 "tracking_company": "UPS", "tracking_number": "1Z999",
                                 "updated_at": "2026-11-30T09:00:00-05:00"}]
        data["updated_at"] = "2026-11-30T09:00:05-05:00"
    data.update(extra)
    return data


async def post_order(service: Service, payload: dict[str, Any], topic: str,
                     webhook_id: str) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{service.port}/webhooks/shopify", data=body,
            headers=shopify_headers(body, topic, webhook_id)) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def jobs(service: Service, playbook: str | None = None) -> list[Any]:
    t = PlaybookJob.__table__
    stmt = select(t).order_by(t.c.playbook, t.c.step, t.c.id)
    if playbook is not None:
        stmt = stmt.where(t.c.playbook == playbook)
    async with service.db.read() as conn:
        return list((await conn.execute(stmt)).all())


async def playbook_messages(service: Service) -> list[Any]:
    t = Message.__table__
    async with service.db.read() as conn:
        return list((await conn.execute(select(t).where(t.c.author == "playbook")
                                        .order_by(t.c.id))).all())


def states(rows: list[Any]) -> list[tuple[str, int, str, str | None]]:
    return [(r.playbook, r.step, r.state, r.reason) for r in rows]
