"""A token-bucket rate limiter with an injected clock, for job creation and failed logins.

Each key has its own bucket of up to `burst` tokens that refill at `per_minute / 60` per second.
The job API has a single API token, so job creation uses a single key: one bucket for every
client of the API. Failed logins use one bucket per client host. `acquire` either takes a token
or returns how many seconds until one is free, which the HTTP layer sends as `Retry-After` with a
429; `wait` says the same without taking one.

    limiter = RateLimiter(per_minute=10, burst=5, clock=time.monotonic)
    wait = limiter.acquire("client")   # 0.0 when allowed
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float]):
        if per_minute <= 0 or burst < 1:
            raise ValueError(f"rate limit needs per_minute > 0 and burst >= 1, got {per_minute} and {burst}.")
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds to wait (rounded up, at least 1)."""
        return self._take(key, take=True)

    def wait(self, key: str) -> float:
        """The seconds until `key` has a token (0.0: it has one now), taking none."""
        return self._take(key, take=False)

    def _take(self, key: str, take: bool) -> float:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0 if take else tokens, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return float(max(1, math.ceil((1.0 - tokens) / self.rate)))
