"""The channel contract (tests/test_channels/contract.py) for the store's web chat.

The web chat has no platform in between: the page posts to the service and reads the
transcript back, so this harness is the page. Its dedup key is the page's client message id.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from bot.app import Service


class WebChatHarness:
    name = "webchat"

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.not_applicable = {
            "signature": "the page is not signed: the unguessable visitor id is the credential",
            "rate_limit": "replies are delivered by storing them; there is no platform send",
            "permanent": "replies are delivered by storing them; there is no platform send",
            "attachment_link": "the page shows a reply's files itself (tests/test_browser)",
        }
        self.session = session
        self.visitor = secrets.token_urlsafe(18)
        self.base = ""

    def settings(self) -> dict[str, Any]:
        return {"webchat_enabled": True}

    async def deliver(self, service: Service, *, external_id: str, text: str,
                      signature: str = "good", size: int | None = None) -> int:
        self.base = f"http://127.0.0.1:{service.port}"
        body = {"text": text + (" " + "x" * size if size else ""), "visitor_id": self.visitor,
                "client_message_id": f"contract-{external_id}".ljust(16, "0")}
        async with self.session.post(f"{self.base}/api/webchat/messages", json=body) as resp:
            await resp.read()
            return resp.status

    def fail_next_sends(self, kind: str, count: int = 1) -> None:
        raise NotImplementedError("the web chat has no platform send to fail")

    async def sent(self) -> list[str]:
        """The replies the customer sees on the page, in order."""
        if not self.base:
            return []
        async with self.session.get(f"{self.base}/api/webchat/messages",
                                    params={"visitor_id": self.visitor}) as resp:
            assert resp.status == 200
            messages = (await resp.json())["messages"]
        return [m["text"] for m in messages if m["from"] != "you"]


@contextlib.asynccontextmanager
async def webchat_harness() -> AsyncIterator[WebChatHarness]:
    async with aiohttp.ClientSession() as session:
        yield WebChatHarness(session)
