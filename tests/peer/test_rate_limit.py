from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from peer.rate_limit import RateLimiter, TokenBucket


def test_burst_then_steady_rate() -> None:
    bucket = TokenBucket(rate=100, now=0.0)
    assert bucket.reserve(100, 0.0) == 0.0  # one second of burst
    assert bucket.reserve(50, 0.0) == pytest.approx(0.5)
    assert bucket.reserve(50, 1.0) == pytest.approx(0.0)


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=50))
def test_long_run_rate_never_exceeds_the_cap(amounts: list[int]) -> None:
    bucket = TokenBucket(rate=1000, now=0.0)
    now = 0.0
    for amount in amounts:
        now += bucket.reserve(amount, now)
    # Everything sent by `now` fits the burst plus rate * elapsed time.
    assert sum(amounts) <= 1000 + 1000 * now + 1e-6


async def test_limiter_sleeps_for_the_cap(autojump_clock: trio.abc.Clock) -> None:
    limiter = RateLimiter(1000)
    start = trio.current_time()
    for _ in range(5):
        await limiter.consume(1000)
    assert trio.current_time() - start == pytest.approx(4.0)
    unlimited = RateLimiter(None)
    before = trio.current_time()
    await unlimited.consume(10**12)
    assert trio.current_time() == before
