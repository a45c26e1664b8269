"""One contract, every channel: dedup, signatures, 429 then success, permanent errors, size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import InboxItem, Message
from tests.test_channels.contract import Harness, HarnessFactory

# Each channel appends its factory here: ("name", factory).
HARNESS_FACTORIES: list[tuple[str, HarnessFactory]] = []


def _load_factories() -> None:
    import importlib

    for module, attr in (("tests.fakes.telegram", "telegram_harness"),
                         ("tests.fakes.twilio", "whatsapp_harness"),
                         ("tests.fakes.slack", "slack_harness"),
                         ("tests.fakes.email", "email_harness")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        factory = getattr(mod, attr, None)
        if factory is not None:
            HARNESS_FACTORIES.append((factory.__name__.removesuffix("_harness"), factory))


_load_factories()
pytestmark = pytest.mark.skipif(not HARNESS_FACTORIES, reason="no channel harness available")


@pytest.fixture(params=[f for _, f in HARNESS_FACTORIES], ids=[n for n, _ in HARNESS_FACTORIES])
async def rig(request: pytest.FixtureRequest, make_settings: Any
              ) -> AsyncIterator[tuple[Harness, Service]]:
    async with request.param() as harness:
        service = Service(make_settings(**harness.settings()))
        await service.start()
        try:
            yield harness, service
        finally:
            await service.stop()


def _skip_if_na(harness: Harness, behaviour: str) -> None:
    if behaviour in harness.not_applicable:
        pytest.skip(f"{harness.name}: {harness.not_applicable[behaviour]}")


async def _queued(service: Service) -> int:
    async with service.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(InboxItem))).scalar_one())


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_redelivered_message_is_handled_once(rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "dedup")
    for _ in range(3):
        status = await harness.deliver(service, external_id="dup-1",
                                       text="How much does shipping cost?")
        assert 200 <= status < 300
    await _wait_for(lambda: _async(len(harness.sent()) >= 1))
    await asyncio.sleep(0.5)
    assert await _queued(service) == 1
    assert len(harness.sent()) == 1


@pytest.mark.parametrize("signature", ["bad", "missing"])
async def test_bad_signature_is_rejected_and_nothing_queued(
        rig: tuple[Harness, Service], signature: str) -> None:
    harness, service = rig
    _skip_if_na(harness, "signature")
    status = await harness.deliver(service, external_id="sig-1", text="hello",
                                   signature=signature)
    assert status in (401, 403)
    assert await _queued(service) == 0


async def test_rate_limited_send_is_retried_and_delivered_once(
        rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "rate_limit")
    harness.fail_next_sends("rate_limited", 1)
    assert 200 <= await harness.deliver(service, external_id="rl-1",
                                        text="How much does shipping cost?") < 300
    await _wait_for(lambda: _async(len(harness.sent()) >= 1), timeout=15)
    await asyncio.sleep(0.5)
    assert len(harness.sent()) == 1


async def test_permanent_send_error_is_recorded(rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "permanent")
    harness.fail_next_sends("permanent", 1)
    assert 200 <= await harness.deliver(service, external_id="perm-1",
                                        text="How much does shipping cost?") < 300

    async def failed() -> bool:
        async with service.db.read() as conn:
            row = (await conn.execute(select(Message.status, Message.error)
                                      .where(Message.direction == "out"))).first()
        return row is not None and row.status == "failed" and bool(row.error)

    await _wait_for(failed, timeout=15)
    assert harness.sent() == []


async def test_oversized_payload_is_rejected(rig: tuple[Harness, Service]) -> None:
    harness, service = rig
    _skip_if_na(harness, "size")
    status = await harness.deliver(service, external_id="big-1", text="hello",
                                   size=service.settings.max_body_bytes + 1024)
    assert status == 413
    assert await _queued(service) == 0


async def _async(value: bool) -> bool:
    return value
