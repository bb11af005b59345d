"""Reading the identifying UIDs of a Part 10 header without building pydicom Datasets.

Two readers, cheapest first, each giving up (None) on what the next handles:
- `parse_head`: plain little endian files, parsed from the first bytes in memory without
  pydicom (its import alone is a large share of start-up);
- `read_header_fast` falls back to pydicom's raw element generator without building Datasets
  (implicit VR sequences of undefined length, other character sets, headers past the first
  chunk).
What neither reads goes to pydicom's `read_partial` (dicomweb/verify.py). All give the same
result; tests/unit/dicomweb/test_verify.py compares them on many files.
"""

from __future__ import annotations

import io
import re
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import BaseTag

_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018
LAST_TAG = _SERIES  # Series Instance UID, the last of the three
UID_TAGS: list[BaseTag | int] = [_STUDY, _SERIES, _SOP]
_CHARSET = 0x00080005
_GROUP_LENGTH, _MEDIA_SOP, _TRANSFER_SYNTAX = 0x00020000, 0x00020003, 0x00020010
# What pydicom accepts without a warning for a UI value (after stripping the padding).
_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_MAX_UID_LENGTH = 64
_UNDEFINED_LENGTH = 0xFFFFFFFF
HEADER_CHUNK = 16 * 1024  # ample for the elements up to (0020,000E) in real files
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# Transfer syntaxes read_partial decodes specially (big endian; deflate inflates the dataset).
_PYDICOM_DECODES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
# Explicit VR: the standard VRs with a 2-byte length, and those with a 4-byte one.
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
# Specific Character Sets pydicom takes without a warning; any other goes to pydicom.
_PLAIN_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_EXPLICIT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<L")


@dataclass(frozen=True)
class HeaderInfo:
    """The identifying attributes of a Part 10 file, read from its header."""

    study_uid: str
    series_uid: str
    sop_uid: str
    media_storage_sop_uid: str
    transfer_syntax: str
    has_preamble: bool = True


def read_header_fast(fp: BinaryIO) -> HeaderInfo | None:
    """The header of a plain Part 10 file from `fp`, or None to leave it to `read_partial`.

    `fp` is just past the DICM magic. Parsing from memory is much cheaper than from the file
    (whose tell() is a system call, and pydicom calls it for every element), and the header up
    to the UIDs nearly always fits in the first chunk. When it may not have, the file is parsed.
    """
    try:
        start = fp.tell()
        chunk = fp.read(HEADER_CHUNK)
        whole = len(chunk) < HEADER_CHUNK  # a short chunk is the whole file
        if (info := parse_head(chunk, whole=whole)) is not None:
            return info
        found, complete = _parse_plain(io.BytesIO(chunk))
        if complete or whole:
            return found
        fp.seek(start)
        return _parse_plain(fp)[0]
    except OSError:  # read_partial meets it too, and reports it as before
        return None


def parse_head(data: bytes, *, whole: bool) -> HeaderInfo | None:
    """The header of a plain Part 10 file from `data` (the bytes after DICM; all of them if
    `whole`), or None to leave it to pydicom.

    Explicit VR little endian file meta, then an explicit or implicit VR little endian dataset
    up to the first element past (0020,000E). Only defined lengths, standard VRs and ascending
    tags; anything that would make pydicom read differently, warn or log gives None, and so
    does running out of `data` (unless at an element boundary of a `whole` file's dataset,
    where pydicom stops too).
    """
    meta = _walk(data, 0, implicit=False, last=0x0002FFFF, whole=False)
    if meta is None:
        return None
    values, first, dataset_start = meta
    # read_partial logs a group length that does not match (it counts the bytes after its own
    # 12-byte element), and retries as implicit VR if the first element does not decode.
    if first != (_GROUP_LENGTH, b"UL", 4) or _LONG.unpack_from(data, 8)[0] != dataset_start - 12:
        return None
    transfer_syntax = _uid_text(values.get(_TRANSFER_SYNTAX, b""))
    media_sop = _uid_text(values.get(_MEDIA_SOP, b""))
    if not transfer_syntax or media_sop is None or transfer_syntax in _PYDICOM_DECODES:
        return None
    # Private syntaxes can only have been registered if pydicom.uid was imported (getattr: it
    # may be importing in another thread).
    registered = getattr(sys.modules.get("pydicom.uid"), "PrivateTransferSyntaxes", ())
    if transfer_syntax in registered:
        return None
    implicit = transfer_syntax == _IMPLICIT_VR_LITTLE_ENDIAN
    # read_dataset sniffs the first element: group 0000 is a command set, and a VR that does
    # not match the transfer syntax makes pydicom warn and switch.
    sniff = data[dataset_start : dataset_start + 6]
    if len(sniff) < 6 or sniff[:2] == b"\0\0":
        return None
    if all(0x41 <= b <= 0x5A for b in sniff[4:6]) == implicit:
        return None
    dataset = _walk(data, dataset_start, implicit=implicit, last=LAST_TAG, whole=whole)
    if dataset is None:
        return None
    found = dataset[0]
    # pydicom decodes the character set as it reads it, warning about unusual ones.
    if _CHARSET in found and found[_CHARSET].decode("latin-1").rstrip(" \0") not in _PLAIN_CHARSETS:
        return None
    study, series, sop = (_uid_text(found.get(tag, b"")) for tag in (_STUDY, _SERIES, _SOP))
    if study is None or series is None or sop is None:
        return None
    return HeaderInfo(study, series, sop or media_sop, media_sop, transfer_syntax)


