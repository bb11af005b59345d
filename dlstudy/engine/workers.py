"""`--workers N`: the per-instance pool spread over N processes, to use more than one core.

Near its server a Python client keeps a core busy with per-instance work (docs/performance.md);
one event loop uses one core. The parent and N-1 worker processes each run an event loop, HTTP
client and pool, in the retrieval form the parent already negotiated, and take the next instance
from one shared list whenever a slot frees (a counter in shared memory: no process idles while
another still has a backlog, as a fixed split did when one started late or met a slow series);
the parent keeps everything that must have one owner: the output lock, the manifest, the
progress display and the summary. Workers (engine/worker_process.py) report over a pipe, a
batch at a time; their reports reach the run as data (Moved, Done, Failed) on a channel it
reads, so nothing here calls back into the run; their log records are logged here, as this
process's own.

Workers are forked before the event loop starts (engine/standby.py), when the run may use
them: they share this process's imported modules and wait for a job. Where that moment was not
safe (a library caller's threads or loop) they start from multiprocessing's fork server
instead: a process started fresh, which imports dlstudy once and forks each worker from a single
thread (forking this process once its event loop, libcurl and TLS sockets are live is what
Python 3.12+ warns about), started in the background once the plan has enough for workers
(`warm_up`). Elsewhere, spawn.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ..dicomweb.negotiate import Retrieval
from ..errors import AuthError, DlstudyError, ServerError, StorageError
from ..flow.signals import stopping
from ..http.client import ONCE_PER_RUN
from ..model import Committed, InstanceRef
from ..settings import MAX_WORKERS  # what --workers accepts
from . import standby as standby_module
from .claims import SharedClaims
from .worker_process import HEARTBEAT_SECONDS, WorkerJob, log_levels, worker_main

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from anyio.streams.memory import MemoryObjectSendStream

log = logging.getLogger(__name__)

# Below this many instances per worker, starting processes costs more than it saves.
MIN_INSTANCES_PER_WORKER = 50
# `--workers 0` (the default) uses one process per CPU up to this: beyond a few cores the
# network or the server limits a download, not the client's CPU.
AUTO_MAX_WORKERS = 4
# --workers 0: the event loop is watched over the transfers' first _WATCH_SECONDS, and more
# processes start if it kept at least _BUSY of a CPU busy: near the server the loop is the
# bottleneck, far from it the first round trips are waited for and more processes only cost
# CPU (the measurements behind both numbers: docs/decisions.md). The watch is short because
# it runs on one core.
_WATCH_SECONDS = 0.1
_BUSY = 0.9
# --workers 0 starts the workers it forked before the event loop without watching when the
# server answered a query this fast (a round trip plus its own time): on this host or a LAN,
# where a Python client is CPU-bound.
NEAR_SERVER_SECONDS = 0.005
_JOIN_TIMEOUT = 10.0
# A started worker that sends nothing for this long, not even its heartbeat (a stopped
# process, a loop blocked on a hung file system), is ended: its instances fail, exit 1.
WORKER_SILENCE_SECONDS = 30.0

# A worker's fatal error, rebuilt from its class name and message; others as DlstudyError.
_FATAL: dict[str, Callable[[str], DlstudyError]] = {
    "AuthError": lambda text: AuthError(text, status_code=401),
    "StorageError": lambda text: StorageError(text, path=""),
    "ServerError": ServerError,
}


@dataclass(frozen=True)
class Moved:
    """Bytes a worker received (for the progress display)."""

    nbytes: int


@dataclass(frozen=True)
class Done:
    ref: InstanceRef
    committed: Committed


@dataclass(frozen=True)
class Failed:
    ref: InstanceRef
    reason: str
    status_code: int | None


@dataclass(frozen=True)
class Tallied:
    """A worker's counts for the summary, sent as it ends: answers that asked it to slow down
    (429, 503) and attempts it tried again."""

    throttled: int
    retried: int


Result = Moved | Done | Failed | Tallied  # what the workers' results channel carries


def is_near(quickest_reply: float | None) -> bool:
    return quickest_reply is not None and quickest_reply < NEAR_SERVER_SECONDS


def worker_count(requested: int, todo: int) -> int:
    """How many processes are worth starting for `todo` instances (`requested` 0: auto)."""
    wanted = requested or min(available_cpus(), AUTO_MAX_WORKERS)
    return max(1, min(wanted, todo // MIN_INSTANCES_PER_WORKER))


def standing_by_for(requested: int, mode: str) -> int:
    """How many workers to fork before a run's event loop starts, for `--workers`
    `requested` (0: auto) in `mode`: as many as it may use beyond this process."""
    if mode in ("series", "study") or not 0 <= requested <= MAX_WORKERS:
        return 0  # multipart responses, or a value the run will refuse
    return (requested or min(available_cpus(), AUTO_MAX_WORKERS)) - 1


def available_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_concurrency(concurrency: int, processes: int) -> tuple[int, int]:
    """(this process's, each worker's) share of --concurrency: equal, the rest to this one,
    never more than the total."""
    each = concurrency // processes
    return concurrency - each * (processes - 1), each


def rate_share(max_rate: int, processes: int) -> int:
    """Each process's part of --max-rate (0: none), so that together they keep to it."""
    return max_rate // processes if max_rate else 0


