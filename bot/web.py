"""The service's HTTP app: error handling, admin authentication and the admin JSON API.

Channels add their own routes (webhooks, the web chat); everything under /api that is not a
channel's needs `Authorization: Bearer <ADMIN_TOKEN>`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy import func, select

from bot.connections import SERVED, note_request
from bot.customers import OrderIn, find_or_create_by_contact
from bot.db.models import OutboxItem
from bot.metrics import metrics_view
from bot.orders import push_orders
from bot.privacy import erase_customer, export_customer
from bot.proxies import forwarded_middleware
from bot.reports import conversation_detail, list_escalations
from bot.store_webhooks import StoreWebhooks
from channels.edge import id_param, json_value, read_body
from core.errors import InputError, QueueError, RateLimited

if TYPE_CHECKING:
    from bot.app import Service

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVICE: web.AppKey[Service] = web.AppKey("service")


@web.middleware
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


def admin_only(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        token = request.app[SERVICE].settings.admin_token
        if token is None:
            raise InputError("the admin API is disabled: set ADMIN_TOKEN", status=403)
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not given:
            given = request.cookies.get("storedesk_admin", "")
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise InputError("missing or wrong admin token", status=401)
        return await handler(request)
    return wrapped


def build_http_app(service: Service) -> web.Application:
    proxies = forwarded_middleware(service.settings.trusted_networks)
    app = web.Application(middlewares=[note_request, proxies, errors_middleware],
                          client_max_size=service.settings.max_body_bytes)
    app[SERVICE] = service
    app[SERVED] = set()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/api/escalations", admin_only(get_escalations))
    app.router.add_get("/api/conversations/{id:\\d+}", admin_only(get_conversation))
    app.router.add_post("/api/customers/{id:\\d+}/orders", admin_only(post_customer_orders))
    app.router.add_post("/api/orders", admin_only(post_orders))
    app.router.add_get("/api/queue", admin_only(get_queue))
    app.router.add_post("/api/queue/requeue-dead", admin_only(post_requeue_dead))
    app.router.add_get("/api/faq", admin_only(get_faq))
    app.router.add_get("/api/customers/{id:\\d+}/export", admin_only(get_customer_export))
    app.router.add_delete("/api/customers/{id:\\d+}", admin_only(delete_customer))
    for channel in service.channels.values():
        channel.routes(app)
    StoreWebhooks(service).routes(app)  # Shopify / WooCommerce, each when its secret is set
    from bot.dashboard import add_routes as add_dashboard_routes  # it imports this module

    add_dashboard_routes(app)
    from bot.playbook_web import add_routes as add_playbook_routes  # it imports the dashboard

    add_playbook_routes(app)
    from bot.openapi import openapi_view  # it imports the dashboard

    app.router.add_get("/api/openapi.json", openapi_view)
    return app


async def get_customer_export(request: web.Request) -> web.Response:
    """Everything held on one customer (the right of access), as a JSON download."""
    customer_id = id_param(request.match_info["id"], "id")
    document = await export_customer(request.app[SERVICE].db, customer_id)
    return web.json_response(document, headers={
        "Content-Disposition": f'attachment; filename="customer-{customer_id}.json"',
        "Cache-Control": "no-store"})


async def delete_customer(request: web.Request) -> web.Response:
    """Erase one customer (the right to erasure); answers what went, as counts."""
    customer_id = id_param(request.match_info["id"], "id")
    counts = await erase_customer(request.app[SERVICE].db, customer_id)
    return web.json_response({"customer_id": customer_id, "erased": counts})


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


async def get_escalations(request: web.Request) -> web.Response:
    status = request.query.get("status", "open")
    if status not in ("open", "taken", "resolved", "returned", "all"):
        raise InputError("status must be open, taken, resolved, returned or all")
    async with request.app[SERVICE].db.read() as conn:
        items = await list_escalations(conn, status=status)
    return web.json_response({"escalations": items})


async def get_conversation(request: web.Request) -> web.Response:
    async with request.app[SERVICE].db.read() as conn:
        detail = await conversation_detail(conn, id_param(request.match_info["id"], "id"))
    if detail is None:
        raise InputError("no such conversation", status=404)
    return web.json_response(detail)


async def _orders_from(body: Any) -> list[OrderIn]:
    items = body if isinstance(body, list) else body.get("orders", [body]) \
        if isinstance(body, dict) else None
    if not items or not isinstance(items, list) or len(items) > 1000:
        raise InputError("send one order object, a list of them, or {\"orders\": [...]} (<= 1000)")
    return [OrderIn.parse(i) if isinstance(i, dict) else _bad_order() for i in items]


def _bad_order() -> OrderIn:
    raise InputError("each order must be a JSON object")


async def _json(request: web.Request) -> Any:
    return json_value(await read_body(request))


async def post_customer_orders(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    customer_id = id_param(request.match_info["id"], "id")
    orders = await _orders_from(await _json(request))
    async with service.db.write() as conn:
        result = await push_orders(conn, service.lifecycle.rules, customer_id, orders,
                                   now=service.clock(), playbooks=service.playbooks.playbooks)
    return web.json_response(result)


async def post_orders(request: web.Request) -> web.Response:
    """Orders keyed by the customer's email or phone, as a store backend knows them."""
    service = request.app[SERVICE]
    body = await _json(request)
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with email or phone")
    orders = await _orders_from(body)
    async with service.db.write() as conn:
        customer_id = await find_or_create_by_contact(
            conn, email=body.get("email"), phone=body.get("phone"), name=body.get("name"))
        result = await push_orders(conn, service.lifecycle.rules, customer_id, orders,
                                   now=service.clock(), playbooks=service.playbooks.playbooks)
    return web.json_response(result)


async def get_queue(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    inbox = await service.inbox.stats()
    t = OutboxItem.__table__.c
    async with service.db.read() as conn:
        outbox = {str(r[0]): int(r[1]) for r in (await conn.execute(
            select(t.status, func.count()).group_by(t.status))).all()}
    return web.json_response({"inbox": inbox, "outbox": outbox})


async def post_requeue_dead(request: web.Request) -> web.Response:
    count = await request.app[SERVICE].inbox.requeue_dead()
    return web.json_response({"requeued": count})


async def get_faq(request: web.Request) -> web.Response:
    faq = request.app[SERVICE].faq
    err = faq.last_error
    return web.json_response({
        "entries": len(faq.entries), "version": faq.version,
        "last_error": None if err is None else {"file": err.path, "line": err.line,
                                                "problem": err.problem}})
