"""QIDO-RS over a virtual archive: the folder server's query and matching rules, over positions.

A position is (study,), (study, series) or (study, series, instance). What a query matches is a
list of blocks: a parent position and the indices of its children that matched. A block nothing
filters is a `range`, so a series of a million instances, or an archive of a million studies,
is paged without being listed. The keys searched most (StudyInstanceUID, StudyDate, PatientID,
AccessionNumber, ModalitiesInStudy, SeriesInstanceUID, SOPInstanceUID) are read from the
index's arrays or the UIDs themselves; any other key is matched on its generated attribute. The
matches of the last few queries are kept, so each further page costs a page, not a scan.
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import attributes as at
from .attributes import Json, computed, key
from .qido import Level, Page, Query, cut_page, matches, vr_of

if TYPE_CHECKING:
    from .virtual import VirtualArchive

Position = tuple[int, ...]
Block = tuple[Position, Sequence[int]]
Predicate = Callable[[int], bool]

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_CACHED_QUERIES = 8
_STUDY_UID, _SERIES_UID, _SOP_UID = 0x0020000D, 0x0020000E, 0x00080018
_STUDY_DATE, _ACCESSION, _PATIENT_ID = 0x00080020, 0x00080050, 0x00100020
_PATIENT_NAME, _STUDY_TIME = 0x00100010, 0x00080030
_PATIENT_ID_RE = re.compile(r"PAT(\d{7})")
_ACCESSION_RE = re.compile(r"ACC(\d{8})")
_DATE_RE = re.compile(r"\d{8}")


@dataclass(frozen=True)
class Matches:
    """What a query matched: its blocks (re-iterable) and how many positions they hold."""

    blocks: Callable[[], Iterable[Block]]
    total: int

    def page(self, offset: int, size: int) -> list[Position]:
        out: list[Position] = []
        skip = offset
        for parent, children in self.blocks():
            if len(out) >= size:
                break
            if skip >= len(children):
                skip -= len(children)
                continue
            out.extend((*parent, child) for child in children[skip : skip + size - len(out)])
            skip = 0
        return out


class Searcher:
    """Answers QIDO searches over one archive, keeping the matches of recent queries."""

    def __init__(self, archive: VirtualArchive) -> None:
        self.archive = archive
        self._cache: OrderedDict[tuple[object, ...], Matches] = OrderedDict()
        self._lock = threading.Lock()  # searches run in worker threads

    def search(
        self,
        query: Query,
        *,
        study_uid: str | None,
        series_uid: str | None,
        base_url: str,
        max_page_size: int | None,
        ignore_offset: bool,
    ) -> Page:
        """One page of results, in archive order (stable across requests)."""
        found = self._matches(query, study_uid, series_uid)
        page, remaining, truncated = cut_page(
            found.total, query, found.page, max_page_size=max_page_size, ignore_offset=ignore_offset
        )
        # Unscoped series and instance searches also return the study's attributes (PS3.18 10.6.3).
        with_study = query.level == "study" or query.include_all or study_uid is None
        memo = _Memo(self.archive)
        results = [self._render(p, query, base_url, with_study, memo) for p in page]
        return Page(results, remaining, truncated, query.unsupported)

    # --- matching -------------------------------------------------------------------------

    def _matches(self, query: Query, study_uid: str | None, series_uid: str | None) -> Matches:
        cache_key = (query.level, study_uid, series_uid, tuple(query.filters))
        with self._lock:
            found = self._cache.get(cache_key)
            if found is not None:
                self._cache.move_to_end(cache_key)
                return found
        found = self._compute(query.level, study_uid, series_uid, query.filters)
        with self._lock:
            self._cache[cache_key] = found
            while len(self._cache) > _CACHED_QUERIES:
                self._cache.popitem(last=False)
        return found

    def _compute(
        self,
        level: Level,
        study_uid: str | None,
        series_uid: str | None,
        filters: list[tuple[int, str]],
    ) -> Matches:
        a = self.archive
        by_level: dict[str, list[tuple[int, str]]] = {"study": [], "series": [], "instance": []}
        for tag, value in filters:
            if value not in ("", "*"):  # universal matching: no filter
                owner = next(
                    lv for lv in ("instance", "series", "study") if tag in at.LEVEL_TAGS[lv]
                )
                by_level[owner].append((tag, value))
        studies = self._studies(by_level["study"], study_uid)
        if level == "study":
            return Matches(lambda: [((), studies)], len(studies))
        scope: tuple[int, int] | None = None
        if series_uid is not None:
            position = a.position(series_uid, 1)
            scope = position[:2] if position is not None else (-1, -1)
        every_series = scope is None and not by_level["series"]
        whole = isinstance(studies, range) and len(studies) == len(a)
        if level == "series" and every_series:
            total = a.first_series[-1] if whole else sum(a.series_count(i) for i in studies)
            return Matches(lambda: (((i,), range(a.series_count(i))) for i in studies), total)
        if level == "instance" and every_series and not by_level["instance"]:

            def all_series() -> Iterable[Block]:
                for i in studies:
                    for j in range(a.series_count(i)):
                        yield (i, j), range(a.instance_count(i, j))

            total = sum(a.study_size) if whole else sum(a.study_size[i] for i in studies)
            return Matches(all_series, total)
        blocks: list[Block] = []
        for i in studies:
            series = self._series(i, by_level["series"], scope)
            if level == "series":
                if series:
                    blocks.append(((i,), series))
                continue
            for j in series:
                instances = self._instances(i, j, by_level["instance"])
                if instances:
                    blocks.append(((i, j), instances))
        return Matches(lambda: blocks, sum(len(children) for _, children in blocks))

    def _studies(self, filters: list[tuple[int, str]], study_uid: str | None) -> Sequence[int]:
        a = self.archive
        candidates: Sequence[int] = range(len(a))
        if study_uid is not None:
            candidates = self._positions([study_uid], 0, candidates)
        predicates = []
        for tag, value in filters:
            if tag == _STUDY_UID:
                candidates = self._positions(_uids(value), 0, candidates)
            else:
                predicates.append(self._study_predicate(tag, value))
        if not predicates:
            return candidates
        return array("I", (i for i in candidates if all(p(i) for p in predicates)))

    def _positions(self, uids: Iterable[str], level: int, within: Sequence[int]) -> list[int]:
        """The indices (at `level`'s depth) of those UIDs that are in `within`, in order."""
        found = {p[level] for uid in uids if (p := self.archive.position(uid, level)) is not None}
        return sorted(i for i in found if i in within)

    def _study_predicate(self, tag: int, value: str) -> Predicate:
        a = self.archive
        plain = not any(c in value for c in "*?")
        if tag == _STUDY_DATE and (bounds := _date_range(value)) is not None:
            low, high = bounds
            dates = a.date
            return lambda i: low <= dates[i] <= high
        if tag == at.MODALITIES_IN_STUDY and plain:
            wanted = 0
            for option in re.split(r"[,\\]", value):
                if option.strip() in a.modality_names:
                    wanted |= 1 << a.modality_names.index(option.strip())
            masks = a.modality_mask
            return lambda i: masks[i] & wanted != 0
        if tag == _PATIENT_ID and plain:
            number = _number(_PATIENT_ID_RE, value)
            patients = a.patient
            return lambda i: patients[i] == number
        if tag == _ACCESSION and plain:
            number = _number(_ACCESSION_RE, value) - 1
            return lambda i: i == number
        if tag == _PATIENT_NAME:
            return lambda i: matches(tag, _pn(a.patient_name(i)), value)
        return lambda i: matches(tag, self._study_entry(i, tag), value)

    def _series(
        self, i: int, filters: list[tuple[int, str]], scope: tuple[int, int] | None
    ) -> Sequence[int]:
        a = self.archive
        series: Sequence[int] = range(a.series_count(i))
        if scope is not None:
            series = [scope[1]] if scope[0] == i else []
        for tag, value in filters:
            if tag == _SERIES_UID:
                found = {p for u in _uids(value) if (p := a.position(u, 1)) and p[0] == i}
                series = [j for j in series if (i, j, 0) in found]
            else:
                k = key(tag)
                series = [
                    j for j in series if matches(tag, a.series_attributes(i, j).get(k), value)
                ]
        return series

    def _instances(self, i: int, j: int, filters: list[tuple[int, str]]) -> Sequence[int]:
        a = self.archive
        instances: Sequence[int] = range(a.instance_count(i, j))
        for tag, value in filters:
            if tag == _SOP_UID:
                found = {p for u in _uids(value) if (p := a.position(u, 2)) and p[:2] == (i, j)}
                instances = sorted(k for k in instances if (i, j, k) in found)
            else:
                k = key(tag)
                instances = [
                    n
                    for n in instances
                    if matches(tag, a.instance_attributes(i, j, n).get(k), value)
                ]
        return instances

    def _study_entry(self, i: int, tag: int) -> Json | None:
        a = self.archive
        entry: Json | None = (
            a.study_summary(i) if tag == at.MODALITIES_IN_STUDY else a.study_attributes(i)
        ).get(key(tag))
        return entry

    # --- rendering ------------------------------------------------------------------------

    def _render(
        self, position: Position, query: Query, base_url: str, with_study: bool, memo: _Memo
    ) -> Json:
        a = self.archive
        i = position[0]
        study = memo.study(i)
        out: Json = {}
        if with_study:
            out.update(study)
        else:
            out[_STUDY_UID_KEY] = study[_STUDY_UID_KEY]
        url = f"{base_url}/studies/{a.study_uid(i)}"
        series: Json = {}
        if len(position) > 1:
            j = position[1]
            series = memo.series(i, j)
            out.update(series)
            url += f"/series/{a.series_uid(i, j)}"
        instance: Json = {}
        if len(position) > 2:
            instance = a.instance_attributes(*position)
            out.update(instance)
            out[_AVAILABLE_TRANSFER_SYNTAX_KEY] = _EXPLICIT_VR_LE_ENTRY
            url += f"/instances/{a.sop_uid(*position)}"
        out[_RETRIEVE_URL_KEY] = computed("UR", url)
        out[_INSTANCE_AVAILABILITY_KEY] = _ONLINE_ENTRY
        if query.filters or query.includes or query.include_all:
            # What the levels hold (the deepest first), for what the result does not show yet.
            levels = (instance, series, study)
            for tag, _ in query.filters:  # matched attributes are returned, even if empty
                name = key(tag)
                if name not in out:
                    out[name] = _first(levels, name) or {"vr": vr_of(tag)}
            for tag in query.includes:
                name = key(tag)
                if name not in out and (entry := _first(levels, name)) is not None:
                    out[name] = entry
            if query.include_all:
                for level in levels:
                    for name, entry in level.items():
                        out.setdefault(name, entry)
        return dict(sorted(out.items()))


def _first(levels: tuple[Json, ...], name: str) -> Json | None:
    """The entry of the first level that has `name`."""
    for level in levels:
        entry: Json | None = level.get(name)
        if entry is not None:
            return entry
    return None


# Entries every result shares (nothing changes a result's entries once it is made).
_STUDY_UID_KEY = key(_STUDY_UID)
_RETRIEVE_URL_KEY = key(at.RETRIEVE_URL)
_INSTANCE_AVAILABILITY_KEY = key(at.INSTANCE_AVAILABILITY)
_AVAILABLE_TRANSFER_SYNTAX_KEY = key(at.AVAILABLE_TRANSFER_SYNTAX)
_EXPLICIT_VR_LE_ENTRY = computed("UI", EXPLICIT_VR_LE)
_ONLINE_ENTRY = computed("CS", "ONLINE")


class _Memo:
    """A page's study and series attributes, each computed once (a study's instances share
    them). Series attributes include their instance count: they are series-level results."""

    def __init__(self, archive: VirtualArchive) -> None:
        self.archive = archive
        self._study: tuple[int, Json] = (-1, {})
        self._series: tuple[tuple[int, int], Json] = ((-1, -1), {})

    def study(self, i: int) -> Json:
        if self._study[0] != i:
            a = self.archive
            self._study = (i, {**a.study_attributes(i), **a.study_summary(i)})
        return self._study[1]

    def series(self, i: int, j: int) -> Json:
        if self._series[0] != (i, j):
            a = self.archive
            series = a.series_attributes(i, j)
            series[key(at.NUMBER_OF_SERIES_RELATED_INSTANCES)] = computed(
                "IS", a.instance_count(i, j)
            )
            self._series = ((i, j), series)
        return self._series[1]


def _uids(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _number(pattern: re.Pattern[str], value: str) -> int:
    """The number in one of the archive's formatted identifiers; -2 if it is not one."""
    found = pattern.fullmatch(value.strip())
    return int(found.group(1)) if found else -2


def _date_range(value: str) -> tuple[int, int] | None:
    """(low, high) of a DA value or range as numbers; None for anything else."""
    low, dash, high = value.strip().replace(".", "").partition("-")
    if not dash:
        high = low
    if not all(_DATE_RE.fullmatch(v) for v in (low, high) if v) or not (low or high):
        return None
    return int(low or 0), int(high or 99999999)


def _pn(name: str) -> Json:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}