def _start_context() -> Any:
    import multiprocessing  # only when workers may start

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([worker_main.__module__])
    return context


def warm_up() -> None:
    """Start the fork server in a thread, so that its imports overlap this process's work
    instead of delaying the first worker; not needed when workers stand by."""
    import threading

    if standby_module.current() is not None:
        return

    context = _start_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        threading.Thread(target=forkserver.ensure_running, daemon=True).start()


async def run_in_processes(
    refs: Sequence[InstanceRef],
    settings: Any,
    form: Retrieval | None,
    workers: int,
    *,
    answered: bool,
    adaptive: bool,
    near: bool = False,
    local: Callable[[Iterable[InstanceRef], anyio.CapacityLimiter], Awaitable[None]],
    results: MemoryObjectSendStream[Result],
    running: Callable[[int], None],
    said: set[str],
) -> None:
    """Fetch `refs` with up to `workers` processes, this one included; `running(n)` is told
    how many run once the workers start (an interrupted run's summary counts them too).
    `answered`: the server answered this run; the workers connect again when it refuses, as
    this process does (a restart), from their first request.

    `local(claims, limiter)` fetches what this process claims, at most `limiter` at a time; the
    others' results arrive as data on `results` (an unbounded stream: a worker never waits for
    the parent), each instance once, and one Failed for each a dead worker left unreported.
    `adaptive`: start the workers only if this process's event loop turns out to be CPU-bound
    (see _busy) while there is still enough left, or at once if the server is `near` (see
    NEAR_SERVER_SECONDS) and workers stand by.
    The total in flight never exceeds --concurrency: this process lowers its own limit first,
    and the workers start once it holds.
    `said`: the warnings of the run said once (this process's Transport.said): a worker's is
    logged only if neither this process nor another worker said it first.
    """
    from dataclasses import replace

    own, each = split_concurrency(settings.concurrency, workers)
    share = replace(settings, concurrency=each, max_rate=rate_share(settings.max_rate, workers))
    standby = standby_module.current()
    launch: _Launch
    if standby is not None and len(standby.idle) >= workers - 1:
        launch = _FromStandby(standby, refs)
    else:
        launch = _FromForkServer(refs)
    claims = launch.claims
    # When the workers start at once (near the server, or --workers N), this process keeps to
    # its share from the start, so they need not wait for its extra transfers to finish.
    # Near the server, workers forked before the loop start at once; one from the fork server
    # costs a process start-up (a long list starts them part after part), so it waits until
    # this process's loop proves busy, as it does far from the server.
    near = near and isinstance(launch, _FromStandby)
    starting_now = near or not adaptive
    limiter = anyio.CapacityLimiter(own if starting_now else settings.concurrency)
    processes: list[Any] = []
    connections: list[Connection] = []
    fatal: list[DlstudyError] = []
    unreported = {ref.sop_uid: ref for ref in refs}
    watching = anyio.CancelScope()
    went: list[float] = []  # when the workers were told to go (their heartbeats start then)

    def mine() -> Iterator[InstanceRef]:
        for ref in claims.until(a_worker_died):
            del unreported[ref.sop_uid]  # this process reports its own, failures included
            yield ref

    def a_worker_died() -> bool:
        # Killed, or crashed: a worker that finished its share ends with 0, its lock given back.
        return any(process.exitcode not in (None, 0) for process in processes)

    def report(result: Result) -> None:
        if isinstance(result, Done | Failed):
            unreported.pop(result.ref.sop_uid, None)
        results.send_nowait(result)

    async def grow(tg: anyio.abc.TaskGroup) -> None:
        with watching:
            if adaptive and near:
                log.info(
                    "the server answers within %.0f ms: workers start now",
                    1000 * NEAR_SERVER_SECONDS,
                )
            elif adaptive and not await _busy(_WATCH_SECONDS):
                return
        if claims.remaining() < MIN_INSTANCES_PER_WORKER * (workers - 1) or share.concurrency < 1:
            # Done, or too little left to be worth it; or --concurrency below the number of
            # processes: nothing to share.
            limiter.total_tokens = settings.concurrency
            return
        limiter.total_tokens = own
        with anyio.CancelScope(shield=True):  # a started process must be tracked
            for _ in range(workers - 1):
                process, parent_end = await launch.start(share, form, answered)
                processes.append(process)
                connections.append(parent_end)
                listener = _Listener(process, parent_end, report, fatal, said, went)
                tg.start_soon(listener.listen, tg.cancel_scope)
        # This process's transfers above its new share finish (tens of ms): polled, as anyio
        # has no event for a limiter's count.
        while limiter.borrowed_tokens > limiter.total_tokens:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        with anyio.CancelScope(shield=True):
            await launch.go()
        went.append(time.monotonic())
        running(1 + len(processes))
        log.info("%d worker processes %s", len(processes), launch.origin)

    finished = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(grow, tg)
            await local(mine(), limiter)
            watching.cancel()  # all claimed: no workers needed if none started yet
            if claims.gave_up:  # the others wait for the lock a dead worker took: stop them
                tg.cancel_scope.cancel()
        finished = not claims.gave_up
    finally:
        with anyio.CancelScope(shield=True):
            left = await anyio.to_thread.run_sync(_stop, processes, connections, finished)
        # What the workers reported as they stopped, after the listeners were cancelled (an
        # interrupted run): the instances they committed meanwhile are on disk, and counted.
        for message in left:
            _take(message, report, fatal, said)
        for conn in connections:
            conn.close()
    if fatal:
        raise fatal[0]
    # A signal to the whole process group (a service stopped, Ctrl-C in a terminal) ends the
    # workers as it stops this run: what they had in hand was interrupted, not failed. Its
    # handler runs at the next checkpoint if it has not yet.
    await anyio.lowlevel.checkpoint()
    if stopping():
        return
    for ref in list(unreported.values()):  # a worker died: its instances are accounted for
        report(Failed(ref, f"instance {ref.sop_uid}: its worker process ended early", None))


