"""When to try again and how long to wait: exponential backoff with jitter, Retry-After honoured."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TypeVar

import anyio

from ..errors import HttpStatusError, TransferError
from .throttle import THROTTLE_STATUS, Throttle

log = logging.getLogger(__name__)

T = TypeVar("T")

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


class RetryTally:
    """How many attempts failed and were tried again, under one policy (for the summary)."""

    def __init__(self, retried: int = 0) -> None:
        self.retried = retried


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    budget: float  # seconds from the first attempt after which no retry starts
    window: float  # --timeout: the watchdog window of each attempt
    tally: RetryTally = field(default_factory=RetryTally, compare=False)


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy,
    throttle: Throttle | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run `attempt` until it succeeds, fails for good, or runs out of retries or time."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            if throttle is None:
                result = await attempt()
            else:
                async with throttle.slot():
                    result = await attempt()
        except TransferError as exc:
            if not exc.message.startswith(what):
                exc.message = f"{what}: {exc.message}"
            retry_after = exc.retry_after if isinstance(exc, HttpStatusError) else None
            if throttle and isinstance(exc, HttpStatusError) and exc.status_code in THROTTLE_STATUS:
                throttle.slow_down(exc.status_code, retry_after)
            delay = max(backoff_delay(tries, rng), retry_after or 0.0)
            out_of_time = time.monotonic() + delay - started > policy.budget
            if not exc.retryable or tries > policy.retries or out_of_time:
                if tries > 1:
                    exc.message = f"{exc.message} (after {tries} attempts)"
                raise
            policy.tally.retried += 1
            log.info("retrying in %.2fs: %s", delay, exc)
            await anyio.sleep(delay)
        else:
            if throttle is not None:
                throttle.succeeded()
            return result
