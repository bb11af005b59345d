"""The instances of a virtual archive (virtual.py) as served: Part 10 files made on request,
a pure function of the seed and the position."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from . import virtual_dicom as vd
from .attributes import Json
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

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        yield self.data


def part10(archive: VirtualArchive, i: int, j: int, k: int) -> bytes:
    """The Part 10 file of instance (i, j, k): a pure function of the seed and position."""
    modality = archive.modality(i, j)
    attrs = {
        **archive.study_attributes(i),
        **archive.series_attributes(i, j),
        **archive.instance_attributes(i, j, k),
    }
    elements = [_element(tag, entry) for tag, entry in attrs.items()]
    elements.append(vd.text(0x00080070, "LO", "dlstudy"))
    matrix = MATRIX.get(modality)
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
            (0x7FE00010, "OB" if bits == 1 else "OW", _pixels(archive, i, j, k, matrix, bits)),
        ]
        if modality == "SEG":
            elements.append(vd.text(0x00620001, "CS", "BINARY"))
    return vd.part10(SOP_CLASSES[modality], archive.sop_uid(i, j, k), elements)


def _pixels(archive: VirtualArchive, i: int, j: int, k: int, matrix: int, bits: int) -> bytes:
    length = (matrix * matrix * bits + 7) // 8
    return vd.pixels(f"dlstudy-virtual/{archive.seed}/{i}/{j}/{k}", length)


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
