"""Opening hours in a time zone: is it open now, and when does it open next. The store's
business hours (the web chat's welcome) and each staff team's hours (the desk) are these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class OpeningHours:
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    #: weekday (0 = Monday) -> opening windows; None = always open
    hours: Mapping[int, tuple[tuple[time, time], ...]] | None = None

    def is_open(self, now: datetime) -> bool:
        return self.next_open(now) <= now

    def next_open(self, now: datetime) -> datetime:
        """`now` if open, else the start of the next opening window (UTC)."""
        if self.hours is None:
            return now
        local = now.astimezone(self.tz)
        for offset in range(8):
            day = local.date() + timedelta(days=offset)
            for start, end in self.hours.get(day.weekday(), ()):
                opens = datetime.combine(day, start, self.tz)
                closes = (datetime.combine(day + timedelta(days=1), time(0), self.tz)
                          if end == time(0) else datetime.combine(day, end, self.tz))
                if opens <= local < closes:
                    return now
                if opens > local:
                    return opens.astimezone(UTC)
        return now  # no hours at all in a week: treat as always open rather than never
