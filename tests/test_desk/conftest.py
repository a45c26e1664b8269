"""A real service with the Slack desk on, pointed at the fake Slack Web API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Service
from bot.db.models import Escalation
from tests.conftest import eventually
from tests.fakes.slack import FakeSlack, fake_slack, slack_settings

STAFF = "CSTAFF"


#: When every desk test's service starts: a Wednesday morning, whatever today is.
DESK_START = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


class Clock:
    """The service's clock in desk tests: it starts at `DESK_START` and runs at real speed (the
    desk's own timers keep working), shifted by what the test says or pinned to `fixed`."""

    def __init__(self) -> None:
        self.offset = timedelta()
        self.fixed: datetime | None = None
        self._started = time.monotonic()

    def __call__(self) -> datetime:
        if self.fixed is not None:
            return self.fixed
        return DESK_START + timedelta(seconds=time.monotonic() - self._started) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with fake_slack() as fake:
        yield fake


@pytest.fixture
def desk_settings(make_settings: Any, slack: FakeSlack, tmp_path: Path) -> Callable[..., Any]:
    def build(routing: str | None = None, **extra: Any) -> Any:
        if routing is not None:
            path = tmp_path / "routing.yaml"
            path.write_text(routing, encoding="utf-8")
            extra["desk_routing_file"] = path
        return make_settings(**slack_settings(slack, slack_staff_channel=STAFF, **extra))
    return build


@pytest.fixture
async def start_desk(desk_settings: Callable[..., Any]
                     ) -> AsyncIterator[Callable[..., Awaitable[tuple[Service, Clock]]]]:
    """Start a service with the desk; its clock is a `Clock` the test moves."""
    services: list[Service] = []

    async def start(routing: str | None = None, **extra: Any) -> tuple[Service, Clock]:
        clock = Clock()
        service = Service(desk_settings(routing, **extra), clock=clock)
        assert service.desk is not None
        await service.start()
        services.append(service)
        return service, clock

    yield start
    for s in services:
        await s.stop()


async def card_of(service: Service, slack: FakeSlack, channel: str = STAFF,
                  index: int = 0) -> tuple[str, Any]:
    """Wait for the `index`-th escalation card in `channel` and for the service to have
    stored its ts (staff can only answer in a thread we know); returns (ts, call)."""
    def cards() -> list[Any]:
        return [c for c in slack.posts(channel) if "thread_ts" not in c.params
                and c.params.get("blocks")]
    found = await eventually(lambda: len(cards()) > index and cards(), what="escalation card")
    call = found[index]
    ts = str(call.result["ts"])

    async def stored() -> bool:
        async with service.db.read() as conn:
            return (await conn.execute(select(Escalation.__table__.c.id).where(
                Escalation.__table__.c.staff_thread == ts))).first() is not None
    await eventually(stored, what="card ts stored")
    return ts, call


async def escalation(service: Service, esc_id: int | None = None) -> Any:
    async with service.db.read() as conn:
        stmt = select(Escalation.__table__)
        stmt = stmt.where(Escalation.__table__.c.id == esc_id) if esc_id else \
            stmt.order_by(Escalation.__table__.c.id.desc())
        return (await conn.execute(stmt.limit(1))).first()


def updates(slack: FakeSlack, ts: str) -> list[str]:
    return [str(c["text"]) for c in slack.calls_to("chat.update", ts=ts)]


def blocks_text(blocks: list[dict[str, Any]]) -> str:
    """All text of a Block Kit message, to assert on what staff see."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
    walk(blocks)
    return "\n".join(out)


def action_ids(blocks: list[dict[str, Any]]) -> list[str]:
    return [e["action_id"] for b in blocks if b.get("type") == "actions"
            for e in b["elements"]]
