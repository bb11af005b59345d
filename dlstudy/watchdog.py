"""A QIDO search must keep moving: at least MIN_PROGRESS_BYTES every `window` seconds.

httpx's read timeout applies per chunk (DOMAIN.md): a server dripping one byte every 0.3 s
passes a 1 s read timeout forever. This watchdog bounds the crawl of a query instead. The same
rule for retrievals (64 KiB every --timeout seconds) is libcurl's low-speed check, set by
Transport.stream: it runs in C, once a second, instead of a cancel scope per instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from .errors import TransferError

# 64 KiB per window: with the default 30 s window a transfer may crawl at ~2 KiB/s before it
# is called stalled, slow enough for any real link, far faster than a drip.
MIN_PROGRESS_BYTES = 64 * 1024


class Progress:
    def __init__(self, scope: anyio.CancelScope, window: float) -> None:
        self._scope = scope
        self._window = window
        self._pending = 0

    def add(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= MIN_PROGRESS_BYTES:
            self._pending = 0
            self._scope.deadline = anyio.current_time() + self._window


@contextmanager
def watchdog(window: float, what: str) -> Iterator[Progress]:
    """Run the block under the progress rule; a stall raises a retryable TransferError."""
    with anyio.CancelScope(deadline=anyio.current_time() + window) as scope:
        yield Progress(scope, window)
    if scope.cancelled_caught:
        raise TransferError(
            f"{what}: stalled (less than {MIN_PROGRESS_BYTES // 1024} KiB in {window:g} s)",
            retryable=True,
        )
