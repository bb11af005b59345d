"""The bounded pool: exactly as many in flight as allowed, every item once."""

from __future__ import annotations

import anyio
import pytest

from dlstudy.engine.workers import split_concurrency
from dlstudy.flow.pool import run_pool


def test_a_limiter_lowered_mid_run_holds_from_then_on_and_no_item_waits_claimed() -> None:
    limiter = anyio.CapacityLimiter(8)
    items = iter(range(200))
    seen: list[int] = []
    in_flight = 0
    peaks: list[tuple[int, int]] = []  # (in flight, limit) as each item starts

    async def work(item: int) -> None:
        nonlocal in_flight
        in_flight += 1
        peaks.append((in_flight, int(limiter.total_tokens)))
        seen.append(item)
        if item == 50:
            limiter.total_tokens = 3
        await anyio.sleep(0.001)
        in_flight -= 1

    anyio.run(run_pool, items, work, 16, limiter)
    assert sorted(seen) == list(range(200))
    assert max(n for n, _ in peaks) <= 8
    # Tokens granted under the old limit (at most 8) may still start; after them, no more than 3.
    lowered = [n for n, limit in peaks if limit == 3]
    assert max(lowered) <= 8
    assert lowered[8:] and max(lowered[8:]) <= 3


@pytest.mark.parametrize(
    ("concurrency", "processes", "expected"),
    [(16, 2, (8, 8)), (5, 2, (3, 2)), (16, 3, (6, 5)), (4, 4, (1, 1)), (3, 4, (3, 0))],
)
def test_concurrency_is_shared_out_and_never_exceeded(
    concurrency: int, processes: int, expected: tuple[int, int]
) -> None:
    own, each = split_concurrency(concurrency, processes)
    assert (own, each) == expected
    assert own + each * (processes - 1) == concurrency
