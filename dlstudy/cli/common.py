"""What every command shares: logging setup, the progress sink choice, error -> exit code."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Protocol, TypeVar

import typer

from ..errors import DlstudyError, ExitStatus, how_stopped
from ..flow.signals import stop_for_signal, stop_signals, stopping
from ..report.printable import printable
from ..report.progress import NullProgress, PlainProgress, ProgressSink
from ..report.summary import Summary


class Outcome(Protocol):
    """A run's summary as --json prints it however the run ends (report.summary.Summary,
    catalog.summary.PullSummary)."""

    error: str | None
    exit_status: ExitStatus

    def as_dict(self) -> dict[str, Any]: ...

    def one_line(self) -> str: ...


AnOutcome = TypeVar("AnOutcome", bound=Outcome)

# How a run ended, for --log-file only (stderr shows it already): the error, the summary line
# and every failure, so a cron job's log is the record of the run.
outcome = logging.getLogger("dlstudy.outcome")
outcome.propagate = False
outcome.addHandler(logging.NullHandler())  # without --log-file: nowhere (not logging's last resort)


class LogFile(logging.FileHandler):
    """--log-file. A record that cannot be written (a full disk) ends the log: logging would
    print a traceback to stderr for it and for each record after, and the run end as if the
    log were whole. The run says so as it ends instead (`finish`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.shown = str(path)
        self.failure: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if self.failure is None:
            exc = sys.exc_info()[1]
            reason = getattr(exc, "strerror", None) or exc
            self.failure = f"cannot write --log-file {self.shown!r}: {reason}"

    def flush(self) -> None:
        if self.failure is None:
            super().flush()

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the rest of its buffer, which the disk refused already
            pass


class PrintableFormatter(logging.Formatter):
    """A record's line with what a server or a file name put in it escaped (report/printable.py):
    one record, one line, no terminal control. A traceback after it (--verbose) stays as is."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))


_log_file: LogFile | None = None

# The `extra` of a warning --quiet does not silence: --insecure's, which says every run is
# open to a man in the middle.
ALWAYS_SHOWN = {"always_shown": True}


def _shown_when_quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or getattr(record, "always_shown", False)


def log_file_failure() -> str | None:
    """Why the --log-file of this command could not be written to its end; None if it was."""
    return None if _log_file is None else _log_file.failure


def setup_logging(verbose: bool, log_file: Path | None, *, quiet: bool = False) -> None:
    """dlstudy's own loggers only: httpx logs full URLs (with any secrets) at INFO. Warnings
    go to stderr unless `quiet` (--quiet leaves only errors there: cron mails nothing else)."""
    logger = logging.getLogger("dlstudy")
    for owner in (logger, outcome):
        for old in [h for h in owner.handlers if getattr(h, "dlstudy_cli", False)]:
            owner.removeHandler(old)  # a previous command in the same process (tests, demo)
            old.close()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO if log_file else logging.WARNING)
    formatter = PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(formatter)
    else:  # warnings only, in the shape of the CLI's other lines
        handler.setLevel(logging.WARNING)
        handler.setFormatter(PrintableFormatter("dlstudy: warning: %(message)s"))
        if quiet:
            handler.addFilter(_shown_when_quiet)
    handler.dlstudy_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    global _log_file
    _log_file = None
    if log_file is not None:
        try:
            file_handler = _log_file = LogFile(log_file)
        except OSError as exc:
            fail_usage(f"cannot open --log-file {str(log_file)!r}: {exc.strerror or exc}")
        file_handler.setFormatter(formatter)
        file_handler.dlstudy_cli = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
        outcome.addHandler(file_handler)
        outcome.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


# What a stopped download or sync leaves for the next run (exit_on_interrupt's `kept`).
RESUMABLE = "completed instances are kept, rerun the same command to resume"

# The stop exit_on_interrupt's handler raised for SIGTERM or SIGHUP (see stop_behind).
_signalled: KeyboardInterrupt | None = None


def stop_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The interrupt DuckDB swallowed, when `exc` is what it raises instead. A signal that
    comes while a DuckDB query runs on the main thread runs its handler there, and DuckDB
    replaces the handler's exception (KeyboardInterrupt, Terminated) with its own
    `RuntimeError: Query interrupted`; dlstudy never interrupts a query itself, so that one
    is always a signal's: the one exit_on_interrupt's handler saw, else Ctrl-C."""
    if type(exc) is not RuntimeError or str(exc) != "Query interrupted":
        return None
    return KeyboardInterrupt() if _signalled is None else type(_signalled)()


@contextmanager
def exit_on_interrupt(
    *,
    json_output: bool = False,
    quiet: bool = False,
    kept: str = "",
    before_run: Callable[[], Outcome] | None = None,
) -> Iterator[None]:
    """Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, after in-flight transfers removed their
    temp files.

    The summary of what was done so far is printed as for any other ending (its line not under
    --quiet, which leaves only errors on stderr); `kept` says what the stopped command leaves
    for the next one (RESUMABLE for a download; empty: it leaves nothing, as a search).
    `before_run` makes the summary of a command stopped before its run began (reading its
    list, say): with --json, stdout still gets one.
    """

    global _signalled
    _signalled = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        global _signalled
        if not stopping():  # else the run is stopping already: let it print what it did
            _signalled = stop_for_signal(signum)
            raise _signalled

    # While the download runs, download_async turns these signals into an orderly stop;
    # these handlers cover the moments before and after it.
    in_main_thread = threading.current_thread() is threading.main_thread()
    watched = stop_signals() if in_main_thread else ()
    previous: dict[signal.Signals, Any] = {signum: signal.getsignal(signum) for signum in watched}
    for signum in watched:
        if signum != signal.SIGINT:  # Python's own raises KeyboardInterrupt
            signal.signal(signum, on_signal)
    try:
        try:
            yield
        except RuntimeError as exc:  # a signal while DuckDB ran a query
            if (stop := stop_behind(exc)) is None:
                raise
            raise stop from None
    except KeyboardInterrupt as exc:
        for signum in previous:  # stopping: a second signal must not cut the summary short
            signal.signal(signum, signal.SIG_IGN)
        said, status = how_stopped(exc)
        summary: Outcome | None = getattr(exc, "summary", None)
        if isinstance(summary, Summary):  # what the run did before it stopped
            log_summary(summary)
        if summary is None and json_output and before_run is not None:
            summary = before_run()
        if summary is not None:
            summary.exit_status = status
            summary.error = said
            if json_output:
                echo_summary(summary)  # the status is the signal's
            elif not quiet:
                typer.echo(printable(summary.one_line()), err=True)
        outcome.warning("%s", said)
        error_line(f"{said}; {kept}" if kept else said)
        raise typer.Exit(status) from exc
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)


