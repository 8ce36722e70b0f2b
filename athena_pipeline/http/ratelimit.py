"""A client-side rate limiter: at most N requests per second, shared by every thread of a client.

Why client-side: athenahealth does not publish a per-second limit, but it throttles (and a
429 storm burns the daily quota and the retry budget). Pacing ourselves is cheaper than being
told off. Why a token bucket that goes negative: each caller *reserves* its slot under the lock
and sleeps outside it, so waiting threads queue in arrival order and never hold the lock while
sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token bucket: ``rate`` requests per second with bursts of at most ``burst`` requests.

    ``burst=1`` (the default) spaces requests evenly at ``1/rate`` seconds. Thread-safe. ``clock``
    and ``sleep`` are injectable so tests can run it on a fake clock.
    """

    def __init__(self, rate: float, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()

    def reserve(self) -> float:
        """Take one slot now; returns how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> float:
        """Block until the caller may send one request; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait
