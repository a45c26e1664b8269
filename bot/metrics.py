"""Prometheus metrics at /metrics: queue depth and age, handling latency, answers versus
escalations, sends and failures per channel.

Counters live in the process that does the work, so every process serves /metrics: the web
process on its HTTP port, worker processes on METRICS_PORT. Queue gauges are read from the
database (and Redis) when scraped, so they agree whichever process answers. Each `Service`
has its own registry, so tests can run several in one interpreter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from bot.appkeys import SERVICE
from bot.db.models import OutboxItem
from channels.base import Channel, OutboundMessage, SendResult
from core.errors import (
    ChannelAuthError,
    ChannelPermanentError,
    ChannelRateLimited,
    ChannelTemporaryError,
)

if TYPE_CHECKING:
    from bot.app import Service
    from bot.pipeline import Outcome
    from bot.queue import QueuedItem

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handled = Counter("storedesk_messages_handled", "Inbound messages handled",
                               ["channel", "decision"], registry=r)
        self.latency = Histogram("storedesk_handling_seconds",
                                 "From receipt of a message to its committed handling",
                                 ["channel"], buckets=LATENCY_BUCKETS, registry=r)
        self.sends = Counter("storedesk_sends", "Send attempts by channel and result",
                             ["channel", "result"], registry=r)
        self.queue_depth = Gauge("storedesk_queue_depth", "Rows per queue and status",
                                 ["queue", "status"], registry=r)
        self.queue_age = Gauge("storedesk_queue_oldest_pending_seconds",
                               "Age of the oldest pending inbound message", registry=r)
        self.stream = Gauge("storedesk_redis_stream", "Redis stream length, unacknowledged "
                            "entries and dead letters", ["what"], registry=r)

    def handled_total(self) -> int:
        """Messages this process handled, read from the Prometheus counter."""
        return int(sum(s.value for m in self.handled.collect() for s in m.samples
                       if s.name.endswith("_total")))

    def on_outcome(self, item: QueuedItem, outcome: Outcome) -> None:
        channel = item.message.channel
        self.handled.labels(channel, outcome.decision).inc()
        self.latency.labels(channel).observe(
            max(0.0, time.time() - item.message.timestamp.timestamp()))

    def instrument(self, channels: Mapping[str, Channel]) -> dict[str, Channel]:
        """The channels as the outbox should see them: every send is counted."""
        return {name: _CountedChannel(ch, self) for name, ch in channels.items()}

    async def refresh(self, service: Service) -> None:
        stats = await service.inbox.stats()
        for status in ("pending", "done", "dead"):
            self.queue_depth.labels("inbox", status).set(stats.get(status) or 0)
        self.queue_age.set(stats.get("oldest_pending_age_s") or 0.0)
        t = OutboxItem.__table__.c
        async with service.db.read() as conn:
            outbox: dict[str, int] = {r[0]: r[1] for r in (await conn.execute(
                select(t.status, func.count()).group_by(t.status))).all()}
        for status in ("pending", "sent", "failed"):
            self.queue_depth.labels("outbox", status).set(outbox.get(status, 0))
        redis: dict[str, Any] | None = stats.get("redis")
        if redis:
            self.stream.labels("length").set(redis["length"])
            self.stream.labels("pending").set(redis["pending"])
            self.stream.labels("dead_letter").set(redis["dead_letter"]["length"])


async def metrics_view(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    await service.metrics.refresh(service)
    body = generate_latest(service.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _CountedChannel(Channel):
    """Wraps a channel for the outbox; everything but `send` goes to the real one."""

    name = "counted"

    def __init__(self, inner: Channel, metrics: Metrics) -> None:
        super().__init__(inner.intake)
        self.inner = inner
        self.metrics = metrics

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def send(self, message: OutboundMessage) -> SendResult:
        result = "error"
        try:
            sent = await self.inner.send(message)
            result = "ok"
            return sent
        except ChannelRateLimited:
            result = "rate_limited"
            raise
        except ChannelTemporaryError:
            result = "temporary"
            raise
        except ChannelPermanentError:
            result = "permanent"
            raise
        except ChannelAuthError:
            result = "auth"
            raise
        finally:
            self.metrics.sends.labels(message.channel, result).inc()
