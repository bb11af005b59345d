"""The header checks download's writer makes on a file (engine/fetch.py), as one call for the
tests of dicomweb/verify.py and of the writer."""

from __future__ import annotations

from pathlib import Path

from dlstudy.dicomweb.verify import check_identity, read_header


def verify_instance(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    head: bytes | None = None,
    size: int | None = None,
) -> str:
    """The header read and checked against what was asked; the transfer syntax UID."""
    info = read_header(path, label=f"instance {sop_uid}", head=head, size=size)
    check_identity(info, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    return info.transfer_syntax
