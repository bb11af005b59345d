"""Proof that a DICOM file is whole: its elements, walked from the start, end exactly where the
file ends.

HTTP cannot always tell a body that was cut: an HTTP/1.1 answer delimited by closing the
connection, an HTTP/2 stream that ends early without a Content-Length. The file's own structure
can: every element states its length, so walking the top-level elements (and the items of the
sequences and encapsulated pixel data whose length is undefined) must land exactly on the last
byte. Values are skipped by their lengths, never read, so the walk costs a few small reads
whatever the size of the file.

Files this walk cannot judge (big endian or deflated transfer syntaxes, a bare dataset without
the file meta that names its encoding, a VR it does not know, nesting deeper than real files
use) are let through: the check must never refuse a good file. A cut exactly between two
top-level elements leaves a shorter well-formed file, which no structure can tell from a whole
one; a cut anywhere inside an element (the pixel data above all) is found.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import IO

from ..errors import IntegrityError
from ..store.safe_files import open_binary

_PREAMBLE = 128
_MAGIC = b"DICM"
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_NOT_WALKED = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflate
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 16
_TAG_VR_LENGTH = struct.Struct("<HH2sH")
_TAG_LENGTH = struct.Struct("<HHL")
_LENGTH = struct.Struct("<L")


class _CannotJudge(Exception):
    """Something the walk does not know how to read: the file is let through."""


class _Cut(Exception):
    """The structure runs past the end of the file (or stops short of it)."""


def check_complete(
    path: Path, *, transfer_syntax: str, size: int, label: str, head: bytes | None = None
) -> None:
    """Raise a retryable IntegrityError unless the file at `path` (`size` bytes) ends exactly
    where its last element does. `head`, the file's first bytes: when they are the whole file
    (a small instance), they are walked instead of the file."""
    if transfer_syntax in _NOT_WALKED:
        return
    source = io.BytesIO(head) if head is not None and len(head) == size else None
    with source or open_binary(path) as fp:
        check_complete_in(fp, transfer_syntax=transfer_syntax, size=size, label=label)


def check_complete_in(fp: IO[bytes], *, transfer_syntax: str, size: int, label: str) -> None:
    """As check_complete, for a file already open (an anonymous temp file)."""
    if transfer_syntax in _NOT_WALKED:
        return
    try:
        _Walker(fp, size, implicit=transfer_syntax == _IMPLICIT_LITTLE).whole_file()
    except _CannotJudge:
        return
    except _Cut as cut:
        raise IntegrityError(
            f"{label}: the file is incomplete ({cut}): the body was cut short",
            retryable=True,
        ) from None


class _Walker:
    def __init__(self, fp: IO[bytes], size: int, *, implicit: bool) -> None:
        self.fp = fp
        self.size = size
        self.implicit = implicit

    def read(self, pos: int, count: int, end: int) -> bytes:
        if pos + count > end:
            raise _Cut(f"an element header at byte {pos} runs past byte {end}")
        self.fp.seek(pos)
        data = self.fp.read(count)
        if len(data) < count:
            raise _Cut(f"the file ends at byte {pos + len(data)}")
        return data

    def whole_file(self) -> None:
        head = self.read(0, min(self.size, _PREAMBLE + len(_MAGIC)), self.size)
        if head[_PREAMBLE:] != _MAGIC:
            # A bare dataset: no file meta, so its encoding is a guess (it may be big endian).
            raise _CannotJudge("no file meta")
        pos = self.elements(_PREAMBLE + len(_MAGIC), self.size, depth=0, in_item=False)
        if pos != self.size:  # pragma: no cover - elements() walks to `end` or raises
            raise _Cut(f"the elements end at byte {pos} of {self.size}")

    def elements(self, pos: int, end: int, *, depth: int, in_item: bool) -> int:
        """Walk elements from `pos`: to exactly `end`, or (in an item of undefined length) to
        just past its delimiter. Returns where the walk ended."""
        while pos < end or in_item:
            data = self.read(pos, 8, end)
            group, element, vr, short = _TAG_VR_LENGTH.unpack(data)
            tag = group << 16 | element
            if in_item and tag == _ITEM_END:
                return pos + 8
            if self.implicit and group != 0x0002:  # the file meta is always explicit VR
                vr, length, header = b"", _LENGTH.unpack_from(data, 4)[0], 8
            elif vr in _LONG_VRS:
                length, header = _LENGTH.unpack(self.read(pos + 8, 4, end))[0], 12
            elif vr in _SHORT_VRS:
                length, header = short, 8
            else:
                raise _CannotJudge(f"VR {vr!r}")
            pos += header
            if length == _UNDEFINED:
                # (UN of undefined length holds implicit VR items: not walked.)
                if vr not in (b"", b"SQ", b"OB", b"OW"):
                    raise _CannotJudge(f"undefined length with VR {vr!r}")
                pos = self.items(pos, end, depth=depth + 1)
            elif pos + length > end:
                raise _Cut(f"an element at byte {pos - header} needs {length} bytes")
            else:
                pos += length
        return pos

    def items(self, pos: int, end: int, *, depth: int) -> int:
        """A sequence (or encapsulated pixel data) of undefined length: items up to its
        delimiter. Returns the position just past the delimiter."""
        if depth > _MAX_DEPTH:
            raise _CannotJudge("nesting")
        while True:
            group, element, length = _TAG_LENGTH.unpack(self.read(pos, 8, end))
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Cut(f"byte {pos - 8} holds no item where the sequence goes on")
            if length == _UNDEFINED:
                pos = self.elements(pos, end, depth=depth, in_item=True)
            elif pos + length > end:
                raise _Cut(f"an item at byte {pos - 8} needs {length} bytes")
            else:
                pos += length
