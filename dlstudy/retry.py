"""When to try again and how long to wait: exponential backoff with jitter, Retry-After honoured."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

# Statuses that mean "not now" rather than "no": PS3.18 and RFC 9110.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE = 0.25  # seconds before the first retry (before jitter)
BACKOFF_CAP = 10.0
# A server may ask for a long pause; more than this and a cron run would sit idle for hours.
RETRY_AFTER_CAP = 60.0


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff for the given (1-based) retry."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** (attempt - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    delay = when - (time.time() if now is None else now)
    return min(max(delay, 0.0), RETRY_AFTER_CAP)
