"""Worker processes forked before the event loop starts, each waiting for its share of a run.

Forking is safe while the process has one thread, no event loop and no open connection: the
moment before `anyio.run`. A worker forked then shares the parent's imported modules (no second
interpreter to start, as a fork server needs), is the parent's own child (its CPU is counted
with the parent's), and costs one fork if the run never needs it: it is told to exit.

`standing_by(settings)` around `anyio.run` forks them when the run may use workers; the run
takes them with `current()` (engine/workers.py). Where the moment is not safe (threads already
running, no fork on the platform) none stand by, and workers start from the fork server.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from .claims import SharedClaims
from .worker_process import WorkerJob, become_worker, serve

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection

    from ..model import InstanceRef


_STOPS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class Standby:
    """`count` forked workers; each runs the first job it is sent (or exits when its pipe
    closes), taking instances through one shared counter, reporting on the same pipe."""

    def __init__(self, count: int) -> None:
        import multiprocessing  # only when workers may start

        context = multiprocessing.get_context("fork")
        # What exists now (modules, classes, functions) lives for the whole run: out of the
        # collector's reach, neither process writes to its pages, so they stay shared. Given
        # back to the collector after the run unless frozen before (the CLI's own freeze): a
        # library caller's garbage of that moment would never be collected.
        self.thaw = gc.get_freeze_count() == 0
        gc.freeze()
        self.counter: Any = context.Value("q", 0)  # the next instance of the run's list
        self.idle: list[tuple[Any, Connection]] = []
        # Ctrl-C, SIGTERM and SIGHUP wait while the workers are forked: one that came in the
        # middle of a fork would interrupt its at-fork handlers (a traceback, swallowed), or a
        # child before it ignores SIGINT and SIGHUP. Delivered once the forks are done, it
        # stops the run.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        try:
            for _ in range(count):
                parent_end, child_end = context.Pipe()  # the job down, the reports up
                # A child keeps no parent end open, or closing one would not reach its worker.
                others = [conn for _, conn in self.idle] + [parent_end]
                process = context.Process(
                    target=_wait_for_job, args=(child_end, self.counter, others), daemon=True
                )
                process.start()
                child_end.close()
                self.idle.append((process, parent_end))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def take(self, count: int) -> list[tuple[Any, Connection]]:
        taken, self.idle = self.idle[:count], self.idle[count:]
        return taken

    def close(self) -> None:
        """Let the workers no run took exit; unfreeze what was frozen for them."""
        for process, conn in self.idle:
            conn.close()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        self.idle = []
        if self.thaw:
            gc.unfreeze()


_CURRENT: ContextVar[Standby | None] = ContextVar("dlstudy_standby", default=None)


def current() -> Standby | None:
    return _CURRENT.get()


@contextmanager
def standing_by(count: int) -> Iterator[None]:
    """Fork `count` workers for what runs inside (if forking is safe here), close them after."""
    if count < 1 or not _safe_to_fork():
        yield
        return
    standby = Standby(count)
    token = _CURRENT.set(standby)
    try:
        yield
    finally:
        _CURRENT.reset(token)
        standby.close()


def _safe_to_fork() -> bool:
    import multiprocessing

    return (
        "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and no_running_loop()
    )


def no_running_loop() -> bool:
    """Whether this thread runs no asyncio event loop (a notebook's, say)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def _wait_for_job(conn: Connection, counter: Any, inherited: list[Connection]) -> None:
    become_worker()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)  # blocked by the fork (Standby)
    for other in inherited:
        other.close()
    try:
        job: WorkerJob = conn.recv()
    except (EOFError, OSError):
        conn.close()
        return  # not needed
    refs = cast("Sequence[InstanceRef]", job.refs)  # the list itself (workers._FromStandby)
    serve(replace(job, refs=SharedClaims(refs, counter)), conn)
