"""`dlstudy sync`: search, then download every matching study that is not complete yet.

A study is complete when the manifest index (`OUT/.dlstudy/manifest.sqlite`, written by every
download) lists at least as many of its instances, all still on disk and fetched asking for the
run's --transfer-syntax, as the study-level search reports in NumberOfStudyRelatedInstances
(store/completion.py). Complete studies cost nothing beyond that one search; the others go
through `download_async`, which resolves them and fetches only what is missing. A study whose
count the server does not report is complete when a run recorded it so and its files are all in
place, as for a rerun (new instances of it are not looked for then). --recheck hands every
matching study to the download, as --verify does: counts miss an instance replaced by another of
the same series. The download lists every study it is handed from the server (as --recheck):
one the index records complete may have gained instances since.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dicomweb.search import StudyQuery, StudyRecord, stream_async
from ..dicomweb.shard import Shard
from ..engine.standby import standing_by
from ..engine.workers import standing_by_for
from ..errors import (
    DlstudyError,
    ExitStatus,
    IncompleteListingError,
    NothingMatchedError,
    UsageError,
)
from ..flow.retry import RetryPolicy, RetryTally
from ..flow.signals import stop_on_signals
from ..http.client import refuse_other_loop
from ..http.urls import is_valid_uid, redact_url
from ..model import Failure
from ..report.events import EventSink, emit
from ..report.landed import ReportWriter, run_report
from ..report.progress import NullProgress, ProgressSink
from ..report.summary import LIST_LIMIT, Summary
from ..report.words import counted
from ..settings import PathLike, Settings, processes_for
from ..store.completion import complete_from_index, is_complete, present_files
from ..store.files import Store
from ..store.lock import output_lock
from ..store.manifest import Manifest
from .download import check_arguments, download_async, report_present, run_to_end, validate
from .run import instance_negotiator

if TYPE_CHECKING:
    from ..catalog.query import CatalogBatches

log = logging.getLogger(__name__)

# A catalog file, or (file, where): what sync's `catalog` takes.
Catalog = PathLike | tuple[PathLike, str | None]


@dataclass
class SyncSummary(Summary):
    """A download Summary plus what the search found and what was already complete.

    Counted, not kept: `studies` holds the first LIST_LIMIT UIDs of the shard's studies (all
    that --json prints), so a night of any size is summed up in flat memory."""

    matched: int = 0  # studies the search returned (before sharding)
    shard: str | None = None
    in_shard: int = 0  # the studies of the shard, valid UIDs only
    already_complete: int = 0  # of them, skipped without any instance QIDO

    @classmethod
    def extend(cls, summary: Summary) -> SyncSummary:
        return cls(**{f.name: getattr(summary, f.name) for f in fields(Summary)})

    @property
    def study_count(self) -> int:
        return self.in_shard

    def add_study(self, uid: str) -> None:
        self.in_shard += 1
        if len(self.studies) < LIST_LIMIT:
            self.studies.append(uid)

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        data["sync"] = {
            "matched": self.matched,
            "shard": self.shard,
            "in_shard": self.in_shard,
            "already_complete": self.already_complete,
            "synced": self.in_shard - self.already_complete,
        }
        return data

    def one_line(self) -> str:
        shard = f" (shard {self.shard}: {self.in_shard})" if self.shard else ""
        return (
            f"sync: {self.matched} {'study' if self.matched == 1 else 'studies'} matched{shard}, "
            f"{self.already_complete} already complete; {super().one_line()}"
        )


def sync(
    settings: Settings,
    query: StudyQuery,
    *,
    shard: Shard | None = None,
    progress: ProgressSink | None = None,
    catalog: Catalog | None = None,
) -> SyncSummary:
    """Search with `query` and download what is not complete in `settings.output`; with
    `catalog` (the file of `catalog pull --db`, as str or Path, or a (file, where) pair with a
    --where condition or None), select from it instead of searching the server.

    Fatal errors raise a DlstudyError with the partial SyncSummary attached as `.summary`.
    """
    check_sync_arguments(settings, query, shard, progress)
    chosen = catalog_argument(catalog)
    refuse_other_loop()
    with standing_by(standing_by_for(processes_for(settings), settings.mode)):
        return run_to_end(sync_async, settings, query, shard, progress or NullProgress(), chosen)


def catalog_argument(catalog: object) -> tuple[Path, str | None] | None:
    """sync's `catalog` as (file, where), or a UsageError naming it: a file given as text was
    an AttributeError from inside, one given alone a TypeError."""
    if catalog is None:
        return None
    pair = catalog if isinstance(catalog, tuple | list) and len(catalog) == 2 else (catalog, None)
    path, where = pair
    if not isinstance(path, str | os.PathLike):
        raise UsageError(
            "catalog must be a catalog file (str or Path) or a (file, where) pair, "
            f"not {type(path).__name__}"
        )
    if not isinstance(where, str | None):
        raise UsageError(f"catalog's where must be text or None, not {type(where).__name__}")
    if not str(path).strip():  # (Path("") is the working folder)
        raise UsageError("catalog is empty: give a file, or leave the keyword out")
    return Path(path), where


def check_sync_arguments(settings: object, query: object, shard: object, progress: object) -> None:
    """A library call's arguments of the wrong kind, named, before any folder is made (they
    failed deep inside with an AttributeError, `shard=(1, 2)` after making the output)."""
    check_arguments(settings, progress, needed=True)
    if not isinstance(query, StudyQuery):
        raise UsageError(f"query must be a dlstudy.StudyQuery, not {type(query).__name__}")
    if shard is not None and not isinstance(shard, Shard):
        raise UsageError(f"shard must be a dlstudy.Shard or None, not {type(shard).__name__}")


async def sync_async(
    settings: Settings,
    query: StudyQuery,
    shard: Shard | None,
    progress: ProgressSink,
    catalog: Catalog | None = None,
) -> SyncSummary:
    check_sync_arguments(settings, query, shard, progress)
    chosen = catalog_argument(catalog)
    started = time.monotonic()
    plan = SyncSummary(url=redact_url(settings.url), output=str(settings.output))
    plan.mode = settings.mode
    plan.shard = str(shard) if shard else None
    sink = EventSink(progress)
    try:
        result = await stop_on_signals(_sync(settings, query, shard, sink, plan, chosen))
    except BaseException as exc:
        sink.close()
        summary = _combine(plan, getattr(exc, "summary", None))
        summary.seconds = time.monotonic() - started
        if summary.ended_by(exc):  # the log says how the run ended, too
            log_run_summary(summary)
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    sink.close()
    summary = _combine(plan, result)
    summary.seconds = time.monotonic() - started
    summary.finish()
    log_run_summary(summary)
    return summary


async def _sync(
    settings: Settings,
    query: StudyQuery,
    shard: Shard | None,
    sink: EventSink,
    plan: SyncSummary,
    catalog: tuple[Path, str | None] | None,
) -> Summary | None:
    """Fill `plan` with what the search found; return the download's summary, if any."""
    validate(settings, ["0"])  # the options alone: the study UIDs come from the search
    plan.retrieval = instance_negotiator(settings)  # the download's, when there is one
    if settings.series or settings.modalities:
        raise UsageError("sync downloads whole studies: series and modality filters do not apply")
    selection: CatalogBatches | None = None
    if (
        catalog is not None
    ):  # opened before the output folder is made: one unreadable leaves nothing
        from ..catalog.query import CatalogBatches

        selection = await CatalogBatches.selected(*catalog, query, settings.url)
    try:
        store = Store(settings.output, settings.layout)
        store.prepare()
        # Held for the whole run (the download inside takes it again, a no-op in this process),
        # so a second cron run gives up (exit 5) before searching and nothing can slip in
        # between.
        async with output_lock(store.state_dir, wait=settings.wait_for_lock):
            try:
                if settings.report is None:
                    return await _search_and_download(
                        settings, query, shard, store, sink, plan, selection
                    )
                # --report: the complete studies' rows are written here, the others' by the
                # download.
                with run_report(settings.report) as report:
                    return await _search_and_download(
                        settings, query, shard, store, sink, plan, selection, report
                    )
            finally:
                store.remove_if_unused()
    finally:
        if selection is not None:
            selection.close()


