"""`dlstudy.download()`: resolve studies, schedule what is missing, fetch it, report.

This is the library entry point the CLI calls; it needs neither typer nor rich.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, TypeVar, get_args

import anyio

from ..dicomweb.cohort import CohortItem, Repeats, Wanted, unique_wanted
from ..engine.schedule import complete_in_index, trusts_index
from ..engine.standby import no_running_loop, standing_by
from ..engine.workers import standing_by_for
from ..errors import (
    InvalidUidError,
    UsageError,
)
from ..flow.signals import stop_on_signals
from ..http.auth import auth_from_settings
from ..http.client import Transport, http_version_problem, refuse_other_loop, require_asyncio
from ..http.credentials import credentials_problem
from ..http.proxy import chosen_proxy_problem
from ..http.rate import rate_problem
from ..http.urls import base_url_problem, is_valid_uid, redact_url
from ..model import Failure
from ..report.landed import FAILED, PRESENT, REPEAT, ReportWriter, report_format, run_report
from ..report.progress import NullProgress, ProgressSink, sink_problem
from ..report.summary import Summary
from ..settings import MAX_CONCURRENCY as MAX_CONCURRENCY  # bench's limit too
from ..settings import (
    MAX_WORKERS,
    HttpVersion,
    Mode,
    Settings,
    check_fields,
    modality_problem,
    processes_for,
)
from ..store.files import Store
from ..store.lock import output_lock
from ..store.manifest import Manifest
from .listing import looked_up, report_repeat
from .run import Run, instance_negotiator

log = logging.getLogger(__name__)

T = TypeVar("T")


def validate(settings: Settings, study_uids: Sequence[Wanted]) -> None:
    """Reject bad input before touching the network or the disk."""
    require_asyncio()
    if not study_uids:
        raise UsageError("no study UID given")
    for uid in study_uids:
        if isinstance(uid, CohortItem):
            if uid.listed_by is None or uid.invalid_uid is None:  # else it fails alone
                uid.check()
        elif not isinstance(uid, str):
            raise UsageError(f"a study UID must be text, not {type(uid).__name__}")
        elif not is_valid_uid(uid):
            raise InvalidUidError(
                f"invalid study UID {uid[:80]!r}: a UID is digits and dots, at most 64 characters",
                uid=uid,
            )
    check_settings(settings)


def check_settings(settings: Settings) -> None:
    """The values of `settings` a run would stumble on, as the CLI checks its options: a
    UsageError (exit 2) before the network or the disk is touched."""
    if settings.report is not None:
        report_format(settings.report)
    for uid in settings.series:
        if not is_valid_uid(uid):
            raise InvalidUidError(f"invalid --series UID {uid[:80]!r}", uid=uid)
    for modality in settings.modalities:
        if not modality.strip():  # (`modalities=[os.environ.get("MOD", "")]`: no instance)
            raise UsageError("--modality is empty: give a value, or leave the option out for all")
        if (problem := modality_problem(modality)) is not None:
            raise UsageError(f"--modality {problem}")
    if (problem := base_url_problem(settings.url)) is not None:
        raise UsageError(problem)
    tokens = (settings.token, settings.user, settings.password, settings.headers)
    if (problem := credentials_problem(*tokens)) is not None:
        raise UsageError(problem)  # (the transport checks it too, once the output is made)
    if not 0 <= settings.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 0 (auto) and {MAX_CONCURRENCY}")
    if not 0 <= settings.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 0 (auto) and {MAX_WORKERS}")
    if settings.retries < 0 or not 0 <= settings.retry_budget < math.inf:
        raise UsageError("--retries and --retry-budget must be 0 or more")
    if not 0 < settings.timeout < math.inf:
        raise UsageError("--timeout must be a number of seconds above 0")
    if (problem := rate_problem(settings.max_rate, settings.timeout)) is not None:
        raise UsageError(problem)
    if settings.transfer_syntax != "*" and not is_valid_uid(settings.transfer_syntax):
        raise UsageError(
            "--transfer-syntax must be * or a transfer syntax UID, "
            f"not {settings.transfer_syntax[:80]!r}"
        )
    if settings.http not in get_args(HttpVersion):
        raise UsageError(f"--http must be auto, 1.1, 2 or 3, not {settings.http!r}")
    if settings.mode not in get_args(Mode):
        raise UsageError(f"--mode must be auto, instance, series or study, not {settings.mode!r}")
    if (problem := chosen_proxy_problem(settings.proxy, settings.url)) is not None:
        raise UsageError(problem)
    if (problem := http_version_problem(settings)) is not None:  # (the proxy's URL checked)
        raise UsageError(problem)


def download(
    study_uids: Iterable[Wanted],
    url: str | None = None,
    *,
    settings: Settings | None = None,
    progress: ProgressSink | None = None,
    repeats: Repeats | None = None,
    **options: Any,
) -> Summary:
    """Download whole studies (UIDs), or what each item of a cohort list names (CohortItems:
    `dlstudy.read_cohort(path)`); return the run's Summary.

    Either pass `settings`, or `url` plus any Settings field as a keyword
    (`download(["1.2.3"], "http://host/dicomweb", output=Path("out"), concurrency=16)`).
    A cohort line naming what an earlier line named is fetched once and gets a `repeat` row in
    the --report; `repeats`: such lines already dropped (`read_cohort(..., repeats=)`).
    Fatal errors (bad input, server unreachable, auth, nothing matched, output locked) raise a
    DlstudyError with the partial summary attached as `.summary`, and so does an interruption
    (KeyboardInterrupt); per-instance failures are in the summary.
    """
    check_arguments(settings, progress)
    refuse_other_loop()
    if settings is None:
        if url is None:
            raise UsageError("download() needs url= or settings=")
        check_fields(options)
        settings = Settings(url=url, **options)  # (it makes Paths of paths given as text)
    elif url is not None or options:
        if url is not None:
            options["url"] = url
        check_fields(options)
        settings = replace(settings, **options)
    repeats = Repeats() if repeats is None else repeats
    uids = unique_wanted(study_uids, repeats)
    # Timed from here, as the progress display is: starting the event loop (anyio imports its
    # backend then) is part of the run, and both show the same MB/s.
    started = time.monotonic()
    with standing_by(standing_by_for(processes_for(settings), settings.mode)):
        return run_to_end(
            download_async, uids, settings, progress or NullProgress(), started, None, repeats
        )


def check_arguments(settings: object, progress: object, *, needed: bool = False) -> None:
    """A library call's `settings` and `progress` of the wrong kind, named (a dict as settings,
    an int as progress failed deep inside with an AttributeError)."""
    if (settings is not None or needed) and not isinstance(settings, Settings):
        raise UsageError(f"settings must be a dlstudy.Settings, not {type(settings).__name__}")
    if progress is not None and (problem := sink_problem(progress)) is not None:
        raise UsageError(problem)


def run_to_end(work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`anyio.run(work, *args)`; where this thread runs an event loop already (a notebook's),
    which cannot run a second, on a loop of its own thread while this one waits. Interrupting
    the wait (Ctrl-C) cancels the run: it cleans up as it does on a signal, and the
    interruption carries the summary the run attached on its way out."""
    if no_running_loop():
        return anyio.run(work, *args)
    ended: list[BaseException] = []

    async def watched() -> T:
        try:
            return await work(*args)
        except BaseException as exc:
            ended.append(exc)
            raise

    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            future = portal.start_task_soon(watched)
            try:
                return future.result()
            except BaseException:
                future.cancel()
                raise
    except BaseException as exc:
        # The wait, not the run, was interrupted (a DlstudyError's summary is None until set).
        if ended and getattr(exc, "summary", None) is None:
            summary = getattr(ended[0], "summary", None)  # (the run's: it was cancelled)
            if summary is not None:
                summary.ended_by(exc)
            exc.summary = summary  # type: ignore[attr-defined]
        raise


