"""The throttle's slots: taken at once while free, handed out in turn, resized while in use."""

from __future__ import annotations

import anyio

from dlstudy.flow.throttle import Slots, Throttle


def test_free_slots_are_taken_at_once_and_the_rest_wait_in_turn() -> None:
    async def main() -> list[str]:
        slots = Slots(2)
        order: list[str] = []

        async def take(name: str) -> None:
            await slots.acquire()
            order.append(name)

        await slots.acquire()
        await slots.acquire()
        assert slots.taken == 2
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(take, name)
            await anyio.wait_all_tasks_blocked()
            assert order == []  # all three wait
            slots.release()
            await anyio.wait_all_tasks_blocked()
            assert order == ["a"]
            slots.total = 4  # growing hands out what it adds, in turn
            await anyio.wait_all_tasks_blocked()
        assert slots.taken == 4
        return order

    assert anyio.run(main) == ["a", "b", "c"]


def test_shrinking_takes_nothing_back_and_holds_new_requests() -> None:
    async def main() -> None:
        slots = Slots(4)
        for _ in range(4):
            await slots.acquire()
        slots.total = 2
        assert slots.taken == 4
        with anyio.move_on_after(0.05) as waited:
            await slots.acquire()
        assert waited.cancelled_caught
        for _ in range(3):
            slots.release()
        await slots.acquire()  # 1 taken: below the new total again
        assert slots.taken == 2

    anyio.run(main)


def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    async def main() -> None:
        slots = Slots(1)
        await slots.acquire()
        with anyio.move_on_after(0.05):
            await slots.acquire()  # gives up waiting
        slots.release()
        assert slots.taken == 0

        # Handed a slot in the same instant as it is cancelled: it is given back, or held and
        # released by its holder; either way none is left taken.
        async def holder() -> None:
            await slots.acquire()
            try:
                await anyio.sleep_forever()
            finally:
                slots.release()

        await slots.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.wait_all_tasks_blocked()
            slots.release()  # hands it to the waiter...
            tg.cancel_scope.cancel()  # ...which is cancelled before it runs
        assert slots.taken == 0

    anyio.run(main)


def test_throttle_halves_on_a_throttle_answer_and_grows_back_one_by_one() -> None:
    throttle = Throttle(8)
    throttle.slow_down(503, None)
    assert throttle.limit == 4 and throttle.lowest == 4
    for _ in range(4):
        throttle.succeeded()
    assert throttle.limit == 5
    for _ in range(100):
        throttle.succeeded()
    assert throttle.limit == 8  # never beyond the configured concurrency


def test_a_429_retry_after_pauses_every_new_request() -> None:
    async def main() -> float:
        throttle = Throttle(4)
        throttle.slow_down(429, 0.2)
        started = anyio.current_time()
        async with throttle.slot():
            pass
        assert throttle.slots.taken == 0
        return anyio.current_time() - started

    assert anyio.run(main) >= 0.15
