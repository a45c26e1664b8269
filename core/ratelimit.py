"""Token buckets per key (visitor, IP address), in memory: cheap and good enough per process."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """At most `per_minute` events per key in any 60 seconds, up to `burst` of them at once;
    forget idle keys.

    A bucket holds `burst` tokens and refills at (per_minute - burst) a minute, so a full
    bucket plus a minute of refill is exactly `per_minute`.
    """

    def __init__(self, per_minute: int, *, burst: int | None = None, max_keys: int = 100_000):
        self.burst = float(burst if burst is not None else max(1, per_minute // 3))
        self.rate = max(per_minute - self.burst, 1.0) / 60.0
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float | None = None) -> tuple[bool, float]:
        """(allowed, seconds to wait before the next event would be allowed)."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed, 0.0 if allowed else (1.0 - tokens) / self.rate