class _Launch:
    claims: SharedClaims
    origin: str  # where the workers come from, for the log

    async def start(
        self, share: Any, form: Retrieval | None, answered: bool
    ) -> tuple[Any, Connection]:
        """A worker process, waiting for `go`, and the end of the pipe it reports on."""
        raise NotImplementedError

    async def go(self) -> None:
        raise NotImplementedError


class _FromStandby(_Launch):
    """Workers forked before the event loop (engine/standby.py): each is sent its job."""

    def __init__(self, standby: standby_module.Standby, refs: Sequence[InstanceRef]) -> None:
        with standby.counter.get_lock():
            standby.counter.value = 0
        self.claims = SharedClaims(refs, standby.counter)
        self.origin = "forked before the event loop"
        self.standby = standby
        self.jobs: list[tuple[Connection, WorkerJob]] = []

    async def start(
        self, share: Any, form: Retrieval | None, answered: bool
    ) -> tuple[Any, Connection]:
        [(process, conn)] = self.standby.take(1)
        self.jobs.append((conn, WorkerJob(share, self.claims.refs, form, answered, log_levels())))
        return process, conn

    async def go(self) -> None:
        for conn, job in self.jobs:
            await anyio.to_thread.run_sync(conn.send, job)


class _FromForkServer(_Launch):
    """Workers started from multiprocessing's fork server (or spawned), waiting on an event."""

    def __init__(self, refs: Sequence[InstanceRef]) -> None:
        self.context = _start_context()
        self.claims = SharedClaims(refs, self.context.Value("q", 0))
        self.origin = f"started by {self.context.get_start_method()}"
        self.event = self.context.Event()

    async def start(
        self, share: Any, form: Retrieval | None, answered: bool
    ) -> tuple[Any, Connection]:
        parent_end, child_end = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker_main,
            args=(
                WorkerJob(share, self.claims, form, answered, log_levels()),
                child_end,
                self.event,
            ),
            daemon=True,
        )
        await anyio.to_thread.run_sync(process.start)  # waits for the fork server
        child_end.close()
        return process, parent_end

    async def go(self) -> None:
        self.event.set()


