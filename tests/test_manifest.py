"""The manifest: one JSON line per committed instance, read back by the next run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dlstudy.manifest import Entry, Manifest


def entry(n: int) -> Entry:
    return Entry("1.2", "1.2.3", f"1.2.3.{n}", f"1.2/1.2.3/1.2.3.{n}.dcm", 1000 + n, f"{n:064x}")


def test_a_line_holds_every_field_as_asdict_would(tmp_path: Path) -> None:
    one = entry(7)
    assert json.loads(one.line()) == dataclasses.asdict(one)


def test_recorded_entries_are_read_back_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    state = tmp_path / ".dlstudy"
    state.mkdir()
    manifest = Manifest(tmp_path, state)
    for n in range(3):
        manifest.record(entry(n))
    manifest.close()
    with (state / "manifest.jsonl").open("a") as fp:
        fp.write('{"study": "1.2", "ser')  # a crash in the middle of a line
    again = Manifest(tmp_path, state)
    assert again.entries == {e.sop: e for e in map(entry, range(3))}
