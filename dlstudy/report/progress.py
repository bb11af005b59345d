"""Progress reporting: a tiny sink interface with plain-log and no-op implementations (the rich
bar is in progress_rich.py).

The download loop calls `advance(n)` for every received chunk, so that path is one integer
addition; rendering happens on rich's own refresh thread or at most every few seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Protocol

from ..model import InstanceRef
from .printable import printable
from .words import counted

# (entries of the list resolved so far, entries in the whole list)
Listed = tuple[int, int]


class ProgressSink(Protocol):
    """What a run reports as it goes. `start(total, skipped)` comes when the instances to fetch
    are known; a long list, resolved in parts while earlier parts download (jobs/parts.py),
    calls it again with each part, the totals so far growing, and `listed` saying how much of
    the list they cover."""

    def resolving(self, study_uid: str) -> None: ...
    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def instance_done(self, ref: InstanceRef, nbytes: int) -> None: ...
    def instance_failed(self, ref: InstanceRef, reason: str) -> None: ...
    def close(self) -> None: ...


SINK_METHODS = ("resolving", "start", "advance", "instance_done", "instance_failed", "close")


def sink_problem(progress: object) -> str | None:
    """Why `progress` cannot be a run's sink (a method of ProgressSink it lacks), or None. A
    library caller's sink without one failed deep in the run with an AttributeError."""
    for name in SINK_METHODS:
        if not callable(getattr(progress, name, None)):
            kind = type(progress).__name__
            return f"progress must have ProgressSink's methods: {kind} has no {name}()"
    return None


class Counters:
    """What every sink shows: instances done out of total, bytes, and the rate."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.total = 0
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self.started = clock()
        self.listed: Listed | None = None  # None: the whole job is listed

    @property
    def partly_listed(self) -> bool:
        return self.listed is not None and self.listed[0] < self.listed[1]

    def listing_note(self) -> str:
        """` (5,000 of 100,000 list entries resolved)` while a long list is being resolved."""
        if self.listed is None or not self.partly_listed:
            return ""
        return f" ({self.listed[0]:,} of {self.listed[1]:,} list entries resolved)"

    def outcome(self) -> str:
        """How the transfers ended: `done`, `N failed`, or `stopped` (interrupted, or a fatal
        error, before every instance was accounted for)."""
        if self.done + self.failed < self.total:
            return "stopped"
        return f"{self.failed} failed" if self.failed else "done"

    def rate(self) -> float:
        """Bytes received per second since the run started: the summary's MB/s, live."""
        elapsed = self.clock() - self.started
        return self.bytes / elapsed if elapsed > 0 else 0.0

    def timing(self) -> str:
        """`ETA m:ss` while running (`ETA ~m:ss` while part of the list is still to be
        resolved: an estimate), `in m:ss` once every instance is accounted for."""
        if self.total and self.done + self.failed >= self.total and not self.partly_listed:
            return f"in {_duration(self.clock() - self.started)}"
        return f"ETA {'~' if self.partly_listed else ''}{_duration(self.eta())}"

    def expected_total(self) -> float:
        """The instances of the whole job: those listed so far, or while part of the list is
        still to be resolved, as many per entry for the rest as for the entries resolved."""
        if self.listed is None or not self.partly_listed or self.listed[0] <= 0:
            return self.total
        resolved, entries = self.listed
        return self.total * entries / resolved

    def eta(self) -> float | None:
        finished = self.done + self.failed
        elapsed = self.clock() - self.started
        total = self.expected_total()
        if finished == 0 or elapsed <= 0 or total <= finished:
            return None
        return elapsed / finished * (total - finished)


def _megabytes(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# Failures get a line each up to this many; after that, the periodic line counts them.
FAILURE_LINES = 20


class NullProgress:
    """For --quiet, --json and library callers who want nothing printed."""

    def resolving(self, study_uid: str) -> None:
        pass

    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def instance_done(self, ref: InstanceRef, nbytes: int) -> None:
        pass

    def instance_failed(self, ref: InstanceRef, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """Periodic log lines for cron and pipes: no cursor tricks, one line every `interval` s."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.counters = Counters(clock)
        self._next = clock() + interval
        self._resolving = 0
        self._started = False

    def _emit(self, text: str) -> None:
        print(f"dlstudy: {printable(text)}", file=self.stream, flush=True)

    def resolving(self, study_uid: str) -> None:
        self._resolving += 1
        now = self.counters.clock()
        if self._resolving == 1 or now >= self._next:  # a long list: a line per interval
            self._next = now + self.interval
            listed = f" ({self._resolving:,} listed so far)" if self._resolving > 1 else ""
            self._emit(f"resolving study {study_uid}{listed}")

    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None:
        self.counters.total = total - skipped
        self.counters.listed = listed
        if self._started:  # a later part of a long list: the periodic line shows the totals
            return
        self._started = True
        self._next = self.counters.clock() + self.interval
        note = f" ({skipped} already present)" if skipped else ""
        if self.counters.partly_listed:
            note += f" so far{self.counters.listing_note()}"
        self._emit(f"downloading {total - skipped} of {counted(total, 'instance')}{note}")

    def advance(self, nbytes: int) -> None:
        self.counters.bytes += nbytes

    def instance_done(self, ref: InstanceRef, nbytes: int) -> None:
        self.counters.done += 1
        self._maybe_report()

    def instance_failed(self, ref: InstanceRef, reason: str) -> None:
        self.counters.failed += 1
        if self.counters.failed <= FAILURE_LINES:
            self._emit(f"failed: {reason}")
        self._maybe_report()

    def _maybe_report(self) -> None:
        now = self.counters.clock()
        if now >= self._next:
            self._next = now + self.interval
            self._report()

    def _report(self) -> None:
        c = self.counters
        failed = f", {c.failed:,} failed" if c.failed else ""
        self._emit(
            f"{c.done}/{c.total} instances{c.listing_note()}{failed}, {_megabytes(c.bytes)}, "
            f"{_megabytes(c.rate())}/s, {c.timing()}"
        )

    def close(self) -> None:
        if self.counters.total:
            self._report()