async def _busy(seconds: float) -> bool:
    """Whether this process used nearly a whole CPU over the next `seconds`: its event loop is
    the bottleneck, and more processes will help. Far from the server (or behind anything
    slower than the client) it waits on the network instead, and more processes only cost
    CPU."""
    started, cpu = time.monotonic(), time.process_time()
    await anyio.sleep(seconds)
    share = (time.process_time() - cpu) / (time.monotonic() - started)
    log.info("event loop used %.0f%% of a CPU over %.1f s", 100 * share, seconds)
    return share >= _BUSY


class _Listener:
    """A worker's reports, handled as they arrive on the event loop (no thread per message),
    and its silence watched: one that says nothing, not even its heartbeat, for
    WORKER_SILENCE_SECONDS after it was told to go is ended (SIGKILL), as if it had died."""

    def __init__(
        self,
        process: Any,
        conn: Connection,
        report: Callable[[Result], None],
        fatal: list[DlstudyError],
        said: set[str],
        went: list[float],
    ) -> None:
        self.process, self.conn, self.report = process, conn, report
        self.fatal, self.said, self.went = fatal, said, went

    async def listen(self, scope: anyio.CancelScope) -> None:
        heard = time.monotonic()
        while True:
            readable = False
            with anyio.move_on_after(self._left(heard)):
                await anyio.wait_readable(self.conn.fileno())
                readable = True
            if not readable:
                if self.went and self._left(heard) <= 0:
                    # This process may have been the one stopped (Ctrl-Z then fg, a paused
                    # container): a worker that speaks within a few heartbeats is alive.
                    if await self._speaks_within(3 * HEARTBEAT_SECONDS):
                        heard = time.monotonic()
                        continue
                    self._end_silent()
                    return
                continue
            heard = time.monotonic()
            try:
                _, batch = self.conn.recv()  # one write by the worker: here, or about to be
            except EOFError:
                return  # the worker died without a word: its instances are reported missing
            for message in batch:
                kind = _take(message, self.report, self.fatal, self.said)
                if kind == "fatal":
                    scope.cancel()  # the others cannot do better: stop them
                    return
                if kind == "end":
                    return

    async def _speaks_within(self, seconds: float) -> bool:
        with anyio.move_on_after(seconds):
            await anyio.wait_readable(self.conn.fileno())
            return True
        return False

    def _left(self, heard: float) -> float:
        """How much longer the worker may stay silent (waiting for `go`, it has no heartbeat
        yet: the whole time, again)."""
        if not self.went:
            return WORKER_SILENCE_SECONDS
        return max(heard, self.went[0]) + WORKER_SILENCE_SECONDS - time.monotonic()

    def _end_silent(self) -> None:
        if not self.process.is_alive():
            return
        log.warning(
            "worker process %d sent nothing for %.0f s (stopped or hung): ended; what it "
            "had in hand fails, and a rerun fetches it",
            self.process.pid,
            WORKER_SILENCE_SECONDS,
        )
        self.process.kill()  # (its exit code then tells the run a worker died)


