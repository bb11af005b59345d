"""SIGINT, SIGTERM and SIGHUP during a run: an orderly stop that keeps what was done.

The work is cancelled (in-flight transfers remove their temp files) and KeyboardInterrupt,
Terminated or HungUp is raised, carrying the `.summary` the work attached on its way out, so
the caller prints what was done whatever phase the signal came in: waiting for the lock,
listing, fetching.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio

from ..errors import stop_for
from .pool import first_error

T = TypeVar("T")

# Set while a stop_on_signals is watching: one inside it (a sync's download) just runs.
_WATCHING: ContextVar[bool] = ContextVar("dlstudy_signals_watched", default=False)
_stopping = False
# The handlers in place before the first of the runs watching now (two download_async at once
# in one loop): each run puts these back as it ends, not those it found, which may be the
# other run's (asyncio's, which ignores the signal: Ctrl-C was lost for good).
_callers: dict[signal.Signals, Any] = {}
_watching_runs = 0


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a run: SIGINT, SIGTERM, and SIGHUP (a closed terminal or ssh
    session) unless it is ignored, as `nohup` leaves it for a run meant to outlive those."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


def stop_for_signal(signum: int) -> KeyboardInterrupt:
    """What `signum` raises (errors.stop_for). After a hangup the terminal may be gone, and
    every write to it fails (EIO): the progress display's last frame, the summary and the
    error line would raise instead of the stop. Its descriptors then lead to /dev/null."""
    if signum == signal.SIGHUP:
        for fd in (1, 2):
            try:
                os.write(fd, b"")  # a terminal hung up refuses even this
            except OSError as exc:
                if exc.errno == errno.EIO:
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, fd)
                    os.close(null)
    return stop_for(signum)


def stopping() -> bool:
    """Whether a signal has started an orderly stop of the last run: a second one, while it
    finishes and prints what it did, has nothing left to stop (the CLI ignores it)."""
    return _stopping


async def stop_on_signals(work: Awaitable[T]) -> T:
    """Run `work`; on a stop signal cancel it and raise what `stop_for` makes of it.

    Signals can only be caught this way in the main thread; elsewhere `work` just runs. The
    handlers in place before are put back after: anyio's receiver leaves SIGTERM at its
    default, and a second SIGTERM while the summary is printed would kill the process mute.
    """
    if threading.current_thread() is not threading.main_thread() or _WATCHING.get():
        return await work
    global _stopping, _watching_runs
    _stopping = False
    if not _watching_runs:
        _callers.update({signum: signal.getsignal(signum) for signum in stop_signals()})
    _watching_runs += 1
    token = _WATCHING.set(True)
    received: list[int] = []
    carried: list[Any] = []  # the summary the work attached to its cancellation
    try:
        with anyio.open_signal_receiver(*_callers) as signals, first_error():
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    global _stopping
                    async for signum in signals:
                        _stopping = True
                        received.append(signum)
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(watch)
                try:
                    result = await work
                except BaseException as exc:
                    carried.append(getattr(exc, "summary", None))
                    raise
                tg.cancel_scope.cancel()  # done: stop watching
    finally:
        _WATCHING.reset(token)
        _watching_runs -= 1
        for signum, handler in _callers.items():
            if handler is not None:
                signal.signal(signum, handler)
        if not _watching_runs:
            _callers.clear()
    if received:
        stop = stop_for_signal(received[0])
        if carried and carried[0] is not None:
            stop.summary = carried[0]  # type: ignore[attr-defined]
        raise stop
    return result
