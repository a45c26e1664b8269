"""One admin sign-in for every admin route: the bearer token, or the dashboard's session.

`Authorization: Bearer <ADMIN_TOKEN>` is for scripts and the store's backend; the dashboard's
sign-in form sets a signed, HttpOnly session cookie instead. The cookie holds an expiry and an
HMAC keyed by the admin token, never the token itself, so the token stays out of URLs, cookies
and logs; changing the token ends sessions. Without ADMIN_TOKEN every admin route is off (403).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.appkeys import SERVICE
from core.errors import InputError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "storedesk_session"
SESSION_SECONDS = 12 * 3600


def _session_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"storedesk dashboard session v1", hashlib.sha256).digest()


def make_session(token: str, *, now: float | None = None) -> str:
    """`<expiry>.<nonce>.<hmac>`: proves a login without carrying the token."""
    expires = int((now or time.time()) + SESSION_SECONDS)
    body = f"{expires}.{secrets.token_urlsafe(12)}"
    sig = hmac.new(_session_key(token), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{sig}"


def session_valid(value: str, token: str, *, now: float | None = None) -> bool:
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return False
    body = f"{parts[0]}.{parts[1]}"
    sig = hmac.new(_session_key(token), body.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(sig, parts[2]) and int(parts[0]) > (now or time.time())


def admin_token(request: web.Request) -> str:
    """The admin token; refuses (403) when none is set, so admin routes are off."""
    token = request.app[SERVICE].settings.admin_token
    if token is None:
        raise InputError("the admin API and dashboard are disabled: set ADMIN_TOKEN",
                         status=403)
    return token.get_secret_value()


def signed_in(request: web.Request, token: str) -> bool:
    """The bearer token if one is sent (and then only it), else the session cookie."""
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if given:
        return hmac.compare_digest(given.encode(), token.encode())
    return session_valid(request.cookies.get(SESSION_COOKIE, ""), token)


def require_admin(handler: Handler) -> Handler:
    """Wrap an admin route: 403 without ADMIN_TOKEN, 401 without a valid token or session."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not signed_in(request, admin_token(request)):
            raise InputError("missing or wrong admin token: send it as a bearer token, or "
                             "sign in at /dashboard/login", status=401)
        return await handler(request)
    return wrapped