def choose_progress(*, quiet: bool, json_output: bool) -> ProgressSink:
    if quiet or json_output:
        return NullProgress()
    if sys.stderr.isatty():
        from ..report.progress_rich import RichProgress  # rich only when a terminal shows it

        return RichProgress()
    return PlainProgress()


def error_line(message: str) -> None:
    typer.echo(f"dlstudy: error: {printable(message)}", err=True)


class Failed(typer.Exit):
    """The exit after an error line: the message travels with it, for a --json summary
    (summary_on_failure)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message


def _stdout_refused(exc: OSError) -> bool:
    """Stdout could not take what was printed: False for a reader that stopped early (`| head`),
    no failure; True, after one line saying so, for a full disk or a file size limit under
    `> FILE`. Stdout is pointed at /dev/null first, so that the exit's flush of what is still
    buffered fails no more."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(exc, BrokenPipeError):
        return False
    error_line(f"cannot write the output: {exc.strerror or exc}")
    return True


def output_failed(exc: OSError) -> NoReturn:
    """Stdout could not take what a command printed: exit 0 for a reader that stopped early,
    else exit 1 after one line (`_stdout_refused`), not a traceback."""
    refused = _stdout_refused(exc)
    raise typer.Exit(int(ExitStatus.SOME_FAILED) if refused else 0) from None


def printed(write: Callable[[], object]) -> bool:
    """Run `write`, which prints to stdout; False when stdout refused it (`> FILE` on a full
    disk), after one line saying so: the caller's exit status is then 1 at least."""
    try:
        write()
    except OSError as exc:
        return not _stdout_refused(exc)
    return True


def echo_summary(summary: Outcome) -> bool:
    """Print the --json object; False when stdout refused it (`printed`)."""
    return printed(lambda: typer.echo(json.dumps(summary.as_dict(), indent=2)))


def fail(message: str, status: int) -> NoReturn:
    error_line(message)
    raise Failed(message, status)


def fail_usage(message: str) -> NoReturn:
    fail(message, int(ExitStatus.USAGE))