async def _search_and_download(
    settings: Settings,
    query: StudyQuery,
    shard: Shard | None,
    store: Store,
    sink: EventSink,
    plan: SyncSummary,
    catalog: CatalogBatches | None,
    report: ReportWriter | None = None,
) -> Summary | None:
    pending: list[str] = []
    # The counts a live search gave the pending studies, checked once they are downloaded (a
    # catalog's may be days old: an archive that deleted instances since would fail them).
    search_counts: dict[str, tuple[int, int | None]] = {}
    # Complete studies whose index holds more instances than the server counts: some may have
    # moved to a pending study, whose download takes their entries. Reported after it, so that
    # an instance has one row.
    report_after: list[str] = []
    manifest = Manifest(store.root, store.state_dir, read_only=True)
    syntax = settings.transfer_syntax  # a study fetched asking for another is not complete

    def examine(record: StudyRecord) -> None:
        """Complete or pending: decided as the record arrives (the server meanwhile makes
        the next page); the record is not kept."""
        plan.matched += 1
        if shard is not None and not shard.owns(record.study_uid):
            return
        if not is_valid_uid(record.study_uid):  # never a file name: that study fails, alone
            reason = _invalid(record, "the catalog" if catalog is not None else "the server")
            plan.failures.append(Failure(record.study_uid, None, None, reason, None))
            return
        plan.add_study(record.study_uid)
        instances = record.instances
        if catalog is None and instances is not None:
            search_counts[record.study_uid] = (instances, record.series)
        if settings.verify or settings.recheck:  # listed (and with --verify checked) anew
            pending.append(record.study_uid)
            return
        if instances is None:
            # No count to compare: a run's completion record (its files all in place)
            # decides, as for a rerun of the study.
            instances = complete_from_index(manifest, store, record.study_uid, syntax)
            complete = instances is not None
        else:
            complete = is_complete(
                manifest, store, record.study_uid, instances, record.series, syntax=syntax
            )
        if complete:
            search_counts.pop(record.study_uid, None)
            plan.already_complete += 1
            plan.total += instances or 0
            emit("study_complete", logging.DEBUG, study=record.study_uid)
            if report is not None and manifest.count_of(record.study_uid) > (instances or 0):
                report_after.append(record.study_uid)
            elif report is not None:
                report_present(report, manifest, store, record.study_uid)
        else:
            pending.append(record.study_uid)

    try:
        if catalog is not None:  # what the catalog knows: no search of the server at all
            await catalog.for_each(examine)
            # Read whole: closed before the download, so that the night's pull into it can
            # run meanwhile (while a process reads a DuckDB file, no other can write it).
            catalog.close()
        else:
            policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
            plan.retries = policy.tally
            keyless: list[int] = []
            try:
                await stream_async(
                    settings, query, examine, lambda: keyless.append(1), policy=policy
                )
            except IncompleteListingError as exc:
                if exc.listed is None:
                    raise
                await _list_again(settings, query, store, policy, plan, examine, exc.listed)
            if keyless:  # studies no one can download: the night is not whole (exit 1)
                n = len(keyless)
                results = "a result" if n == 1 else f"{n} results"
                reason = f"the search sent {results} without a Study Instance UID (0020000D)"
                plan.failures.append(Failure(None, None, None, reason, None))
    except BaseException:
        # A search that failed part way says nothing about the rest.
        plan.studies.clear()
        plan.matched = plan.in_shard = plan.already_complete = plan.total = 0
        plan.failures.clear()
        raise
    finally:
        manifest.close()
    # None matched is a quiet night for cron, not an error.
    plan.skipped = plan.total
    try:
        return await _download_pending(settings, store, sink, plan, pending, search_counts, report)
    finally:
        if report is not None and report_after:
            _report_present_after(report, store, report_after)


