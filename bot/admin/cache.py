"""The dashboard's figures, computed live or kept fresh in the background (`MetricsCache`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.admin import queries as mq
from bot.admin.params import PERIODS, parse_period
from core.errors import InputError

if TYPE_CHECKING:
    from bot.app import Service

log = logging.getLogger(__name__)


Query = Mapping[str, str]
Compute = Callable[["Service", Query], Awaitable[dict[str, Any]]]


async def compute_stages(service: Service, query: Query) -> dict[str, Any]:
    async with service.db.analytics() as conn:
        return await mq.stages_over_time(conn, parse_period(query))


async def compute_flow(service: Service, query: Query) -> dict[str, Any]:
    async with service.db.analytics() as conn:
        return await mq.stage_flow(conn, parse_period(query))


async def compute_performance(service: Service, query: Query) -> dict[str, Any]:
    by = query.get("by", "stage")
    if by not in mq.DIMENSIONS:
        raise InputError(f"by must be one of {', '.join(mq.DIMENSIONS)}")
    async with service.db.analytics() as conn:
        return await mq.performance(conn, parse_period(query), by)


async def compute_faq(service: Service, query: Query) -> dict[str, Any]:
    from faq.suggest import group_questions, render_yaml

    period = parse_period(query)
    async with service.db.analytics() as conn:
        hits = await mq.faq_hits(conn, period)
        questions = await mq.unanswered_questions(conn, period)
    groups = await asyncio.to_thread(group_questions, questions)  # CPU work off the loop
    entries: list[dict[str, Any]] = [
        {"id": e.id, "stage": e.stage, "question": e.questions[0] if e.questions else "",
         "escalate": e.escalate, "hits": hits.get(e.id, 0)} for e in service.faq.entries]
    known = {e["id"] for e in entries}
    entries += [{"id": faq_id, "stage": None, "question": "", "escalate": False, "hits": n,
                 "removed": True} for faq_id, n in hits.items() if faq_id not in known]
    entries.sort(key=lambda e: (-e["hits"], e["id"]))
    return {"period": period.as_dict(), "entries": entries,
            "never_hit": [e["id"] for e in entries if e["hits"] == 0 and not e["escalate"]],
            "answered": sum(hits.values()),
            "unanswered": {"questions": len(questions), "groups": [
                {"representative": g.representative, "count": g.count,
                 "questions": g.questions[:8]} for g in groups]},
            "suggestions_yaml": render_yaml(groups) if groups else ""}


COMPUTE: dict[str, Compute] = {"stages": compute_stages, "flow": compute_flow,
                               "performance": compute_performance, "faq": compute_faq}
CacheKey = tuple[str, str, str]
IDLE_SECONDS = 15 * 60


class MetricsCache:
    """Answers for the preset periods (today, 7d, 30d, 90d), refreshed in the background.

    Charts are computed from day rollups plus live SQL (tens to a few hundred milliseconds at a
    million messages, see docs/dashboard.md); an admin opening the page several times a minute
    does not need them recomputed each time. So every chart asked for once
    is served from memory and recomputed by one background task every `ttl` seconds (less often
    if refreshing would take more than a quarter of the time) until nobody asked for it for
    15 minutes; `as_of` in the answer says when it was computed. Custom periods are always
    computed live, and ttl 0 turns all this off.
    """

    def __init__(self, service: Service, ttl: float) -> None:
        self.service = service
        self.ttl = ttl
        self.entries: dict[CacheKey, dict[str, Any]] = {}
        self._asked: dict[CacheKey, float] = {}  # when a request last wanted it
        self._locks: dict[CacheKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def key(name: str, query: Query) -> CacheKey | None:
        extra = set(query) - {"period", "by", "format"}
        period = query.get("period", "7d")
        if extra or period not in PERIODS or query.get("by", "stage") not in mq.DIMENSIONS:
            return None  # computed live (and refused there if wrong)
        return name, period, query.get("by", "stage") if name == "performance" else ""

    async def get(self, name: str, query: Query) -> dict[str, Any]:
        key = self.key(name, query) if self.ttl > 0 else None
        if key is None:
            return await _computed(self.service, name, query)
        if self._task is None:
            self._task = asyncio.create_task(self._refresh(), name="dashboard-cache")
        self._asked[key] = time.monotonic()
        hit = self.entries.get(key)
        if hit is not None:
            return hit
        async with self._locks[key]:  # the first request computes, the others wait for it
            if key not in self.entries:
                self.entries[key] = await _computed(self.service, name, query)
            return self.entries[key]

    async def _refresh(self) -> None:
        spent = 0.0
        while True:
            await asyncio.sleep(max(self.ttl, 3 * spent))
            started = time.monotonic()
            for key in list(self.entries):
                if started - self._asked.get(key, 0.0) > IDLE_SECONDS:
                    del self.entries[key]  # nobody looked for a while: stop refreshing it
                    continue
                name, period, by = key
                query = {"period": period, **({"by": by} if by else {})}
                try:
                    async with self._locks[key]:
                        self.entries[key] = await _computed(self.service, name, query)
                except Exception:  # keep serving the last answer; try again next round
                    log.exception("dashboard refresh of %s %s failed", name, period)
            spent = time.monotonic() - started

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _computed(service: Service, name: str, query: Query) -> dict[str, Any]:
    data = await COMPUTE[name](service, query)
    data["as_of"] = datetime.now(UTC).isoformat()
    return data
