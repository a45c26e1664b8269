"""What the service's aiohttp apps carry: the service itself, for handlers to reach it.

Its own module so that every HTTP module (the app, the admin routes, /metrics) can read it
without importing one another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bot.app import Service

SERVICE: web.AppKey[Service] = web.AppKey("service")