def _report_present_after(report: ReportWriter, store: Store, studies: list[str]) -> None:
    """The `present` rows of complete studies, from the index as the download left it."""
    manifest = Manifest(store.root, store.state_dir, read_only=True)
    try:
        for study in studies:
            report_present(report, manifest, store, study)
    finally:
        manifest.close()


async def _download_pending(
    settings: Settings,
    store: Store,
    sink: EventSink,
    plan: SyncSummary,
    pending: list[str],
    search_counts: dict[str, tuple[int, int | None]],
    report: ReportWriter | None,
) -> Summary | None:
    """Download the studies not complete; the download's summary (None if there were none)."""
    if not pending:
        return None
    try:
        result = await download_async(pending, replace(settings, recheck=True), sink, report=report)
    except NothingMatchedError as exc:
        # The search (or the catalog) matched these studies: that the server now lists none
        # of them is their failure (exit 1), not a night with nothing matched (exit 4).
        result = getattr(exc, "summary", None) or Summary(url=plan.url, output=plan.output)
        result.error, result.exit_status = None, ExitStatus.OK
        if not any(failure.sop_instance_uid is None for failure in result.failures):
            result.failures += [Failure(study, None, None, str(exc), None) for study in pending]
    except DlstudyError as exc:
        partial = getattr(exc, "summary", None)
        _study_events(pending, sink, partial.failures if partial is not None else [])
        raise
    _short_of_counts(result, search_counts, store, report)
    _study_events(pending, sink, result.failures)
    return result


