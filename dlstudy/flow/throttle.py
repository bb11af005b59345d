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
from collections import deque
from types import TracebackType

import anyio

log = logging.getLogger(__name__)

THROTTLE_STATUS = frozenset({429, 503})
_DECREASE_INTERVAL = 1.0  # seconds between two halvings


class Slots:
    """How many requests may be in flight: a number that can change while they run. A free
    slot is taken without a trip round the event loop (anyio's CapacityLimiter yields at every
    acquire, a cost per small instance: docs/decisions.md); the waiting are served in turn."""

    def __init__(self, total: int) -> None:
        self._total = total
        self.taken = 0
        self._waiting: deque[anyio.Event] = deque()

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        """A smaller number takes no slot back: it holds new requests until enough end."""
        self._total = value
        self._hand_out()

    async def acquire(self) -> None:
        if self.taken < self._total and not self._waiting:
            self.taken += 1
            return
        turn = anyio.Event()
        self._waiting.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed a slot as it was cancelled: the next in turn gets it
                self.release()
            else:
                self._waiting.remove(turn)
            raise

    def release(self) -> None:
        self.taken -= 1
        self._hand_out()

    def _hand_out(self) -> None:
        while self._waiting and self.taken < self._total:
            self.taken += 1
            self._waiting.popleft().set()


class Throttle:
    def __init__(self, concurrency: int) -> None:
        self.maximum = max(1, concurrency)
        self.slots = Slots(self.maximum)
        self._slot = _Slot(self)
        self._pause_until = 0.0
        self._last_decrease = -_DECREASE_INTERVAL
        self._successes = 0
        # How many throttle answers this process saw (for the summary, which adds the
        # workers' to the parent's).
        self.signals = 0
        self.lowest = self.maximum

    def resize(self, concurrency: int) -> None:
        """The configured concurrency, once known (see settings.concurrency_for)."""
        self.maximum = self.lowest = max(1, concurrency)
        self.slots.total = self.maximum

    @property
    def limit(self) -> int:
        return self.slots.total

    def pause_left(self) -> float:
        """Seconds left of a pause a 429's Retry-After asked for (0 or less: none)."""
        return self._pause_until - time.monotonic()

    def slot(self) -> _Slot:
        """`async with throttle.slot():` holds one of the slots allowed now, after any pause."""
        return self._slot

    def slow_down(self, status: int, retry_after: float | None) -> None:
        now = time.monotonic()
        self.signals += 1
        if retry_after and status == 429:
            self._pause_until = max(self._pause_until, now + retry_after)
        if now - self._last_decrease >= _DECREASE_INTERVAL and self.limit > 1:
            self._last_decrease = now
            self.slots.total = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            log.info("server asked to slow down; %d requests in flight at most", self.limit)
        self._successes = 0

    def succeeded(self) -> None:
        if self.limit >= self.maximum:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.slots.total = self.limit + 1


class _Slot:
    """The context of `Throttle.slot()`: it keeps nothing per use, so one serves every use."""

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    async def __aenter__(self) -> None:
        throttle = self.throttle
        await throttle.slots.acquire()
        delay = throttle.pause_left()
        if delay > 0:
            try:
                await anyio.sleep(delay)
            except BaseException:
                throttle.slots.release()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.throttle.slots.release()
