"""The OpenAPI 3.1 document of the JSON APIs (web chat, admin, dashboard), served at
GET /api/openapi.json so integrators can generate clients and the suite can fuzz it.

Webhooks are not in it: their shape is the platforms' (Telegram, Twilio, Slack, Shopify,
WooCommerce), and their doors are the signatures.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.admin.params import PERIODS
from bot.admin.queries import CONVERSATION_FILTERS, DIMENSIONS

_TOKEN = {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"}
_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_ERROR = {"description": "what is wrong with the request",
          "content": {"application/json": {"schema": {
              "type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}}}}}
_OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}
_REFUSALS = {"400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "413": _ERROR,
             "415": _ERROR, "429": _ERROR}
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
_PERIOD = [
    {"name": "period", "in": "query", "schema": {"enum": [*PERIODS, "custom"]}},
    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
]


def _get(summary: str, *, params: list[dict[str, Any]] | None = None,
         admin: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params or [],
                          "responses": {"200": {"description": "OK", **_OBJECT}, **_REFUSALS}}
    if admin:
        op["security"] = _ADMIN
    return {"get": op}


def _post(summary: str, body: dict[str, Any], *, status: str = "200",
          params: list[dict[str, Any]] | None = None, admin: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary, "parameters": params or [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {status: {"description": "OK", **_OBJECT}, **_REFUSALS}}
    if admin:
        op["security"] = _ADMIN
    return {"post": op}


_ORDER = {"type": "object", "properties": {
    "order_id": {"type": "string"}, "email": {"type": "string"}, "phone": {"type": "string"},
    "name": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string"},
    "placed_at": {"type": "string", "format": "date-time"}, "status": {"type": "string"}}}
_ORDERS = {"oneOf": [_ORDER, {"type": "array", "items": _ORDER, "maxItems": 1000},
                     {"type": "object", "properties": {"orders": {"type": "array",
                                                                  "items": _ORDER}}}]}


def openapi_document() -> dict[str, Any]:
    path_id = [{"name": "id", "in": "path", "required": True, "schema": _ID}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "storedesk", "version": "1",
                 "description": "The web chat API (public) and the admin and dashboard APIs "
                                "(Authorization: Bearer ADMIN_TOKEN)."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/webchat/messages": {
                **_post("A visitor's message; answered asynchronously", {
                    "type": "object", "required": ["text"], "properties": {
                        "text": {"type": "string", "minLength": 1},
                        "visitor_id": _TOKEN, "client_message_id": _TOKEN,
                        "name": {"type": "string"}, "email": {"type": "string"},
                        "page": {"type": "string"},
                        "customer": {"type": "object", "required": ["id"], "properties": {
                            "id": {"type": "string"}, "name": {"type": "string"},
                            "email": {"type": "string"}, "phone": {"type": "string"}}},
                        "identity_hash": {"type": "string"}}},
                    status="202", admin=False),
                **_get("The visitor's messages after an id, waiting up to `wait` seconds", params=[
                    {"name": "visitor_id", "in": "query", "required": True, "schema": _TOKEN},
                    {"name": "after", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}},
                    {"name": "wait", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "maximum": 30}}],
                       admin=False),
            },
            "/api/webchat/welcome": _get("Business hours now: open with the reply time, or "
                                         "when people answer next", admin=False),
            "/api/escalations": _get("Escalations by status", params=[
                {"name": "status", "in": "query",
                 "schema": {"enum": ["open", "taken", "resolved", "returned", "all"]}}]),
            "/api/conversations/{id}": _get("One conversation with its messages",
                                            params=path_id),
            "/api/orders": _post("Orders of customers found or created by email/phone",
                                 _ORDERS),
            "/api/customers/{id}/orders": _post("Orders of one customer", _ORDERS,
                                                params=path_id),
            "/api/queue": _get("Inbox and outbox counts"),
            "/api/faq": _get("The loaded FAQ"),
            "/api/dashboard/stages": _get("Customers per lifecycle stage", params=_PERIOD),
            "/api/dashboard/flow": _get("Stage transitions", params=_PERIOD),
            "/api/dashboard/performance": _get("Bot and desk figures", params=[
                *_PERIOD, {"name": "by", "in": "query", "schema": {"enum": list(DIMENSIONS)}}]),
            "/api/dashboard/faq": _get("FAQ use and gaps", params=_PERIOD),
            "/api/conversations": _get("Conversations, filtered", params=[
                *_PERIOD, *({"name": f, "in": "query", "schema": {"type": "string",
                                                                  "maxLength": 40}}
                            for f in CONVERSATION_FILTERS),
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "offset", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "maximum": 10_000_000}}]),
            "/api/dashboard/conversations/{id}": _get("One conversation for the dashboard",
                                                      params=path_id),
            "/api/dashboard/playbooks": _get("Per playbook step: sent, delivered, replied, "
                                             "opted out, ordered, stage moved",
                                             params=_PERIOD),
            "/api/playbooks/events": _post("An event for one customer's playbooks", {
                "type": "object", "required": ["customer_id", "event", "id"], "properties": {
                    "customer_id": _ID,
                    "event": {"enum": ["points_expiring", "nps", "checkout_abandoned"]},
                    "id": {"type": "string", "minLength": 1, "maxLength": 120},
                    "score": {"type": "integer", "minimum": -1000, "maximum": 1000},
                    "variables": {"type": "object", "additionalProperties": {
                        "type": ["string", "number"]}}}}),
        },
    }


async def openapi_view(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
