"""A virtual archive: N generated studies, no files, every byte made on request.

Studies are drawn from one seeded random stream, in order, so the same seed always gives the
same archive (and the first N studies of a bigger one). Only a few numbers per study are kept,
in flat arrays (date, patient, kind, where its series start; per series its modality and
instance count): about 30 bytes a study, so a million studies index in a few tens of MB.
Everything else (names, times, descriptions, pixels) is a pure function of the seed and the
position, and the UIDs encode the position itself (`2.25.` + a 128-bit integer holding a
marker, the seed and the indices), so a UID leads back to its study without a lookup table.

Mixes: `hospital` (CR and DX with 1-2 instances, CT and MR with hundreds, some SEG and SR),
`mimic` (chest radiographs: 1-4 DX instances a study, as MIMIC-CXR), and `study_size`: every
study one CT series of exactly that many instances.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from array import array
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from . import virtual_dicom as vd
from .attributes import Json, computed
from .qido import Page, Query
from .virtual_qido import Searcher
from .wado import Retrievable

MIXES = ("hospital", "mimic")
MODALITIES = ("CR", "DX", "CT", "MR", "SEG", "SR")
MAX_STUDIES = 2**32 - 1
MAX_INSTANCES = 2**26  # per series

_MARKER = 0xD15701  # top 24 bits of every virtual UID's integer
_FIRST_DAY = dt.date(2012, 1, 1)
_DAYS = (dt.date(2025, 12, 31) - _FIRST_DAY).days + 1
_NEW_PATIENT = 0.45  # chance that a study belongs to a new patient rather than a known one
_MASK64 = 2**64 - 1

_SOP_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
}
# Pixel matrix per modality (rows = columns, 16 bits; SEG 1 bit); SR has no pixels.
_MATRIX = {"CR": 32, "DX": 32, "CT": 16, "MR": 16, "SEG": 16}
_FAMILY = ["MILLER", "GARCIA", "NGUYEN", "SMITH", "KOWALSKI", "OKAFOR", "TANAKA", "SILVA"]
_GIVEN = ["ANNA", "BEN", "CHLOE", "DAVID", "EMMA", "FARID", "GRACE", "HUGO", "IRIS", "JONAS"]


@dataclass(frozen=True)
class _Kind:
    description: str
    body_part: str
    weight: int
    # (modality, fewest series, most series, fewest instances, most instances) per part
    series: tuple[tuple[str, int, int, int, int], ...]


_MIXES: dict[str, tuple[_Kind, ...]] = {
    "hospital": (
        _Kind("CR CHEST", "CHEST", 15, (("CR", 1, 1, 1, 2),)),
        _Kind("DX CHEST 2 VIEWS", "CHEST", 20, (("DX", 1, 2, 1, 1),)),
        _Kind("DX CHEST WITH REPORT", "CHEST", 5, (("DX", 1, 1, 1, 2), ("SR", 1, 1, 1, 1))),
        _Kind("CT CHEST ABDOMEN", "ABDOMEN", 18, (("CT", 2, 4, 80, 400),)),
        _Kind(
            "CT CHEST WITH SEGMENTATION", "CHEST", 5, (("CT", 1, 2, 100, 300), ("SEG", 1, 1, 1, 1))
        ),
        _Kind("CT HEAD WITH REPORT", "HEAD", 4, (("CT", 2, 3, 80, 300), ("SR", 1, 1, 1, 1))),
        _Kind("MR BRAIN", "BRAIN", 20, (("MR", 3, 7, 20, 200),)),
        _Kind("MR KNEE WITH REPORT", "KNEE", 5, (("MR", 3, 6, 20, 160), ("SR", 1, 1, 1, 1))),
    ),
    "mimic": (_Kind("CHEST (PA AND LAT)", "CHEST", 1, (("DX", 1, 2, 1, 2),)),),
}


@dataclass(frozen=True)
class VirtualSpec:
    """What to generate: `studies` from `seed`, drawn from `mix` (or all of `study_size`)."""

    studies: int
    seed: int = 0
    mix: str = "hospital"
    study_size: int | None = None  # every study: one CT series of exactly this many instances

    def __post_init__(self) -> None:
        if not 1 <= self.studies <= MAX_STUDIES:
            raise ValueError(f"a virtual archive has 1 to {MAX_STUDIES} studies")
        if not 0 <= self.seed < 2**32:
            raise ValueError("the seed of a virtual archive is 0 to 4294967295")
        if self.mix not in MIXES:
            raise ValueError(f"unknown mix {self.mix!r}; choose one of {', '.join(MIXES)}")
        if self.study_size is not None and not 1 <= self.study_size <= MAX_INSTANCES:
            raise ValueError(f"a virtual study has 1 to {MAX_INSTANCES} instances")


@dataclass(frozen=True, slots=True)
class VirtualInstance:
    """One instance as served: its identity and its bytes (made when this object is)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes
    transfer_syntax: str = vd.EXPLICIT_VR_LE

    @property
    def size(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        yield self.data


class VirtualArchive:
    """The index of a virtual archive, the attributes and bytes of everything in it."""

    modality_names = MODALITIES

    def __init__(self, spec: VirtualSpec) -> None:
        self.spec = spec
        self.seed = spec.seed
        kinds = _MIXES[spec.mix]
        if spec.study_size is not None:
            n = spec.study_size
            kinds = (_Kind("CT CHEST", "CHEST", 1, (("CT", 1, 1, n, n),)),)
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
        self._searcher = Searcher(self)

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

    # --- attributes -----------------------------------------------------------------------

    def _hash(self, *parts: int) -> int:
        h = self.seed
        for part in parts:
            h = _mix64(h ^ _mix64(part + 0x9E3779B97F4A7C15))
        return h

    def patient_id(self, i: int) -> str:
        return f"PAT{self.patient[i]:07d}"

    def patient_name(self, i: int) -> str:
        h = self._hash(1, self.patient[i])
        return f"{_FAMILY[h % len(_FAMILY)]}^{_GIVEN[(h >> 8) % len(_GIVEN)]}"

    def accession(self, i: int) -> str:
        return f"ACC{i + 1:08d}"

    def study_time(self, i: int) -> str:
        h = self._hash(2, i)
        return f"{7 + h % 12:02d}{(h >> 8) % 60:02d}{(h >> 16) % 60:02d}"

    def modalities(self, i: int) -> list[str]:
        mask = self.modality_mask[i]
        return [m for bit, m in enumerate(MODALITIES) if mask >> bit & 1]

    def study_attributes(self, i: int) -> Json:
        """The study's stored attributes, as QIDO and the files show them."""
        h = self._hash(1, self.patient[i])
        birth = f"{1930 + (h >> 16) % 75}{1 + (h >> 24) % 12:02d}{1 + (h >> 32) % 28:02d}"
        referring = self._hash(3, i)
        kind = self._kinds[self.kind[i]]
        return {
            "00080005": computed("CS", "ISO_IR 100"),
            "00080020": computed("DA", str(self.date[i])),
            "00080030": computed("TM", self.study_time(i)),
            "00080050": computed("SH", self.accession(i)),
            "00080090": _pn(f"{_FAMILY[referring % len(_FAMILY)]}^{_GIVEN[referring % 7]}^^DR"),
            "00081030": computed("LO", kind.description),
            "00100010": _pn(self.patient_name(i)),
            "00100020": computed("LO", self.patient_id(i)),
            "00100030": computed("DA", birth),
            "00100040": computed("CS", "FM"[(h >> 40) & 1]),
            "0020000D": computed("UI", self.study_uid(i)),
            "00200010": computed("SH", str(i + 1)),
        }

    def study_summary(self, i: int) -> Json:
        """Attributes computed over the study's series (QIDO study level)."""
        return {
            "00080061": computed("CS", *self.modalities(i)),
            "00201206": computed("IS", self.series_count(i)),
            "00201208": computed("IS", self.study_size[i]),
        }

    def series_attributes(self, i: int, j: int) -> Json:
        modality = self.modality(i, j)
        kind = self._kinds[self.kind[i]]
        description = {"SR": "REPORT", "SEG": "SEGMENTATION"}.get(modality, kind.description)
        out = {
            "00080021": computed("DA", str(self.date[i])),
            "00080031": computed("TM", self.study_time(i)),
            "00080060": computed("CS", modality),
            "0008103E": computed("LO", f"{description} {j + 1}"),
            "0020000E": computed("UI", self.series_uid(i, j)),
            "00200011": computed("IS", j + 1),
        }
        if modality != "SR":
            out["00180015"] = computed("CS", kind.body_part)
        return out

    def instance_attributes(self, i: int, j: int, k: int) -> Json:
        modality = self.modality(i, j)
        out = {
            "00080016": computed("UI", _SOP_CLASSES[modality]),
            "00080018": computed("UI", self.sop_uid(i, j, k)),
            "00200013": computed("IS", k + 1),
        }
        matrix = _MATRIX.get(modality)
        if matrix is not None:
            out["00280010"] = computed("US", matrix)
            out["00280011"] = computed("US", matrix)
            out["00280100"] = computed("US", 1 if modality == "SEG" else 16)
            if modality == "SEG":
                out["00280008"] = computed("IS", 1)
        return out

    # --- bytes ----------------------------------------------------------------------------

    def instance_bytes(self, i: int, j: int, k: int) -> bytes:
        """The Part 10 file of instance (i, j, k): a pure function of the seed and position."""
        modality = self.modality(i, j)
        attrs = {
            **self.study_attributes(i),
            **self.series_attributes(i, j),
            **self.instance_attributes(i, j, k),
        }
        elements = [_element(tag, entry) for tag, entry in attrs.items()]
        elements.append(vd.text(0x00080070, "LO", "dlstudy"))
        matrix = _MATRIX.get(modality)
        if matrix is None:  # SR: a report without content items
            elements += [
                vd.text(0x0040A040, "CS", "CONTAINER"),
                vd.text(0x0040A491, "CS", "COMPLETE"),
                vd.text(0x0040A493, "CS", "UNVERIFIED"),
                vd.text(0x0040A050, "CS", "SEPARATE"),
            ]
        else:
            bits = 1 if modality == "SEG" else 16
            elements += [
                vd.us(0x00280002, 1),
                vd.text(0x00280004, "CS", "MONOCHROME2"),
                vd.us(0x00280101, bits),
                vd.us(0x00280102, bits - 1),
                vd.us(0x00280103, 0),
                (0x7FE00010, "OB" if bits == 1 else "OW", self._pixels(i, j, k, matrix, bits)),
            ]
            if modality == "SEG":
                elements.append(vd.text(0x00620001, "CS", "BINARY"))
        return vd.part10(_SOP_CLASSES[modality], self.sop_uid(i, j, k), elements)

    def _pixels(self, i: int, j: int, k: int, matrix: int, bits: int) -> bytes:
        length = (matrix * matrix * bits + 7) // 8
        return vd.pixels(f"dlstudy-virtual/{self.seed}/{i}/{j}/{k}", length)

    def instance(self, i: int, j: int, k: int) -> VirtualInstance:
        return VirtualInstance(
            self.study_uid(i),
            self.series_uid(i, j),
            self.sop_uid(i, j, k),
            self.instance_bytes(i, j, k),
        )

    # --- the library's view: what a client should find ------------------------------------

    def study_uids(self) -> Iterator[str]:
        return (self.study_uid(i) for i in range(len(self)))

    def instances_of(self, study_uid: str) -> Iterator[tuple[str, str, str]]:
        """(study, series, SOP instance) UIDs of every instance of a study, in QIDO order."""
        found = self.position(study_uid, 0)
        if found is None:
            raise KeyError(f"no study {study_uid} in this virtual archive")
        i = found[0]
        for j in range(self.series_count(i)):
            for k in range(self.instance_count(i, j)):
                yield study_uid, self.series_uid(i, j), self.sop_uid(i, j, k)

    def expected_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The bytes a download of that instance must have."""
        found = self.position(sop_uid, 2)
        if found is None or self.study_uid(found[0]) != study_uid:
            raise KeyError(f"no instance {sop_uid} in study {study_uid}")
        if self.series_uid(found[0], found[1]) != series_uid:
            raise KeyError(f"instance {sop_uid} is not in series {series_uid}")
        return self.instance_bytes(*found)

    # --- what the server asks ---------------------------------------------------------------

    def select(self, uids: list[str]) -> Sequence[VirtualInstance]:
        """The instances of a WADO-RS resource [study, series?, instance?]; empty if unknown."""
        study = self.position(uids[0], 0)
        if study is None:
            return []
        i = study[0]
        series = range(self.series_count(i))
        if len(uids) > 1:
            found = self.position(uids[1], 1)
            if found is None or found[0] != i:
                return []
            series = range(found[1], found[1] + 1)
        if len(uids) > 2:
            sop = self.position(uids[2], 2)
            if sop is None or sop[:2] != (i, series[0]):
                return []
            return [self.instance(*sop)]
        return _Instances(self, i, series)

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
        return self._searcher.search(
            query,
            study_uid=study_uid,
            series_uid=series_uid,
            base_url=base_url,
            max_page_size=max_page_size,
            ignore_offset=ignore_offset,
        )

    def transfer_syntaxes(self, instances: Sequence[Retrievable]) -> set[str]:
        return {vd.EXPLICIT_VR_LE}

    async def metadata(self, instances: Sequence[Retrievable]) -> bytes:
        def one(instance: Retrievable) -> Json:
            found = self.position(instance.sop_uid, 2)
            assert found is not None
            i, j, k = found
            attrs = {
                **self.study_attributes(i),
                **self.series_attributes(i, j),
                **self.instance_attributes(i, j, k),
            }
            return dict(sorted(attrs.items()))

        return json.dumps([one(instance) for instance in instances]).encode()


class _Instances(Sequence[VirtualInstance]):
    """The instances of some series of one study, made as they are read (a study of a million
    instances is never in memory at once)."""

    def __init__(self, archive: VirtualArchive, i: int, series: range) -> None:
        self.archive, self.i = archive, i
        self.series = [(j, archive.instance_count(i, j)) for j in series]
        self.length = sum(n for _, n in self.series)

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> VirtualInstance: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[VirtualInstance]: ...
    def __getitem__(self, index: int | slice) -> VirtualInstance | Sequence[VirtualInstance]:
        if isinstance(index, slice):
            return [self[n] for n in range(*index.indices(self.length))]
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(index)
        for j, n in self.series:
            if index < n:
                return self.archive.instance(self.i, j, index)
            index -= n
        raise IndexError(index)

    def __iter__(self) -> Iterator[VirtualInstance]:
        for j, n in self.series:
            for k in range(n):
                yield self.archive.instance(self.i, j, k)


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash of a 64-bit integer."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _yyyymmdd(day: dt.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def _pn(name: str) -> Json:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}


def _element(tag: str, entry: Json) -> vd.Element:
    vr = entry["vr"]
    value = entry["Value"][0]
    if vr == "US":
        return vd.us(int(tag, 16), int(value))
    if vr == "PN":
        value = value["Alphabetic"]
    return vd.text(int(tag, 16), vr, str(value))
