"""The output folder treated as possibly hostile, through the installed CLI: links, pipes and
damaged state planted in OUT never make dlstudy write, truncate or read outside its own files,
never hang it, and always end in one line with a documented exit code."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dlstudy.store.manifest import Entry, Manifest

from ..cli_helpers import (
    installed_download,
    instance_counts,
    run_installed,
    run_installed_as_a_user,
    run_installed_measured,
)
from ..fixtures.embedded_server import StartServer, SynthStudy
from ..manifest_helpers import index_of, legacy_line, manifest_rows, replace_with_legacy
from .test_faults import final_path, run_subprocess, temp_files

pytestmark = pytest.mark.integration

PRECIOUS = "a user's file, not dlstudy's\n"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize("state_file", ["lock", "manifest.sqlite", "manifest.jsonl"])
def test_a_state_file_that_is_a_link_is_refused_and_its_target_untouched(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, state_file: str
) -> None:
    url = embedded_server(synth_study.root)
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    out = tmp_path / "out"
    (out / ".dlstudy").mkdir(parents=True)
    (out / ".dlstudy" / state_file).symlink_to(victim)

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 2, stderr
    assert f"{state_file}': is a symbolic link" in summary["error"]
    assert len(error_lines(stderr)) == 1
    assert victim.read_text() == PRECIOUS
    assert not list(out.rglob("*.dcm"))


@pytest.mark.parametrize("layout", [".dlstudy/{sop}.dcm", "{study}/.dlstudy/{series}/{sop}.dcm"])
def test_a_layout_putting_instances_in_a_state_folder_is_a_usage_error(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, layout: str
) -> None:
    """Instances in OUT/.dlstudy sit among the lock and the index (moving the state folder
    aside took them along); a study folder holding a `.dlstudy` is taken for another run's
    output folder (its temp files never cleaned up, its files never moved to a new layout).
    Refused at start, as a layout naming dlstudy's temp files is (they were written)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"

    status, summary, stderr = installed_download(
        url, synth_study.study_uid, out, "--layout", layout
    )

    assert status == 2, stderr
    (line,) = error_lines(stderr)
    assert line == (
        f"dlstudy: error: --layout {layout!r}: a folder named .dlstudy holds dlstudy's state, "
        "not instances"
    )
    assert not list(out.rglob("*.dcm"))


def test_a_state_folder_that_is_a_link_is_refused(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".dlstudy").symlink_to(elsewhere)

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 2, stderr
    assert "not a folder of its own" in summary["error"]
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("below", ["", "studies"])
def test_an_output_folder_through_a_link_to_nothing_is_refused_naming_the_link(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, below: str
) -> None:
    """`-o OUT` where OUT (or a folder above it) is a symbolic link to a folder that is not
    there (a share not mounted): nothing is made, one line names the link and where it
    leads (it said `output folder '…/studies' exists and is not a folder`, naming a path
    that did not exist when the link was above it)."""
    url = embedded_server(synth_study.root)
    link = tmp_path / "archive"
    link.symlink_to(tmp_path / "nas" / "archive")
    out = link / below if below else link

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 2, stderr
    (line,) = error_lines(stderr)
    named = f"{str(out)!r}: {str(link)!r}" if below else repr(str(link))
    assert line == (
        f"dlstudy: error: output folder {named} is a symbolic link to "
        f"{str(tmp_path / 'nas' / 'archive')!r}, which does not exist"
    )
    assert summary["error"] == line.removeprefix("dlstudy: error: ")
    assert not (tmp_path / "nas").exists()


