"""Cheap checks that a file is the DICOM Part 10 instance we asked for.

Only the header is parsed (pydicom stops before the pixel data), so the cost does not grow with
the instance size. The bytes are never rewritten: we check what the server sent, as sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from .errors import IntegrityError

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
HEADER_PREFIX_LENGTH = PREAMBLE_LENGTH + len(MAGIC)

log = logging.getLogger(__name__)

_TAGS: list[BaseTag | int] = [Tag(0x0020, 0x000D), Tag(0x0020, 0x000E), Tag(0x0008, 0x0018)]
_LAST_TAG = 0x0020000E  # Series Instance UID, the last of the three


def _past_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_TAG


def check_prefix(prefix: bytes, *, sop_uid: str) -> None:
    """Fail fast on the first bytes when they are text: an HTML error page, JSON, XML.

    Binary bodies without the DICM magic are judged after the download instead: some archives
    hold (and serve) bare datasets without the Part 10 header, and those are kept when their
    SOP Instance UID is the one asked for. `sop_uid` may be a label such as "part 3".
    """
    if len(prefix) < HEADER_PREFIX_LENGTH or prefix[PREAMBLE_LENGTH:HEADER_PREFIX_LENGTH] == MAGIC:
        return
    if _is_text(prefix):
        raise IntegrityError(
            f"instance {sop_uid}: response is not DICOM ({_guess_text(prefix)})",
            sop_instance_uid=sop_uid,
            retryable=False,
        )


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


@dataclass(frozen=True)
class HeaderInfo:
    """The identifying attributes of a Part 10 file, read from its header."""

    study_uid: str
    series_uid: str
    sop_uid: str
    media_storage_sop_uid: str
    transfer_syntax: str
    has_preamble: bool = True


def read_header(path: Path, *, label: str) -> HeaderInfo:
    """Read the identifying UIDs of a downloaded file; `label` names it in errors."""
    with path.open("rb") as fp:
        prefix = fp.read(HEADER_PREFIX_LENGTH)
        if len(prefix) < HEADER_PREFIX_LENGTH:
            raise IntegrityError(
                f"{label}: response too short to be DICOM ({len(prefix)} bytes)", retryable=True
            )
        check_prefix(prefix, sop_uid=label.removeprefix("instance "))
        has_magic = prefix[PREAMBLE_LENGTH:] == MAGIC
        fp.seek(0)
        try:
            # The three UIDs live in groups 0008 and 0020: stop parsing right after them
            # instead of walking every element up to the pixel data.
            dataset = read_partial(
                fp, stop_when=_past_series_uid, specific_tags=_TAGS, force=not has_magic
            )
        except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"{label}: DICOM header cannot be parsed ({exc})", retryable=True
            ) from exc
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


def check_identity(info: HeaderInfo, *, study_uid: str, series_uid: str, sop_uid: str) -> None:
    """Raise IntegrityError unless the header names exactly the instance we asked for."""
    found = {
        "SOP Instance UID": (info.sop_uid, sop_uid),
        "Study Instance UID": (info.study_uid, study_uid),
        "Series Instance UID": (info.series_uid, series_uid),
    }
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


def verify_instance(path: Path, *, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Check magic and UIDs of the file at `path`; return its transfer syntax UID."""
    info = read_header(path, label=f"instance {sop_uid}")
    check_identity(info, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    return info.transfer_syntax
