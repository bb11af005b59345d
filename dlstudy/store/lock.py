"""One run per output folder: an advisory lock on OUT itself and on OUT/.dlstudy/lock.

flock is released by the kernel when the process dies, so a crashed run never leaves a stale
lock behind (unlike a pid file). The lock on OUT holds even when OUT/.dlstudy is deleted under
a run (a new lock file would be a new lock); the file's lock is the one older dlstudy versions
take, and the only one where a directory cannot be flocked (NFS refuses it, EBADF).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
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
    with fp, _folder_fd(state_dir.parent) as folder:
        said = False
        if folder is not None and _held_by_our_caller(folder):
            folder = None  # (and never unlocked here: the lock is the caller's)
        while not _lock_all(folder, fp.fileno()):
            fp.seek(0)
            # No pid when OUT/.dlstudy was deleted under the run (this lock file is new), or
            # when no dlstudy holds it: `flock -o OUT dlstudy ...` (flock(1) closes its
            # descriptor before running the command) or a flock of the lock file.
            pid = fp.read().strip()
            by = (
                f"another dlstudy run (pid {pid})" if pid
                else "another process (a dlstudy run, or a flock of the folder)"
            )  # fmt: skip
            in_use = f"output folder {str(state_dir.parent)!r} is in use by {by}"
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
            # Unlocked, not just closed: a forked worker's copy of a descriptor would hold on.
            fcntl.flock(fp.fileno(), fcntl.LOCK_UN)
            if folder is not None:
                fcntl.flock(folder, fcntl.LOCK_UN)


def _key(state_dir: Path) -> Path:
    """The folder as the kernel knows it: the same through a link or a relative path."""
    return state_dir.resolve()


@contextmanager
def _folder_fd(folder: Path) -> Iterator[int | None]:
    """A descriptor of `folder` to flock, or None where it cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:  # (the lock file's lock is still taken)
        log.debug("cannot open %s to lock it: %s", folder, exc)
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _held_by_our_caller(folder: int) -> bool:
    """Whether the folder's lock is held through a descriptor this process inherited: a cron
    line `flock OUT dlstudy sync -o OUT` locks OUT for the run, and left it "in use by another
    dlstudy run" (waiting for ever with --wait). flock on a descriptor of the open file that
    holds the lock succeeds; on any other, it fails while the lock is held."""
    if _try_flock(folder, optional=True):  # free (or no flock here): nothing holds it
        with suppress(OSError):  # (a file system without flock on folders: NFS)
            fcntl.flock(folder, fcntl.LOCK_UN)  # taken again below
        return False
    mine = os.fstat(folder)
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # (no /proc: the lock is taken as held by another run)
        return False
    for fd in descriptors:
        if fd == folder:
            continue
        try:
            found = os.fstat(fd)
            if (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino):
                if _try_flock(fd, optional=False):
                    return True
        except OSError:  # (the listing's own descriptor, closed by now)
            continue
    return False


def _lock_all(folder: int | None, lock_file: int) -> bool:
    """Take both locks, or none: whether they were taken."""
    if folder is not None and not _try_flock(folder, optional=True):
        return False
    if _try_flock(lock_file, optional=False):
        return True
    if folder is not None:
        fcntl.flock(folder, fcntl.LOCK_UN)
    return False


def _try_flock(fd: int, *, optional: bool) -> bool:
    """Whether the exclusive lock on `fd` was taken (not held elsewhere); a lock the file
    system does not offer counts as taken when `optional`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if not optional or exc.errno not in _UNSUPPORTED:
            raise
        log.debug("cannot flock the output folder: %s", exc)
    return True


# What flock on a directory answers where the file system cannot lock one (NFS: EBADF).
_UNSUPPORTED = (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP)
