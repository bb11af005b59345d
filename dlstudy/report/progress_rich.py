"""The live progress bar (rich) for interactive runs, in its own module: importing rich is a
visible part of start-up, which runs with --json, --quiet or a non-terminal stderr never
need."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from ..model import InstanceRef
from .printable import printable
from .progress import Counters, Listed, _megabytes
from .words import counted


class _CountersColumn(ProgressColumn):
    def __init__(self, counters: Counters) -> None:
        super().__init__()
        self.counters = counters

    def render(self, task: Task) -> Text:
        c = self.counters
        failed = f" ({c.failed} failed)" if c.failed else ""
        return Text(
            f"{c.done}/{c.total} instances{c.listing_note()}{failed} • {_megabytes(c.bytes)} • "
            f"{_megabytes(c.rate())}/s • {c.timing()}"
        )


class RichProgress:
    """A live bar on stderr for interactive use."""

    def __init__(
        self, console: Console | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console = console or Console(stderr=True)
        self.counters = Counters(clock)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            _CountersColumn(self.counters),
            console=self.console,
            get_time=clock,
            transient=False,
        )
        self.task = self.progress.add_task("resolving", total=None)
        self.started = False
        self.downloading = False

    def _show(self) -> None:
        # Started with the run, not before: its refresh thread would make forking the
        # standing-by workers (engine/standby.py) unsafe.
        if not self.started:
            self.started = True
            self.progress.start()

    def resolving(self, study_uid: str) -> None:
        self._show()
        if not self.downloading:  # (a long list's later parts resolve while it downloads)
            self.progress.update(self.task, description=f"resolving {escape(printable(study_uid))}")

    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None:
        self._show()
        self.counters.total = total - skipped
        self.counters.listed = listed
        if skipped and not self.downloading:
            self.console.print(
                f"{skipped} of {counted(total, 'instance')} already present, skipping"
            )
        self.downloading = True
        self.progress.update(self.task, description="downloading", total=max(total - skipped, 0))

    def advance(self, nbytes: int) -> None:
        self.counters.bytes += nbytes

    def instance_done(self, ref: InstanceRef, nbytes: int) -> None:
        self.counters.done += 1
        self.progress.advance(self.task)

    def instance_failed(self, ref: InstanceRef, reason: str) -> None:
        # Counted on the bar; the summary at the end lists each failure once, with its reason.
        self.counters.failed += 1
        self.progress.advance(self.task)

    def close(self) -> None:
        self.progress.update(self.task, description=self.counters.outcome())
        self.progress.stop()
