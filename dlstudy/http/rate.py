"""`--max-rate`: one cap on the bytes per second every response body of a process brings.

A token bucket, drawn on by libcurl's write callback (http/transfer.py) for each piece of a body
before it is taken. A transfer that finds the bucket empty is paused there (libcurl keeps the
piece and stops reading that HTTP/2 stream, or that HTTP/1.1 connection, so the server is held
back) and queued; once the bucket has refilled, the transfers waiting are resumed in the order
they paused, each taking its piece. A piece may overdraw the bucket: the debt is waited out
before the next one, so over any stretch longer than the burst the rate holds. libcurl's
low-speed check does not count the time a transfer is paused.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Protocol

from ..flow.watchdog import MIN_PROGRESS_BYTES

# The bucket's size, in seconds of the rate: what may come at once after a quiet moment.
BURST_SECONDS = 0.25
_LEAST_BURST = 64 * 1024
# The most libcurl takes (a curl_off_t); 0 is the way to ask for no cap.
MOST = 2**63 - 1
# Timer granularity: waking more often than this costs more than it smooths.
_LEAST_WAIT = 0.005


def rate_problem(max_rate: int, timeout: float) -> str | None:
    """Why --max-rate cannot be kept to with --timeout: below twice what one transfer must
    bring, every transfer would fail as stalled. None when it can."""
    if max_rate < 0:
        return "--max-rate must be 0 (no cap) or more"
    if max_rate > MOST:
        return f"--max-rate must be at most {MOST} bytes/s (libcurl's limit), or 0 for no cap"
    least = math.ceil(2 * MIN_PROGRESS_BYTES / timeout)
    if 0 < max_rate < least:
        return (
            f"--max-rate {max_rate} bytes/s is below what --timeout {timeout:g} asks a "
            f"transfer to bring ({MIN_PROGRESS_BYTES // 1024} KiB every {timeout:g} s): "
            f"give at least {least} (or a longer --timeout)"
        )
    return None


class Waiting(Protocol):
    """A paused transfer: told to go on, it takes the piece it was holding (granted)."""

    granted: bool

    def resume_for_rate(self) -> None: ...


class RateLimit:
    """The bucket of one process, on its event loop's thread (libcurl's callbacks and timers)."""

    def __init__(self, bytes_per_second: int) -> None:
        self.rate = bytes_per_second
        self.tokens = 0.0  # from the start, never more than the rate's bytes and one piece
        self._stamp = time.monotonic()
        self._waiting: deque[Waiting] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def set_rate(self, bytes_per_second: int) -> None:
        """A new rate from now on (a run sharing its rate with worker processes)."""
        self._refill()
        self.rate = bytes_per_second
        self.tokens = min(self.tokens, self._burst())

    def take(self, transfer: Waiting, size: int) -> bool:
        """Whether `transfer` may take a piece of `size` bytes now; if not, it is queued and
        will be resumed (it must pause)."""
        if transfer.granted:  # resumed by _wake: its piece was counted in
            transfer.granted = False
            self.tokens -= size
            return True
        if transfer in self._waiting:  # unpaused for another reason (its reader): still waits
            return False
        self._refill()
        if self.tokens >= 0 and not self._waiting:
            self.tokens -= size
            return True
        self._waiting.append(transfer)
        self._arm()
        return False

    def forget(self, transfer: Waiting) -> None:
        """`transfer` ended while it waited."""
        try:
            self._waiting.remove(transfer)
        except ValueError:
            pass

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()

    def _burst(self) -> int:
        return max(int(self.rate * BURST_SECONDS), _LEAST_BURST)

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.tokens + (now - self._stamp) * self.rate, self._burst())
        self._stamp = now

    def _arm(self) -> None:
        if self._timer is None:
            wait = max(-self.tokens / self.rate, _LEAST_WAIT)
            self._timer = asyncio.get_running_loop().call_later(wait, self._wake)

    def _wake(self) -> None:
        """Resume the transfers waiting, first paused first, while the bucket holds tokens;
        each takes its piece as it is resumed (libcurl hands it back within `pause`)."""
        self._timer = None
        self._refill()
        while self._waiting and self.tokens >= 0:
            transfer = self._waiting.popleft()
            transfer.granted = True
            transfer.resume_for_rate()
        if self._waiting:
            self._arm()
