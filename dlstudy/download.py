"""`dlstudy.download()`: resolve studies, schedule what is missing, fetch it, report.

This is the library entry point the CLI calls; it needs neither typer nor rich.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from . import strategy, workers
from .auth import RefreshingBearerAuth, TokenCommand
from .bulk import BulkFetcher
from .errors import (
    DlstudyError,
    InvalidUidError,
    NothingMatchedError,
    Terminated,
    TransferError,
    UsageError,
)
from .fetch import Committed, InstanceFetcher
from .lock import output_lock
from .manifest import Manifest
from .negotiate import Negotiator, candidates
from .pool import first_error, run_pool
from .progress import NullProgress, ProgressSink
from .qido import Resolver
from .retry import RetryPolicy
from .schedule import entry_for, plan
from .settings import Settings
from .store import InstanceRef, Store
from .summary import Failure, Summary
from .throttle import Throttle
from .transport import Transport
from .urls import is_valid_uid, redact_url, series_url, study_url

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 256
MAX_WORKERS = 64


def validate(settings: Settings, study_uids: list[str]) -> None:
    """Reject bad input before touching the network or the disk."""
    if not study_uids:
        raise UsageError("no study UID given")
    for uid in study_uids:
        if not is_valid_uid(uid):
            raise InvalidUidError(
                f"invalid study UID {uid[:80]!r}: a UID is digits and dots, at most 64 characters",
                uid=uid,
            )
    for uid in settings.series:
        if not is_valid_uid(uid):
            raise InvalidUidError(f"invalid --series UID {uid[:80]!r}", uid=uid)
    if not settings.url.lower().startswith(("http://", "https://")):
        shown = redact_url(settings.url)
        raise UsageError(f"--url must start with http:// or https://, got {shown!r}")
    if not 1 <= settings.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
    if settings.retries < 0 or settings.retry_budget < 0:
        raise UsageError("--retries and --retry-budget must be 0 or more")
    if settings.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if settings.mode not in ("auto", "instance", "series", "study"):
        raise UsageError(f"--mode must be auto, instance, series or study, not {settings.mode!r}")


def download(
    study_uids: Iterable[str],
    url: str | None = None,
    *,
    settings: Settings | None = None,
    progress: ProgressSink | None = None,
    **options: Any,
) -> Summary:
    """Download whole studies; return the run's Summary.

    Either pass `settings`, or `url` plus any Settings field as a keyword
    (`download(["1.2.3"], "http://host/dicomweb", output=Path("out"), concurrency=16)`).
    Fatal errors (bad input, server unreachable, auth, nothing matched, output locked) raise a
    DlstudyError with the partial summary attached as `.summary`, and so does an interruption
    (KeyboardInterrupt); per-instance failures are in the summary.
    """
    if settings is None:
        if url is None:
            raise UsageError("download() needs url= or settings=")
        if "output" in options:
            options["output"] = Path(options["output"])
        settings = Settings(url=url, **options)
    elif url is not None or options:
        if url is not None:
            options["url"] = url
        settings = replace(settings, **options)
    uids = list(dict.fromkeys(study_uids))  # keep order, drop repeats
    return anyio.run(download_async, uids, settings, progress or NullProgress())


async def download_async(
    study_uids: list[str], settings: Settings, progress: ProgressSink
) -> Summary:
    summary = Summary(url=redact_url(settings.url), output=str(settings.output), mode=settings.mode)
    started = time.monotonic()
    try:
        validate(settings, study_uids)
        store = Store(settings.output, settings.layout)
        store.prepare()
        async with AsyncExitStack() as stack:
            stack.enter_context(output_lock(store.state_dir, wait=settings.wait_for_lock))
            removed = store.remove_stale_temp_files()
            if removed:
                log.info("removed %d temp files left by an interrupted run", removed)
            manifest = Manifest(store.root, store.state_dir)
            stack.callback(manifest.close)
            transport = Transport(settings, auth=await _token_auth(settings))
            stack.push_async_callback(transport.aclose)
            try:
                await stop_on_signals(
                    _run(study_uids, settings, store, manifest, transport, progress, summary)
                )
            finally:
                summary.http_version = transport.http_version
    except BaseException as exc:
        # Fatal errors and interruptions carry what was done so far, for the report.
        if isinstance(exc, DlstudyError):
            summary.error = str(exc)
            summary.exit_status = exc.exit_status
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        summary.seconds = time.monotonic() - started
        progress.close()
    summary.finish()
    return summary


async def stop_on_signals(work: Awaitable[None]) -> None:
    """Run `work`; on SIGINT or SIGTERM cancel it (in-flight transfers remove their temp files)
    and raise KeyboardInterrupt or Terminated, so the caller gets an orderly stop.

    Signals can only be caught this way in the main thread; elsewhere `work` just runs.
    """
    if threading.current_thread() is not threading.main_thread():
        await work
        return
    received: list[int] = []
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, first_error():
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                async for signum in signals:
                    received.append(signum)
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(watch)
            await work
            tg.cancel_scope.cancel()  # done: stop watching
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt()


async def _token_auth(settings: Settings) -> RefreshingBearerAuth | None:
    if not settings.token_command:
        return None
    command = TokenCommand(settings.token_command)
    token: str = await anyio.to_thread.run_sync(command.run)
    return RefreshingBearerAuth(command, token)


async def _run(
    study_uids: list[str],
    settings: Settings,
    store: Store,
    manifest: Manifest,
    transport: Transport,
    progress: ProgressSink,
    summary: Summary,
) -> None:
    policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
    resolver = Resolver(
        transport,
        page_size=settings.qido_page_size,
        policy=policy,
        series_filter=settings.series,
        modality_filter=settings.modalities,
    )
    refs: list[InstanceRef] = []
    for study_uid in study_uids:
        progress.resolving(study_uid)
        summary.studies.append(study_uid)
        try:
            found = await resolver.resolve(study_uid)
        except NothingMatchedError as exc:
            summary.failures.append(Failure(study_uid, None, None, str(exc), 404))
            continue
        for ref in found:
            summary.total += 1
            if store.is_valid(ref):
                refs.append(ref)
            else:
                reason = f"server sent an invalid UID (refused as a file name) in {ref!r}"
                summary.failures.append(Failure(study_uid, None, None, reason[:300]))
    if summary.total == 0:
        raise NothingMatchedError(_nothing_matched_message(settings, summary))

    work = plan(refs, store, manifest, verify=settings.verify)
    summary.skipped = work.skipped
    summary.repaired = work.repaired
    progress.start(summary.total, summary.skipped)
    throttle = Throttle(settings.concurrency)
    summary.throttle = throttle
    negotiator = Negotiator(candidates(settings.transfer_syntax or None, single_part=True))
    fetcher = InstanceFetcher(transport, store, negotiator, policy=policy, throttle=throttle)
    summary.retrieval = negotiator

    def done(ref: InstanceRef, committed: Committed) -> None:
        manifest.record(entry_for(store, ref, committed.path, committed.size, committed.sha256))
        summary.downloaded += 1
        summary.bytes += committed.size
        progress.instance_done(ref, committed.size)

    async def one_instance(ref: InstanceRef) -> Committed | None:
        try:
            committed = await fetcher.fetch(ref, progress.advance)
        except TransferError as exc:
            status = getattr(exc, "status_code", None)
            summary.failures.append(
                Failure(ref.study_uid, ref.series_uid, ref.sop_uid, str(exc), status)
            )
            progress.instance_failed(ref, str(exc))
            return None
        done(ref, committed)
        return committed

    async def pool_worker(ref: InstanceRef) -> None:
        await one_instance(ref)

    def bulk_fetcher() -> BulkFetcher:
        return BulkFetcher(
            transport,
            store,
            Negotiator(
                candidates(settings.transfer_syntax or None, single_part=False),
                remember_refusal=True,
            ),
            window=settings.timeout,
        )

    todo = work.todo
    with first_error():
        if settings.mode in ("series", "study") and todo:
            bulk = bulk_fetcher()
            summary.retrieval = bulk.negotiator  # what the bulk responses were asked as
            todo = await _fetch_in_bulk(todo, settings.mode, bulk, settings, progress, done)
        elif settings.mode == "auto" and todo:
            todo = await _auto(todo, one_instance, bulk_fetcher, settings, progress, done, summary)
        # A StorageError (disk full, permissions) escapes one_instance and stops every worker:
        # nothing else would succeed either; what was committed is kept.
        processes = workers.worker_count(settings.workers, len(todo))
        if processes > 1:
            await one_instance(todo[0])  # settles the retrieval form the workers will use
            form = negotiator.current if negotiator.settled else None

            def failed(failure: workers.Failed) -> None:
                ref = failure.ref
                summary.failures.append(
                    Failure(
                        ref.study_uid,
                        ref.series_uid,
                        ref.sop_uid,
                        failure.reason,
                        failure.status_code,
                    )
                )
                progress.instance_failed(ref, failure.reason)

            await workers.run_in_processes(
                todo[1:],
                settings,
                form,
                processes,
                on_bytes=progress.advance,
                on_done=done,
                on_failed=failed,
            )
        else:
            await run_pool(todo, pool_worker, settings.concurrency)


async def _auto(
    todo: list[InstanceRef],
    one_instance: Callable[[InstanceRef], Awaitable[Committed | None]],
    bulk_fetcher: Callable[[], BulkFetcher],
    settings: Settings,
    progress: ProgressSink,
    done: Any,
    summary: Summary,
) -> list[InstanceRef]:
    """Choose per study (strategy.py); fetch the series-mode studies; return the rest."""
    by_study: dict[str, list[InstanceRef]] = {}
    for ref in todo:
        by_study.setdefault(ref.study_uid, []).append(ref)
    per_instance: list[InstanceRef] = []
    in_bulk: list[InstanceRef] = []
    for study_uid, refs in by_study.items():
        probe_size = None
        if strategy.needs_probe(len(refs)):
            committed = await one_instance(refs[0])
            probe_size = committed.size if committed else None
            refs = refs[1:]
        choice = strategy.choose(study_uid, len(refs) + (probe_size is not None), probe_size)
        summary.strategy.append(choice)
        (in_bulk if choice.mode == "series" else per_instance).extend(refs)
    if in_bulk:
        bulk = bulk_fetcher()
        per_instance += await _fetch_in_bulk(in_bulk, "series", bulk, settings, progress, done)
        if bulk.unsupported is not None:
            summary.strategy = [
                strategy.Choice(
                    c.study_uid,
                    "instance",
                    f"{c.why}; but the server refused it ({bulk.unsupported}): per instance",
                )
                if c.mode == "series"
                else c
                for c in summary.strategy
            ]
    return per_instance


async def _fetch_in_bulk(
    todo: list[InstanceRef],
    mode: str,
    bulk: BulkFetcher,
    settings: Settings,
    progress: ProgressSink,
    done: Any,
) -> list[InstanceRef]:
    """One multipart response per series (or study); return the instances still missing."""
    base = bulk.transport.base_url
    groups: dict[str, list[InstanceRef]] = {}
    for ref in todo:
        if mode == "series":
            url = series_url(base, ref.study_uid, ref.series_uid)
        else:
            url = study_url(base, ref.study_uid)
        groups.setdefault(url, []).append(ref)
    committed: set[str] = set()

    async def one_group(item: tuple[str, list[InstanceRef]]) -> None:
        url, refs = item
        committed.update(await bulk.fetch(url, refs, progress.advance, done))

    await run_pool(list(groups.items()), one_group, settings.concurrency)
    missing = [ref for ref in todo if ref.sop_uid not in committed]
    if missing:
        log.info("%d instances missing from bulk responses; fetching one by one", len(missing))
    return missing


def _nothing_matched_message(settings: Settings, summary: Summary) -> str:
    missing = [f for f in summary.failures if f.sop_instance_uid is None]
    if len(summary.studies) == 1 and missing:
        return missing[0].reason
    if len(missing) == len(summary.studies):
        return f"none of the {len(summary.studies)} studies was found on the server"
    if settings.series or settings.modalities:
        return "no instance matched the --series / --modality filters"
    return "the requested studies have no instances"
