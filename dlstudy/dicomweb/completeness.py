"""Proof that a DICOM file is whole: its elements, walked from the start, end exactly where the
file ends.

HTTP cannot always tell a body that was cut: an HTTP/1.1 answer delimited by closing the
connection, an HTTP/2 stream that ends early without a Content-Length. The file's own structure
can: every element states its length, so walking the top-level elements (and the items of the
sequences and encapsulated pixel data whose length is undefined) must land exactly on the last
byte. Values are skipped by their lengths, never read, so the walk costs a few small reads
whatever the size of the file. The walk only moves forward: it runs over a file, over bytes in
memory, or over a body as it arrives and is kept nowhere (`BodyWalk`, for bench).

Every encoding is walked: implicit and explicit VR little endian, explicit VR big endian (the
file meta stays little endian), and a bare dataset without file meta, whose first element says
which of the little endian two it is. A deflated dataset is one deflate stream: whole when the
stream reaches its last block, with nothing but NUL bytes after it. Files this walk cannot judge
(a VR it does not know, nesting deeper than real files use, a bare dataset that starts with no
usual group, a stream zlib cannot read) are let through: the check must never refuse a good
file. A cut exactly between two top-level elements leaves a shorter well-formed file, which no
structure can tell from a whole one; a cut anywhere inside an element (the pixel data above
all) is found.

Bytes that follow the pixel data without being an element (a VR the walk does not know, or a
tag not above the one before) are refused too, unless they are all NUL (padding some writers
add): they are not part of the instance but something appended to it, such as the next part
of a multipart response whose delimiter lacked its CRLF, or a second file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Generator
from pathlib import Path
from typing import IO

from ..errors import IntegrityError
from ..store.safe_files import open_binary

_PREAMBLE = 128
_MAGIC = b"DICM"
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
# Group 7FE0 holds the pixel data (float, double or plain): in an image, the last large value.
_PIXEL_GROUP = 0x7FE00000
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TRANSFER_SYNTAX = 0x00020010
_MAX_DEPTH = 16
_PADDING_BLOCK = 64 * 1024
_TAG_VR_LENGTH = struct.Struct("<HH2sH")
_TAG_LENGTH = struct.Struct("<HHL")
_LENGTH = struct.Struct("<L")
_BIG_TAG_VR_LENGTH = struct.Struct(">HH2sH")
_BIG_TAG_LENGTH = struct.Struct(">HHL")
_BIG_LENGTH = struct.Struct(">L")
# The first group of a bare dataset that is judged (from 0008, identification, to 0028, image
# presentation, as every real instance starts): its byte order is then plain to see.
_BARE_FIRST_GROUPS = range(0x0008, 0x0029)
_INFLATED_PIECE = 1 << 20  # zlib's output at a time, thrown away: memory stays bounded
# Bytes some writers leave after a deflated dataset's stream, at most: gzip's CRC-32 and
# length (as pydicom's own test file, image_dfl.dcm, has them), or zlib's Adler-32.
_DEFLATE_TRAILER = 8


class _CannotJudge(Exception):
    """Something the walk does not know how to read: the file is let through."""


_NO_PART = "are no part of it"


class _Inflated:
    """The running CRC-32, Adler-32 and length of a deflated dataset's inflated bytes: what a
    trailer a writer leaves after the stream must hold."""

    def __init__(self) -> None:
        self.crc = zlib.crc32(b"")
        self.adler = zlib.adler32(b"")
        self.size = 0

    def add(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.adler = zlib.adler32(data, self.adler)
        self.size += len(data)

    def followed_by(self, rest: bytes) -> bool:
        """Whether `rest`, the bytes after the stream, is NUL padding, after gzip's trailer
        (CRC-32 and length, little endian) or zlib's (Adler-32, big endian) if one is there."""
        gzip = struct.pack("<LL", self.crc, self.size & 0xFFFFFFFF)
        zlib_ = struct.pack(">L", self.adler)
        for trailer in (gzip, zlib_):
            if rest.startswith(trailer):
                rest = rest[len(trailer) :]
                break
        return not rest.strip(b"\0")


class _Cut(Exception):
    """The structure runs past the end of the file (or stops short of it)."""


