"""Cohort items -> the instances to fetch, asking QIDO only for what a line does not name.

    study                   its series, then each series' instances (resolve.Resolver; filters)
    study + series          that series' instances: one listing, nothing else of the study
    series                  `/series?SeriesInstanceUID=` finds its study (one lookup), then as above
    study + series + SOP    no request at all: fetched as named (unless another row names
                            the SOP elsewhere: jobs/listing.py checks it with where_is)
    SOP (+ study/series)    `/instances?SOPInstanceUID=` (with the UIDs the row gives as filters)
    a plain list's UID      study first, then series, then instance, until the server knows it

Only what was listed is fetched: a series never pulls the rest of its study, an instance never
the rest of its series. A UID the server does not know is a per-item failure (NotFound), the
rest of the list goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import IncompleteListingError, NothingMatchedError
from ..http.urls import NOT_ASKED_FOR, can_be_asked_for, redact_url, series_url
from ..model import InstanceRef, Instances
from .cohort import CohortItem
from .qido import (
    TAG_MODALITY,
    TAG_SERIES_INSTANCES,
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_UID,
    SeriesRef,
    first_value,
    series_ref,
)
from .resolve import Resolver

T = TypeVar("T")


class NotFound(Exception):
    """The server does not have what an item names: a per-item failure, with the reason."""


class InAnotherShard(Exception):
    """What a line without its study UID names is in studies another --shard downloads."""


class Locator:
    def __init__(self, resolver: Resolver, owns: Callable[[str], bool] | None = None) -> None:
        """`owns(study_uid)`: whether this shard downloads the study (--shard); a series or
        instance found by a lookup is kept only then."""
        self.resolver = resolver
        self.pager = resolver.pager
        self.base = resolver.transport.base_url
        self.owns = owns

    async def instances(self, item: CohortItem) -> Instances:
        """The instances `item` names, in QIDO order. Raises NotFound; with `owns`,
        InAnotherShard for a line naming no study whose study is another shard's."""
        if item.any_uid is not None:
            return await self._of_unknown_level(item.any_uid)
        if item.sop_uid is not None:
            if item.study_uid is not None and item.series_uid is not None:
                return Instances([InstanceRef(item.study_uid, item.series_uid, item.sop_uid)])
            found = await self._instance(
                item.sop_uid, item.study_uid, item.series_uid, routed=item.study_uid is None
            )
            if not found:
                raise NotFound(f"{item.describe()}{_within(item)} not found on the server")
            return found
        if item.series_uid is not None:
            found = await self._series(
                item.series_uid, item.study_uid, routed=item.study_uid is None
            )
            if not found:
                raise NotFound(f"{item.describe()}{_within(item)} not found on the server")
            return found
        assert item.study_uid is not None
        return await self._study(item.study_uid)

    async def where_is(self, sop_uid: str) -> Instances:
        """Where the server has the instance: a row's study and series checked against it."""
        return await self._instance(sop_uid, None, None)

    async def _of_unknown_level(self, uid: str) -> Instances:
        try:
            return await self._study(uid)
        except NotFound:
            pass
        found = await self._series(uid, None) or await self._instance(uid, None, None)
        if not found:
            raise NotFound(f"UID {uid} not found on the server as a study, series or instance")
        return found

    async def _study(self, study_uid: str) -> Instances:
        try:
            return await self.resolver.resolve(study_uid)
        except NothingMatchedError as exc:
            raise NotFound(str(exc)) from exc

    async def _series(
        self, series_uid: str, study_uid: str | None, *, routed: bool = False
    ) -> Instances:
        """The series' instances; [] if the server does not have it. `routed`: this shard
        takes it only in a study it owns (a line naming no study)."""
        if study_uid is not None:
            series = [SeriesRef(study_uid, series_uid, "", None)]
        else:
            series = await self._lookup_series(series_uid)
            if routed:
                series = self._in_shard(series, lambda one: one.study_uid)
        refs = Instances()
        for one in series:
            refs.extend(await self._listing(one))
        return refs

    async def _lookup_series(self, series_uid: str) -> list[SeriesRef]:
        """Which study the series is in (one QIDO request): a series UID is unique, but a
        broken archive may hold it in two studies, and both are taken."""

        def keep(item: dict[str, Any]) -> SeriesRef | None:
            study_uid = first_value(item, TAG_STUDY_UID)
            if study_uid is None or first_value(item, TAG_SERIES_UID) != series_uid:
                return None  # a server that ignored the filter: not this series
            return series_ref(study_uid, item)

        found = await self.pager.fetch_all(
            f"{self.base}/series",
            [("SeriesInstanceUID", series_uid), ("includefield", TAG_SERIES_INSTANCES)],
            TAG_STUDY_UID,
            keep=keep,
        )
        return found or []

    async def _listing(self, series: SeriesRef) -> Instances:
        """The series' instances; the modality from the lookup, or from the listing when the
        server includes it (asked for: `{modality}` in --layout needs it). A lookup's study
        that is no UID is never asked for (urls.NOT_ASKED_FOR): the item fails."""
        if not can_be_asked_for(series.study_uid):
            raise IncompleteListingError(
                f"could not list series {series.series_uid[:80]}: the server lists it in a "
                f"study with the UID {series.study_uid[:80]!r}, {NOT_ASKED_FOR}",
                url=redact_url(f"{self.base}/series"),
            )
        url = f"{series_url(self.base, series.study_uid, series.series_uid)}/instances"
        params = [] if series.modality else [("includefield", TAG_MODALITY)]
        found = Instances()

        def keep(item: dict[str, Any]) -> None:
            ref = _ref(item, series)
            if ref is not None:
                found.append(ref)

        await self.pager.walk(url, params, TAG_SOP_UID, series.instance_count, each=keep)
        return found

    async def _instance(
        self, sop_uid: str, study_uid: str | None, series_uid: str | None, *, routed: bool = False
    ) -> Instances:
        """The instance, found by its SOP UID (and the UIDs the row gives, as filters)."""
        params = [("SOPInstanceUID", sop_uid), ("includefield", TAG_MODALITY)]
        if study_uid is not None:
            params.append(("StudyInstanceUID", study_uid))
        if series_uid is not None:
            params.append(("SeriesInstanceUID", series_uid))

        def keep(item: dict[str, Any]) -> InstanceRef | None:
            study = first_value(item, TAG_STUDY_UID)
            series = first_value(item, TAG_SERIES_UID)
            if study is None or series is None or first_value(item, TAG_SOP_UID) != sop_uid:
                return None  # a server that ignored the filter, or an answer without the UIDs
            if (study_uid or study, series_uid or series) != (study, series):
                return None  # not in the study or series the row names
            modality = (first_value(item, TAG_MODALITY) or "").upper()
            return InstanceRef(study, series, sop_uid, modality)

        found = await self.pager.fetch_all(
            f"{self.base}/instances", params, TAG_SERIES_UID, keep=keep
        )
        if routed:
            found = self._in_shard(found or [], lambda ref: ref.study_uid)
        return Instances(found or [])

    def _in_shard(self, found: list[T], study_of: Callable[[T], str]) -> list[T]:
        """What a lookup found in this shard's studies (all without --shard); InAnotherShard
        when it found something, all of it another shard's."""
        if self.owns is None:
            return found
        mine = [one for one in found if self.owns(study_of(one))]
        if found and not mine:
            raise InAnotherShard()
        return mine


def _ref(item: dict[str, Any], series: SeriesRef) -> InstanceRef | None:
    sop_uid = first_value(item, TAG_SOP_UID)
    if sop_uid is None:
        return None
    modality = series.modality or sys.intern((first_value(item, TAG_MODALITY) or "").upper())
    return InstanceRef(series.study_uid, series.series_uid, sop_uid, modality)


def _within(item: CohortItem) -> str:
    """` in series X of study Y`: the parents a row named, which the search was limited to."""
    parts = []
    if item.sop_uid is not None and item.series_uid is not None:
        parts.append(f"series {item.series_uid}")
    if item.study_uid is not None:
        parts.append(f"study {item.study_uid}")
    return f" in {' of '.join(parts)}" if parts else ""
