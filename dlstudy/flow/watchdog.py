"""A QIDO page must arrive within its window: a deadline on the whole request.

httpx's read timeout applies per chunk (DOMAIN.md): a server dripping one byte every 0.3 s
passes a 1 s read timeout forever. A page is small (less than MIN_PROGRESS_BYTES), so this
watchdog gives it a deadline. Retrievals, which may be any size, must bring MIN_PROGRESS_BYTES
every --timeout seconds instead: libcurl's low-speed check, set by Transport.stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from ..errors import TransferError

# 64 KiB per window: with the default 30 s window a transfer may crawl at ~2 KiB/s before it
# is called stalled, slow enough for any real link, far faster than a drip.
MIN_PROGRESS_BYTES = 64 * 1024


@contextmanager
def watchdog(window: float, what: str) -> Iterator[None]:
    """Run the block within `window` seconds; a stall raises a retryable TransferError."""
    with anyio.CancelScope(deadline=anyio.current_time() + window) as scope:
        yield
    if scope.cancelled_caught:
        raise TransferError(
            f"{what}: stalled (less than {MIN_PROGRESS_BYTES // 1024} KiB in {window:g} s)",
            retryable=True,
        )
