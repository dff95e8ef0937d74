"""A token-bucket rate limiter with an injected clock, for job creation and failed logins.

Each key has its own bucket of up to `burst` tokens that refill at `per_minute / 60` per second.
The job API has a single API token, so job creation uses a single key: one bucket for every
client of the API. Failed logins use one bucket per client host. `acquire` either takes a token
or returns how many seconds until one is free, which the HTTP layer sends as `Retry-After` with a
429; `wait` says the same without taking one. At most `max_keys` buckets are kept: past that the
least recently used goes (a bucket untouched for `burst / rate` seconds is full again, the same as
none), so clients from ever new addresses cannot grow the server's memory.

    limiter = RateLimiter(per_minute=10, burst=5, clock=time.monotonic)
    wait = limiter.acquire("client")   # 0.0 when allowed
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float], max_keys: int = 10_000):
        if per_minute <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(f"rate limit needs per_minute > 0, burst >= 1 and max_keys >= 1, got {per_minute}, "
                             f"{burst} and {max_keys}.")
        self.max_keys = max_keys
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        # key -> (tokens, last refill time), least recently used first
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many buckets are held (at most `max_keys`)."""
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds to wait (rounded up, at least 1)."""
        return self._take(key, take=True)

    def wait(self, key: str) -> float:
        """The seconds until `key` has a token (0.0: it has one now), taking none."""
        return self._take(key, take=False)

    def _take(self, key: str, take: bool) -> float:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else float(max(1, math.ceil((1.0 - tokens) / self.rate)))
            self._buckets[key] = (tokens - 1.0 if take and not wait else tokens, now)
            while len(self._buckets) > self.max_keys:
                del self._buckets[next(iter(self._buckets))]
            return wait