class _Appended(_Cut):
    """Bytes after the pixel data that are no element: something else appended to the file."""


def check_complete(
    path: Path,
    *,
    transfer_syntax: str,
    size: int,
    label: str,
    head: bytes | None = None,
    announced: bool = False,
) -> None:
    """Raise an IntegrityError unless the file at `path` (`size` bytes) ends exactly where its
    last element does: retryable (the body was cut short), unless `announced`, when HTTP
    brought all the bytes a Content-Length announced: then the server's own file is so, and
    asking again brings the same. `head`, the file's first bytes: read from memory, the file
    only past them (an image's walk ends on its pixel data's length, inside the head: the file
    is not opened at all)."""
    walker = _Walker.for_syntax(transfer_syntax)
    pos, previous = walker.skim(head, size) if head else (0, -1)
    walk = walker.elements(pos, size, depth=0, in_item=False, previous=previous)
    sent = size if announced else None
    if head is not None and len(head) == size:
        _judge(_in_memory(head, walk), label, sent)
        return
    with _HeadThenFile(head or b"", path) as reads:
        _judge(reads.driving(walk), label, sent)


def check_complete_in(fp: IO[bytes], *, transfer_syntax: str, size: int, label: str) -> None:
    """As check_complete, for a file already open (an anonymous temp file)."""
    _judge(_in_file(fp, _Walker.for_syntax(transfer_syntax).whole_file(size)), label)


def _judge(walking: Callable[[], None], label: str, sent: int | None = None) -> None:
    try:
        walking()
    except (StopIteration, _CannotJudge):
        return
    except _Cut as cut:
        raise _incomplete(label, cut, sent) from None


def _in_memory(data: bytes, walk: _Reads) -> Callable[[], None]:
    def run() -> None:
        at, count = next(walk)
        while True:
            at, count = walk.send(data[at : at + count])

    return run


def _in_file(fp: IO[bytes], walk: _Reads) -> Callable[[], None]:
    def run() -> None:
        at, count = next(walk)
        while True:
            fp.seek(at)
            at, count = walk.send(fp.read(count))

    return run


class _HeadThenFile:
    """Reads from a file's first bytes kept in memory, the file opened only for one past
    them."""

    def __init__(self, head: bytes, path: Path) -> None:
        self._head = head
        self._path = path
        self._file: IO[bytes] | None = None

    def read(self, at: int, count: int) -> bytes:
        if at + count <= len(self._head):
            return self._head[at : at + count]
        if self._file is None:
            self._file = open_binary(self._path)
        self._file.seek(at)
        return self._file.read(count)

    def driving(self, walk: _Reads) -> Callable[[], None]:
        def run() -> None:
            at, count = next(walk)
            while True:
                at, count = walk.send(self.read(at, count))

        return run

    def __enter__(self) -> _HeadThenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


class BodyWalk:
    """The same walk over a body as it arrives, when it is written nowhere (bench): `feed`
    each piece, then `end`. The transfer syntax comes from the file meta; only the element
    headers are kept, never the values between them."""

    def __init__(self) -> None:
        self._walk: _Reads | None = _Walker(implicit=None).whole_file(None)
        self._at, self._count = next(self._walk)  # the read the walk waits for
        self._buffer = bytearray()  # the body's bytes from `_base` on
        self._base = 0
        self._received = 0
        self._cut: _Cut | None = None

    def feed(self, chunk: bytes) -> None:
        start, self._received = self._received, self._received + len(chunk)
        if self._walk is None or self._received <= self._at:
            return  # judged already, or inside a value the walk skips
        if self._buffer:
            del self._buffer[: self._at - self._base]
            self._buffer += chunk
        else:
            self._buffer[:] = chunk[self._at - start :]
        self._base = self._at
        try:
            while self._base + len(self._buffer) >= self._at + self._count:
                offset = self._at - self._base
                data = bytes(self._buffer[offset : offset + self._count])
                self._at, self._count = self._walk.send(data)
                if self._at >= self._base + len(self._buffer):
                    self._buffer.clear()
                    self._base = self._at
        except (StopIteration, _CannotJudge):
            self._walk = None
        except _Cut as cut:  # a structure broken before the end: said at the end
            self._walk, self._cut = None, cut

    def end(self, label: str, *, announced: bool = False) -> None:
        """Raise an IntegrityError unless the body ended where its last element did (see
        check_complete for `announced`)."""
        sent = self._received if announced else None
        if self._cut is not None:
            raise _incomplete(label, self._cut, sent)
        if self._walk is None:
            return
        walk, self._walk = self._walk, None
        if self._at > self._received:
            cut = _Cut(f"an element runs to byte {self._at}, the body ends at {self._received}")
            raise _incomplete(label, cut, sent)
        try:
            walk.send(bytes(self._buffer[self._at - self._base :]))  # what is left: too little
        except (StopIteration, _CannotJudge):
            return
        except _Cut as cut:
            raise _incomplete(label, cut, sent) from None
        raise AssertionError("the walk asked to read past the end")  # pragma: no cover


