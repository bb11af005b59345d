"""Part 10 bytes of one virtual instance, encoded by hand (explicit VR little endian).

pydicom's writer costs about a millisecond per file; the virtual archive makes every instance
on request, so it writes the few elements it has with `struct` instead: tens of microseconds.
The result is an ordinary file that pydicom and any viewer read (tests check that).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
# `2.25.` + 128 bits of a hash: this generator's Implementation Class UID (PS3.7 D.3.3.2).
IMPLEMENTATION_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"dlstudy-virtual-archive").digest()[:16], "big")
)
IMPLEMENTATION_NAME = "DLSTUDY_VIRTUAL"

_LONG_VRS = frozenset({"OB", "OW", "SQ", "UN", "UT", "UR", "UC"})
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")

Element = tuple[int, str, bytes]  # tag, VR, value (unpadded)

SOP_INSTANCE_UID, INSTANCE_NUMBER, PIXEL_DATA = 0x00080018, 0x00200013, 0x7FE00010


def text(tag: int, vr: str, value: str) -> Element:
    return tag, vr, value.encode("ascii")


def us(tag: int, value: int) -> Element:
    return tag, "US", struct.pack("<H", value)


def element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:  # values have even length: UIDs padded with NUL, text with a space
        value += b"\0" if vr in ("UI", "OB") else b" "
    head = _LONG if vr in _LONG_VRS else _SHORT
    return head.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def file_head(sop_class: str, sop_uid: str) -> bytes:
    """The preamble, DICM and the file meta group of an explicit VR little endian file."""
    meta = b"".join(
        [
            _VERSION,
            element(0x00020002, "UI", sop_class.encode()),
            element(0x00020003, "UI", sop_uid.encode()),
            _META_TAIL,
        ]
    )
    group_length = element(0x00020000, "UL", struct.pack("<I", len(meta)))
    return b"".join([_PREAMBLE, group_length, meta])


def encode(elements: Iterable[Element]) -> bytes:
    """The elements encoded one after another, in the order given."""
    return b"".join(element(tag, vr, value) for tag, vr, value in elements)


_PREAMBLE = b"\0" * 128 + b"DICM"
_VERSION = element(0x00020001, "OB", b"\0\1")
_META_TAIL = b"".join(
    [
        element(0x00020010, "UI", EXPLICIT_VR_LE.encode()),
        element(0x00020012, "UI", IMPLEMENTATION_UID.encode()),
        element(0x00020013, "SH", IMPLEMENTATION_NAME.encode()),
    ]
)


def pixels(key: str, length: int) -> bytes:
    """`length` bytes that depend only on `key` (noise: every instance's pixels differ)."""
    return hashlib.shake_128(key.encode()).digest(length)
