"""One run per output folder: an advisory lock on OUT/.dlstudy/lock.

flock is released by the kernel when the process dies, so a crashed run never leaves a stale
lock behind (unlike a pid file).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from pathlib import Path

import anyio

from ..errors import LockedError, OutputError, StorageError
from .safe_files import open_text_for_update

log = logging.getLogger(__name__)

LOCK_NAME = "lock"

# Folders the run in this context already holds: a nested take (sync around its download) is
# a no-op. Per context, not per process: another thread's or task's run into the same folder
# opens the file again, and flock refuses it that second open file description, as it refuses
# another process.
_HELD: ContextVar[frozenset[Path]] = ContextVar("dlstudy_held_locks", default=frozenset())


# How often `--wait` tries the lock again. Tried, not blocked on: a blocking flock would keep
# the event loop (and so Ctrl-C) waiting as long as the other run holds it.
WAIT_POLL_SECONDS = 0.2


@asynccontextmanager
async def output_lock(state_dir: Path, *, wait: bool) -> AsyncIterator[None]:
    """Hold the lock of the output folder whose state lives in `state_dir` (re-entrant);
    `wait`: until the run holding it ends (cancellable), else LockedError at once."""
    key = _key(state_dir)
    if key in _HELD.get():
        yield
        return
    path = state_dir / LOCK_NAME
    try:
        fp = open_text_for_update(path)
    except OSError as exc:
        raise OutputError(
            f"cannot use {str(path)!r}: {exc.strerror or exc}", path=str(path)
        ) from exc
    with fp:
        said = False
        while True:
            try:
                fcntl.flock(fp.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fp.seek(0)
                in_use = (
                    f"output folder {str(state_dir.parent)!r} is in use by another dlstudy "
                    f"run (pid {fp.read().strip() or '?'})"
                )
                if not wait:
                    raise LockedError(
                        f"{in_use}; use --wait to wait for it", path=str(state_dir.parent)
                    ) from None
                if not said:  # a wait may last hours: say why nothing happens
                    log.warning("%s: waiting for it to end (--wait)", in_use)
                    said = True
                await anyio.sleep(WAIT_POLL_SECONDS)
        try:  # unbuffered: nothing left for closing the file to fail on
            os.ftruncate(fp.fileno(), 0)
            os.pwrite(fp.fileno(), str(os.getpid()).encode(), 0)
        except OSError as exc:  # a full disk: the run could not write anything else either
            raise StorageError(
                f"cannot write {str(path)!r}: {exc.strerror or exc}", path=str(path)
            ) from exc
        token = _HELD.set(_HELD.get() | {key})
        try:
            yield
        finally:
            _HELD.reset(token)
            with suppress(OSError):  # the pid is only what a second run shows
                os.ftruncate(fp.fileno(), 0)
            fcntl.flock(fp.fileno(), fcntl.LOCK_UN)


def _key(state_dir: Path) -> Path:
    """The folder as the kernel knows it: the same through a link or a relative path."""
    return state_dir.resolve()
