"""The manifest index (OUT/.dlstudy/manifest.sqlite): one row per committed instance, read back
by the next run; older JSONL manifests imported once; damaged or planted files refused in one
line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from dlstudy.errors import OutputError
from dlstudy.store.manifest import COMMIT_ROWS, Entry, Manifest, digest_of


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


def state_of(tmp_path: Path) -> Path:
    state = tmp_path / ".dlstudy"
    state.mkdir(exist_ok=True)
    return state


def test_recorded_entries_are_read_back_and_the_last_record_wins(tmp_path: Path) -> None:
    state = state_of(tmp_path)
    manifest = Manifest(tmp_path, state)
    for n in range(3):
        manifest.record(entry(n))
    manifest.record(dataclasses.replace(entry(1), size=5))  # the file fetched again
    manifest.close()
    again = Manifest(tmp_path, state)
    assert again.get(entry(0).sop) == entry(0)
    assert again.get(entry(1).sop) == dataclasses.replace(entry(1), size=5)
    assert again.get("1.2.3.99") is None
    assert len(again) == 3 and list(again.files_of("1.3")) == []
    assert sorted(e.sop for e in again.entries_of("1.2")) == sorted(entry(n).sop for n in range(3))
    assert sorted(again.files_of("1.2")) == sorted(
        (entry(n).path, 5 if n == 1 else entry(n).size, entry(n).series) for n in range(3)
    )
    assert {e.sop for e in again} == {entry(n).sop for n in range(3)}
    again.close()


def test_a_completion_record_is_kept_per_study(tmp_path: Path) -> None:
    state = state_of(tmp_path)
    manifest = Manifest(tmp_path, state)
    assert manifest.completion("1.2") is None
    manifest.record_complete("1.2", 3, "{study}/{series}/{sop}.dcm")
    manifest.close()
    reader = Manifest(tmp_path, state, read_only=True)
    record = reader.completion("1.2")
    reader.close()
    assert record is not None
    assert (record.study, record.instances, record.layout) == (
        "1.2", 3, "{study}/{series}/{sop}.dcm"
    )  # fmt: skip
    assert record.completed > 0


def test_an_older_jsonl_manifest_is_imported_once_and_renamed_aside(tmp_path: Path) -> None:
    """Later lines win; a torn last line (a run killed mid-write) and foreign lines are
    skipped; the file is renamed to manifest.jsonl.imported and not read again."""
    state = state_of(tmp_path)
    legacy = state / "manifest.jsonl"
    lines = [entry(0).line(), "not json", entry(1, "sha256").line()]
    lines.append(dataclasses.replace(entry(0), size=1).line())
    legacy.write_text("".join(line + "\n" for line in lines) + '{"study": "1.2", "ser')

    read_only = Manifest(tmp_path, state, read_only=True)  # catalog status: nothing written
    assert read_only.get(entry(1).sop) == entry(1, "sha256")
    read_only.close()
    assert sorted(p.name for p in state.iterdir()) == ["manifest.jsonl"]

    manifest = Manifest(tmp_path, state)
    assert manifest.get(entry(0).sop) == dataclasses.replace(entry(0), size=1)
    assert manifest.get(entry(1).sop) == entry(1, "sha256")
    assert len(manifest) == 2
    manifest.close()
    assert not legacy.exists()
    assert (state / "manifest.jsonl.imported").read_text().startswith(entry(0).line())
    again = Manifest(tmp_path, state)
    assert len(again) == 2
    again.close()


@pytest.mark.parametrize("planted", ["manifest.sqlite", "manifest.sqlite-wal"])
def test_a_link_at_the_database_or_its_journal_is_refused(tmp_path: Path, planted: str) -> None:
    state = state_of(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    Manifest(tmp_path, state).close()
    (state / planted).unlink(missing_ok=True)
    (state / planted).symlink_to(victim)
    with pytest.raises(OutputError, match=f"{planted}': is a symbolic link"):
        Manifest(tmp_path, state)
    with pytest.raises(OutputError, match=f"{planted}': is a symbolic link"):
        Manifest(tmp_path, state, read_only=True)
    assert victim.read_text() == "precious"


def test_a_pipe_at_the_database_is_refused_without_blocking(tmp_path: Path) -> None:
    state = state_of(tmp_path)
    os.mkfifo(state / "manifest.sqlite")
    with pytest.raises(OutputError, match="manifest.sqlite': is a named pipe"):
        Manifest(tmp_path, state)


def test_a_damaged_database_is_one_error_naming_it_and_what_to_do(tmp_path: Path) -> None:
    state = state_of(tmp_path)
    (state / "manifest.sqlite").write_bytes(b"this is not a database" * 500)
    for read_only in (False, True):
        with pytest.raises(OutputError) as caught:
            Manifest(tmp_path, state, read_only=read_only)
        message = str(caught.value)
        assert "manifest.sqlite' is damaged" in message and "move it aside" in message
        assert "\n" not in message


def test_a_kill_9_mid_run_loses_nothing_committed_and_leaves_a_sound_database(
    tmp_path: Path,
) -> None:
    """A child records entries and says after each batch how many were committed; killed with
    SIGKILL in the middle, the database opens, passes SQLite's integrity check, and holds at
    least every row the child had seen committed."""
    state = state_of(tmp_path)
    committed = 0
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:  # bounded: the child stops at 10**6 rows
            committed = int(line)
            if committed >= 20 * COMMIT_ROWS:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert committed >= 20 * COMMIT_ROWS

    db = sqlite3.connect(state / "manifest.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    manifest = Manifest(tmp_path, state)
    assert len(manifest) >= committed
    assert manifest.get("1.2.3.0") == entry(0)
    manifest.close()


KILLED_WRITER = """
import sys
from pathlib import Path
from dlstudy.store import manifest as m

root = Path(sys.argv[1])
index = m.Manifest(root, root / ".dlstudy")
for n in range(10**6):
    index.record(m.Entry("1.2", "1.2.3", f"1.2.3.{n}", f"1.2/1.2.3/1.2.3.{n}.dcm", 1000 + n,
                         f"blake3:{n:064x}"))
    if index._pending == 0:
        print(n + 1, flush=True)
"""
