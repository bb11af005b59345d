"""Which instances a study holds: its series, then each series' instances, through the
QIDO pager (qido.py); or, where the server proves a study-wide search complete by the study's
own instance count, all of them in one listing, and for a list of studies, many studies in one
listing (UID list matching). Filters (--series, --modality) apply here.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio

from ..errors import (
    AuthError,
    ConnectError,
    IncompleteListingError,
    NothingMatchedError,
    ServerError,
)
from ..flow.pool import first_error, run_pool
from ..flow.retry import RetryPolicy
from ..http.client import Transport
from ..http.urls import NOT_ASKED_FOR, can_be_asked_for, redact_url, series_url, study_url
from ..model import Instances
from .qido import (
    QIDO_CONCURRENCY,
    STUDY_INSTANCE_PARAMS,
    TAG_MODALITY,
    TAG_SERIES_INSTANCES,
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_INSTANCES,
    TAG_STUDY_SERIES,
    TAG_STUDY_UID,
    Pager,
    SeriesRef,
    first_count,
    first_value,
    series_ref,
)

log = logging.getLogger(__name__)

PageRead = Callable[[], Awaitable[None]]

# Studies asked for in one instance search (their UIDs make a URL of about 2 KB).
STUDIES_PER_SEARCH = 32


class _IgnoresList(Exception):
    """A search by a list of study UIDs answered with a study not in the list."""


class _NoCounts(Exception):
    """A page of an instance search whose results all lack the study's instance count."""


def stop_without_counts(counts: Callable[[], Iterable[set[int | None]]]) -> PageRead:
    """A `page_read` that ends an instance search after a page whose results carried no study
    instance count: the listing could never be trusted complete, so its other pages (a whole
    study's, or 32 studies', instances) would be fetched only to be listed again."""

    async def check() -> None:
        seen = list(counts())
        if seen and all(c == {None} for c in seen):
            raise _NoCounts

    return check


