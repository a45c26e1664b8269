"""Fixtures shared by the bot tests: the store service (`shop`) with its webhook secrets and
frozen `clock`, `http`, a client of it, and `start`, which starts services with settings of
the test's choosing (stopped after the test)."""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bot.app import Service
from tests.test_bot.test_store_webhooks import clock, http, shop

__all__ = ["clock", "http", "shop", "start"]


@pytest.fixture
async def start(make_settings: Any) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    services: list[Service] = []

    async def run(**values: Any) -> Service:
        service = Service(make_settings(**values))
        await service.start()
        services.append(service)
        return service

    yield run
    for service in services:
        await service.stop()
