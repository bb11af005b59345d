"""A bounded pool of workers on anyio: N tasks pull units of work from one shared iterator.

Every worker runs on the same event loop, so taking the next item needs no lock, and the number
of in-flight requests is exactly the number of workers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar, cast

import anyio

T = TypeVar("T")
_END = object()


async def run_pool(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[None]],
    size: int,
    limiter: anyio.CapacityLimiter | None = None,
) -> None:
    """Run `worker(item)` for every item with at most `size` running at once (and at most
    `limiter`'s tokens, if given: a limit that can change while the pool runs).

    `worker` must handle per-item failures itself; anything it raises cancels the whole pool
    (that is how a fatal error such as a rejected token stops every transfer at once).
    """
    pending = iter(items)  # may be lazy: another process's workers may take items too

    async def drain() -> None:
        if limiter is None:
            for item in pending:
                await worker(item)
            return
        while True:
            async with limiter:  # a slot first, then an item: none waits claimed but idle
                taken: object = next(pending, _END)
                if taken is _END:
                    return
                await worker(cast(T, taken))

    tasks = min(size, len(items)) if isinstance(items, Sized) else size
    with first_error():
        async with anyio.create_task_group() as tg:
            for _ in range(max(1, tasks)):
                tg.start_soon(drain)


@contextmanager
def first_error() -> Iterator[None]:
    """Re-raise the first real error out of an anyio exception group.

    anyio 4 always wraps task failures in an ExceptionGroup; callers want the one error that
    stopped the run (the others are usually cancellations it caused).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        for leaf in leaves:
            if not isinstance(leaf, anyio.get_cancelled_exc_class()):
                raise leaf from leaf.__cause__
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
