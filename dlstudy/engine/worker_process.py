"""The worker side of `--workers N`: a process that fetches the instances it claims and
reports the results to the parent over a pipe, a batch at a time (engine/workers.py is the
parent's side). A worker whose parent is gone stops at its next report.

Its log records go up the same pipe, and the parent logs them as its own: a worker started by
the fork server has none of the parent's logging set-up (-v, --log-file, a library caller's
handlers), and the parent stays the one writer of the log file.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from logging.handlers import QueueHandler
from typing import TYPE_CHECKING, Any

import anyio

from ..dicomweb.negotiate import Negotiator, Retrieval, candidates
from ..errors import DlstudyError, TransferError
from ..flow.pool import first_error, run_pool
from ..flow.retry import RetryPolicy
from ..flow.throttle import Throttle
from ..http.auth import auth_from_settings
from ..http.client import Transport
from ..model import InstanceRef
from ..store.files import Store
from .claims import note_parent
from .fetch import InstanceFetcher

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

# A worker reports at most this often (results and bytes for the progress display): each pipe
# message wakes the parent's event loop.
_REPORT_INTERVAL = 0.05
# A worker with nothing to report says so this often: the parent takes a silence much longer
# (workers.WORKER_SILENCE_SECONDS) for a worker stopped or hung.
HEARTBEAT_SECONDS = 1.0


class ParentGone(Exception):
    pass


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process is given: the run's settings (the share a worker may use), what
    hands out its instances, the retrieval form (None: not settled yet), whether the server
    answered the parent already (a refused connection is then a restart), and the levels of
    the parent's loggers, to log at."""

    settings: Any
    refs: Iterable[InstanceRef]
    form: Retrieval | None
    answered: bool
    log_levels: dict[str, int]


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError) as exc:
        raise ParentGone() from exc


def become_worker() -> None:
    """What every worker process does first: Ctrl-C and SIGHUP go to the parent, which stops
    it; and it does not outlive the parent. SIGTERM ends a waiting worker quietly (a forked one
    has the CLI's handler, which raises for the CLI to report); a working one catches it
    itself."""
    note_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hangup of the group: the parent's stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent dies (even by SIGKILL), so no orphan keeps writing
    into a folder whose lock is gone. Elsewhere the next report to the parent fails instead."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def worker_main(job: WorkerJob, conn: Connection, go: Any) -> None:
    """Entry point of a worker process; it starts fetching once the parent sets `go`."""
    become_worker()
    go.wait()
    serve(job, conn)


def log_levels() -> dict[str, int]:
    """The levels set on this process's loggers (the root's as ""), for a worker to log at."""
    loggers = logging.Logger.manager.loggerDict.items()
    levels = {name: logger.level for name, logger in loggers if isinstance(logger, logging.Logger)}
    levels[""] = logging.getLogger().level
    return {name: level for name, level in levels.items() if level != logging.NOTSET}


def serve(job: WorkerJob, conn: Connection) -> None:
    """Fetch what `job.refs` hands out, report over `conn` until the end, close it; log
    through the parent."""
    try:
        anyio.run(_worker, job, conn)
    except ParentGone:
        pass
    finally:
        conn.close()


async def _worker(job: WorkerJob, conn: Connection) -> None:
    settings = job.settings
    report = _Report(conn)
    _log_through(report, job.log_levels)
    store = Store(settings.output, settings.layout)
    forms = (
        [job.form] if job.form else candidates(settings.transfer_syntax or None, single_part=True)
    )
    throttle = Throttle(settings.concurrency)
    policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
    transport: Transport | None = None
    try:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals, first_error():
            async with anyio.create_task_group() as tg:

                async def stop_on_sigterm() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()  # in-flight transfers drop their temp files
                        return

                tg.start_soon(stop_on_sigterm)
                tg.start_soon(report.every, _REPORT_INTERVAL)
                # (a --token-command runs here: SIGTERM stops it too, and kills it whole)
                auth = await auth_from_settings(settings)
                transport = Transport(settings, auth=auth, answered=job.answered)
                fetcher = InstanceFetcher(
                    transport, store, Negotiator(forms), policy=policy, throttle=throttle
                )
                fetch_one = partial(_fetch_one, fetcher, report)
                await run_pool(job.refs, fetch_one, settings.concurrency)
                tg.cancel_scope.cancel()
    except DlstudyError as exc:
        report.add(("fatal", type(exc).__name__, str(exc), int(exc.exit_status)))
    finally:
        if transport is not None:
            await transport.aclose()
    report.add(("tallied", throttle.signals, policy.tally.retried))
    report.add(("end",))
    report.flush()


async def _fetch_one(fetcher: InstanceFetcher, report: _Report, ref: InstanceRef) -> None:
    try:
        committed = await fetcher.fetch(ref, report.add_bytes)
    except TransferError as exc:
        report.add(("failed", ref, str(exc), getattr(exc, "status_code", None)))
        return
    report.add(("done", ref, str(committed.path), committed.size, committed.digest))


def _log_through(report: _Report, levels: dict[str, int]) -> None:
    """Send every log record to the parent (which handles it as its own), at its levels. A
    forked worker's handlers, copies of the parent's, would write beside the parent's."""
    root = logging.getLogger()
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    for name, level in levels.items():  # ("dlstudy" may not exist here yet: made if not)
        logging.getLogger(name or None).setLevel(level)
    root.addHandler(QueueHandler(report))  # type: ignore[arg-type]


class _Report:
    """A worker's messages to the parent, sent a batch at a time; also the queue of its log
    records (a QueueHandler's: they arrive ready to pickle, arguments merged)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._pending: list[tuple[Any, ...]] = []
        self._bytes = 0
        self._lock = threading.Lock()  # records come from threads too (a commit's checks)
        self._sent = time.monotonic()

    def add_bytes(self, nbytes: int) -> None:
        self._bytes += nbytes

    def add(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append(message)

    def put_nowait(self, record: logging.LogRecord) -> None:
        self.add(("log", record))

    async def every(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if self._bytes:
            batch.insert(0, ("bytes", self._bytes))
            self._bytes = 0
        now = time.monotonic()
        if batch or now - self._sent >= HEARTBEAT_SECONDS:  # (an empty batch: alive)
            _send(self._conn, ("batch", batch))
            self._sent = now
