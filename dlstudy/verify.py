"""Cheap checks that a file is the DICOM Part 10 instance we asked for.

Only the header is parsed (pydicom stops before the pixel data), so the cost does not grow with
the instance size. The bytes are never rewritten: we check what the server sent, as sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from .errors import IntegrityError

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
HEADER_PREFIX_LENGTH = PREAMBLE_LENGTH + len(MAGIC)

_TAGS = [Tag(0x0020, 0x000D), Tag(0x0020, 0x000E), Tag(0x0008, 0x0018)]


def check_prefix(prefix: bytes, *, sop_uid: str) -> None:
    """Fail fast on the first bytes: an HTML error page or JSON is not a Part 10 file.

    `sop_uid` may also be a label such as "part 3" when the instance is not known yet.
    """
    if (
        len(prefix) >= HEADER_PREFIX_LENGTH
        and prefix[PREAMBLE_LENGTH:HEADER_PREFIX_LENGTH] != MAGIC
    ):
        looks_like = _guess_text(prefix)
        raise IntegrityError(
            f"instance {sop_uid}: response is not a DICOM Part 10 file (no DICM magic{looks_like})",
            sop_instance_uid=sop_uid,
            retryable=False,
        )


def _guess_text(prefix: bytes) -> str:
    head = prefix[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "; looks like an HTML page"
    if head.startswith((b"{", b"[")):
        return "; looks like JSON"
    return ""


@dataclass(frozen=True)
class HeaderInfo:
    """The identifying attributes of a Part 10 file, read from its header."""

    study_uid: str
    series_uid: str
    sop_uid: str
    media_storage_sop_uid: str
    transfer_syntax: str


def read_header(path: Path, *, label: str) -> HeaderInfo:
    """Check the DICM magic and read the UIDs; `label` names the file in errors."""
    with path.open("rb") as fp:
        prefix = fp.read(HEADER_PREFIX_LENGTH)
        if len(prefix) < HEADER_PREFIX_LENGTH:
            raise IntegrityError(
                f"{label}: response too short to be DICOM ({len(prefix)} bytes)", retryable=True
            )
        check_prefix(prefix, sop_uid=label.removeprefix("instance "))
        fp.seek(0)
        try:
            dataset = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, ValueError, EOFError, OSError, KeyError) as exc:
            raise IntegrityError(
                f"{label}: DICOM header cannot be parsed ({exc})", retryable=True
            ) from exc
    meta = dataset.file_meta
    media_sop = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
    return HeaderInfo(
        study_uid=str(dataset.get("StudyInstanceUID", "") or ""),
        series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        sop_uid=str(dataset.get("SOPInstanceUID", "") or media_sop),
        media_storage_sop_uid=media_sop,
        transfer_syntax=str(getattr(meta, "TransferSyntaxUID", "") or ""),
    )


def check_identity(info: HeaderInfo, *, study_uid: str, series_uid: str, sop_uid: str) -> None:
    """Raise IntegrityError unless the header names exactly the instance we asked for."""
    found = {
        "SOP Instance UID": (info.sop_uid, sop_uid),
        "Study Instance UID": (info.study_uid, study_uid),
        "Series Instance UID": (info.series_uid, series_uid),
    }
    if info.media_storage_sop_uid:
        found["Media Storage SOP Instance UID"] = (info.media_storage_sop_uid, sop_uid)
    for name, (got, wanted) in found.items():
        if got != wanted:
            raise IntegrityError(
                f"instance {sop_uid}: {name} in the file is {got or 'missing'}, expected {wanted}",
                sop_instance_uid=sop_uid,
                retryable=True,
            )


def verify_instance(path: Path, *, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Check magic and UIDs of the file at `path`; return its transfer syntax UID."""
    info = read_header(path, label=f"instance {sop_uid}")
    check_identity(info, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    return info.transfer_syntax