def test_a_state_folder_that_cannot_be_written_is_one_line_naming_it(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`OUT/.dlstudy` made read-only after a run (its files still writable): the rerun says
    at start that it cannot write there, exit 2 like any output folder it cannot write (it
    said `cannot write '…manifest.sqlite': attempt to write a readonly database`, exit 1,
    naming a file whose permissions were fine)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, _, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    final_path(out, synth_study.instances[0]).unlink()
    (out / ".dlstudy").chmod(0o555)
    try:
        result = run_installed_as_a_user(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
        )  # fmt: skip
    finally:
        (out / ".dlstudy").chmod(0o755)

    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert line == f"dlstudy: error: cannot write in '{out / '.dlstudy'}': Permission denied"
    assert json.loads(result.stdout)["instances"]["downloaded"] == 0
    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0 and summary["instances"]["downloaded"] == 1, stderr


@pytest.mark.parametrize("rerun", ["--verify", "state-folder-lost"])
def test_a_file_another_user_made_unreadable_is_fetched_again_not_a_traceback(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, rerun: str
) -> None:
    """A file in OUT made unreadable (`chmod 000`, as another user's program on a shared disk
    may leave it), then a rerun that must read it: `--verify`, or a plain one after
    `OUT/.dlstudy` was lost (it adopts what it finds). Each ended in a `PermissionError`
    traceback, exit 1, nothing else checked; now the file is named in a warning and
    fetched again, the server's bytes replacing it."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    locked = final_path(out, synth_study.instances[5])
    locked.chmod(0o000)
    if rerun == "state-folder-lost":
        shutil.rmtree(out / ".dlstudy")
    extra = ["--verify"] if rerun == "--verify" else []

    result = run_installed_as_a_user(
        "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json", *extra,
    )  # fmt: skip

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert f"cannot read {locked} (Permission denied); fetching it again" in result.stderr
    assert json.loads(result.stdout)["instances"]["failed"] == 0
    assert locked.read_bytes() == synth_study.instances[5].path.read_bytes()


@pytest.mark.parametrize("extra", [[], ["--verify"]], ids=["plain", "verify"])
def test_a_series_folder_this_user_may_not_search_is_one_line_not_a_traceback(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, extra: list[str]
) -> None:
    """A series folder made `chmod 000` by another user (a shared disk), one file of it
    missing: the rerun could neither list nor look at its files, and ended in a
    `PermissionError` traceback from an lstat. Now it says, as for a folder it may not write
    in, `cannot write in '…': Permission denied` (exit 1)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    final_path(out, synth_study.instances[0]).unlink()
    folder = final_path(out, synth_study.instances[0]).parent
    folder.chmod(0o000)
    try:
        result = run_installed_as_a_user(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json", *extra,
        )  # fmt: skip
    finally:
        folder.chmod(0o755)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    (line,) = error_lines(result.stderr)
    assert line == f"dlstudy: error: cannot write in '{folder}': Permission denied"
    assert json.loads(result.stdout)["exit_status"] == 1


def test_a_temp_file_left_in_a_folder_made_read_only_does_not_stop_the_rerun(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A run killed with a temp file in a series folder that another user then made
    read-only (`chmod 555`): every rerun, of a study complete on disk too, ended at start
    in a `PermissionError` traceback removing it. Now one warning names it, it stays (under
    no final name it harms nothing), and the rerun goes on."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    folder = final_path(out, synth_study.instances[0]).parent
    left = folder / f".{synth_study.instances[0].sop_uid}.dcm.4242-7.part"
    left.write_bytes(b"half an instance")
    folder.chmod(0o555)
    try:
        result = run_installed_as_a_user(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
        )  # fmt: skip
    finally:
        folder.chmod(0o755)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    warning = f"cannot remove {left}, left by an interrupted run: Permission denied"
    assert warning in result.stderr
    assert json.loads(result.stdout)["instances"]["skipped"] == len(synth_study.instances)
    assert left.exists()


def test_a_study_folder_linked_out_of_out_is_never_written_through(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / synth_study.study_uid).symlink_to(elsewhere)

    for mode in ("instance", "series"):
        status, summary, stderr = installed_download(
            url, synth_study.study_uid, out, "--mode", mode
        )
        assert status == 1, stderr
        assert summary["instances"]["downloaded"] == 0
        reasons = {f["reason"] for f in summary["failures"]}
        assert len(summary["failures"]) == len(synth_study.instances), reasons
        assert all("a symbolic link leads it out of the output folder" in r for r in reasons)
        assert list(elsewhere.rglob("*")) == []


def test_files_behind_a_link_out_of_out_never_count_as_present(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A complete study whose folder is then moved away and linked back: neither the rerun's
    completion record nor sync's completion check counts the files out there."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, _, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    elsewhere = tmp_path / "elsewhere"
    (out / synth_study.study_uid).rename(elsewhere)
    (out / synth_study.study_uid).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.rglob("*"))

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 1, stderr
    assert summary["instances"]["skipped"] == 0
    result = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["sync"]["already_complete"] == 0
    assert sorted(p.name for p in elsewhere.rglob("*")) == before  # nothing written out there


@pytest.mark.parametrize("elsewhere", ["../elsewhere", "{tmp}/elsewhere"])
def test_index_rows_naming_files_outside_out_never_count_as_present(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, elsewhere: str
) -> None:
    """An index whose rows name the study's files through `..` or from `/` (planted, or
    carried over from elsewhere), the files there and of the recorded sizes: the rerun and
    sync's completion check look in OUT only, and fetch the study (both took it as complete
    from the index, exit 0 with OUT empty)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, _, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    (tmp_path / "elsewhere").mkdir()
    (out / synth_study.study_uid).rename(tmp_path / "elsewhere" / synth_study.study_uid)
    prefix = elsewhere.format(tmp=tmp_path)
    db = sqlite3.connect(index_of(out))
    with db:
        db.execute("UPDATE entries SET path = ? || '/' || path", (prefix,))

    result = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sync"]["already_complete"] == 0
    assert summary["instances"]["downloaded"] == len(synth_study.instances)
    with db:  # the rows are dlstudy's own again: planted once more, for the plain rerun
        db.execute("UPDATE entries SET path = ? || '/' || path", (prefix,))
    db.close()
    for instance in synth_study.instances:
        final_path(out, instance).unlink()

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    assert summary["studies_complete_in_manifest"] == 0
    assert summary["instances"]["downloaded"] == len(synth_study.instances)
    for instance in synth_study.instances:
        assert final_path(out, instance).read_bytes() == instance.path.read_bytes()


def test_a_link_inside_out_is_followed(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A link that stays inside OUT (a user's own arrangement) is no escape: it is used."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    (out / "studies" / "real").mkdir(parents=True)
    (out / synth_study.study_uid).symlink_to(out / "studies" / "real")

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 0, stderr
    for instance in synth_study.instances:
        kept = out / "studies" / "real" / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert kept.read_bytes() == instance.path.read_bytes()


def test_a_study_folder_linked_to_nothing_inside_out_names_the_link(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A link inside OUT to a folder not made yet: its instances fail naming the link and
    its target (they said `a file is in the way`, though nothing was there); the others of
    the run are unaffected, and the rerun once the folder exists completes."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    out.mkdir()
    (out / synth_study.study_uid).symlink_to("by-patient/P1")

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 1, stderr
    reasons = {failure["reason"].split(": ", 1)[1] for failure in summary["failures"]}
    assert reasons == {
        f"cannot create {str(out / synth_study.study_uid)!r}: it is a symbolic link to "
        "'by-patient/P1', which does not exist"
    }
    assert len(summary["failures"]) == len(synth_study.instances)
    (out / "by-patient" / "P1").mkdir(parents=True)
    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    assert len(list((out / "by-patient" / "P1").rglob("*.dcm"))) == len(synth_study.instances)


def test_a_pipe_or_a_link_at_a_final_path_is_replaced_never_opened(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A named pipe where an instance goes would block a read forever; a link would make
    dlstudy read (or adopt) a file outside OUT. Both are replaced by the downloaded file."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    piped, linked = synth_study.instances[2], synth_study.instances[5]
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(linked.path.read_bytes())  # even the right bytes are not adopted
    for instance in (piped, linked):
        final_path(out, instance).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(final_path(out, piped))
    final_path(out, linked).symlink_to(outside)

    status, summary, stderr = installed_download(url, synth_study.study_uid, out, "--verify")

    assert status == 0, stderr
    assert summary["instances"]["downloaded"] == len(synth_study.instances)
    for instance in synth_study.instances:
        path = final_path(out, instance)
        assert path.is_file() and not path.is_symlink()
        assert path.read_bytes() == instance.path.read_bytes()
    assert outside.read_bytes() == linked.path.read_bytes()


def test_an_older_manifest_with_a_torn_tail_is_imported_and_costs_no_entry(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """An output folder of an older dlstudy, killed in the middle of a manifest line: its whole
    lines are imported, the torn one skipped, the file renamed aside."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, _, _ = installed_download(url, synth_study.study_uid, out)
    assert status == 0
    legacy = replace_with_legacy(
        out, manifest_rows(out), tail='{"study": "1.2", "series": "1.2.3", "sop": "1.2.3.4", "pa'
    )
    refetched = synth_study.instances[3]
    final_path(out, refetched).unlink()

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 0, stderr
    assert summary["instances"]["downloaded"] == 1
    assert not legacy.exists() and legacy.with_name("manifest.jsonl.imported").is_file()
    rows = manifest_rows(out)
    assert len(rows) == len(synth_study.instances)
    assert refetched.sop_uid in {row["sop"] for row in rows}


def test_an_overlong_line_of_an_older_manifest_is_skipped_in_flat_memory(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, _, _ = installed_download(url, synth_study.study_uid, out)
    assert status == 0
    rows = manifest_rows(out)
    manifest = replace_with_legacy(out, [])
    with manifest.open("w") as fp:  # 300 MB of garbage in one line, before the real entries
        for _ in range(300):
            fp.write("x" * (1 << 20))
        fp.write("\n" + "".join(legacy_line(row) + "\n" for row in rows))

    result, peak_mb = run_installed_measured(
        "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
        peak_file=tmp_path / "peak",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == 0  # the entries after it were read
    assert peak_mb <= 100, peak_mb


def test_a_damaged_index_is_one_line_naming_it(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    (out / ".dlstudy").mkdir(parents=True)
    index_of(out).write_bytes(b"\x00garbage, not SQLite" * 1000)

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)

    assert status == 2, stderr
    (line,) = error_lines(stderr)
    assert "manifest.sqlite' is damaged" in line and "move it aside" in line
    assert "manifest.sqlite' is damaged" in summary["error"]
    assert not list(out.rglob("*.dcm"))


@pytest.mark.parametrize("verify", [(), ("--verify",)], ids=["plain", "verify"])
def test_an_index_damaged_inside_stops_the_run_before_it_lists_anything(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, verify: tuple[str]
) -> None:
    """A page of the entries table overwritten (the header is sound): the run stops at
    start, exit 2, one line, the --json counts at zero, with --verify as without it (a
    --verify run listed the study first and met the damage in its first lookup: total 60)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    with sqlite3.connect(index_of(out)) as db:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'entries'").fetchone()
    db.close()
    with index_of(out).open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xff" * 100)

    status, summary, stderr = installed_download(url, synth_study.study_uid, out, *verify)

    assert status == 2, stderr
    (line,) = error_lines(stderr)
    assert "manifest.sqlite' is damaged" in line and "move it aside" in line
    assert summary["instances"] == instance_counts(0)
    assert summary["studies"] == 0


def test_a_failed_index_write_stops_the_run_with_one_line_and_keeps_what_was_committed(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """The kernel refuses to grow any file past the index's present size (EFBIG, as a full
    disk would refuse it): instance files are smaller, the index, already at the limit, is not.
    The run stops, exit 1, one line; the index is sound and the next run completes."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    (out / ".dlstudy").mkdir(parents=True)
    others = Manifest(out, out / ".dlstudy")  # others' entries, a few MB of them
    for number in range(8000):
        others.record(
            Entry("1.2", "1.2.3", f"1.2.3.{number}", f"1.2/1.2.3/1.2.3.{number}.dcm", 1,
                  "blake3:" + "00" * 32)
        )  # fmt: skip
    others.close()
    limit = index_of(out).stat().st_size

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_subprocess(
        ["download", synth_study.study_uid, "--url", url, "-o", str(out), "--json"],
        preexec_fn=limit_file_size,
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "cannot write" in line and "manifest.sqlite'" in line
    assert "manifest.sqlite'" in json.loads(result.stdout)["error"]
    assert temp_files(out) == []
    db = sqlite3.connect(index_of(out))
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert len(manifest_rows(out)) >= 8000

    status, summary, stderr = installed_download(url, synth_study.study_uid, out)  # no limit now
    assert status == 0, stderr
    for instance in synth_study.instances:
        assert final_path(out, instance).read_bytes() == instance.path.read_bytes()


_KILLED_WHILE_CREATING = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE entries (sop TEXT PRIMARY KEY)")
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("left", ["killed while creating it", "empty", "entries alone"])
def test_an_index_a_killed_run_left_unfinished_is_no_damage_to_sync(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, left: str
) -> None:
    """A run killed as it created its index leaves an empty database (a 0-byte file and a hot
    journal, or part of the tables): the next `sync` goes on. It stopped with `is damaged
    (no such table: complete_studies)`, exit 2, at every cron run until someone moved it."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    (out / ".dlstudy").mkdir(parents=True)
    index = index_of(out)
    if left == "killed while creating it":
        subprocess.run([sys.executable, "-c", _KILLED_WHILE_CREATING, str(index)], check=False)
        assert index.stat().st_size == 0 and Path(f"{index}-journal").exists()
    elif left == "empty":
        index.touch()
    else:
        with sqlite3.connect(index) as db:
            db.execute(
                "CREATE TABLE entries (sop TEXT PRIMARY KEY, study TEXT NOT NULL, "
                "series TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, "
                "digest TEXT NOT NULL)"
            )
        db.close()

    first = run_installed("sync", "--url", url, "-o", str(out), "--json")
    again = run_installed("sync", "--url", url, "-o", str(out), "--json")

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["instances"]["downloaded"] == len(synth_study.instances)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sync"]["already_complete"] == 1
