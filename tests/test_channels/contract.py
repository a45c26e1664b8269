"""The contract every channel meets; test_contract.py runs it against each channel's harness.

A harness speaks its platform's wire format to the service (a signed webhook, an IMAP
APPEND...) and reads what the service sent to the platform's fake server. Fakes listen on
127.0.0.1 only; the service under test is a real `Service` with the real SDK pointed at them.
Each channel's harness factory is listed in `HARNESS_FACTORIES` in test_contract.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from bot.app import Service


class Harness(Protocol):
    name: str  # the channel name, as in channels.CHANNELS
    #: behaviour -> reason, for behaviours a channel does not have (email has no webhook
    #: signature); the contract test skips those with the reason instead of pretending.
    not_applicable: dict[str, str]

    def settings(self) -> dict[str, Any]:
        """Settings overrides that switch the channel on and point it at the fakes."""
        ...

    async def deliver(self, service: Service, *, external_id: str, text: str,
                      signature: str = "good", size: int | None = None) -> int:
        """Deliver one inbound customer message the way the platform does; return the HTTP
        status the service answered (or 200 for pull channels once the message was offered).
        `signature`: "good", "bad" or "missing". `size`: pad the payload to this many bytes."""
        ...

    def fail_next_sends(self, kind: str, count: int = 1) -> None:
        """Make the fake platform answer the next `count` sends with `kind`: "rate_limited"
        (429 with Retry-After: 1) or "permanent" (the platform's own permanent error)."""
        ...

    def sent(self) -> list[str] | Awaitable[list[str]]:
        """Texts the fake platform accepted (or the page shows), in order."""
        ...


HarnessFactory = Callable[[], AbstractAsyncContextManager[Harness]]
