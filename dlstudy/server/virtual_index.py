"""The index of a virtual archive (virtual.py): a few numbers per study in flat arrays, drawn
in order from one seeded random stream, and UIDs that encode a position, so that a UID leads
back to its study without a lookup table."""

from __future__ import annotations

import datetime as dt
import random
from array import array

from .virtual_spec import KINDS, MAX_INSTANCES, MODALITIES, StudyKind, VirtualSpec

_MARKER = 0xD15701  # top 24 bits of every virtual UID's integer
_FIRST_DAY = dt.date(2012, 1, 1)
_DAYS = (dt.date(2025, 12, 31) - _FIRST_DAY).days + 1
_NEW_PATIENT = 0.45  # chance that a study belongs to a new patient rather than a known one


class VirtualIndex:
    """Where each study, series and instance of a virtual archive is, and its UIDs."""

    def __init__(self, spec: VirtualSpec) -> None:
        self.spec = spec
        self.seed = spec.seed
        kinds = KINDS[spec.mix]
        if spec.study_size is not None:
            n = spec.study_size
            kinds = (StudyKind("CT CHEST", "CHEST", 1, (("CT", 1, 1, n, n),)),)
        self._kinds = kinds
        self.date = array("I")  # YYYYMMDD
        self.patient = array("I")
        self.kind = array("B")
        self.first_series = array("I", [0])  # study i's series are first_series[i:i+2]
        self.series_modality = array("B")  # index into MODALITIES
        self.series_size = array("I")
        self.study_size = array("I")  # instances per study
        self.modality_mask = array("B")  # bit m set: MODALITIES[m] in the study
        self._generate(spec)

    def _generate(self, spec: VirtualSpec) -> None:
        rng = random.Random(f"dlstudy-virtual/{spec.seed}/{spec.mix}/{spec.study_size}")
        weights = [k.weight for k in self._kinds]
        cumulative = [sum(weights[: i + 1]) for i in range(len(weights))]
        day_dates = array("I", (_yyyymmdd(_FIRST_DAY + dt.timedelta(days=d)) for d in range(_DAYS)))
        modality_index = {m: i for i, m in enumerate(MODALITIES)}
        patients = 0
        for _ in range(spec.studies):
            kind = rng.choices(range(len(self._kinds)), cum_weights=cumulative)[0]
            self.kind.append(kind)
            self.date.append(day_dates[int(rng.random() * _DAYS)])
            if patients == 0 or rng.random() < _NEW_PATIENT:
                patients += 1
                self.patient.append(patients - 1)
            else:
                self.patient.append(int(rng.random() * patients))
            total = mask = 0
            for modality, fewest, most, least, largest in self._kinds[kind].series:
                m = modality_index[modality]
                for _ in range(fewest + int(rng.random() * (most - fewest + 1))):
                    size = least + int(rng.random() * (largest - least + 1))
                    self.series_modality.append(m)
                    self.series_size.append(size)
                    total += size
                    mask |= 1 << m
            self.first_series.append(len(self.series_size))
            self.study_size.append(total)
            self.modality_mask.append(mask)

    # --- positions and UIDs -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.date)

    def series_count(self, i: int) -> int:
        return self.first_series[i + 1] - self.first_series[i]

    def instance_count(self, i: int, j: int) -> int:
        return self.series_size[self.first_series[i] + j]

    def modality(self, i: int, j: int) -> str:
        return MODALITIES[self.series_modality[self.first_series[i] + j]]

    def uid(self, level: int, i: int, j: int = 0, k: int = 0) -> str:
        """level 0 study, 1 series, 2 instance."""
        number = (_MARKER << 104) | (level << 102) | (self.seed << 70) | (i << 38) | (j << 26) | k
        return f"2.25.{number}"

    def study_uid(self, i: int) -> str:
        return self.uid(0, i)

    def series_uid(self, i: int, j: int) -> str:
        return self.uid(1, i, j)

    def sop_uid(self, i: int, j: int, k: int) -> str:
        return self.uid(2, i, j, k)

    def position(self, uid: str, level: int) -> tuple[int, int, int] | None:
        """(study, series, instance) of a UID of this archive at `level`, else None."""
        if not uid.startswith("2.25.") or len(uid) > 64:
            return None
        try:
            number = int(uid[5:])
        except ValueError:
            return None
        if f"2.25.{number}" != uid or number >> 104 != _MARKER:
            return None
        if (number >> 102) & 3 != level or (number >> 70) & 0xFFFFFFFF != self.seed:
            return None
        i, j, k = (number >> 38) & 0xFFFFFFFF, (number >> 26) & 0xFFF, number & (MAX_INSTANCES - 1)
        if i >= len(self) or (level and j >= self.series_count(i)):
            return None
        if level == 2 and k >= self.instance_count(i, j):
            return None
        if (level < 2 and k) or (level < 1 and j):
            return None
        return i, j, k


def _yyyymmdd(day: dt.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day
