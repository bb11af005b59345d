"""Back-pressure shared by every worker: a server that says "slow down" slows the whole pool.

A 429 or 503 halves the number of requests allowed in flight (at most once per second, so a
burst of refusals from one overload counts once); each run of successes as long as the current
limit adds one slot back, up to the configured concurrency (additive increase, multiplicative
decrease, as TCP does). A 429 is about this client's rate, so its Retry-After also pauses every
new request; a 503's Retry-After delays only the retry of the refused request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

log = logging.getLogger(__name__)

THROTTLE_STATUS = frozenset({429, 503})
_DECREASE_INTERVAL = 1.0  # seconds between two halvings


class Throttle:
    def __init__(self, concurrency: int) -> None:
        self.maximum = max(1, concurrency)
        self.limiter = anyio.CapacityLimiter(self.maximum)
        self._pause_until = 0.0
        self._last_decrease = -_DECREASE_INTERVAL
        self._successes = 0
        self.signals = 0  # how many throttle answers the run saw (for the summary)
        self.lowest = self.maximum

    def resize(self, concurrency: int) -> None:
        """The configured concurrency, once known (see settings.concurrency_for)."""
        self.maximum = self.lowest = max(1, concurrency)
        self.limiter.total_tokens = self.maximum

    @property
    def limit(self) -> int:
        return int(self.limiter.total_tokens)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the currently allowed in-flight slots, after any pause."""
        async with self.limiter:
            delay = self._pause_until - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            yield

    def slow_down(self, status: int, retry_after: float | None) -> None:
        now = time.monotonic()
        self.signals += 1
        if retry_after and status == 429:
            self._pause_until = max(self._pause_until, now + retry_after)
        if now - self._last_decrease >= _DECREASE_INTERVAL and self.limit > 1:
            self._last_decrease = now
            self.limiter.total_tokens = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            log.info("server asked to slow down; %d requests in flight at most", self.limit)
        self._successes = 0

    def succeeded(self) -> None:
        if self.limit >= self.maximum:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limiter.total_tokens = self.limit + 1
