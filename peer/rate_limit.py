"""Token-bucket rate caps (--upload-rate, --download-rate).

`TokenBucket` is pure: it is told the time and answers how long to wait. `RateLimiter` is the
trio adapter that sleeps for it. A burst of one second's worth is allowed, so a cap never
stalls a single large piece forever and short idle periods are not lost entirely.
"""

from __future__ import annotations

import trio


class TokenBucket:
    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._tokens = self.burst
        self._at = now

    def reserve(self, amount: int, now: float) -> float:
        """Take `amount` tokens (going into debt if needed); return seconds to wait first."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """Shared by all transfers in one direction; None rate means no cap."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._bucket = TokenBucket(rate, trio.current_time()) if rate else None

    def set_rate(self, rate: int | None) -> None:
        """A new cap (a reload): transfers in flight go on under it."""
        self.rate = rate
        self._bucket = TokenBucket(rate, trio.current_time()) if rate else None

    async def consume(self, amount: int) -> None:
        if self._bucket is None:
            return
        delay = self._bucket.reserve(amount, trio.current_time())
        if delay > 0:
            await trio.sleep(delay)