def _incomplete(label: str, cut: _Cut, sent: int | None = None) -> IntegrityError:
    """`sent`: the bytes of a Content-Length HTTP brought whole, when it did. Then no transfer
    cut the body: the server sends these bytes at every request, and asking again is no use."""
    if sent is not None:
        said = f"it sent all {sent} bytes it announced"
        if isinstance(cut, _Appended):
            error = IntegrityError(
                f"{label}: {cut}: something was appended to the instance: {said}"
            )
        else:
            error = IntegrityError(f"{label}: the server's file is incomplete ({cut}): {said}")
        error.at_source = True
        return error
    if isinstance(cut, _Appended):
        return IntegrityError(
            f"{label}: {cut}: something was appended to the instance", retryable=True
        )
    return IntegrityError(
        f"{label}: the file is incomplete ({cut}): the body was cut short", retryable=True
    )


# The walk asks for reads (position, count), positions only ever growing, and is sent the
# bytes found there: fewer than asked where the file ends.
# Returns where the walk ended.
_Reads = Generator[tuple[int, int], bytes, int]


def _check_length(data: bytes, at: int, count: int) -> None:
    if len(data) < count:
        raise _Cut(f"the file ends at byte {at + len(data)}")


def _check_bound(at: int, count: int, end: int | None) -> None:
    if end is not None and at + count > end:
        raise _Cut(f"an element header at byte {at} runs past byte {end}")


