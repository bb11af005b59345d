"""The instances of a virtual archive (virtual.py) as served: Part 10 files made on request,
a pure function of the seed and the position."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from . import virtual_dicom as vd
from .attributes import Json, computed
from .virtual_spec import MATRIX, SOP_CLASSES

if TYPE_CHECKING:
    from .virtual import VirtualArchive


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


def part10(archive: VirtualArchive, i: int, j: int, k: int) -> bytes:
    """The Part 10 file of instance (i, j, k): a pure function of the seed and position."""
    template = archive.series_template(i, j)
    sop_uid = archive.sop_uid(i, j, k)
    before_sop, before_number, before_pixels, after_pixels = template.pieces
    pixels = b""
    if template.pixels is not None:
        vr, length = template.pixels
        key = f"dlstudy-virtual/{archive.seed}/{i}/{j}/{k}"
        pixels = vd.element(vd.PIXEL_DATA, vr, vd.pixels(key, length))
    body = b"".join(
        [
            before_sop,
            vd.element(vd.SOP_INSTANCE_UID, "UI", sop_uid.encode()),
            before_number,
            vd.element(vd.INSTANCE_NUMBER, "IS", str(k + 1).encode()),
            before_pixels,
            pixels,
            after_pixels,
        ]
    )
    return vd.file_head(template.sop_class, sop_uid) + body


@dataclass(frozen=True, slots=True)
class SeriesTemplate:
    """What every instance file of a series shares: the encoded elements between the three
    that differ (SOP Instance UID, Instance Number, Pixel Data), made once per series."""

    sop_class: str
    pieces: tuple[bytes, bytes, bytes, bytes]  # before, between and after those three
    pixels: tuple[str, int] | None  # the pixel data's VR and length; None: no pixel data


def series_template(archive: VirtualArchive, i: int, j: int) -> SeriesTemplate:
    modality = archive.modality(i, j)
    attrs = {
        **archive.study_attributes(i),
        **archive.series_attributes(i, j),
        **archive.instance_attributes(i, j, 0),
    }
    attrs.update(module_attributes(modality))
    elements = [_element(tag, entry) for tag, entry in attrs.items()]
    matrix = MATRIX.get(modality)
    pixels: tuple[str, int] | None = None
    if matrix is not None:
        bits = 1 if modality == "SEG" else 16
        pixels = ("OB" if bits == 1 else "OW", (matrix * matrix * bits + 7) // 8)
    runs: list[list[vd.Element]] = [[], [], [], []]
    for element in sorted(elements):
        tag = element[0]
        if tag not in _PER_INSTANCE:
            runs[bisect.bisect(_PER_INSTANCE, tag)].append(element)
    a, b, c, d = (vd.encode(run) for run in runs)
    return SeriesTemplate(SOP_CLASSES[modality], (a, b, c, d), pixels)


def module_attributes(modality: str) -> dict[str, Json]:
    """What every instance of a `modality` series holds beyond the attributes its searches
    give: its maker, and its pixel module (or, SR, its document's flags). Its metadata has
    them too."""
    out = {"00080070": computed("LO", "dlstudy")}
    matrix = MATRIX.get(modality)
    if matrix is None:  # SR: a report without content items
        for tag, value in (("0040A040", "CONTAINER"), ("0040A491", "COMPLETE"),
                           ("0040A493", "UNVERIFIED"), ("0040A050", "SEPARATE")):  # fmt: skip
            out[tag] = computed("CS", value)
        return out
    bits = 1 if modality == "SEG" else 16
    out["00280002"] = computed("US", 1)
    out["00280004"] = computed("CS", "MONOCHROME2")
    out["00280101"] = computed("US", bits)
    out["00280102"] = computed("US", bits - 1)
    out["00280103"] = computed("US", 0)
    if modality == "SEG":
        out["00620001"] = computed("CS", "BINARY")
    return out


# The elements that differ between the instances of a series, in tag order.
_PER_INSTANCE = (vd.SOP_INSTANCE_UID, vd.INSTANCE_NUMBER, vd.PIXEL_DATA)


class Instances(Sequence[VirtualInstance]):
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


def _element(tag: str, entry: Json) -> vd.Element:
    vr = entry["vr"]
    value = entry["Value"][0]
    if vr == "US":
        return vd.us(int(tag, 16), int(value))
    if vr == "PN":
        value = value["Alphabetic"]
    return vd.text(int(tag, 16), vr, str(value))
