"""The instances of a run handed out one at a time to whichever process asks next (this one or
a worker): one counter in shared memory, so no process idles while another has a backlog."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..model import InstanceRef

# Seconds a claim waits for the counter's lock before it looks whether the process that
# started this one is still there: a process killed while it holds the lock (SIGKILL, the OOM
# killer) never gives it back, and a worker waiting for it would wait for good.
LOCK_PATIENCE = 1.0

# In a worker, the pid of the process that started it (note_parent); None in the parent.
_started_by: int | None = None


def note_parent() -> None:
    """A worker's first step: remember its parent, to see it go (it is then another's child)."""
    global _started_by
    _started_by = os.getppid()


def parent_gone() -> bool:
    return _started_by is not None and os.getppid() != _started_by


class SharedClaims:
    """`refs` (the same list in every process) and `counter`, a multiprocessing Value("q")
    shared by them all."""

    def __init__(self, refs: Sequence[InstanceRef], counter: Any) -> None:
        self.refs = refs
        self._next = counter
        self.gave_up = False  # a claim ended waiting for a lock whose holder may be dead

    def claim(self, give_up: Callable[[], bool] = parent_gone) -> InstanceRef | None:
        """The next instance, or None when all are taken; None too when the lock stays taken
        and `give_up()`: its holder may have died holding it. By default, in a worker whose
        parent has died: the worker must end, not hold its caller's output open for good."""
        lock = self._next.get_lock()
        while not lock.acquire(timeout=LOCK_PATIENCE):
            if give_up():
                self.gave_up = True
                return None
        try:
            index: int = self._next.value
            if index >= len(self.refs):
                return None
            self._next.value = index + 1
        finally:
            lock.release()
        return self.refs[index]

    def __iter__(self) -> Iterator[InstanceRef]:
        return self.until(parent_gone)

    def until(self, give_up: Callable[[], bool]) -> Iterator[InstanceRef]:
        """Claims until all are taken, or the lock stays taken and `give_up()`. The parent
        gives up when a worker died (one killed holding the lock would keep the run waiting
        for good, deaf to Ctrl-C, the output folder locked); a worker, iterating, when its
        parent did."""
        while (ref := self.claim(give_up)) is not None:
            yield ref

    def remaining(self) -> int:
        with self._next.get_lock():
            return max(0, len(self.refs) - int(self._next.value))
