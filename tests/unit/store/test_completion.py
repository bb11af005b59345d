"""Which of a study's indexed files are in place: regular files of the size the index
recorded, never through a link out."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlstudy.store.completion import present_files
from dlstudy.store.files import Store
from dlstudy.store.manifest import Entry, Manifest

LAYOUT = "{study}/{series}/{sop}.dcm"


@pytest.mark.parametrize("files", [4, 13])
def test_links_folders_and_short_files_are_not_in_place(tmp_path: Path, files: int) -> None:
    out = tmp_path / "out"
    store = Store(out, LAYOUT)
    store.prepare()
    folder = out / "1.2" / "1.2.3"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"x")
    manifest = Manifest(out, store.state_dir)
    for n in range(files):
        name = f"1.2.3.{n}.dcm"
        manifest.record(Entry("1.2", "1.2.3", f"1.2.3.{n}", f"1.2/1.2.3/{name}", 1, "blake3:0"))
        if n == 0:
            (folder / name).symlink_to(outside)  # a link where the file should be
        elif n == 1:
            (folder / name).mkdir()  # a folder in the way
        elif n == 3:
            (folder / name).write_bytes(b"")  # emptied since it was recorded
        elif n != 2:  # the third is missing
            (folder / name).write_bytes(b"x")

    present = present_files(manifest, store, "1.2")
    assert (present.entries, present.there) == (files, files - 4)
    manifest.close()


def test_a_series_folder_linked_out_of_out_has_nothing_in_place(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = Store(out, LAYOUT)
    store.prepare()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "1.2").mkdir()
    (out / "1.2" / "1.2.3").symlink_to(elsewhere)
    manifest = Manifest(out, store.state_dir)
    for n in range(10):
        (elsewhere / f"1.2.3.{n}.dcm").write_bytes(b"x")
        path = f"1.2/1.2.3/1.2.3.{n}.dcm"
        manifest.record(Entry("1.2", "1.2.3", f"1.2.3.{n}", path, 1, "blake3:0"))

    present = present_files(manifest, store, "1.2")
    assert (present.entries, present.there) == (10, 0)
    manifest.close()
