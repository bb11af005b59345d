"""The manifest: one JSON line per committed instance, read back by the next run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import blake3
import pytest

from dlstudy.store.manifest import Entry, Manifest, digest_of


def entry(n: int, algorithm: str = "blake3") -> Entry:
    return Entry(
        "1.2", "1.2.3", f"1.2.3.{n}", f"1.2/1.2.3/1.2.3.{n}.dcm", 1000 + n, f"{algorithm}:{n:064x}"
    )


def test_a_line_holds_every_field_the_digest_under_its_algorithm(tmp_path: Path) -> None:
    one = entry(7)
    fields = dataclasses.asdict(one)
    del fields["digest"]
    assert json.loads(one.line()) == {**fields, "blake3": f"{7:064x}"}
    assert Entry.from_line(one.line()) == one


def test_older_sha256_lines_are_read_and_lines_without_one_known_digest_are_not() -> None:
    older = entry(1, "sha256")
    assert json.loads(older.line())["sha256"] == f"{1:064x}"
    assert Entry.from_line(older.line()) == older and older.algorithm == "sha256"
    fields = json.loads(entry(2).line())
    for foreign in [
        {k: v for k, v in fields.items() if k != "blake3"},  # no digest
        {**fields, "sha256": "ab"},  # two
        {**fields, "md5": "ab", "blake3": 5},  # not text
        [1, 2],
    ]:
        with pytest.raises((ValueError, TypeError)):
            Entry.from_line(json.dumps(foreign))


def test_digests_of_files_match_the_libraries(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * 1024 * 1024 + 5))  # over several read chunks
    assert digest_of(path) == "blake3:" + blake3.blake3(path.read_bytes()).hexdigest()
    assert digest_of(path, "sha256") == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


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
