"""The plain data that crosses the layers: what to fetch, what landed, what failed.

No imports from the rest of dlstudy, and no behaviour beyond holding the data (Instances keeps
a run's long lists of InstanceRefs compactly): QIDO produces InstanceRefs, the engine turns them
into Committed files or Failures, the store, reports and summaries read them.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One unit of work: an instance as QIDO described it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""


class Instances(Sequence[InstanceRef]):
    """InstanceRefs in order, held compactly: each series' UIDs and modality once, each
    instance as its SOP Instance UID and the index of its series. An InstanceRef object costs
    64 bytes beside its UID strings, which a run of a million instances would keep for its
    whole length; here an instance costs 12. The refs are made when read.
    """

    def __init__(self, refs: Iterable[InstanceRef] = ()) -> None:
        self._sops: list[str] = []
        self._series_at = array("I")  # each instance's entry in _series
        self._series: list[tuple[str, str, str]] = []  # (study, series, modality)
        self._index: dict[tuple[str, str, str], int] = {}
        self.extend(refs)

    def add(self, study_uid: str, series_uid: str, sop_uid: str, modality: str = "") -> None:
        key = (study_uid, series_uid, modality)
        at = self._index.get(key)
        if at is None:
            at = self._index[key] = len(self._series)
            self._series.append(key)
        self._sops.append(sop_uid)
        self._series_at.append(at)

    def append(self, ref: InstanceRef) -> None:
        self.add(ref.study_uid, ref.series_uid, ref.sop_uid, ref.modality)

    def extend(self, refs: Iterable[InstanceRef]) -> None:
        if isinstance(refs, Instances):  # without making each ref
            for sop, at in zip(refs._sops, refs._series_at, strict=True):
                study, series, modality = refs._series[at]
                self.add(study, series, sop, modality)
            return
        for ref in refs:
            self.append(ref)

    def __len__(self) -> int:
        return len(self._sops)

    @overload
    def __getitem__(self, index: int) -> InstanceRef: ...

    @overload
    def __getitem__(self, index: slice) -> Instances: ...

    def __getitem__(self, index: int | slice) -> InstanceRef | Instances:
        if isinstance(index, slice):
            part = Instances()
            part._sops = self._sops[index]
            part._series_at = self._series_at[index]
            part._series = list(self._series)
            part._index = dict(self._index)
            return part
        study, series, modality = self._series[self._series_at[index]]
        return InstanceRef(study, series, self._sops[index], modality)

    def __iter__(self) -> Iterator[InstanceRef]:
        series = self._series
        for sop, at in zip(self._sops, self._series_at, strict=True):
            study, uid, modality = series[at]
            yield InstanceRef(study, uid, sop, modality)

    def __repr__(self) -> str:
        return f"Instances({list(self)!r})"

    def sop_uids(self) -> Iterator[str]:
        return iter(self._sops)

    def series_counts(self) -> Counter[tuple[str, str]]:
        """Instances per (study, series)."""
        counts: Counter[tuple[str, str]] = Counter()
        for at, n in Counter(self._series_at).items():
            study, series, _ = self._series[at]
            counts[(study, series)] += n
        return counts

    def by_sop(self) -> dict[str, tuple[str, str, str]]:
        """SOP Instance UID -> its (study, series, modality), a tuple shared by its series."""
        series = self._series
        return {sop: series[at] for sop, at in zip(self._sops, self._series_at, strict=True)}

    def split(self, key: Callable[[str, str], K]) -> dict[K, Instances]:
        """The instances grouped by `key(study_uid, series_uid)`, each group in order; when
        all fall in one group, that group is this very object (nothing is copied)."""
        keys = [key(study, series) for study, series, _ in self._series]
        if len(set(keys)) <= 1:
            return {keys[0]: self} if keys else {}
        groups: dict[K, Instances] = {}
        for sop, at in zip(self._sops, self._series_at, strict=True):
            group = groups.get(keys[at])
            if group is None:
                group = groups[keys[at]] = Instances()
            study, series, modality = self._series[at]
            group.add(study, series, sop, modality)
        return groups


@dataclass(frozen=True)
class Committed:
    """A file now under its final name, as verified."""

    path: Path
    size: int
    digest: str  # labelled, as the manifest keeps it


@dataclass
class Failure:
    study_uid: str | None  # None: a listed series or instance the server does not have
    series_uid: str | None
    sop_instance_uid: str | None
    reason: str
    status_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_uid,
            "series": self.series_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "reason": self.reason,
            "status_code": self.status_code,
        }
