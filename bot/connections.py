"""Idle sockets cannot take the HTTP side down.

aiohttp waits forever for the first request line of a connection, and keeps an idle
keep-alive connection for an hour, so a thousand silent sockets use up the process's open
files and the web chat stops accepting anyone. The guard closes connections that have not
sent a whole request head within `header_timeout` and, above `max_connections`, the oldest of
those first; aiohttp's own `keepalive_timeout` ends idle connections after a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
Handler = Any  # aiohttp.web_protocol.RequestHandler (no public type)
SERVED: web.AppKey[set[Any]] = web.AppKey("served")


def note_request(request: web.Request) -> None:
    """Mark the connection as one that sent a request (so the guard leaves it alone)."""
    if request.protocol is not None:
        request.app[SERVED].add(request.protocol)


class ConnectionGuard:
    def __init__(self, server: web.Server, served: set[Any], *,
                 header_timeout: float, max_connections: int) -> None:
        self.server = server
        self.served = served
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._first_seen: dict[Any, float] = {}
        self.closed = 0

    async def run(self, stop: asyncio.Event) -> None:
        interval = min(max(self.header_timeout / 4, 0.05), 1.0)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> int:
        connections = self.server.connections
        alive = set(connections)
        self.served &= alive  # aiohttp's handlers have no weak references: prune by hand
        for gone in [h for h in self._first_seen if h not in alive]:
            del self._first_seen[gone]
        for handler in connections:
            self._first_seen.setdefault(handler, now)
        silent = sorted((h for h in connections if h not in self.served),
                        key=lambda h: self._first_seen.get(h, now))
        late = [h for h in silent if now - self._first_seen.get(h, now) >= self.header_timeout]
        over = len(connections) - self.max_connections
        doomed = {id(h): h for h in late}
        for h in silent[:max(over, 0)]:
            doomed[id(h)] = h
        for handler in doomed.values():
            handler.force_close()
        if doomed:
            self.closed += len(doomed)
            log.warning("closed %d connection(s) that sent no request in time (%d open)",
                        len(doomed), len(connections) - len(doomed))
        return len(doomed)


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one (many systems start at 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
    return soft
