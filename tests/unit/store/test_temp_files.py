"""TempFile's commit when the final folder is on another file system than the temp file (a
part of a multipart response lands in OUT/.dlstudy/incoming; its study folder may be a mount
point): os.replace fails with EXDEV there, and the file is copied beside its final name first."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dlstudy.store import files
from dlstudy.store.files import TempFile


def test_a_commit_across_file_systems_copies_then_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    incoming = tmp_path / ".dlstudy" / "incoming" / "part.dcm"
    final = tmp_path / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    real_replace = os.replace
    crossed: list[str] = []

    def replace(source: str | Path, target: str | Path) -> None:
        if Path(source).parent != Path(target).parent:  # what the kernel says across mounts
            crossed.append(str(source))
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace)
    payload = os.urandom(600_000)  # more than one copy buffer
    with TempFile(incoming, files.Folders(tmp_path)) as temp:
        temp.write(payload)
        temp.final = final  # as the parts writer names a part once its header is read
        temp.commit()
    assert crossed, "the cross-device path was not taken"
    assert final.read_bytes() == payload
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))
    assert not temp.path.exists()
