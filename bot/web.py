"""The service's HTTP app: error handling, probes, and every route put together.

Channels add their own routes (webhooks, the web chat); the admin API and the dashboard are
`bot.admin`'s, and everything under /api that is not a channel's is behind its one sign-in
(`bot.admin.auth.require_admin`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from bot.admin import api as admin_api
from bot.admin import dashboard
from bot.appkeys import SERVICE
from bot.connections import SERVED, note_request
from bot.metrics import metrics_view
from bot.openapi import openapi_view
from bot.playbook_web import add_routes as add_playbook_routes
from bot.proxies import Network, forwarded
from bot.store_webhooks import StoreWebhooks
from core.errors import InputError, QueueError, RateLimited

if TYPE_CHECKING:
    from bot.app import Service

__all__ = ["SERVICE", "build_http_app", "edge_middleware", "healthz", "readyz"]
log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def edge_middleware(networks: Sequence[Network]) -> Any:
    """What every request goes through, in one layer: its connection marked as one that
    sent a request, the client's own address behind a trusted proxy, and the error tree."""
    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        note_request(request)
        return await errors_middleware(forwarded(request, networks), handler)
    return edge


async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal is a 4xx with a clear JSON message and one log line; nothing crashes."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # no platform compresses what it posts to us
        log.warning("%s %s -> 415: Content-Encoding %r refused", request.method, request.path,
                    encoding[:40])
        return web.json_response({"error": "send the body without Content-Encoding"},
                                 status=415, headers={"Connection": "close"})
    try:
        return await handler(request)
    except InputError as exc:
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return web.json_response({"error": str(exc)}, status=exc.status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        log.warning("%s %s -> 413: body over the size limit", request.method, request.path)
        return web.json_response({"error": "request body too large"}, status=413)
    except QueueError as exc:  # the database cannot take it now: the platform should retry
        log.error("%s %s -> 503: %s", request.method, request.path,
                  str(exc).splitlines()[0][:300])
        return web.json_response({"error": "temporarily unavailable, retry"}, status=503,
                                 headers={"Retry-After": "5"})
    except (HttpProcessingError, RequestPayloadError) as exc:  # aiohttp could not read it
        log.warning("%s %s -> 400: unreadable request (%s)", request.method, request.path,
                    type(exc).__name__)
        return web.json_response({"error": "the request cannot be read"}, status=400)
    except web.HTTPException as exc:
        if exc.status >= 400:
            log.warning("%s %s -> %d", request.method, request.path, exc.status)
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


def build_http_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[edge_middleware(service.settings.trusted_networks)],
                          client_max_size=service.settings.max_body_bytes)
    app[SERVICE] = service
    app[SERVED] = set()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    admin_api.add_routes(app)
    for channel in service.channels.values():
        channel.routes(app)
    StoreWebhooks(service).routes(app)  # Shopify / WooCommerce, each when its secret is set
    dashboard.add_routes(app)
    add_playbook_routes(app)
    app.router.add_get("/api/openapi.json", openapi_view)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        await service.db.check_writable()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        log.warning("not ready: the database cannot be written: %s", _first_line(exc))
        return web.json_response({"status": "unavailable",
                                  "database": f"cannot write: {_first_line(exc)}"}, status=503)
    try:
        await service.inbox.ping()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return web.json_response({"status": "unavailable", "database": "ok",
                                  "queue": f"{type(exc).__name__}: {exc}"}, status=503)
    return web.json_response({"status": "ready", "database": "ok", "queue": "ok"})


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]

