"""`--workers N`: the per-instance pool spread over N processes, to use more than one core.

A Python client spends its CPU in the HTTP stack (profiles in README "Performance"); one event
loop uses one core. Each worker process runs its own event loop, HTTP client and pool over its
share of the instances, with the retrieval form the parent already negotiated; the parent keeps
everything that must have one owner: the output lock, the manifest, the progress display and
the summary. Workers report over a pipe; a worker whose parent is gone stops at its next report.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .auth import auth_from_settings
from .errors import AuthError, DlstudyError, ServerError, StorageError, TransferError
from .fetch import Committed, InstanceFetcher
from .negotiate import Negotiator, Retrieval, candidates
from .pool import first_error, run_pool
from .retry import RetryPolicy
from .store import InstanceRef, Store
from .throttle import Throttle
from .transport import Transport

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

# Below this many instances per worker, starting processes costs more than it saves.
MIN_INSTANCES_PER_WORKER = 50
# Bytes a worker accumulates before it tells the parent (progress display), to keep the pipe
# quiet: one message per MiB.
_BYTES_REPORT = 1024 * 1024
_JOIN_TIMEOUT = 10.0

_FATAL = {"AuthError": AuthError, "StorageError": StorageError, "ServerError": ServerError}


@dataclass(frozen=True)
class Failed:
    ref: InstanceRef
    reason: str
    status_code: int | None


def worker_count(requested: int, todo: int) -> int:
    """How many processes are worth starting for `todo` instances."""
    return max(1, min(requested, todo // MIN_INSTANCES_PER_WORKER))


def split(refs: list[InstanceRef], parts: int) -> list[list[InstanceRef]]:
    """Round-robin, so every worker gets a mix of series and sizes."""
    return [refs[i::parts] for i in range(parts)]


class ParentGone(Exception):
    pass


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError) as exc:
        raise ParentGone() from exc


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


def worker_main(
    settings: Any, refs: list[InstanceRef], form: Retrieval | None, conn: Connection
) -> None:
    """Entry point of a worker process (spawned: imports dlstudy afresh)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops us
    _die_with_parent()
    try:
        anyio.run(_worker, settings, refs, form, conn)
    except ParentGone:
        pass
    finally:
        conn.close()


async def _worker(
    settings: Any, refs: list[InstanceRef], form: Retrieval | None, conn: Connection
) -> None:
    store = Store(settings.output, settings.layout)
    transport = Transport(settings, auth=await auth_from_settings(settings))
    forms = [form] if form else candidates(settings.transfer_syntax or None, single_part=True)
    fetcher = InstanceFetcher(
        transport,
        store,
        Negotiator(forms),
        policy=RetryPolicy(settings.retries, settings.retry_budget, settings.timeout),
        throttle=Throttle(settings.concurrency),
    )
    unreported = 0

    def on_bytes(nbytes: int) -> None:
        nonlocal unreported
        unreported += nbytes
        if unreported >= _BYTES_REPORT:
            _send(conn, ("bytes", unreported))
            unreported = 0

    async def one(ref: InstanceRef) -> None:
        try:
            committed = await fetcher.fetch(ref, on_bytes)
        except TransferError as exc:
            _send(conn, ("failed", ref, str(exc), getattr(exc, "status_code", None)))
            return
        _send(conn, ("done", ref, str(committed.path), committed.size, committed.sha256))

    try:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals, first_error():
            async with anyio.create_task_group() as tg:

                async def stop_on_sigterm() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()  # in-flight transfers drop their temp files
                        return

                tg.start_soon(stop_on_sigterm)
                await run_pool(refs, one, settings.concurrency)
                tg.cancel_scope.cancel()
        if unreported:
            _send(conn, ("bytes", unreported))
    except DlstudyError as exc:
        _send(conn, ("fatal", type(exc).__name__, str(exc), int(exc.exit_status)))
    finally:
        await transport.aclose()
    _send(conn, ("end",))


async def run_in_processes(
    refs: list[InstanceRef],
    settings: Any,
    form: Retrieval | None,
    workers: int,
    *,
    on_bytes: Any,
    on_done: Any,
    on_failed: Any,
) -> None:
    """Fetch `refs` in `workers` processes; results arrive through the callbacks."""
    import multiprocessing  # only for --workers > 1
    from dataclasses import replace

    context = multiprocessing.get_context("spawn")  # no forked copy of a running event loop
    share = replace(settings, concurrency=max(1, math.ceil(settings.concurrency / workers)))
    processes = []
    connections = []
    for chunk in split(refs, workers):
        parent_end, child_end = context.Pipe(duplex=False)
        process = context.Process(
            target=worker_main, args=(share, chunk, form, child_end), daemon=True
        )
        process.start()
        child_end.close()
        processes.append(process)
        connections.append(parent_end)
    fatal: list[DlstudyError] = []
    unreported = {ref.sop_uid: ref for ref in refs}

    def done(ref: InstanceRef, committed: Committed) -> None:
        unreported.pop(ref.sop_uid, None)
        on_done(ref, committed)

    def failed(failure: Failed) -> None:
        unreported.pop(failure.ref.sop_uid, None)
        on_failed(failure)

    finished = False
    try:
        async with anyio.create_task_group() as tg:
            for conn in connections:
                tg.start_soon(_listen, conn, on_bytes, done, failed, fatal, tg.cancel_scope)
        finished = True
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, processes, finished)
        for conn in connections:
            conn.close()
    if fatal:
        raise fatal[0]
    for ref in unreported.values():  # a worker died: never let its instances go unaccounted
        on_failed(Failed(ref, f"instance {ref.sop_uid}: its worker process ended early", None))


async def _listen(
    conn: Connection,
    on_bytes: Any,
    on_done: Any,
    on_failed: Any,
    fatal: list[DlstudyError],
    scope: anyio.CancelScope,
) -> None:
    while True:
        try:
            message = await anyio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
        except EOFError:
            return  # the worker died without a word: its instances are reported missing
        kind = message[0]
        if kind == "bytes":
            on_bytes(message[1])
        elif kind == "done":
            _, ref, path, size, sha256 = message
            on_done(ref, Committed(Path(path), size, sha256))
        elif kind == "failed":
            on_failed(Failed(message[1], message[2], message[3]))
        elif kind == "fatal":
            _, name, text, _status = message
            error_class = _FATAL.get(name, DlstudyError)
            if error_class is AuthError:
                fatal.append(AuthError(text, status_code=401))
            elif error_class is StorageError:
                fatal.append(StorageError(text, path=""))
            elif error_class is ServerError:
                fatal.append(ServerError(text))
            else:
                fatal.append(DlstudyError(text))
            scope.cancel()  # the others cannot do better: stop them
            return
        elif kind == "end":
            return


def _stop(processes: list[Any], finished: bool) -> None:
    """Let finished workers exit; SIGTERM the others (they drop their temp files), then wait;
    kill what will not stop."""
    for process in processes:
        if finished:
            process.join(_JOIN_TIMEOUT)
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(_JOIN_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(_JOIN_TIMEOUT)
