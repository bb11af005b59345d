"""schedule.plan: what is on disk and recorded is skipped, the rest is fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlstudy.engine.schedule import entry_for, plan
from dlstudy.model import InstanceRef
from dlstudy.settings import DEFAULT_LAYOUT
from dlstudy.store.files import Store
from dlstudy.store.manifest import Manifest


def test_missing_files_are_found_by_listing_each_folder_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path, DEFAULT_LAYOUT)
    store.prepare()
    manifest = Manifest(store.root, store.state_dir)
    on_disk = [InstanceRef("1.2", "1.2.3", f"1.2.3.{n}", "CT") for n in range(3)]
    missing_here = InstanceRef("1.2", "1.2.3", "1.2.3.9", "CT")
    no_folder = [InstanceRef("1.2", "1.2.4", f"1.2.4.{n}", "CT") for n in range(3)]
    for ref in on_disk:
        final = store.final_path(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(b"x" * 10)
        manifest.record(entry_for(store, ref, final, 10, "0" * 64, "*"))
    bad = store.final_path(on_disk[2])
    bad.write_bytes(b"x" * 11)  # size differs from the manifest: fetched again
    looked_at: list[str] = []
    stat = Path.stat

    def counting_stat(self: Path, **kwargs: bool) -> object:
        looked_at.append(self.name)
        return stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", counting_stat)
    result = plan([*on_disk, missing_here, *no_folder], store, manifest, verify=False, syntax="*")
    monkeypatch.undo()
    manifest.close()
    assert result.skipped == 2
    assert list(result.todo) == [on_disk[2], missing_here, *no_folder]
    assert result.repaired == [on_disk[2].sop_uid]
    assert not bad.exists()
    assert sorted(looked_at) == sorted(store.final_path(r).name for r in on_disk)


def test_a_file_where_a_folder_should_be_leaves_its_instances_to_fetch(tmp_path: Path) -> None:
    store = Store(tmp_path, DEFAULT_LAYOUT)
    store.prepare()
    manifest = Manifest(store.root, store.state_dir)
    ref = InstanceRef("1.2", "1.2.3", "1.2.3.4", "CT")
    folder = store.final_path(ref).parent
    folder.parent.mkdir(parents=True)
    folder.write_bytes(b"not a folder")
    assert list(plan([ref], store, manifest, verify=False, syntax="*").todo) == [ref]
    manifest.close()