class Resolver:
    """Turns study UIDs into the instances to fetch."""

    def __init__(
        self,
        transport: Transport,
        *,
        page_size: int,
        policy: RetryPolicy,
        series_filter: Iterable[str] = (),
        modality_filter: Iterable[str] = (),
    ) -> None:
        self.transport = transport
        self.pager = Pager(transport, page_size, policy)
        self.series_filter = set(series_filter)
        self.modality_filter = {m.upper() for m in modality_filter}
        self.series_found: set[str] = set()  # the --series values a study listed had
        # Whether studies are listed in one request (study_instances): None until known.
        self.one_request: bool | None = None
        # Whether several studies are listed in one request (studies_at_once): None until known.
        self.lists_studies: bool | None = None
        self._deciding = anyio.Lock()
        self._deciding_lists = anyio.Lock()
        # Whether the server answers a study search with the study's counts: None until known.
        self.gives_study_counts: bool | None = None

    async def all_series_of(
        self, study_uid: str, unproven: Callable[[], object] | None = None
    ) -> list[SeriesRef] | None:
        """Every series of the study (None: not found), unfiltered."""
        base = self.transport.base_url
        return await self.pager.fetch_all(
            f"{study_url(base, study_uid)}/series",
            [("includefield", TAG_SERIES_INSTANCES)],
            TAG_SERIES_UID,
            keep=lambda item: series_ref(study_uid, item),
            unproven=unproven,
        )

    async def series_of(self, study_uid: str) -> list[SeriesRef]:
        found = await self.all_series_of(study_uid)
        if not found:
            raise NothingMatchedError(f"study {study_uid} not found on the server")
        return [series for series in found if self.wanted(series.series_uid, series.modality)]

    async def study_counts(self, study_uid: str) -> tuple[int | None, int | None]:
        """The study's own counts of series and instances (NumberOfStudyRelatedSeries,
        NumberOfStudyRelatedInstances) from a study search; None where the server gives none
        or refuses the search (not asked again)."""
        if self.gives_study_counts is False:
            return None, None
        try:
            page = await self.pager.get_page(
                f"{self.transport.base_url}/studies",
                [
                    ("StudyInstanceUID", study_uid),
                    ("includefield", TAG_STUDY_SERIES),
                    ("includefield", TAG_STUDY_INSTANCES),
                ],
            )
        except (AuthError, ConnectError):
            raise
        except ServerError as exc:
            log.info("%s; series listings taken as whole", exc)
            self.gives_study_counts = False
            return None, None
        for item in page[0] if page else []:
            if first_value(item, TAG_STUDY_UID) == study_uid:
                return first_count(item, TAG_STUDY_SERIES), first_count(item, TAG_STUDY_INSTANCES)
        return None, None

    def wanted(self, series_uid: str, modality: str) -> bool:
        """Whether a series passes the --series and --modality filters."""
        if self.series_filter:
            if series_uid not in self.series_filter:
                return False
            self.series_found.add(series_uid)
        return not self.modality_filter or modality in self.modality_filter

    async def instances_of(self, series: SeriesRef) -> Instances:
        base = self.transport.base_url
        study, uid, modality = series.study_uid, series.series_uid, series.modality
        if not can_be_asked_for(uid):
            raise IncompleteListingError(
                f"could not list study {study}: the server lists a series with the UID "
                f"{uid[:80]!r}, {NOT_ASKED_FOR}",
                url=redact_url(series_url(base, study, "")),
            )
        found = Instances()

        def keep(item: dict[str, Any]) -> None:
            # A server that ignores the series in the path lists the whole study here: an
            # instance that says it is of another series is listed with that one.
            of_series = first_value(item, TAG_SERIES_UID)
            sop_uid = first_value(item, TAG_SOP_UID)
            if sop_uid is not None and of_series in (None, uid):
                found.add(study, uid, sop_uid, modality)

        await self.pager.walk(
            f"{series_url(base, study, uid)}/instances",
            [],
            TAG_SOP_UID,
            expected=series.instance_count,
            each=keep,
        )
        return found

    async def resolve(self, study_uid: str) -> Instances:
        """Every instance of the study that passes the filters, in QIDO order: in one request
        when the server's answer can be checked complete, else series by series."""
        if not self.series_filter:  # (--series names a few series: those are listed alone)
            if self.one_request is None:
                async with self._deciding:  # until a study tells, the others wait for it
                    if self.one_request is not False:
                        refs = await self.study_instances(study_uid)
                        if refs is not None:
                            return refs
            elif self.one_request:
                refs = await self.study_instances(study_uid)
                if refs is not None:
                    return refs
        return await self.series_by_series(study_uid)

    async def study_instances(self, study_uid: str) -> Instances | None:
        """The study's instances from one study-wide instance search (paged like any other),
        or None when that answer cannot be trusted complete: the two-step path then lists the
        study. Trusted only when every result carries the study's instance count
        (NumberOfStudyRelatedInstances) and as many distinct instances were listed: a server
        that caps pages silently could otherwise cut whole series off unseen. A server whose
        results lack the count (Orthanc) is not asked this way again."""
        series: dict[str, tuple[str, str]] = {}  # series UID -> (its shared string, modality)
        counts: set[int | None] = set()
        listed = 0
        refs = Instances()

        def keep(item: dict[str, Any]) -> None:
            nonlocal listed
            listed += 1
            self._add(item, study_uid, series, counts, refs)

        url = f"{study_url(self.transport.base_url, study_uid)}/instances"
        try:
            found = await self.pager.walk(
                url, STUDY_INSTANCE_PARAMS, TAG_SOP_UID, counts_checked=True, each=keep,
                page_read=stop_without_counts(lambda: [counts] if listed else []),
            )  # fmt: skip
        except _NoCounts:
            found, counts = True, {None}
        except IncompleteListingError as exc:
            log.info("%s; listing the study series by series", exc)
            return None
        except (AuthError, ConnectError):
            raise
        except ServerError as exc:  # refused (a server without study-wide instance search)
            log.info("%s; listing studies series by series", exc)
            self.one_request = False
            return None
        if not found or listed == 0:
            return None  # 404 or nothing: the two-step path says which
        if counts == {None}:
            log.info("study-wide instance search gives no instance count: series by series")
            self.one_request = False
            return None
        if counts != {listed}:
            log.info("study %s: %d instances listed, its count says %s", study_uid, listed, counts)
            return None
        self.one_request = True
        return refs

    async def studies_in_batches(self, study_uids: Iterable[str]) -> dict[str, Instances]:
        """studies_at_once over a list of any length, STUDIES_PER_SEARCH studies a search and
        QIDO_CONCURRENCY searches at a time."""
        uids = list(dict.fromkeys(study_uids))
        found: dict[str, Instances] = {}
        if len(uids) < 2:  # one study: resolve() lists it in one request anyway
            return found

        async def one_search(start: int) -> None:
            found.update(await self.studies_at_once(uids[start : start + STUDIES_PER_SEARCH]))

        await run_pool(range(0, len(uids), STUDIES_PER_SEARCH), one_search, QIDO_CONCURRENCY)
        return found

    async def studies_at_once(self, study_uids: Sequence[str]) -> dict[str, Instances]:
        """The instances of several studies from one instance search (`StudyInstanceUID` as a
        comma-separated list: QIDO-RS UID list matching), for each study whose listing its own
        instance count (NumberOfStudyRelatedInstances) proves complete. The other studies are
        left out of the answer: the caller lists them one by one (resolve), which also says
        which ones the server does not have. A server that refuses the search, ignores the
        list or gives no counts is not asked this way again."""
        if self.series_filter or self.lists_studies is False or not study_uids:
            return {}
        if self.lists_studies is None:
            async with self._deciding_lists:  # until one answer tells, the others wait for it
                return await self._studies_at_once(study_uids)
        return await self._studies_at_once(study_uids)

    async def _studies_at_once(self, study_uids: Sequence[str]) -> dict[str, Instances]:
        if self.lists_studies is False:
            return {}
        asked = {uid: uid for uid in study_uids}  # each ref shares the caller's string
        series: dict[str, tuple[str, str]] = {}  # series UID -> (its shared string, modality)
        listed: Counter[str] = Counter()
        counts: defaultdict[str, set[int | None]] = defaultdict(set)
        refs = Instances()

        def keep(item: dict[str, Any]) -> None:
            study_uid = asked.get(first_value(item, TAG_STUDY_UID) or "")
            if study_uid is None:  # not asked for: the server ignores the list (stop paging)
                raise _IgnoresList
            listed[study_uid] += 1
            self._add(item, study_uid, series, counts[study_uid], refs)

        url = f"{self.transport.base_url}/instances"
        params = [
            ("StudyInstanceUID", ",".join(asked)),
            ("includefield", TAG_STUDY_UID),
            *STUDY_INSTANCE_PARAMS,
        ]
        try:
            found = await self.pager.walk(
                url, params, TAG_SOP_UID, counts_checked=True, each=keep,
                page_read=stop_without_counts(counts.values),
            )  # fmt: skip
        except _NoCounts:
            # Nor will a study-wide search give it (Orthanc): series by series from the start.
            self.one_request = False
            found, why = False, "gives no study instance count in an instance search"
        except IncompleteListingError as exc:
            log.info("%s; listing those studies one by one", exc)
            return {}
        except (AuthError, ConnectError):
            raise
        except ServerError as exc:  # refused (no UID list matching, no unscoped search)
            log.info("%s; listing studies one by one", exc)
            self.lists_studies = False
            return {}
        except _IgnoresList:
            found, why = False, "answers a search by a list of study UIDs with other studies"
        else:
            why = "has no instance search across studies"
        if not found:
            log.info("the server %s: listing studies one by one", why)
            self.lists_studies = False
            return {}
        if not listed and self.lists_studies is None:
            log.info("a search by a list of study UIDs found none of them: one by one")
            self.lists_studies = False  # (the list matched nothing: not understood, likely)
            return {}
        complete = {uid for uid, n in listed.items() if counts[uid] == {n}}
        if complete:
            self.lists_studies = True
        by_study = refs.split(lambda study, _series: study)
        return {uid: by_study.get(uid, Instances()) for uid in complete}

    def _add(
        self,
        item: dict[str, Any],
        study_uid: str,
        series: dict[str, tuple[str, str]],
        counts: set[int | None],
        refs: Instances,
    ) -> None:
        """One result of an instance search across series into `refs` (its series' strings
        shared, kept in `series`), unless the filters leave its series out or it lacks a UID;
        the study count it carries goes into `counts` (None: nothing to build on)."""
        counts.add(first_count(item, TAG_STUDY_INSTANCES))
        series_uid = first_value(item, TAG_SERIES_UID)
        sop_uid = first_value(item, TAG_SOP_UID)
        if series_uid is None or sop_uid is None:
            counts.add(None)
            return
        known = series.get(series_uid)
        if known is None:
            modality = sys.intern((first_value(item, TAG_MODALITY) or "").upper())
            known = series[series_uid] = (series_uid, modality)
        if self.wanted(*known):
            refs.add(study_uid, known[0], sop_uid, known[1])

    async def series_by_series(self, study_uid: str) -> Instances:
        """The study's series, then each series' instances, checked against its count."""
        unproven = False

        def ended_unproven() -> None:
            nonlocal unproven
            unproven = True

        listed = await self.all_series_of(study_uid, ended_unproven)
        if not listed:
            raise NothingMatchedError(f"study {study_uid} not found on the server")
        if unproven:
            whole = await self.whole_study_if_series_cut(study_uid, len(listed))
            if whole is not None:
                return whole
        all_series = [s for s in listed if self.wanted(s.series_uid, s.modality)]
        per_series = [Instances() for _ in all_series]
        limiter = anyio.CapacityLimiter(QIDO_CONCURRENCY)

        async def one(index: int, series: SeriesRef) -> None:
            async with limiter:
                per_series[index] = await self.instances_of(series)

        with first_error():
            async with anyio.create_task_group() as tg:
                for index, series in enumerate(all_series):
                    tg.start_soon(one, index, series)
        if len(per_series) == 1:
            return per_series[0]
        refs = Instances()
        for one_series in per_series:
            refs.extend(one_series)
        return refs

    async def whole_study_if_series_cut(self, study_uid: str, listed: int) -> Instances | None:
        """None when the study's own series count shows its series listing whole (or it gives
        none); else the study's instances from a study-wide instance search checked against
        its instance count. A server may cut search results silently and send nothing past
        the cut whatever the offset (Orthanc's LimitFindResults: the first limit + 1 results
        only), so paging alone cannot tell a cut listing from a whole one. Asked only of a
        listing the pager could not prove whole (a short page of more results than any
        listing seen whole before, then nothing)."""
        series_count, instance_count = await self.study_counts(study_uid)
        if series_count is None or series_count <= listed:
            return None
        log.info(
            "study %s: %d series listed, its count says %d: listing its instances at once",
            study_uid, listed, series_count,
        )  # fmt: skip
        url = f"{study_url(self.transport.base_url, study_uid)}/instances"
        series: dict[str, tuple[str, str]] = {}
        refs = Instances()
        cut = (
            f"could not list study {study_uid} completely: the server lists {listed} of its "
            f"{series_count} series (a cap on search results, such as Orthanc's "
            "LimitFindResults), and"
        )
        try:
            await self.pager.walk(
                url, STUDY_INSTANCE_PARAMS, TAG_SOP_UID, expected=instance_count,
                each=lambda item: self._add(item, study_uid, series, set(), refs),
            )  # fmt: skip
        except IncompleteListingError as exc:
            raise IncompleteListingError(f"{cut} {exc}", url=exc.url) from exc
        if instance_count is None or len(series) < series_count:
            raise IncompleteListingError(
                f"{cut} its instances in {len(series)} series", url=redact_url(url)
            )
        return refs
