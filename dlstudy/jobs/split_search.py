"""A study search the server cut with no way to page past the cut (Orthanc's LimitFindResults),
listed again as `catalog pull` lists it: split by date, then by time of day, each window until
its answer is whole, into a throwaway catalog in OUT/.dlstudy, which is then read as
`sync --catalog` reads one. What cannot be listed even so (more studies than the cap in one
second, studies without a StudyDate past the cut, or without a StudyTime in a day split by
time) is in the pull's `unreachable` and notes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ..http.auth import auth_from_settings
from ..http.client import Transport
from ..settings import Settings

if TYPE_CHECKING:
    from ..catalog.summary import PullSummary
    from ..dicomweb.search import StudyQuery, StudyRecord
    from ..flow.retry import RetryPolicy

log = logging.getLogger(__name__)

SEARCH_CATALOG = "search.duckdb"  # in the output folder's state folder, held by its lock


async def split_search(
    settings: Settings,
    query: StudyQuery,
    state_dir: Path,
    policy: RetryPolicy,
    each: Callable[[StudyRecord], object],
) -> PullSummary:
    """Call `each` with every study of `query` a window-by-window walk finds; the walk's
    summary says what it could not reach."""
    from ..catalog.query import CatalogBatches
    from ..catalog.store import writing

    path = state_dir / SEARCH_CATALOG
    _remove(path)  # a killed run's
    try:
        with writing(path):
            summary = await _pull(settings, query, path, policy)
            batches = await CatalogBatches.selected(path, None, None)
            try:
                await batches.for_each(each)
            finally:
                batches.close()
        return summary
    finally:
        _remove(path)


async def _pull(
    settings: Settings, query: StudyQuery, path: Path, policy: RetryPolicy
) -> PullSummary:
    from ..catalog.harvest import Harvester, scope_of
    from ..catalog.store import Catalog, archive_address

    catalog = await anyio.to_thread.run_sync(Catalog, path)
    try:
        catalog.check_archive(archive_address(settings.url), moved=False)
        catalog.check_scope(scope_of(query))
        transport = Transport(settings, auth=await auth_from_settings(settings))
        try:
            harvester = Harvester(
                catalog,
                transport,
                query,
                page_size=settings.qido_page_size,
                policy=policy,
                walk="auto",
                recent_days=0,
                full=False,
                level="study",
                page_size_option=None,  # (sync has no --page-size)
            )
            try:
                summary = await harvester.run()
            except BaseException as exc:
                # What the pull had recorded is the throwaway catalog's, not the run's summary
                # (which sync's signal and error handling look for under that name).
                with contextlib.suppress(AttributeError):
                    del exc.summary  # type: ignore[attr-defined]
                raise
        finally:
            await transport.aclose()
    finally:
        catalog.close()
    log.info(
        "the search, listed again in %d requests, found %d studies", summary.requests,
        summary.studies,
    )  # fmt: skip
    return summary


def _remove(path: Path) -> None:
    for name in (path.name, f"{path.name}.wal"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / name).unlink()
