"""Hourly chores, in one process at a time (the leader's "housekeeping" lock).

Forget handled inbox rows once no platform redelivers them any more (the dedup window), blank
message bodies past the retention period, drop delivery reports whose send was never
recorded, and refresh SQLite's planner statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Protocol

from bot.db.engine import Database
from bot.deliveries import purge_parked
from bot.privacy import purge_message_bodies
from core.clock import Clock

log = logging.getLogger(__name__)
EVERY_SECONDS = 3600


class DoneRows(Protocol):
    async def purge_done(self, *, before: datetime) -> int: ...


class Housekeeping:
    def __init__(self, db: Database, inbox: DoneRows, clock: Clock, *, keep: timedelta,
                 retention_days: int | None) -> None:
        self.db = db
        self.inbox = inbox
        self.clock = clock
        self.keep = keep
        self.retention_days = retention_days

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.once()
            except Exception:
                log.exception("housekeeping failed; retrying in an hour")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=EVERY_SECONDS)

    async def once(self) -> None:
        purged = await self.inbox.purge_done(before=self.clock() - self.keep)
        if purged:
            log.info("housekeeping: %d handled inbox rows older than %s removed", purged,
                     self.keep)
        if self.retention_days is not None:
            blanked = await purge_message_bodies(
                self.db, before=self.clock() - timedelta(days=self.retention_days))
            if blanked:
                log.info("housekeeping: %d message bodies older than %d days blanked",
                         blanked, self.retention_days)
        async with self.db.write() as conn:
            dropped = await purge_parked(conn, now=self.clock())
        if dropped:
            log.info("housekeeping: %d delivery reports for sends never recorded dropped",
                     dropped)
        await self.db.optimize()
