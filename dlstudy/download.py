"""`dlstudy.download()`: resolve studies, schedule what is missing, fetch it, report.

This is the library entry point the CLI calls; it needs neither typer nor rich.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from .bulk import BulkFetcher
from .errors import (
    DlstudyError,
    InvalidUidError,
    NothingMatchedError,
    TransferError,
    UsageError,
)
from .fetch import InstanceFetcher
from .negotiate import Negotiator, candidates
from .pool import first_error, run_pool
from .progress import NullProgress, ProgressSink
from .qido import Resolver
from .settings import Settings
from .store import InstanceRef, Store
from .summary import Failure, Summary
from .transport import Transport
from .urls import is_valid_uid, redact_url, series_url, study_url

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 256


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
        raise UsageError(
            f"--url must start with http:// or https://, got {redact_url(settings.url)!r}"
        )
    if not 1 <= settings.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if settings.retries < 0:
        raise UsageError("--retries must be 0 or more")
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
    Fatal errors (bad input, server unreachable, auth, nothing matched) raise a DlstudyError
    with the partial summary attached as `.summary`; per-instance failures are in the summary.
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
        transport = Transport(settings)
        try:
            await _run(study_uids, settings, store, transport, progress, summary)
        finally:
            summary.http_version = transport.http_version
            await transport.aclose()
    except DlstudyError as exc:
        summary.error = str(exc)
        summary.exit_status = exc.exit_status
        exc.summary = summary  # type: ignore[attr-defined]
        raise
    finally:
        summary.seconds = time.monotonic() - started
        progress.close()
    summary.finish()
    return summary


async def _run(
    study_uids: list[str],
    settings: Settings,
    store: Store,
    transport: Transport,
    progress: ProgressSink,
    summary: Summary,
) -> None:
    resolver = Resolver(
        transport,
        page_size=settings.qido_page_size,
        series_filter=settings.series,
        modality_filter=settings.modalities,
    )
    todo: list[InstanceRef] = []
    for study_uid in study_uids:
        progress.resolving(study_uid)
        summary.studies.append(study_uid)
        try:
            refs = await resolver.resolve(study_uid)
        except NothingMatchedError as exc:
            summary.failures.append(Failure(study_uid, None, None, str(exc), 404))
            continue
        for ref in refs:
            summary.total += 1
            if not store.is_valid(ref):
                summary.failures.append(
                    Failure(study_uid, None, None, f"server sent an invalid UID in {ref!r}"[:300])
                )
            elif store.is_complete(ref):
                summary.skipped += 1
            else:
                todo.append(ref)
    if summary.total == 0:
        raise NothingMatchedError(_nothing_matched_message(settings, summary))

    progress.start(summary.total, summary.skipped)
    wanted_syntax = settings.transfer_syntax or None
    negotiator = Negotiator(candidates(wanted_syntax, single_part=True))
    fetcher = InstanceFetcher(transport, store, negotiator, retries=settings.retries)
    summary.retrieval = negotiator

    def done(ref: InstanceRef, size: int) -> None:
        summary.downloaded += 1
        summary.bytes += size
        progress.instance_done(ref, size)

    async def one_instance(ref: InstanceRef) -> None:
        try:
            size = await fetcher.fetch(ref, progress.advance)
        except TransferError as exc:
            status = getattr(exc, "status_code", None)
            summary.failures.append(
                Failure(ref.study_uid, ref.series_uid, ref.sop_uid, str(exc), status)
            )
            progress.instance_failed(ref, str(exc))
            return
        done(ref, size)

    with first_error():
        if settings.mode in ("series", "study"):
            todo = await _fetch_in_bulk(todo, settings, store, transport, progress, done)
        await run_pool(todo, one_instance, settings.concurrency)


async def _fetch_in_bulk(
    todo: list[InstanceRef],
    settings: Settings,
    store: Store,
    transport: Transport,
    progress: ProgressSink,
    done: Callable[[InstanceRef, int], None],
) -> list[InstanceRef]:
    """One multipart response per series (or study); return the instances still missing."""
    groups: dict[str, list[InstanceRef]] = {}
    for ref in todo:
        if settings.mode == "series":
            url = series_url(transport.base_url, ref.study_uid, ref.series_uid)
        else:
            url = study_url(transport.base_url, ref.study_uid)
        groups.setdefault(url, []).append(ref)
    negotiator = Negotiator(candidates(settings.transfer_syntax or None, single_part=False))
    bulk = BulkFetcher(transport, store, negotiator)
    committed: set[str] = set()

    async def one_group(item: tuple[str, list[InstanceRef]]) -> None:
        url, refs = item
        committed.update(await bulk.fetch(url, refs, progress.advance, done))

    await run_pool(list(groups.items()), one_group, settings.concurrency)
    missing = [ref for ref in todo if ref.sop_uid not in committed]
    if missing:
        log.info(
            "%d instances missing from the bulk responses; fetching them one by one", len(missing)
        )
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
