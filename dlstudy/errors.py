"""The dlstudy exception tree. Every class carries the process exit status it maps to.

    DlstudyError                      1  something failed
    ├── UsageError                    2  bad arguments or options
    │   ├── InvalidUidError           2  a UID argument is not a DICOM UID
    │   └── OutputError               2  the output folder cannot be created or written
    ├── StorageError                  1  writing failed mid-run (disk full, permissions)
    ├── LockedError                   5  another run holds the output folder
    ├── ServerError                   3  the server cannot be used at all
    │   ├── ConnectError              3  unknown host, refused connection, TLS failure, timeout
    │   └── AuthError                 3  401 / 403 on the run's first requests
    ├── NothingMatchedError           4  no study, series or instance matched the request
    ├── IncompleteListingError        1  a QIDO listing could not be paged to its end
    ├── TransferError                 1  one instance (or response) could not be fetched
    │   ├── HttpStatusError           1  the server answered a non-success status
    │   └── IntegrityError            1  what arrived is not the instance that was asked for
    └── MultipartError                1  a multipart/related body is malformed (with byte offset)

Library code raises these (always `raise ... from exc`); only the CLI turns them into exit codes.
"""

from __future__ import annotations

import signal
from enum import IntEnum
from typing import Any


class ExitStatus(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    SERVER = 3
    NOTHING_MATCHED = 4
    LOCKED = 5
    INTERRUPTED = 130  # 128 + SIGINT
    HUNG_UP = 129  # 128 + SIGHUP
    TERMINATED = 143  # 128 + SIGTERM


class DlstudyError(Exception):
    """Root of every error dlstudy raises on purpose."""

    exit_status: ExitStatus = ExitStatus.SOME_FAILED
    # What a download or sync did before it failed, a report.summary.Summary (a SyncSummary
    # for sync; typed Any: errors sits below report); None for an error raised before a run
    # began (Settings, StudyQuery) or outside one.
    summary: Any = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(DlstudyError):
    exit_status = ExitStatus.USAGE


class InvalidUidError(UsageError):
    def __init__(self, message: str, *, uid: str) -> None:
        super().__init__(message)
        self.uid = uid


class OutputError(UsageError):
    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class StorageError(DlstudyError):
    """Writing failed after the run started: the run stops, what was committed is kept."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class LockedError(DlstudyError):
    exit_status = ExitStatus.LOCKED

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ServerError(DlstudyError):
    exit_status = ExitStatus.SERVER

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url  # always redacted: never carries credentials


class ConnectError(ServerError):
    pass


class AuthError(ServerError):
    def __init__(self, message: str, *, url: str | None = None, status_code: int) -> None:
        super().__init__(message, url=url)
        self.status_code = status_code


class NothingMatchedError(DlstudyError):
    exit_status = ExitStatus.NOTHING_MATCHED


class IncompleteListingError(DlstudyError):
    """The server announced more results than paging could get (it ignores offset, or caps
    pages and then sends nothing new): the listing, and so the run, would be incomplete."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url  # redacted
        # A study search's: the UIDs it did list (and handed on), when known.
        self.listed: set[str] | None = None


class TransferError(DlstudyError):
    """A failure of one unit of work; `retryable` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        sop_instance_uid: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.sop_instance_uid = sop_instance_uid
        self.retryable = retryable


class HttpStatusError(TransferError):
    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str | None = None,
        sop_instance_uid: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url, sop_instance_uid=sop_instance_uid, retryable=retryable)
        self.status_code = status_code
        self.retry_after = retry_after


class IntegrityError(TransferError):
    # HTTP brought every byte a Content-Length announced and the file is still not whole: the
    # server's own file is so (dicomweb/completeness.py), and asking again brings the same.
    at_source: bool = False


class MultipartError(DlstudyError):
    """Malformed multipart/related input; `offset` is the byte position in the body."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same cleanup paths run."""

    summary: Any = None  # as DlstudyError's
    said = "terminated"
    exit_status = ExitStatus.TERMINATED


class HungUp(Terminated):
    """SIGHUP (the terminal or the ssh session closed): a stop like SIGTERM's, exit 129."""

    said = "hung up"
    exit_status = ExitStatus.HUNG_UP


def stop_for(signum: int) -> KeyboardInterrupt:
    """What a stop signal raises: KeyboardInterrupt (SIGINT), Terminated or HungUp."""
    if signum == signal.SIGHUP:
        return HungUp()
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def how_stopped(stop: KeyboardInterrupt) -> tuple[str, ExitStatus]:
    """The word a stopped run ends on (the error line, `--json`'s `error`) and its status."""
    if isinstance(stop, Terminated):
        return stop.said, stop.exit_status
    return "interrupted", ExitStatus.INTERRUPTED
