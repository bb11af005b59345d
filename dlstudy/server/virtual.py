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

The spec and the mixes are in virtual_spec.py, the index and the UIDs in virtual_index.py, the
files in virtual_instances.py, QIDO matching in virtual_qido.py; here, the attributes and what
the server and the tests ask.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from .attributes import Json, computed
from .qido import Page, Query
from .virtual_dicom import EXPLICIT_VR_LE
from .virtual_index import VirtualIndex
from .virtual_instances import (
    Instances,
    SeriesTemplate,
    VirtualInstance,
    module_attributes,
    part10,
    series_template,
)
from .virtual_qido import Searcher
from .virtual_spec import MATRIX, MODALITIES, SOP_CLASSES, VirtualSpec
from .wado import Body, Retrievable

_MASK64 = 2**64 - 1
_TEMPLATES_KEPT = 256  # series whose shared file elements are kept (instances come in order)
_FAMILY = ["MILLER", "GARCIA", "NGUYEN", "SMITH", "KOWALSKI", "OKAFOR", "TANAKA", "SILVA"]
_GIVEN = ["ANNA", "BEN", "CHLOE", "DAVID", "EMMA", "FARID", "GRACE", "HUGO", "IRIS", "JONAS"]


class VirtualArchive(VirtualIndex):
    """The index of a virtual archive, the attributes and bytes of everything in it."""

    modality_names = MODALITIES
    search_reads_files = False  # everything is computed: a thread hop would only add cost

    def __init__(self, spec: VirtualSpec) -> None:
        super().__init__(spec)
        self._searcher = Searcher(self)
        self._templates: dict[tuple[int, int], SeriesTemplate] = {}

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
            "00080016": computed("UI", SOP_CLASSES[modality]),
            "00080018": computed("UI", self.sop_uid(i, j, k)),
            "00200013": computed("IS", k + 1),
        }
        matrix = MATRIX.get(modality)
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
        return part10(self, i, j, k)

    def series_template(self, i: int, j: int) -> SeriesTemplate:
        """What the files of series (i, j) share, made once while the series is being read."""
        template = self._templates.get((i, j))
        if template is None:
            if len(self._templates) >= _TEMPLATES_KEPT:
                self._templates.clear()
            template = self._templates[i, j] = series_template(self, i, j)
        return template

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
        return Instances(self, i, series)

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

    async def still_there(self, instances: Sequence[Retrievable]) -> Sequence[Retrievable]:
        return instances  # made when asked for: nothing to change under it

    def transfer_syntaxes(self, instances: Sequence[Retrievable]) -> set[str]:
        return {EXPLICIT_VR_LE}

    async def bulkdata(self, instance: Retrievable, tag: int, *, multipart: bool) -> Body | None:
        return None  # no value of a made instance is that large

    async def metadata(self, instances: Sequence[Retrievable], base_url: str) -> bytes:
        def one(instance: Retrievable) -> Json:
            found = self.position(instance.sop_uid, 2)
            assert found is not None
            i, j, k = found
            attrs = {
                **self.study_attributes(i),
                **self.series_attributes(i, j),
                **self.instance_attributes(i, j, k),
                **module_attributes(self.modality(i, j)),
            }
            return dict(sorted(attrs.items()))

        return json.dumps([one(instance) for instance in instances]).encode()


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash of a 64-bit integer."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _pn(name: str) -> Json:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]}