# Values `_walk` keeps, with the VR each must have when explicit.
_WANTED = {
    _TRANSFER_SYNTAX: b"UI",
    _MEDIA_SOP: b"UI",
    _CHARSET: b"CS",
    _STUDY: b"UI",
    _SERIES: b"UI",
    _SOP: b"UI",
}


def _walk(
    data: bytes, pos: int, *, implicit: bool, last: int, whole: bool
) -> tuple[dict[int, bytes], tuple[int, bytes, int] | None, int] | None:
    """Little endian elements from `pos` up to the first tag past `last`: the `_WANTED`
    values, the first element's (tag, VR, length) and where the walk stopped; or None."""
    values: dict[int, bytes] = {}
    first: tuple[int, bytes, int] | None = None
    previous = -1
    end = len(data)
    while True:
        if pos + 8 > end:
            # pydicom ends the walk when fewer than 8 bytes are left; in a chunk, more may follow.
            return (values, first, pos) if whole and first is not None else None
        group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
        tag = group << 16 | element
        header = 8
        if implicit:
            vr, length = b"", _LONG.unpack_from(data, pos + 4)[0]
        elif vr in _LONG_VRS:  # pydicom reads this length even for the element it stops at
            if pos + 12 > end:
                return None
            length, header = _LONG.unpack_from(data, pos + 8)[0], 12
        if tag > last:
            return values, first, pos
        if not implicit and vr not in _SHORT_VRS and vr not in _LONG_VRS:
            return None
        if tag <= previous:
            return None
        if length == _UNDEFINED_LENGTH and vr == b"SQ":  # explicit VR only: see _skip_sequence
            after = _skip_sequence(data, pos + header, depth=0)
            if after is None or tag in _WANTED:
                return None
        else:
            after = pos + header + length
            if length == _UNDEFINED_LENGTH or after > end:
                return None
            if tag in _WANTED:
                if not implicit and vr != _WANTED[tag]:
                    return None
                values[tag] = data[pos + header : after]
        if first is None:
            first = (tag, vr, length)
        previous, pos = tag, after


# Nesting deeper than this is left to pydicom (real files nest two or three levels).
_MAX_DEPTH = 8
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TAG_AND_LENGTH = struct.Struct("<HHL")