def _short_of_counts(
    result: Summary,
    search_counts: dict[str, tuple[int, int | None]],
    store: Store,
    report: ReportWriter | None,
) -> None:
    """A study the search counted more instances (or series) in than its listings gave, every
    one of them fetched: not whole, though nothing failed (a listing cut where paging cannot
    tell, such as an instance search capped without a word). It fails (exit 1) rather than
    pass a night that leaves it short; the next night lists it again."""
    if not search_counts:
        return
    failed = {failure.study_uid for failure in result.failures}
    manifest = Manifest(store.root, store.state_dir, read_only=True)
    try:
        for study, (instances, series) in search_counts.items():
            if study in failed:
                continue
            # What the index holds of it: a file removed by hand is no shortfall of the
            # listing (the download fetched every instance listed and missing).
            have = present_files(manifest, store, study)
            if have.entries >= instances and (series is None or have.series >= series):
                continue
            reason = (
                f"study {study}: the server's search counts {_counted_words(instances, series)}; "
                f"listed and fetched, it has {_counted_words(have.entries, have.series)}: not "
                "whole (a listing the server cut?); the next run lists it again"
            )
            log.warning("%s", reason)
            result.failures.append(Failure(study, None, None, reason, None))
            if report is not None:
                report.row("failed", study, None, None, reason=reason)
    finally:
        manifest.close()


def _counted_words(instances: int, series: int | None) -> str:
    """`7 instances`, `7 instances in 2 series`."""
    said = counted(instances, "instance", "instances")
    return said if series is None else f"{said} in {counted(series, 'series', 'series')}"


async def _list_again(
    settings: Settings,
    query: StudyQuery,
    store: Store,
    policy: RetryPolicy,
    plan: SyncSummary,
    examine: Callable[[StudyRecord], None],
    listed: set[str],
) -> None:
    """The search the server cut, listed again window by window (jobs/split_search.py): the
    studies it did list were examined already; what even that walk cannot reach is a failure
    of the night (exit 1), never a short one taken for whole."""
    from .split_search import split_search

    log.warning(
        "the server cut the search (it sent %s, and nothing past them): listing it again "
        "by date and time of day, as catalog pull does",
        counted(len(listed), "study", "studies"),
    )

    seen = listed  # (the cut search's, grown here: a study of two modalities comes twice)

    def rest(record: StudyRecord) -> None:
        if record.study_uid not in seen:
            seen.add(record.study_uid)
            examine(record)

    # A catalog is one selection: one walk a modality, as the search asked one at a time.
    for modality in query.modalities or (None,):
        one = replace(query, modalities=(modality,) if modality else ())
        walk = await split_search(settings, one, store.state_dir, policy, rest)
        if walk.unreachable != 0:
            some = "some" if walk.unreachable is None else f"{walk.unreachable:,}"
            reason = f"the search could not be listed completely: {some} studies unreachable"
            said = "; ".join(walk.notes)
            plan.failures.append(
                Failure(None, None, None, f"{reason} ({said})" if said else reason, None)
            )


def _combine(plan: SyncSummary, result: Summary | None) -> SyncSummary:
    if result is None:
        return plan
    merged = SyncSummary.extend(result)
    merged.matched = plan.matched
    merged.shard = plan.shard
    merged.in_shard = plan.in_shard
    merged.already_complete = plan.already_complete
    merged.studies = plan.studies  # the download's hold only those it was handed
    merged.total += plan.total
    merged.skipped += plan.skipped
    merged.retries = RetryTally(plan.retried + result.retried)  # the search's and the download's
    merged.failures = plan.failures + merged.failures
    return merged


def _invalid(record: StudyRecord, listed_by: str) -> str:
    """Why a study under a UID that is no UID fails: `listed_by` the server (a search) or the
    catalog (which holds what a pull found), as download --from-catalog says it."""
    shown = repr(record.study_uid[:80])  # as sent, control characters and all escaped
    return f"{listed_by} lists a study with an invalid UID {shown}: not downloaded"


def _study_events(pending: list[str], sink: EventSink, failures: list[Failure]) -> None:
    failed = Counter(f.study_uid for f in failures)
    for uid in pending:
        emit(
            "study_finished",
            study=uid,
            downloaded=sink.downloaded[uid],
            bytes=sink.bytes[uid],
            failed=failed[uid],
            complete=failed[uid] == 0,
        )


def log_run_summary(summary: SyncSummary) -> None:
    """The run_summary event, with which a sync's log ends however it ends."""
    emit(
        "run_summary",
        matched=summary.matched,
        shard=summary.shard,
        studies=summary.in_shard,
        already_complete=summary.already_complete,
        instances=summary.total,
        downloaded=summary.downloaded,
        skipped=summary.skipped,
        failed=summary.failed,
        bytes=summary.bytes,
        seconds=round(summary.seconds, 3),
        error=summary.error,
        exit_status=int(summary.exit_status),
    )
