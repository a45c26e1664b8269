"""The web chat limit does what the README says: WEBCHAT_RATE_PER_MINUTE per visitor."""

from __future__ import annotations

import pytest

from core.ratelimit import RateLimiter


@pytest.mark.parametrize("per_minute", [30, 10, 120])
def test_no_minute_lets_more_through_than_the_limit(per_minute: int) -> None:
    limiter = RateLimiter(per_minute)
    allowed: list[float] = []
    now = 0.0
    while now < 300:  # a visitor sending as fast as allowed, then some, for five minutes
        if limiter.allow("visitor", now=now)[0]:
            allowed.append(now)
        now += 0.25
    busiest = max(sum(1 for t in allowed if start <= t < start + 60) for start in allowed)
    assert per_minute - 1 <= busiest <= per_minute  # never more; the last token lands at 60 s


def test_a_refused_visitor_is_told_how_long_to_wait() -> None:
    limiter = RateLimiter(30)
    for _ in range(10):
        assert limiter.allow("v", now=0.0)[0]
    allowed, wait = limiter.allow("v", now=0.0)
    assert not allowed and 0 < wait <= 3.0
    assert limiter.allow("v", now=wait)[0]
    assert limiter.allow("other", now=0.0)[0]