def _skip_sequence(data: bytes, pos: int, *, depth: int) -> int | None:
    """Where an explicit VR little endian sequence of undefined length that starts at `pos`
    (its first item) ends: just past its delimiter; None if it does not end in `data` or is
    anything but items, each of defined length or of explicit VR elements up to its delimiter.

    Sequences of undefined length are common before the UIDs in real files (e.g. Referenced
    Image Sequence); pydicom reads them item by item, as here, so both find the same end. In
    implicit VR an undefined length may be a sequence or a value pydicom ends by searching for
    the delimiter bytes, depending on its data dictionary: left to pydicom.
    """
    if depth > _MAX_DEPTH:
        return None
    end = len(data)
    while pos + 8 <= end:
        group, element, length = _TAG_AND_LENGTH.unpack_from(data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos if length == 0 else None
        if tag != _ITEM:
            return None
        if length == _UNDEFINED_LENGTH:
            after = _skip_item(data, pos, depth=depth)
            if after is None:
                return None
            pos = after
        elif pos + length > end:
            return None
        else:
            pos += length
    return None


def _skip_item(data: bytes, pos: int, *, depth: int) -> int | None:
    """Past the delimiter of an item of undefined length whose elements start at `pos`."""
    end = len(data)
    while pos + 8 <= end:
        group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
        if group << 16 | element == _ITEM_END:
            return pos + 8 if _LONG.unpack_from(data, pos + 4)[0] == 0 else None
        header = 8
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return None
            length, header = _LONG.unpack_from(data, pos + 8)[0], 12
        elif vr not in _SHORT_VRS:
            return None
        if length == _UNDEFINED_LENGTH:
            if vr != b"SQ":
                return None
            after = _skip_sequence(data, pos + header, depth=depth + 1)
            if after is None:
                return None
            pos = after
        elif pos + header + length > end:
            return None
        else:
            pos += header + length
    return None


class _Walk:
    """A stop_when callback for tags outside [first, last] that also tells whether the walk
    got to its stop on its own.

    It did if it stopped there without parsing an element of undefined length: skipping and
    reading defined lengths cannot run past the end of a chunk unnoticed, but pydicom's search
    for the end of an undefined length value could stop at a stray delimiter inside the chunk.
    """

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.stopped = False
        self.undefined_length = False

    def __call__(self, tag: BaseTag, vr: str | None, length: int) -> bool:
        self.stopped = not self.first <= int(tag) <= self.last  # int: BaseTag compares slowly
        self.undefined_length |= length == _UNDEFINED_LENGTH and not self.stopped
        return self.stopped

    @property
    def complete(self) -> bool:
        return self.stopped and not self.undefined_length


def _parse_plain(fp: BinaryIO) -> tuple[HeaderInfo | None, bool]:
    """The header of a plain Part 10 file read without building pydicom Datasets, and whether
    both walks (file meta, then dataset) were complete.

    pydicom's own element generator walks the elements as `read_partial` does, but only the
    few UIDs are decoded. Whatever `read_partial` would treat specially (no or wrong group
    length, a deflated, big endian or private transfer syntax, a command set, a VR that does
    not match the transfer syntax, a UID pydicom would warn about, a parsing error) gives None.
    """
    from pydicom.uid import PrivateTransferSyntaxes

    # Like read_partial: the file meta is group 0002, the dataset is read up to the last UID.
    meta_walk, dataset_walk = _Walk(0x00020000, 0x0002FFFF), _Walk(0, LAST_TAG)
    try:
        start = fp.tell()
        meta = _raw_elements(fp, implicit=False, stop_when=meta_walk)
        # read_partial decodes the first meta element (retrying as implicit VR if that fails)
        # and logs a group length that does not match: the standard layout avoids both.
        if not meta:
            return None, False
        first_tag, first = next(iter(meta.items()))
        if first_tag != _GROUP_LENGTH or first.VR != "UL" or first.length != 4:
            return None, False
        # The group length counts the bytes after its own 12-byte element.
        if int.from_bytes(first.value or b"", "little") != fp.tell() - start - 12:
            return None, False
        transfer_syntax = _uid(meta, _TRANSFER_SYNTAX)
        media_sop = _uid(meta, _MEDIA_SOP)
        if not transfer_syntax or media_sop is None:
            return None, False
        if transfer_syntax in _PYDICOM_DECODES or transfer_syntax in PrivateTransferSyntaxes:
            return None, False
        implicit = transfer_syntax == _IMPLICIT_VR_LITTLE_ENDIAN
        # read_dataset sniffs the first element: group 0000 is a command set, and a VR that
        # does not match the transfer syntax makes pydicom warn and switch.
        dataset_start = fp.tell()
        head = fp.read(6)
        fp.seek(dataset_start)
        if len(head) < 6 or head[:2] == b"\0\0":
            return None, False
        if all(0x41 <= b <= 0x5A for b in head[4:6]) == implicit:
            return None, False
        found = _raw_elements(fp, implicit=implicit, stop_when=dataset_walk, tags=UID_TAGS)
        if found is None:
            return None, False
        study, series, sop = (_uid(found, tag) for tag in (_STUDY, _SERIES, _SOP))
    except Exception:  # whatever it is, read_partial raises or tolerates it as before
        return None, False
    if study is None or series is None or sop is None:
        return None, False
    info = HeaderInfo(
        study_uid=study,
        series_uid=series,
        sop_uid=sop or media_sop,
        media_storage_sop_uid=media_sop,
        transfer_syntax=transfer_syntax,
    )
    return info, meta_walk.complete and dataset_walk.complete


def _raw_elements(
    fp: BinaryIO,
    *,
    implicit: bool,
    stop_when: _Walk,
    tags: list[BaseTag | int] | None = None,
) -> dict[int, RawDataElement] | None:
    """The undecoded little endian elements up to `stop_when`, as read_dataset collects them.

    None if one comes back parsed (a sequence of undefined length): not a plain value.
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.filereader import data_element_generator

    elements: dict[int, RawDataElement] = {}
    for elem in data_element_generator(fp, implicit, True, stop_when=stop_when, specific_tags=tags):
        if not isinstance(elem, RawDataElement):
            return None
        elements[int(elem.tag)] = elem
    return elements


def _uid(elements: dict[int, RawDataElement], tag: int) -> str | None:
    """`_uid_text` of an element ("" when absent); None when it is not a UI element."""
    elem = elements.get(tag)
    if elem is None:
        return ""
    if elem.VR not in (None, "UI"):  # None: implicit VR, where the dictionary says UI
        return None
    return _uid_text(elem.value or b"")


def _uid_text(value: bytes) -> str | None:
    """The UI value pydicom would give, or None when it is out of the ordinary.

    Like pydicom: trailing NUL/space padding is dropped. Several values or not a valid UID
    (pydicom warns, and may split or keep it) give None.
    """
    text = value.decode("latin-1").rstrip("\0 ")  # pydicom's default encoding
    if text and (len(text) > _MAX_UID_LENGTH or not _VALID_UID.fullmatch(text)):
        return None
    return text
