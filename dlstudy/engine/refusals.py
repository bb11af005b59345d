"""When a server's refusals are a verdict on what it can do, not on one request.

One request refused says little: its study may be gone, stored twice, or hold the one image the
server cannot convert. REFUSALS_FOR_UNSUPPORTED refusals of different requests before any of
them succeeded say the server does not do it at all, and it is not asked again. One rule for
series/study retrieval (engine/bulk.py) and for an explicit --transfer-syntax (engine/fetch.py).
"""

from __future__ import annotations

# Definitive refusals of different requests, before any succeeded, that make the verdict: one
# missing study or series, or one image the server cannot transcode, is no such verdict.
REFUSALS_FOR_UNSUPPORTED = 3


class Refusals:
    """Counts refusals of different requests until one succeeds or the verdict is in."""

    def __init__(self) -> None:
        self.count = 0  # definitive refusals while no request has succeeded
        self.last: str | None = None  # the last of them
        self.succeeded = False  # a request succeeded: the server does it
        self.verdict: str | None = None  # why the server will not do it, once it is known

    def success(self) -> None:
        self.succeeded = True

    def refused(self, reason: str) -> bool:
        """Count one refusal; True when the verdict is in (now or before). Once a request
        succeeded, a refusal is about that request alone."""
        if self.succeeded:
            return False
        self.count += 1
        self.last = reason
        if self.count >= REFUSALS_FOR_UNSUPPORTED and self.verdict is None:
            self.verdict = reason
        return self.verdict is not None