def refuse_one_file_twice(files: dict[str, str | Path | None]) -> None:
    """A usage error when two of these options (an input read, outputs written: `--from-file`,
    `--report`, `--log-file`, a catalog) name one file: the report would replace the list it
    was made from, the log run into the list or the report."""
    seen: dict[object, str] = {}
    for option, path in files.items():
        if path is None or str(path) == "-":
            continue
        try:
            found = os.stat(path)
            key: object = (found.st_dev, found.st_ino)  # a link or another name of it too
        except OSError:
            try:
                key = os.path.realpath(path)
            except FileNotFoundError:  # (os.getcwd(): a relative path in a folder deleted)
                fail_usage(
                    f"{option} {str(path)!r}: the current folder no longer exists; "
                    "give an absolute path, or run from another folder"
                )
        if key in seen:
            fail_usage(f"{seen[key]} and {option} name one file, {str(path)!r}: give each its own")
        seen[key] = option


@contextmanager
def summary_on_failure(
    json_output: bool,
    summary: Callable[[], AnOutcome],
    *,
    logged: Callable[[AnOutcome], None] | None = None,
) -> Iterator[None]:
    """With --json, an error dlstudy finds before the run (a bad UID, an unreadable list, a
    --log-file it cannot open) prints the summary object too, `error` and `exit_status` filled
    in, as a fatal error of the run does: a program reading stdout always gets one object.
    The error ends --log-file too, as a fatal error's does, after `logged` (sync's
    run_summary event) had the summary: a cron job's log shows why the night failed."""
    try:
        yield
    except Failed as exc:
        failed = summary()
        failed.error, failed.exit_status = exc.message, ExitStatus(exc.exit_code)
        if logged is not None and _log_file is not None:  # (stderr has the error line alone)
            logged(failed)
        outcome.error("%s", exc.message)  # (nowhere before the log is open)
        if json_output:
            echo_summary(failed)  # the status is the error's
        raise


def log_summary(summary: Summary) -> None:
    """The end of --log-file for a run that ran: its summary line and every failure."""
    outcome.info("%s", summary.one_line())
    for failure in summary.failures:
        outcome.warning("failed: %s", failure.reason)


def finish(
    summary: Summary | None, error: DlstudyError | None, *, json_output: bool, quiet: bool
) -> NoReturn:
    """Print the outcome the way the user asked and exit with the documented status."""
    if error is not None:
        outcome.error("%s", error)
    else:
        assert summary is not None
        log_summary(summary)
    # Written last, so its own failure is known; a run that went well fails for a log
    # cut short (exit 1): cron must not take a lost log for a quiet night.
    lost = log_file_failure()
    if lost is not None and summary is not None and error is None:
        summary.error = summary.error or lost
        summary.exit_status = max(summary.finish(), ExitStatus.SOME_FAILED)
    unwritten = json_output and summary is not None and not echo_summary(summary)
    if error is not None:
        error_line(str(error))
        if lost is not None:
            error_line(lost)
        raise typer.Exit(int(error.exit_status))
    assert summary is not None
    if not json_output:
        if not quiet:  # failures are errors: --quiet keeps them (cron mails them)
            typer.echo(printable(summary.one_line()), err=True)
        for failure in summary.failures[:20]:
            error_line(failure.reason)
        if len(summary.failures) > 20:
            error_line(
                f"... and {len(summary.failures) - 20} more failures (see --report or --json)"
            )
    if lost is not None:
        error_line(lost)
    if unwritten:
        summary.exit_status = max(summary.finish(), ExitStatus.SOME_FAILED)
    raise typer.Exit(int(summary.finish()))


LOG_FORMATS = ("text", "json")


def use_log_format(log_format: str, *, ends_with_run_summary: bool = False) -> None:
    """Switch the CLI's log handlers (set up by setup_logging) to JSON objects. A command
    whose JSON log `ends_with_run_summary` (sync's event says it all) leaves the outcome's
    lines out of it; any other's log ends with them, as objects, as the text log does."""
    if log_format not in LOG_FORMATS:
        fail_usage(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if log_format == "json":
        from ..report.events import JsonFormatter

        for handler in logging.getLogger("dlstudy").handlers:
            if getattr(handler, "dlstudy_cli", False):
                handler.setFormatter(JsonFormatter())
        if ends_with_run_summary:
            for handler in [h for h in outcome.handlers if getattr(h, "dlstudy_cli", False)]:
                outcome.removeHandler(handler)
