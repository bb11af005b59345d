"""Reruns against the manifest index, through the installed CLI and the embedded server: a study a
run found complete costs no request, a missing file brings back the usual path for exactly that
file, --recheck and --verify ask the server again, and a kill -9 loses nothing committed."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from dlstudy.server import ServerOptions, running_server

from ..cli_helpers import (
    DLSTUDY,
    assert_same_files,
    installed_download,
    instance_counts,
    run_installed,
)
from ..fixtures.embedded_server import SeenRequests, StartServer, SynthStudy
from ..manifest_helpers import index_of

pytestmark = pytest.mark.integration


def final_path(out: Path, study: str, series: str, sop: str) -> Path:
    return out / study / series / f"{sop}.dcm"


def qido_requests(seen: SeenRequests) -> list[str]:
    return [path for path, _ in seen.requests if "/instances/" not in path]


def test_a_complete_study_reruns_without_a_request_until_a_file_is_missing(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    assert summary["studies_complete_in_manifest"] == 0
    assert qido_requests(seen_requests)  # the first run lists the study

    seen_requests.requests.clear()
    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    assert seen_requests.requests == []  # not one request: the index says complete
    assert summary["studies_complete_in_manifest"] == 1
    assert summary["instances"] == instance_counts(60, skipped=60)
    assert summary["study_uids"] == [synth_study.study_uid]

    gone = synth_study.instances[17]
    final_path(out, gone.study_uid, gone.series_uid, gone.sop_uid).unlink()
    status, summary, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    assert summary["studies_complete_in_manifest"] == 0
    assert summary["instances"] == instance_counts(60, downloaded=1, skipped=59)
    instance_paths = [path for path, _ in seen_requests.requests if "/instances/" in path]
    assert [p for p in instance_paths if p.endswith(gone.sop_uid)] == instance_paths
    assert_same_files(synth_study.instances, out)


@pytest.mark.parametrize("option", ["--recheck", "--verify"])
def test_recheck_and_verify_list_the_study_from_the_server_again(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    option: str,
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    seen_requests.requests.clear()

    status, summary, stderr = installed_download(url, synth_study.study_uid, out, option)

    assert status == 0, stderr
    assert summary["studies_complete_in_manifest"] == 0
    assert summary["instances"]["skipped"] == 60
    assert qido_requests(seen_requests)


def test_a_plain_list_skips_complete_studies_and_lists_the_others(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    """--from-file with a study complete in the index and a series of it (which is listed:
    the index records studies): only the series is asked about."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    uids = tmp_path / "uids.txt"
    uids.write_text(f"{synth_study.study_uid}\n{synth_study.series_uids[1]}\n")
    seen_requests.requests.clear()

    result = run_installed(
        "download", "--from-file", str(uids), "--url", url, "-o", str(out), "--json"
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["studies_complete_in_manifest"] == 1
    # The series' instances are the study's: counted once, as present.
    assert summary["instances"] == instance_counts(60, skipped=60)
    listed = qido_requests(seen_requests)
    assert any(synth_study.series_uids[1] in p for p in listed), listed
    assert not any(p.endswith(f"/studies/{synth_study.study_uid}/series") for p in listed)


def test_a_kill_9_during_a_download_then_a_rerun_completes_byte_exact(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    slow = embedded_server(synth_study.root, latency=0.1)
    out = tmp_path / "out"
    command = [DLSTUDY, "download", synth_study.study_uid, "--url", slow, "-o", str(out), "-c", "2"]
    with subprocess.Popen(command, stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 60
        while len(list(out.rglob("*.dcm"))) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    kept = len(list(out.rglob("*.dcm")))
    assert 20 <= kept < 60

    status, summary, stderr = installed_download(
        embedded_server(synth_study.root), synth_study.study_uid, out
    )

    assert status == 0, stderr
    assert summary["instances"]["downloaded"] == 60 - kept
    assert_same_files(synth_study.instances, out)
    status, summary, _ = installed_download(
        embedded_server(synth_study.root), synth_study.study_uid, out
    )
    assert summary["studies_complete_in_manifest"] == 1


def test_a_study_that_gained_an_instance_is_found_by_recheck_and_by_sync(
    tmp_path: Path, synth_study: SynthStudy
) -> None:
    """A rerun trusts the completion record (documented: new instances are not looked for);
    --recheck lists the study again and fetches the new instance, and so does sync, which
    compares the server's instance count with the index."""
    root = tmp_path / "source"
    shutil.copytree(synth_study.root, root)
    out = tmp_path / "out"
    with running_server(ServerOptions(root=root)) as url:
        assert installed_download(url, synth_study.study_uid, out)[0] == 0

    template = synth_study.instances[0]

    def add_instance(sop: str) -> tuple[Path, Path]:
        added = pydicom.dcmread(root / template.path.relative_to(synth_study.root))
        added.SOPInstanceUID = added.file_meta.MediaStorageSOPInstanceUID = sop
        added.save_as(root / f"{sop}.dcm")
        return root / f"{sop}.dcm", final_path(out, template.study_uid, template.series_uid, sop)

    source, copy = add_instance("2.25.4242424242")
    with running_server(ServerOptions(root=root)) as url:
        status, summary, _ = installed_download(url, synth_study.study_uid, out)
        assert status == 0 and summary["studies_complete_in_manifest"] == 1
        assert not copy.exists()

        sync = run_installed("sync", "--url", url, "-o", str(out), "--json")
        assert sync.returncode == 0, sync.stderr
        assert '"downloaded": 1' in sync.stdout
        assert copy.read_bytes() == source.read_bytes()

    source, copy = add_instance("2.25.4242424243")
    with running_server(ServerOptions(root=root)) as url:
        status, summary, _ = installed_download(url, synth_study.study_uid, out, "--recheck")
        assert status == 0 and summary["instances"]["downloaded"] == 1
        assert copy.read_bytes() == source.read_bytes()


def test_another_layout_moves_the_files_instead_of_downloading_them_again(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    """A rerun with another --layout: the files the manifest knows go to the new paths (the
    old folders, left empty, go), nothing is fetched, and the manifest follows."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    status, _, stderr = installed_download(url, synth_study.study_uid, out)
    assert status == 0, stderr
    kept = {
        i.sop_uid: final_path(out, i.study_uid, i.series_uid, i.sop_uid).read_bytes()
        for i in synth_study.instances
    }
    one = synth_study.instances[5]
    final_path(out, one.study_uid, one.series_uid, one.sop_uid).unlink()  # fetched again

    seen_requests.requests.clear()
    layout = "by-series/{series}/{sop}.dcm"
    status, summary, stderr = installed_download(
        url, synth_study.study_uid, out, "--layout", layout
    )
    assert status == 0, stderr
    assert summary["instances"] == instance_counts(60, downloaded=1, skipped=59, moved=59)
    assert [p for p, _ in seen_requests.requests if "/instances/" in p] == [
        f"/dicomweb/studies/{one.study_uid}/series/{one.series_uid}/instances/{one.sop_uid}"
    ]
    assert not (out / synth_study.study_uid).exists()  # the old layout's folders are gone
    files = sorted(p for p in out.rglob("*.dcm"))
    assert len(files) == 60
    for instance in synth_study.instances:
        path = out / "by-series" / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert path.read_bytes() == kept[instance.sop_uid]

    result = run_installed(
        "download", synth_study.study_uid, "--url", url, "-o", str(out), "--layout", layout
    )
    assert result.returncode == 0, result.stderr
    assert "0 downloaded, 60 already present, 0 failed" in result.stderr  # nothing moves now
    status, summary, stderr = installed_download(
        url, synth_study.study_uid, out, "--layout", layout, "--verify"
    )
    assert status == 0 and summary["instances"]["skipped"] == 60, stderr


def test_a_rerun_removes_its_own_temp_files_not_those_of_an_output_folder_inside(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """OUT/adhoc, the output folder of another run (its own .dlstudy, its own lock), may be
    in the middle of writing: its temp files are not this run's to clean up."""
    out = tmp_path / "out"
    stale = out / "1.2.3" / ".1.2.3.4.dcm.4242-1.part"  # left by a killed run of OUT
    theirs = out / "adhoc" / "9.8" / ".9.8.7.dcm.4343-1.part"  # another run, writing now
    for temp in (stale, theirs):
        temp.parent.mkdir(parents=True)
        temp.write_bytes(b"partial")
    (out / "adhoc" / ".dlstudy").mkdir()
    status, _, stderr = installed_download(
        embedded_server(synth_study.root), synth_study.study_uid, out
    )
    assert status == 0, stderr
    assert not stale.exists()
    assert theirs.read_bytes() == b"partial"


@pytest.mark.parametrize("first_rerun", [(), ("plain",)], ids=["verify-at-once", "after-a-rerun"])
def test_verify_fetches_again_files_the_manifest_never_saw_come_from_the_server(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, first_rerun: tuple[str]
) -> None:
    """The state folder lost (a clean-up of hidden folders on a shared disk), and one file
    changed at its size: a plain rerun adopts the files found on disk, taking the digest of
    what is there. --verify then had nothing to check them against: it compared the changed
    file with its own digest, said all was well (exit 0, nothing repaired) and left it
    differing from the server's. Now such files are fetched again, and counted as what they
    turn out to be: the changed one repaired (downloaded), the rest present (all 60 were
    counted downloaded, nothing repaired)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    changed = synth_study.instances[17]
    target = final_path(out, changed.study_uid, changed.series_uid, changed.sop_uid)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # in the pixel data: the header and the walk still pass
    target.write_bytes(data)
    shutil.rmtree(out / ".dlstudy")
    for _ in first_rerun:
        status, summary, stderr = installed_download(url, synth_study.study_uid, out)
        assert status == 0, stderr
        assert summary["instances"] == instance_counts(60, skipped=60)  # adopted

    status, summary, stderr = installed_download(url, synth_study.study_uid, out, "--verify")

    assert status == 0, stderr
    assert summary["instances"] == instance_counts(60, downloaded=1, skipped=59)
    assert summary["repaired"] == [changed.sop_uid]
    assert "60 files on disk have no digest of the server's bytes in the manifest" in stderr
    assert_same_files(synth_study.instances, out)
    status, summary, stderr = installed_download(url, synth_study.study_uid, out, "--verify")
    assert status == 0, stderr
    assert summary["instances"] == instance_counts(60, skipped=60)  # now known: checked


def test_an_index_an_older_dlstudy_wrote_is_taken_as_fetched_as_stored(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    """An index of version 1 keeps no transfer syntax for its entries: they are taken as
    fetched as stored (`*`, the default), by sync reading it and by a rerun that adds the
    column: nothing is fetched again for the upgrade."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    assert installed_download(url, synth_study.study_uid, out)[0] == 0
    db = sqlite3.connect(index_of(out))
    db.executescript("ALTER TABLE entries DROP COLUMN syntax; PRAGMA user_version = 1;")
    db.close()
    seen_requests.requests.clear()

    sync = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert sync.returncode == 0, sync.stderr
    assert json.loads(sync.stdout)["sync"]["already_complete"] == 1
    status, summary, stderr = installed_download(url, synth_study.study_uid, out, "--recheck")

    assert status == 0, stderr
    assert summary["instances"] == instance_counts(60, skipped=60)
    assert not [path for path, _ in seen_requests.requests if "/instances/" in path]
    db = sqlite3.connect(index_of(out))
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    assert db.execute("SELECT DISTINCT syntax FROM entries").fetchall() == [("*",)]
    db.close()
