"""The Slack Web API as the service uses it, for the Slack channel and the staff desk alike.

Neither owns it: `channels/slack.py` (customers on Slack) and `bot/desk/` (staff on Slack)
both talk to Slack through these. Errors become the service's channel errors in one place
(`slack_error`, `call_slack`); `Profiles` caches users.info; `is_human_message` and
`files_of` read messages the same way for both (a reply's files as links is the base
channel's `with_links`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from channels.base import Attachment
from core.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelPermanentError,
    ChannelRateLimited,
    ChannelTemporaryError,
)

log = logging.getLogger(__name__)
#: Message subtypes that are a person writing; everything else (edits, deletions, joins, bot
#: messages) is ignored.
HUMAN_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
_AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                          "token_expired", "no_permission", "missing_scope"})
_TEMPORARY_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable",
                               "request_timeout"})


def is_human_message(event: Mapping[str, Any]) -> bool:
    """False for any bot (not only ours), edits, deletions and other system subtypes."""
    return (not event.get("bot_id") and not event.get("bot_profile")
            and event.get("subtype") in HUMAN_SUBTYPES and bool(event.get("user")))


def slack_error(exc: SlackApiError) -> ChannelError:
    """Translate a Slack Web API error into the service's channel errors (the one place)."""
    response = exc.response
    status = int(getattr(response, "status_code", 200) or 200)
    error = ""
    try:
        error = str(response.get("error") or "")
    except (AttributeError, TypeError, ValueError):
        error = ""
    headers = {str(k).lower(): v for k, v in (getattr(response, "headers", None) or {}).items()}
    if status == 429 or error == "ratelimited":
        raw = headers.get("retry-after", "1")
        raw = raw[0] if isinstance(raw, list) else raw
        try:
            retry_after = float(raw)
        except (TypeError, ValueError):
            retry_after = 1.0
        return ChannelRateLimited(f"Slack rate limit ({error or status})", retry_after=retry_after)
    if error in _AUTH_ERRORS:
        return ChannelAuthError(f"Slack refused the token: {error}")
    if status >= 500 or error in _TEMPORARY_ERRORS:
        return ChannelTemporaryError(f"Slack error {status} {error}".strip())
    return ChannelPermanentError(f"Slack refused the message: {error or status}",
                                 code=error or str(status))


async def call_slack(coro: Any) -> Any:
    """Await a slack_sdk call, raising only ChannelError subclasses."""
    try:
        return await coro
    except SlackApiError as exc:
        raise slack_error(exc) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ChannelTemporaryError(f"Slack unreachable: {type(exc).__name__}") from None


def files_of(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """Metadata of the files on a Slack message (the bytes stay on Slack)."""
    out = []
    for f in event.get("files") or ():
        if not isinstance(f, dict):
            continue
        mime = f.get("mimetype") or ""
        kind = next((k for k in ("image", "audio", "video") if mime.startswith(k)), "document")
        out.append(Attachment(kind=kind, name=f.get("name") or f.get("title"),
                              mime_type=mime or None, size=f.get("size"),
                              ref=f.get("permalink") or f.get("url_private")))
    return tuple(out)


class Profiles:
    """users.info with a small cache and a short timeout: names are nice, never required."""

    def __init__(self, client: AsyncWebClient, *, size: int = 2000) -> None:
        self.client = client
        self.size = size
        self._cache: dict[str, dict[str, str | None]] = {}

    async def get(self, user: str | None) -> dict[str, str | None]:
        if not user:
            return {}
        if user in self._cache:
            return self._cache[user]
        try:
            resp = await asyncio.wait_for(self.client.users_info(user=user), timeout=1.0)
        except (SlackApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("users.info for %s failed: %s", user, type(exc).__name__)
            return {}
        u = resp.get("user") or {}
        profile = u.get("profile") or {}
        info = {"name": profile.get("display_name") or profile.get("real_name")
                or u.get("real_name") or u.get("name"), "email": profile.get("email")}
        if len(self._cache) >= self.size:
            self._cache.clear()
        self._cache[user] = info
        return info