def _take(
    message: tuple[Any, ...],
    report: Callable[[Result], None],
    fatal: list[DlstudyError],
    said: set[str],
) -> str:
    """Act on one message of a worker; return its kind."""
    kind: str = message[0]
    if kind == "bytes":
        report(Moved(message[1]))
    elif kind == "done":
        _, ref, path, size, digest = message
        report(Done(ref, Committed(Path(path), size, digest)))
    elif kind == "failed":
        report(Failed(message[1], message[2], message[3]))
    elif kind == "tallied":
        report(Tallied(message[1], message[2]))
    elif kind == "fatal":
        fatal.append(_fatal_error(message[1], message[2]))
    elif kind == "log":
        _log_here(message[1], said)
    return kind


def _log_here(record: logging.LogRecord, said: set[str]) -> None:
    """A worker's log record, handled as if this process had made it: same levels, same
    handlers (stderr, --log-file, a library caller's). One said once per run (ONCE_PER_RUN)
    is dropped when this process or another worker said it already."""
    once = getattr(record, ONCE_PER_RUN, None)
    if once is not None:
        if once in said:
            return
        said.add(once)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def _fatal_error(name: str, text: str) -> DlstudyError:
    return _FATAL.get(name, DlstudyError)(text)


def _stop(
    processes: list[Any], connections: list[Connection], finished: bool
) -> list[tuple[Any, ...]]:
    """Let finished workers exit; SIGTERM the others (they drop their temp files and report
    what they committed), then wait, reading those last reports; kill what will not stop.
    Returns the messages read."""
    left: list[tuple[Any, ...]] = []
    if not finished:
        for process in processes:
            if process.is_alive():
                process.terminate()
    for process, conn in zip(processes, connections, strict=True):
        _read_until_gone(process, conn, left)
        if process.is_alive():
            process.terminate()
            _read_until_gone(process, conn, left)
        if process.is_alive():
            process.kill()
        process.join(_JOIN_TIMEOUT)
        if not process.is_alive():  # its pipe closed now, not when the object is collected:
            process.close()  # an interrupted run's traceback (a notebook keeps it) holds it
    return left


def _read_until_gone(process: Any, conn: Connection, into: list[tuple[Any, ...]]) -> None:
    """Read the worker's reports until it has exited and sent everything, or _JOIN_TIMEOUT.
    Wakes on a report or on the process's exit, whichever comes first."""
    from multiprocessing.connection import wait

    deadline = time.monotonic() + _JOIN_TIMEOUT
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready = wait([conn, process.sentinel], left)
            if conn in ready:
                _, batch = conn.recv()
                into.extend(batch)
            elif ready:  # it exited: what it sent before is still in the pipe
                while conn.poll(0):
                    _, batch = conn.recv()
                    into.extend(batch)
                return
    except (EOFError, OSError):  # its end is closed: everything it sent is read
        process.join(max(0.0, deadline - time.monotonic()))  # and it is on its way out