async def download_async(
    study_uids: Sequence[Wanted],
    settings: Settings,
    progress: ProgressSink | None = None,
    started: float | None = None,
    report: ReportWriter | None = None,
    repeats: Repeats | None = None,
) -> Summary:
    """download() from async code, with `settings` made. `started`: a time.monotonic()
    reading the run is timed from (default: now). `report`: the --report rows go to this
    writer, which the caller commits (sync's, which has rows of its own); without it, to one
    for `settings.report`, committed here. `repeats`: the cohort lines dropped as repeats, each
    a `repeat` row."""
    check_arguments(settings, progress, needed=True)
    progress = progress or NullProgress()
    summary = Summary(url=redact_url(settings.url), output=str(settings.output), mode=settings.mode)
    started = time.monotonic() if started is None else started
    if isinstance(study_uids, str):
        study_uids = [study_uids]
    try:
        validate(settings, study_uids)
        summary.retrieval = instance_negotiator(settings)  # the run's own, once it fetches
        items = [u if isinstance(u, CohortItem) else CohortItem(study_uid=u) for u in study_uids]
        store = Store(settings.output, settings.layout)
        store.prepare()
        # From here on a signal stops the run in order, the wait for the lock included.
        await stop_on_signals(
            _locked_run(settings, items, store, summary, progress, report, repeats)
        )
    except BaseException as exc:
        # Fatal errors and interruptions carry what was done so far, for the report.
        summary.ended_by(exc)
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        summary.seconds = time.monotonic() - started
        progress.close()
    summary.finish()
    return summary


