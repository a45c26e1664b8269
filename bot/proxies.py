"""Behind a reverse proxy: believe X-Forwarded-* only from the proxies TRUSTED_PROXIES names.

Without this every visitor has the proxy's address (one rate-limit bucket for everyone) and
the URL a platform signed (https://support.example.com/...) is not the one this process sees.
A client that is not a trusted proxy cannot claim another address by sending the headers.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from channels.edge import FORWARDED

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str | None, networks: Sequence[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(remote: str | None, forwarded_for: str, networks: Sequence[Network]) -> str:
    """The first address, from the right, that is not one of our proxies."""
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    address = remote or "?"
    for hop in reversed(hops):
        if not _trusted(address, networks):
            break
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # a malformed hop: stop at the last address we could trust
        address = hop
    return address


def forwarded(request: web.Request, networks: Sequence[Network]) -> web.Request:
    """The request as the client sent it to our proxy, when it came through one we trust."""
    if not networks or not _trusted(request.remote, networks):
        return request
    changes: dict[str, Any] = {}
    forwarded_for = request.headers.get("X-Forwarded-For", "")
    if forwarded_for:
        changes["remote"] = client_address(request.remote, forwarded_for, networks)
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        changes["scheme"] = proto
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    if host and all(c.isalnum() or c in ".-:[]" for c in host):
        changes["host"] = host
    if not changes:
        return request
    request = request.clone(**changes)
    request[FORWARDED] = "scheme" in changes or "host" in changes
    return request
