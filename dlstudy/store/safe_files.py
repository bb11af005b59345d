"""Opening files in an output folder that may hold planted links, pipes or devices.

Anything under OUT may have been put there by someone else: a symbolic link at a state file
would make dlstudy write through it, a named pipe at a final path would block a read forever.
Files are therefore opened without following a link and without blocking, and used only when
they turn out to be regular files.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Any, BinaryIO

_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


class NotRegularFile(OSError):
    """A path that is something other than a regular file (its `strerror` says what)."""


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular_fd(path: Path | str, flags: int, mode: int = 0o666) -> int:
    """os.open that never follows a final symbolic link, never blocks on a pipe, and returns
    a descriptor only for a regular file (NotRegularFile otherwise)."""
    try:
        fd = os.open(path, flags | _SAFE, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO) or isinstance(exc, IsADirectoryError):
            found = os.lstat(path).st_mode if os.path.lexists(path) else 0
            raise NotRegularFile(exc.errno, f"is {kind_of(found)}", str(path)) from None
        raise
    found = os.fstat(fd).st_mode
    if not stat.S_ISREG(found):
        os.close(fd)
        raise NotRegularFile(0, f"is {kind_of(found)}", str(path))
    return fd


def open_text_for_update(path: Path | str) -> IO[str]:
    """A regular file opened (created if missing) for reading and writing text."""
    text: IO[str] = _wrap(open_regular_fd(path, os.O_RDWR | os.O_CREAT), "r+")
    return text


def open_binary(path: Path | str) -> BinaryIO:
    """A regular file opened for reading bytes (NotRegularFile for anything else)."""
    binary: BinaryIO = _wrap(open_regular_fd(path, os.O_RDONLY), "rb")
    return binary


def _wrap(fd: int, mode: str) -> Any:
    try:
        return open(fd, mode, encoding=None if "b" in mode else "utf-8")  # the caller closes it
    except BaseException:
        os.close(fd)
        raise


def is_regular_file(path: Path | str) -> bool:
    """Whether `path` itself (not what a link there points at) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def leads_outside(folder: Path | str, root_real: str) -> bool:
    """Whether `folder`, with every link in it resolved, lies outside `root_real` (a realpath)."""
    real = os.path.realpath(folder)
    return real != root_real and not real.startswith(os.path.join(root_real, ""))