class _Walker:
    def __init__(self, *, implicit: bool | None) -> None:
        """`implicit` None: read from the file meta's Transfer Syntax UID."""
        self.implicit = implicit
        self.big = False  # the dataset (not its file meta) is big endian
        self.deflated = False  # the dataset is one deflate stream

    @classmethod
    def for_syntax(cls, transfer_syntax: str) -> _Walker:
        walker = cls(implicit=False)
        walker.read_syntax(transfer_syntax)
        return walker

    def read_syntax(self, transfer_syntax: str) -> None:
        self.implicit = transfer_syntax == _IMPLICIT_LITTLE
        self.big = transfer_syntax == _BIG_ENDIAN
        self.deflated = transfer_syntax == _DEFLATED

    def whole_file(self, size: int | None) -> _Reads:
        """Walk a file of `size` bytes (None: unknown, a body still arriving)."""
        return self.elements(0, size, depth=0, in_item=False)  # (one generator: cheaper)

    def skim(self, head: bytes, size: int) -> tuple[int, int]:
        """Where the walk of a file of `size` bytes may start, and the tag before that place:
        past the top-level elements in `head` (the file's first bytes) that it would pass
        without a question (a known VR, a defined length inside the file, none after the pixel
        data). Read in one loop, without a generator's round trip per element: the common
        file is then walked to its end here. (0, -1): from the start."""
        start = _PREAMBLE + len(_MAGIC)
        if head[_PREAMBLE:start] != _MAGIC:
            return 0, -1
        pos, previous = start, -1
        last_header = min(len(head), size) - 12  # the last place a whole header can be read
        while pos <= last_header and previous < _PIXEL_GROUP:
            group, element, vr, short = _TAG_VR_LENGTH.unpack_from(head, pos)
            if group != 0x0002 and (self.big or self.deflated):
                break  # the dataset: read by the walk
            if self.implicit and group != 0x0002:
                length, header = _LENGTH.unpack_from(head, pos + 4)[0], 8
            elif vr in _LONG_VRS:
                length, header = _LENGTH.unpack_from(head, pos + 8)[0], 12
            elif vr in _SHORT_VRS:
                length, header = short, 8
            else:
                break
            after = pos + header + length
            if length == _UNDEFINED or after > size:
                break
            previous, pos = group << 16 | element, after
        return (pos, previous) if pos > start else (0, -1)

    def elements(
        self, pos: int, end: int | None, *, depth: int, in_item: bool, previous: int = -1
    ) -> _Reads:
        """Walk elements from `pos`: to exactly `end` (None: to where the file ends, between
        two elements), or (in an item of undefined length) to just past its delimiter.
        Returns where the walk ended. From 0: the Part 10 prefix first. `previous`: the
        top-level tag before `pos`."""
        start = 0  # where the first element is: past the DICM prefix, if any
        if pos == 0:
            prefix = yield 0, _PREAMBLE + len(_MAGIC)
            if prefix[_PREAMBLE:] == _MAGIC:
                start = pos = _PREAMBLE + len(_MAGIC)
                if end == pos:
                    raise _Cut("the file ends after its DICM prefix")
            else:
                self.implicit = _bare_encoding(prefix)
        top_level = depth == 0 and not in_item
        while end is None or pos < end or in_item:
            # (_check_bound and _check_length written out: the read every element makes)
            if end is not None and pos + 8 > end:
                if top_level and previous >= _PIXEL_GROUP:
                    yield from self.after_the_pixel_data(pos, end)
                raise _Cut(f"an element header at byte {pos} runs past byte {end}")
            data = yield pos, 8
            if len(data) < 8:
                if not data and end is None and not in_item and pos > start:
                    return pos  # the body ends here, between two elements
                if top_level and previous >= _PIXEL_GROUP:  # too short for an element
                    _judge_trailing(data, pos)
                raise _Cut(f"the file ends at byte {pos + len(data)}")
            group, element, vr, short = _TAG_VR_LENGTH.unpack(data)
            dataset = group != 0x0002  # (the file meta is explicit VR little endian)
            if dataset:
                if self.implicit is None:
                    raise _CannotJudge("no Transfer Syntax UID in the file meta")
                if self.deflated and top_level:
                    return (yield from self.inflated(pos, end))
                if self.big:
                    group, element, vr, short = _BIG_TAG_VR_LENGTH.unpack(data)
            tag = group << 16 | element
            if in_item and tag == _ITEM_END:
                return pos + 8
            implicit = self.implicit and dataset
            known = implicit or vr in _LONG_VRS or vr in _SHORT_VRS
            if top_level and previous >= _PIXEL_GROUP and (tag <= previous or not known):
                yield from self.after_the_pixel_data(pos, end)
            previous = tag
            if implicit:
                vr, length, header = b"", _LENGTH.unpack_from(data, 4)[0], 8
            elif vr in _LONG_VRS:
                _check_bound(pos + 8, 4, end)
                more = yield pos + 8, 4
                _check_length(more, pos + 8, 4)
                big = self.big and dataset
                length, header = (_BIG_LENGTH if big else _LENGTH).unpack(more)[0], 12
            elif vr in _SHORT_VRS:
                length, header = short, 8
            else:
                raise _CannotJudge(f"VR {vr!r}")
            pos += header
            if tag == _TRANSFER_SYNTAX and self.implicit is None and length <= 64:
                _check_bound(pos, length, end)
                value = yield pos, length
                _check_length(value, pos, length)
                self.read_syntax(value.rstrip(b"\0 ").decode("ascii", "replace"))
            if length == _UNDEFINED:
                # (UN of undefined length holds implicit VR items: not walked.)
                if vr not in (b"", b"SQ", b"OB", b"OW"):
                    raise _CannotJudge(f"undefined length with VR {vr!r}")
                pos = yield from self.items(pos, end, depth=depth + 1)
            elif end is not None and pos + length > end:
                raise _Cut(f"an element at byte {pos - header} needs {length} bytes")
            else:
                pos += length
        return pos

    def after_the_pixel_data(self, pos: int, end: int | None) -> _Reads:
        """Bytes from `pos` (to `end`, or to where the body ends) that are no element, after
        the pixel data: NUL padding is let through (it cannot be judged); anything else was
        appended to the instance."""
        at = pos
        while end is None or at < end:
            count = _PADDING_BLOCK if end is None else min(end - at, _PADDING_BLOCK)
            block = yield at, count
            if block.strip(b"\0"):
                size = "the" if end is None else f"{end - pos}"
                raise _Appended(
                    f"{size} bytes after the pixel data, from byte {pos}, are no element"
                )
            if len(block) < count:
                break
            at += count
        raise _CannotJudge("NUL padding")

    def inflated(self, pos: int, end: int | None) -> _Reads:
        """A deflated dataset from `pos` (to `end`, or to where the body ends): one deflate
        stream, inflated and thrown away, which must reach its last block; only NUL padding
        may follow it, after the trailer of what was inflated if a writer left one."""
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as the standard says
        inflated = _Inflated()
        at = pos
        while end is None or at < end:
            count = _PADDING_BLOCK if end is None else min(end - at, _PADDING_BLOCK)
            block = yield at, count
            try:
                inflated.add(inflater.decompress(block, _INFLATED_PIECE))
                while inflater.unconsumed_tail and not inflater.eof:
                    inflated.add(inflater.decompress(inflater.unconsumed_tail, _INFLATED_PIECE))
            except zlib.error as exc:
                raise _CannotJudge(f"deflate stream: {exc}") from None
            after = at + len(block) - len(inflater.unused_data)
            if len(inflater.unused_data.rstrip(b"\0")) > _DEFLATE_TRAILER:
                raise _Appended(f"bytes after the deflated dataset, from byte {after}, {_NO_PART}")
            if len(block) < count:
                at += len(block)
                break
            at += count
        if not inflater.eof:
            raise _Cut(f"the deflated dataset stops before its last block, at byte {at}")
        if not inflated.followed_by(inflater.unused_data):
            raise _Appended(f"bytes after the deflated dataset, from byte {after}, {_NO_PART}")
        return at

    def items(self, pos: int, end: int | None, *, depth: int) -> _Reads:
        """A sequence (or encapsulated pixel data) of undefined length: items up to its
        delimiter. Returns the position just past the delimiter."""
        if depth > _MAX_DEPTH:
            raise _CannotJudge("nesting")
        while True:
            _check_bound(pos, 8, end)
            data = yield pos, 8
            _check_length(data, pos, 8)
            group, element, length = (_BIG_TAG_LENGTH if self.big else _TAG_LENGTH).unpack(data)
            tag = group << 16 | element
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Cut(f"byte {pos - 8} holds no item where the sequence goes on")
            if length == _UNDEFINED:
                pos = yield from self.elements(pos, end, depth=depth, in_item=True)
            elif end is not None and pos + length > end:
                raise _Cut(f"an item at byte {pos - 8} needs {length} bytes")
            else:
                pos += length


def _judge_trailing(data: bytes, pos: int) -> None:
    """Bytes after the pixel data, at `pos`, too few to be an element: NUL padding is let
    through; anything else was appended."""
    if data.strip(b"\0"):
        raise _Appended(f"{len(data)} bytes after the pixel data, from byte {pos}, are no element")
    raise _CannotJudge("NUL padding")


def _bare_encoding(start: bytes) -> bool:
    """Whether a bare dataset (no preamble, no file meta) beginning with `start` is implicit
    VR, read from its first element as DICOM readers do: explicit VR when a VR follows the tag.
    _CannotJudge when it does not begin with a usual group read little endian (big endian, or
    no DICOM at all: what the header check judges)."""
    if len(start) < 8:
        raise _CannotJudge("a bare dataset too short to tell its encoding")
    group, _, vr, _ = _TAG_VR_LENGTH.unpack_from(start)
    if group not in _BARE_FIRST_GROUPS:
        raise _CannotJudge(f"a bare dataset starting with group {group:04X}")
    return not (vr in _LONG_VRS or vr in _SHORT_VRS)
