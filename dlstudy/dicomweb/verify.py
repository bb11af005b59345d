"""Cheap checks that a file is the DICOM Part 10 instance we asked for.

Only the header is parsed (never the pixel data), so the cost does not grow with the instance
size. The bytes are never rewritten: we check what the server sent, as sent.

The header is read by dicomweb/header_fast.py when it can (plain little endian files, the
usual case), and by pydicom's `read_partial` otherwise (big endian, deflate, bare datasets).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import IntegrityError
from ..store.safe_files import open_binary
from .header_fast import (
    HEADER_CHUNK,
    LAST_TAG,
    UID_TAGS,
    HeaderInfo,
    parse_head,
    read_header_fast,
)

if TYPE_CHECKING:
    from pydicom.tag import BaseTag

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
HEADER_PREFIX_LENGTH = PREAMBLE_LENGTH + len(MAGIC)
# The leading bytes `read_header(head=...)` can use: the Part 10 prefix and the first chunk.
VERIFY_HEAD_LENGTH = HEADER_PREFIX_LENGTH + HEADER_CHUNK

# A multipart body's first line: a delimiter. No DICOM file starts so (a preamble is followed
# by DICM, and a bare dataset starts with a tag of group 0008 or so, never 2D2D).
# Transfer syntaxes a server transcodes to lossily: the result is a new instance, with a new
# SOP Instance UID (PS3.3 C.12.1.1.1), however often it is asked for.
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy or lossless)
        "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy or lossless)
        "1.2.840.10008.1.2.4.112",  # JPEG XL
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),  # MPEG-2, MPEG-4, HEVC
    }
)

_MULTIPART_START = re.compile(rb"\s*--[^\r\n]{1,70}\r?\n")
# Characters of a parser's message kept in an error line.
_BRIEF = 160

log = logging.getLogger(__name__)


def _past_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > LAST_TAG


def check_prefix(prefix: bytes, *, sop_uid: str | None, label: str | None = None) -> None:
    """Fail fast on the first bytes when they are text (an HTML error page, JSON, XML), a
    Part 10 file without its preamble, or a multipart body.

    Binary bodies without the DICM magic are judged after the download instead: some archives
    hold (and serve) bare datasets without the Part 10 header, and those are kept when their
    SOP Instance UID is the one asked for. `label` names the body in the error (default:
    "instance <sop_uid>").
    """
    if len(prefix) < HEADER_PREFIX_LENGTH or prefix[PREAMBLE_LENGTH:HEADER_PREFIX_LENGTH] == MAGIC:
        return
    named = label or f"instance {sop_uid}"
    if prefix.startswith(MAGIC):
        # A Part 10 file with its 128-byte preamble left out: no DICOM reader takes it (they
        # look for DICM at byte 128), and it cannot be mended without rewriting the bytes.
        raise IntegrityError(
            f"{named}: response starts with DICM, without the 128-byte preamble of a DICOM file",
            sop_instance_uid=sop_uid,
            retryable=False,
        )
    if _MULTIPART_START.match(prefix):
        # A multipart body under another Content-Type (or nested in a part): its framing
        # would be taken for the file.
        raise IntegrityError(
            f"{named}: response is not DICOM (looks like a multipart body)",
            sop_instance_uid=sop_uid,
            retryable=False,
        )
    if _is_text(prefix):
        raise IntegrityError(
            f"{named}: response is not DICOM ({_guess_text(prefix)})",
            sop_instance_uid=sop_uid,
            retryable=False,
        )


def check_start(start: bytes, *, label: str, sop_uid: str | None) -> None:
    """`start`, a body's first bytes (HEADER_PREFIX_LENGTH, or all of a shorter body): an
    IntegrityError when it is too short to be DICOM, or when check_prefix refuses it."""
    if len(start) < HEADER_PREFIX_LENGTH:
        raise IntegrityError(
            f"{label}: response too short to be DICOM ({len(start)} bytes)", retryable=True
        )
    check_prefix(start[:HEADER_PREFIX_LENGTH], sop_uid=sop_uid, label=label)


def keep_head(head: bytes, chunk: bytes, *, sop_uid: str | None, label: str | None = None) -> bytes:
    """`head` extended with the start of `chunk`, up to VERIFY_HEAD_LENGTH bytes, for
    `read_header(head=...)`; the Part 10 prefix is checked as soon as it is complete, so an
    error page fails before the rest of it is downloaded. `label` as for check_prefix."""
    if len(head) >= VERIFY_HEAD_LENGTH:
        return head
    checked = len(head) >= HEADER_PREFIX_LENGTH
    head += chunk[: VERIFY_HEAD_LENGTH - len(head)]
    if not checked:
        check_prefix(head[:HEADER_PREFIX_LENGTH], sop_uid=sop_uid, label=label)
    return head


def _is_text(prefix: bytes) -> bool:
    return all(32 <= b < 127 or b in b"\t\r\n" for b in prefix)


def _guess_text(prefix: bytes) -> str:
    head = prefix[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page"
    if head.startswith((b"{", b"[")):
        return "looks like JSON"
    if head.startswith(b"<"):
        return "looks like XML"
    return "looks like text"


def _from_head(head: bytes | None, size: int | None) -> HeaderInfo | None:
    """The header read from the file's first bytes alone, when they are enough."""
    if head is not None and head[PREAMBLE_LENGTH:HEADER_PREFIX_LENGTH] == MAGIC:
        data = head[HEADER_PREFIX_LENGTH:VERIFY_HEAD_LENGTH]  # what the file path would read
        return parse_head(data, whole=size == HEADER_PREFIX_LENGTH + len(data))
    return None


