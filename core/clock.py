"""The service's notion of "now", injected from the composition root.

Lifecycle rules count days since a customer's last order, the schedule decides when a customer
has been silent too long, and webhooks stamp what they store: all of them ask a `Clock`, so
tests set the date instead of depending on today's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real time, aware UTC."""
    return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to (tests, replays)."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> datetime:
        self.current += delta
        return self.current

    def set(self, when: datetime) -> None:
        self.current = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
