"""The admin JSON API: escalations, conversations, orders, the queues, the FAQ, customers.

GET    /api/escalations?status=open|taken|resolved|returned|all
GET    /api/conversations/{id}
POST   /api/customers/{id}/orders, POST /api/orders (keyed by email or phone)
GET    /api/queue, POST /api/queue/requeue-dead
POST   /api/queue/requeue-failed?queue=outbox|desk
GET    /api/faq
GET    /api/customers/{id}/export, DELETE /api/customers/{id}
Every route is behind `require_admin` (bot/admin/auth.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot import jobs
from bot.admin.auth import require_admin
from bot.appkeys import SERVICE
from bot.customers import OrderIn, find_or_create_by_contact
from bot.orders import push_orders
from bot.privacy import erase_customer, export_customer
from bot.reports import conversation_detail, list_escalations
from channels.edge import id_param, json_value, read_body
from core.errors import InputError


def add_routes(app: web.Application) -> None:
    """Called once from `bot.web.build_http_app`."""
    app.router.add_get("/api/escalations", require_admin(get_escalations))
    app.router.add_get("/api/conversations/{id:\\d+}", require_admin(get_conversation))
    app.router.add_post("/api/customers/{id:\\d+}/orders", require_admin(post_customer_orders))
    app.router.add_post("/api/orders", require_admin(post_orders))
    app.router.add_get("/api/queue", require_admin(get_queue))
    app.router.add_post("/api/queue/requeue-dead", require_admin(post_requeue_dead))
    app.router.add_post("/api/queue/requeue-failed", require_admin(post_requeue_failed))
    app.router.add_get("/api/faq", require_admin(get_faq))
    app.router.add_get("/api/customers/{id:\\d+}/export", require_admin(get_customer_export))
    app.router.add_delete("/api/customers/{id:\\d+}", require_admin(delete_customer))

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
    """The inbox (with its age and Redis state) and every other queue's jobs by state."""
    service = request.app[SERVICE]
    inbox = await service.inbox.stats()
    async with service.db.read() as conn:
        counts = {name: await table.counts(conn) for name, table in jobs.QUEUES.items()
                  if name != "inbox"}
    return web.json_response({"inbox": inbox, **counts})


async def post_requeue_dead(request: web.Request) -> web.Response:
    count = await request.app[SERVICE].inbox.requeue_dead()
    return web.json_response({"requeued": count})


async def post_requeue_failed(request: web.Request) -> web.Response:
    """?queue=outbox|desk: the failed jobs of that queue get another round."""
    queue = request.query.get("queue", "")
    if queue not in jobs.REQUEUABLE:
        raise InputError(f"queue must be one of {', '.join(jobs.REQUEUABLE)}")
    service = request.app[SERVICE]
    async with service.db.write() as conn:
        count = await jobs.requeue_failed(conn, queue, service.clock())
    service.outbox.wake()
    return web.json_response({"queue": queue, "requeued": count})


async def get_faq(request: web.Request) -> web.Response:
    faq = request.app[SERVICE].faq
    err = faq.last_error
    return web.json_response({
        "entries": len(faq.entries), "version": faq.version,
        "last_error": None if err is None else {"file": err.path, "line": err.line,
                                                "problem": err.problem}})

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