def read_header(
    path: Path, *, label: str, head: bytes | None = None, size: int | None = None
) -> HeaderInfo:
    """Read the identifying UIDs of a downloaded file; `label` names it in errors.

    `head`, the file's first bytes (`VERIFY_HEAD_LENGTH` is what is useful), and `size`, the
    file's, let a plain file be read from memory; the file is opened only when they are not
    enough, with the same outcome either way.
    """
    if (info := _from_head(head, size)) is not None:
        return info
    with open_binary(path) as fp:
        return read_header_in(fp, label=label)


def read_header_in(
    fp: BinaryIO, *, label: str, head: bytes | None = None, size: int | None = None
) -> HeaderInfo:
    """As read_header, for a file already open (an anonymous temp file), read from its
    start."""
    if (info := _from_head(head, size)) is not None:
        return info
    fp.seek(0)
    prefix = fp.read(HEADER_PREFIX_LENGTH)
    check_start(prefix, label=label, sop_uid=label.removeprefix("instance "))
    has_magic = prefix[PREAMBLE_LENGTH:] == MAGIC
    if has_magic and (info := read_header_fast(fp)) is not None:
        return info
    fp.seek(0)
    try:
        return _read_with_pydicom(fp, has_magic=has_magic)
    except Exception as exc:
        # On a malformed header pydicom raises more than its own errors: struct.error for an
        # element header cut short, NotImplementedError for an unknown VR, its
        # BytesLengthException for a value of the wrong size (some only when a value is
        # read). Each is one bad instance, never the end of the run.
        raise IntegrityError(
            f"{label}: DICOM header cannot be parsed ({_brief(exc)})", retryable=True
        ) from exc


def _brief(exc: Exception) -> str:
    """The first line of `exc`'s message, cut short: pydicom's may quote the bytes it read."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= _BRIEF else text[: _BRIEF - 3] + "..."


def _read_with_pydicom(fp: BinaryIO, *, has_magic: bool) -> HeaderInfo:
    from pydicom.filereader import read_partial

    # The three UIDs live in groups 0008 and 0020: stop parsing right after them
    # instead of walking every element up to the pixel data.
    dataset = read_partial(
        fp, stop_when=_past_series_uid, specific_tags=UID_TAGS, force=not has_magic
    )
    meta = dataset.file_meta if hasattr(dataset, "file_meta") else None
    media_sop = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
    return HeaderInfo(
        study_uid=str(dataset.get("StudyInstanceUID", "") or ""),
        series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        sop_uid=str(dataset.get("SOPInstanceUID", "") or media_sop),
        media_storage_sop_uid=media_sop,
        transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""),
        has_preamble=has_magic,
    )


def check_not_lossy_copy(info: HeaderInfo, sop_uid: str) -> None:
    """A file of the series asked for, under another SOP Instance UID, in a lossy transfer
    syntax: the server transcoded the instance and made a new one of it, as it will again (or
    stores it so: asking again does not change it either). The words fit both."""
    if info.transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
        raise IntegrityError(
            f"instance {sop_uid}: the server sent a new instance, {info.sop_uid}, in the lossy "
            f"transfer syntax {info.transfer_syntax} (a lossy transcode is a new instance); "
            "if another --transfer-syntax than '*' (as stored) was asked for, ask for '*' or "
            "a lossless one",
            sop_instance_uid=sop_uid,
            retryable=False,
        )


def check_identity(info: HeaderInfo, *, study_uid: str, series_uid: str, sop_uid: str) -> None:
    """Raise IntegrityError unless the header names exactly the instance we asked for."""
    found = {
        "SOP Instance UID": (info.sop_uid, sop_uid),
        "Study Instance UID": (info.study_uid, study_uid),
        "Series Instance UID": (info.series_uid, series_uid),
    }
    same_series = info.study_uid == study_uid and info.series_uid == series_uid
    if same_series and info.sop_uid and info.sop_uid != sop_uid:
        check_not_lossy_copy(info, sop_uid)
    for name, (got, wanted) in found.items():
        if got != wanted:
            raise IntegrityError(
                f"instance {sop_uid}: {name} in the file is {got or 'missing'}, expected {wanted}",
                sop_instance_uid=sop_uid,
                retryable=True,
            )
    # The dataset is what QIDO indexes and what the server serves; a stale file meta or a bare
    # dataset is how some archives store real studies, so these are kept, with a note.
    if info.media_storage_sop_uid and info.media_storage_sop_uid != sop_uid:
        log.warning(
            "instance %s: file meta names %s (kept as sent)", sop_uid, info.media_storage_sop_uid
        )
    if not info.has_preamble:
        log.warning("instance %s: no Part 10 preamble/DICM (kept as sent)", sop_uid)