async def _locked_run(
    settings: Settings,
    items: list[CohortItem],
    store: Store,
    summary: Summary,
    progress: ProgressSink,
    report: ReportWriter | None,
    repeats: Repeats | None = None,
) -> None:
    """The run, with the output folder locked: into `summary`."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(output_lock(store.state_dir, wait=settings.wait_for_lock))
        stack.callback(store.remove_if_unused)  # last, with the lock still held
        removed = store.remove_stale_temp_files()
        if removed:
            log.info("removed %d temp files left by an interrupted run", removed)
        manifest = Manifest(store.root, store.state_dir)
        stack.callback(manifest.close)
        if report is None and settings.report is not None:
            report = stack.enter_context(run_report(settings.report))
        transport = Transport(settings, auth=await auth_from_settings(settings))
        stack.push_async_callback(transport.aclose)
        later: dict[int, list[int]] = {}
        if repeats:
            later = report_repeats(items, repeats, report, sharded=bool(settings.in_shard))
        if repeats is not None and repeats.arguments:
            report_repeated_arguments(items, repeats.arguments, report)
        items = fail_invalid_listed(items, summary, report)
        if settings.verify:  # (it reads every entry anyway) damage stops it before any listing
            manifest.check()
        complete: list[str] = []
        if trusts_index(settings):
            syntax = settings.transfer_syntax
            items, complete = take_complete(items, store, manifest, summary, report, syntax)
        try:
            run = Run(settings, store, manifest, transport, progress, summary, report)
            if later and repeats is not None:
                run.lister.repeats_later(repeats.label, later)
            if items:
                await run.execute(items, counted=complete)
            else:
                progress.start(summary.total, summary.skipped)
        finally:
            summary.http_version = transport.http_version


def report_repeats(
    items: Sequence[CohortItem],
    repeats: Repeats,
    report: ReportWriter | None,
    *,
    sharded: bool = False,
) -> dict[int, list[int]]:
    """A `repeat` row for each line naming what an earlier line of this run's items named
    (a repeat of another shard's line is that shard's), with the UIDs it gave. In a `sharded`
    run a line naming no study is every shard's until it is looked up: its repeats are
    returned (its line -> theirs) for the shard that takes it (Lister.repeats_later)."""
    log.info("%d repeated lines of %s: each fetched once", len(repeats), repeats.label)
    later: dict[int, list[int]] = {}
    if report is None:
        return later
    firsts = {first for _, first in repeats}
    by_line = {item.line: item for item in items if item.line in firsts}
    for line, first in repeats:
        item = by_line.get(first)
        if item is not None and sharded and looked_up(item):
            later.setdefault(first, []).append(line)
        elif item is not None:
            report_repeat(report, repeats.label, item, line)
    return later


def report_repeated_arguments(
    items: Sequence[CohortItem], arguments: list[tuple[int, int, str]], report: ReportWriter | None
) -> None:
    """A `repeat` row for each STUDY_UID argument given again, as report_repeats writes for a
    line: by the run (the shard) that fetches the study."""
    log.info("%d repeated STUDY_UID arguments: each fetched once", len(arguments))
    if report is None:
        return
    studies = {item.study_uid for item in items if not item.line}
    for position, first, uid in arguments:
        if uid in studies:
            reason = f"STUDY_UID argument {position}: repeat of argument {first}, fetched once"
            report.row(REPEAT, uid, None, None, reason=reason)


def fail_invalid_listed(
    items: list[CohortItem], summary: Summary, report: ReportWriter | None
) -> list[CohortItem]:
    """The items to download: one a catalog (`listed_by`) holds under a UID that is no UID,
    as the server sent it, is never a file name nor a request; it fails, the rest go on."""
    kept: list[CohortItem] = []
    for item in items:
        uid = item.invalid_uid if item.listed_by is not None else None
        if uid is None:
            kept.append(item)
            continue
        what = {"instance": "an instance", "unknown": "an item"}.get(item.level, f"a {item.level}")
        reason = f"{item.listed_by} lists {what} with an invalid UID {uid[:80]!r}: not downloaded"
        summary.failures.append(Failure(item.study_uid, item.series_uid, item.sop_uid, reason))
        if report is not None:
            report.row(FAILED, item.study_uid, item.series_uid, item.sop_uid, reason=reason)
    return kept


def take_complete(
    items: list[CohortItem],
    store: Store,
    manifest: Manifest,
    summary: Summary,
    report: ReportWriter | None,
    syntax: str,
) -> tuple[list[CohortItem], list[str]]:
    """Count the studies the index records complete, files in place and fetched asking for
    transfer syntax `syntax`, as present (no request to the server); return the items left to
    resolve, and those studies."""
    rest, complete = complete_in_index(items, store, manifest, syntax)
    for study, count in complete.items():
        summary.studies.append(study)
        summary.total += count
        summary.skipped += count
        summary.from_index += 1
        if report is not None:
            report_present(report, manifest, store, study)
    if complete:
        studies = "1 study" if len(complete) == 1 else f"{len(complete)} studies"
        log.info("%s complete in the manifest: not listed again", studies)
    return rest, list(complete)


def report_present(report: ReportWriter, manifest: Manifest, store: Store, study: str) -> None:
    """A `present` row for each instance of `study` the manifest records (a complete study)."""
    for entry in manifest.entries_of(study):
        report.row(
            PRESENT,
            *(entry.study, entry.series, entry.sop),
            path=store.root / entry.path,
            size=entry.size,
            digest=entry.digest,
        )
