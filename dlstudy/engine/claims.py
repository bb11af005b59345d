"""The instances of a run handed out one at a time to whichever process asks next (this one or
a worker): one counter in shared memory, so no process idles while another has a backlog."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..model import InstanceRef


class SharedClaims:
    """`refs` (the same list in every process) and `counter`, a multiprocessing Value("q")
    shared by them all."""

    def __init__(self, refs: Sequence[InstanceRef], counter: Any) -> None:
        self.refs = refs
        self._next = counter

    def claim(self) -> InstanceRef | None:
        with self._next.get_lock():
            index: int = self._next.value
            if index >= len(self.refs):
                return None
            self._next.value = index + 1
        return self.refs[index]

    def __iter__(self) -> Iterator[InstanceRef]:
        while (ref := self.claim()) is not None:
            yield ref

    def remaining(self) -> int:
        with self._next.get_lock():
            return max(0, len(self.refs) - int(self._next.value))
