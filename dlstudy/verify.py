"""Cheap checks that a file is the DICOM Part 10 instance we asked for.

Only the header is parsed (pydicom stops before the pixel data), so the cost does not grow with
the instance size. The bytes are never rewritten: we check what the server sent, as sent.
"""

from __future__ import annotations

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
    """Fail fast on the first bytes: an HTML error page or JSON is not a Part 10 file."""
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


def verify_instance(path: Path, *, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Check magic and UIDs of the file at `path`; return its transfer syntax UID."""
    with path.open("rb") as fp:
        prefix = fp.read(HEADER_PREFIX_LENGTH)
        if len(prefix) < HEADER_PREFIX_LENGTH:
            raise IntegrityError(
                f"instance {sop_uid}: response too short to be DICOM ({len(prefix)} bytes)",
                sop_instance_uid=sop_uid,
                retryable=True,
            )
        check_prefix(prefix, sop_uid=sop_uid)
        fp.seek(0)
        try:
            dataset = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, ValueError, EOFError, OSError, KeyError) as exc:
            raise IntegrityError(
                f"instance {sop_uid}: DICOM header cannot be parsed ({exc})",
                sop_instance_uid=sop_uid,
                retryable=True,
            ) from exc
    meta = dataset.file_meta
    meta_sop = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
    found = {
        "SOP Instance UID": (str(dataset.get("SOPInstanceUID", "") or meta_sop), sop_uid),
        "Study Instance UID": (str(dataset.get("StudyInstanceUID", "") or ""), study_uid),
        "Series Instance UID": (str(dataset.get("SeriesInstanceUID", "") or ""), series_uid),
    }
    if meta_sop and meta_sop != sop_uid:
        found["Media Storage SOP Instance UID"] = (meta_sop, sop_uid)
    for name, (got, wanted) in found.items():
        if got != wanted:
            raise IntegrityError(
                f"instance {sop_uid}: {name} in the file is {got or 'missing'!s}, "
                f"expected {wanted}",
                sop_instance_uid=sop_uid,
                retryable=True,
            )
    return str(getattr(meta, "TransferSyntaxUID", "") or "")
