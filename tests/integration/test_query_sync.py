"""`query`, `download --from-file -`, `sync` and `--shard` end to end against the embedded server.

The pipeline and shard tests run the installed CLI in separate OS processes (`python -m dlstudy`)
connected by real pipes, as cron, a shell or a cluster scheduler would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dlstudy.dicomweb.shard import shard_of
from dlstudy.server import ServerOptions, running_server
from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import (
    assert_same_files,
    instance_counts,
    run_cli,
    run_installed,
    run_installed_measured,
    run_on_a_terminal,
    start_installed,
    summary_of,
)
from ..fixtures.embedded_server import SeenRequests, StartServer
from ..manifest_helpers import manifest_rows

pytestmark = pytest.mark.integration

DLSTUDY = [sys.executable, "-m", "dlstudy"]
TINY = {"series": 2, "instances": 3, "size": 2048}


def make_studies(root: Path, count: int, seed: int) -> list[SynthInstance]:
    return generate(root, SynthSpec(studies=count, seed=seed, **TINY))  # type: ignore[arg-type]


def study_uids(instances: list[SynthInstance]) -> list[str]:
    return list(dict.fromkeys(i.study_uid for i in instances))


def downloaded_studies(out: Path) -> set[str]:
    if not out.exists():  # a shard that had nothing to do
        return set()
    return {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}


@pytest.fixture
def cohort(tmp_path: Path) -> tuple[Path, list[SynthInstance]]:
    """Four small studies from two synth runs (different patients and dates)."""
    root = tmp_path / "source"
    return root, make_studies(root, 2, seed=11) + make_studies(root, 2, seed=12)


# --- query ------------------------------------------------------------------------------------


def test_query_prints_every_form(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer
) -> None:
    root, instances = cohort
    url = embedded_server(root, max_page_size=3)  # a server cap: paging must continue past it
    everything = set(study_uids(instances))

    result = run_cli("query", "--url", url, "--uids")
    assert result.exit_code == 0, result.output
    assert set(result.stdout.split()) == everything

    result = run_cli("query", "--url", url, "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["study_uid"] for row in rows} == everything
    assert all(row["instances"] == 6 and row["modalities"] == ["CT"] for row in rows)

    result = run_installed("query", "--url", url, "--csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == 4
    # --csv has every field --json has, study_time included, with the same values.
    assert list(table[0]) == list(rows[0])
    by_uid = {row["study_uid"]: row for row in rows}
    for line in table:
        assert line["study_time"] == by_uid[line["study_uid"]]["study_time"] != ""

    result = run_cli("query", "--url", url)  # not a terminal: tab-separated, header first
    assert result.stdout.splitlines()[0].split("\t")[:2] == ["study_uid", "patient_id"]


def test_query_filters(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer
) -> None:
    root, _ = cohort
    url = embedded_server(root)
    rows = [
        json.loads(line) for line in run_cli("query", "--url", url, "--json").stdout.splitlines()
    ]
    first = rows[0]

    def uids(*args: str) -> set[str]:
        result = run_cli("query", "--url", url, "--uids", *args)
        assert result.exit_code == 0, result.output
        return set(result.stdout.split())

    assert uids("--patient-id", first["patient_id"]) == {first["study_uid"]}
    family = first["patient_name"].split("^")[0]
    expected = {r["study_uid"] for r in rows if r["patient_name"].startswith(family)}
    assert uids("--patient-name", family.lower() + "*") == expected
    assert uids("--filter", f"00080050={first['accession']}") == {first["study_uid"]}
    assert uids("--filter", f"AccessionNumber={first['accession']}") == {first["study_uid"]}
    date = first["study_date"]
    on_date = {r["study_uid"] for r in rows if r["study_date"] == date}
    assert uids("--study-date", date) == on_date
    assert uids("--study-date", f"{date}-{date}") == on_date
    iso = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    for value in (iso, f"{iso}/{iso}"):  # ISO 8601 too, as a user types it
        result = run_installed("query", "--url", url, "--uids", "--study-date", value)
        assert result.returncode == 0, result.stderr
        assert set(result.stdout.split()) == on_date
    assert len(uids("--modality", "ct", "--modality", "MR")) == 4

    nothing = run_cli("query", "--url", url, "--modality", "MR")
    assert nothing.exit_code == 4
    assert "dlstudy: error: no study matched the search" in nothing.stderr


def test_query_with_a_token_command_from_a_config_profile(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    root, instances = cohort
    url = embedded_server(root, token="s3cret-token")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[servers.pacs]\nurl = "{url}"\ntoken_command = "echo s3cret-token"\n', encoding="utf-8"
    )

    result = run_cli("query", "--config", str(config), "--server", "pacs", "--uids")

    assert result.exit_code == 0, result.output
    assert set(result.stdout.split()) == set(study_uids(instances))
    refused = run_cli("query", "--url", url)
    assert refused.exit_code == 3
    assert "s3cret" not in refused.output


def test_query_uids_piped_into_download_from_stdin(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """`dlstudy query --uids ... | dlstudy download --from-file - ...` in two OS processes."""
    root, instances = cohort
    url = embedded_server(root)
    out = tmp_path / "out"
    first_date = json.loads(run_cli("query", "--url", url, "--json").stdout.splitlines()[0])[
        "study_date"
    ]
    wanted = set(
        run_cli("query", "--url", url, "--uids", "--study-date", first_date).stdout.split()
    )

    query = subprocess.Popen(
        [*DLSTUDY, "query", "--url", url, "--uids", "--study-date", first_date],
        stdout=subprocess.PIPE,
    )
    download = subprocess.run(
        [*DLSTUDY, "download", "--from-file", "-", "--url", url, "-o", str(out), "--json"],
        stdin=query.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert query.stdout is not None
    query.stdout.close()
    assert query.wait(timeout=30) == 0

    assert download.returncode == 0, download.stderr
    summary = json.loads(download.stdout)
    assert set(summary["study_uids"]) == wanted
    assert summary["instances"]["downloaded"] == 6 * len(wanted)
    assert_same_files([i for i in instances if i.study_uid in wanted], out)


# --- sync -------------------------------------------------------------------------------------


@pytest.fixture
def growing_server(tmp_path: Path) -> Iterator[Any]:
    """`start(root)` serves a folder; a new call stops the previous server (the index is built
    at start, so a folder that gained a study needs a new server, as after a PACS ingest)."""
    servers: list[Any] = []

    def start(root: Path) -> str:
        stop()
        context = running_server(ServerOptions(root=root))
        url = context.__enter__()
        servers.append(context)
        return url

    def stop() -> None:
        while servers:
            servers.pop().__exit__(None, None, None)

    yield start
    stop()


def test_sync_twice_downloads_only_the_study_that_appeared(
    tmp_path: Path, growing_server: Any
) -> None:
    root = tmp_path / "source"
    first = make_studies(root, 2, seed=21)
    out = tmp_path / "mirror"
    log_file = tmp_path / "sync.jsonl"
    args = ["-o", str(out), "--json", "--log-file", str(log_file), "--log-format", "json"]

    url = growing_server(root)
    one = run_cli("sync", "--url", url, *args)

    assert one.exit_code == 0, one.output
    summary = summary_of(one)
    assert summary["instances"] == instance_counts(12, downloaded=12)
    assert summary["sync"] == {
        "matched": 2,
        "shard": None,
        "in_shard": 2,
        "already_complete": 0,
        "synced": 2,
    }
    assert_same_files(first, out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.dcm")}

    second = make_studies(root, 1, seed=22)  # the archive receives a new study overnight
    url = growing_server(root)
    log_file.write_text("")
    two = run_cli("sync", "--url", url, *args)

    assert two.exit_code == 0, two.output
    summary = summary_of(two)
    assert summary["instances"] == instance_counts(18, downloaded=6, skipped=12)
    assert summary["sync"]["already_complete"] == 2 and summary["sync"]["synced"] == 1
    assert summary["study_uids"][-2:] != [second[0].study_uid]  # complete ones listed too
    assert set(summary["study_uids"]) == set(study_uids(first + second))
    assert_same_files(first + second, out)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # old files untouched

    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    # The embedded server runs in this process: its access log joins the client's records.
    events = [e for e in events if not str(e.get("logger", "")).startswith("dlstudy.server")]
    started = [e["study"] for e in events if e["event"] == "study_started"]
    assert started == [second[0].study_uid]  # complete studies: no series or instance QIDO
    finished = [e for e in events if e["event"] == "study_finished"]
    assert [(e["study"], e["downloaded"], e["complete"]) for e in finished] == [
        (second[0].study_uid, 6, True)
    ]
    assert events[-1]["event"] == "run_summary", events[-3:]
    assert events[-1]["downloaded"] == 6 and events[-1]["already_complete"] == 2

    three = run_cli("sync", "--url", url, "-o", str(out))  # nothing new: a quiet success
    assert three.exit_code == 0, three.output
    assert "sync: 3 studies matched, 3 already complete; 0 downloaded" in three.stderr


def test_sync_fetches_a_new_series_of_a_study_that_lost_an_instance(
    tmp_path: Path, growing_server: Any
) -> None:
    """Overnight the archive deletes one instance of a synced study and receives one in a new
    series: the study's instance count is unchanged, so sync counted it complete, night after
    night, and the new series never came (catalog status said complete too). Its series count
    rose: the study is listed again and the new instance fetched."""
    root = tmp_path / "source"
    instances = make_studies(root, 1, seed=23)
    out = tmp_path / "mirror"
    assert run_installed("sync", "--url", growing_server(root), "-o", str(out)).returncode == 0

    gone, model = instances[0], instances[-1]
    gone.path.unlink()
    dataset = pydicom.dcmread(model.path)
    dataset.SeriesInstanceUID, dataset.SOPInstanceUID = "2.25.1001", "2.25.1002"
    dataset.file_meta.MediaStorageSOPInstanceUID = "2.25.1002"
    dataset.save_as(root / "new-series.dcm")
    url = growing_server(root)

    synced = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert synced.returncode == 0, synced.stderr
    summary = json.loads(synced.stdout)
    assert summary["sync"]["already_complete"] == 0 and summary["instances"]["downloaded"] == 1
    new = out / model.study_uid / "2.25.1001" / "2.25.1002.dcm"
    assert new.read_bytes() == (root / "new-series.dcm").read_bytes()
    again = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert json.loads(again.stdout)["sync"]["already_complete"] == 1


def test_sync_recheck_lists_a_study_whose_counts_hide_a_replacement(
    tmp_path: Path, growing_server: Any
) -> None:
    """The archive replaces an instance by another in the same series: both of the study's
    counts are unchanged, so a plain sync takes it as complete. `--recheck` lists every
    matching study from the server, as its help says (it listed only studies without a
    count, and said `3 already present` for a study missing its new instance)."""
    root = tmp_path / "source"
    instances = make_studies(root, 1, seed=29)
    out = tmp_path / "mirror"
    assert run_installed("sync", "--url", growing_server(root), "-o", str(out)).returncode == 0

    gone = instances[0]
    gone.path.unlink()
    dataset = pydicom.dcmread(instances[1].path)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "2.25.2002"
    dataset.save_as(root / "replacement.dcm")
    url = growing_server(root)
    plain = json.loads(run_installed("sync", "--url", url, "-o", str(out), "--json").stdout)
    assert plain["sync"]["already_complete"] == 1  # what counts alone can tell

    synced = run_installed("sync", "--url", url, "-o", str(out), "--json", "--recheck")
    assert synced.returncode == 0, synced.stderr
    summary = json.loads(synced.stdout)
    assert summary["sync"]["already_complete"] == 0 and summary["instances"]["downloaded"] == 1
    new = out / gone.study_uid / instances[1].series_uid / "2.25.2002.dcm"
    assert new.read_bytes() == (root / "replacement.dcm").read_bytes()


def _restudied(model: SynthInstance, path: Path, study: str, series: str) -> None:
    """A copy of `model`'s file at `path` under another study and series UID, its SOP kept."""
    dataset = pydicom.dcmread(model.path)
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path)


def test_one_sop_uid_in_two_studies_fails_alike_every_night_however_runs_are_split(
    tmp_path: Path, growing_server: Any
) -> None:
    """The archive holds one SOP Instance UID in two studies. The first night kept one and
    failed the other; the next fetched the other (exit 0) and moved the index's row to it,
    and then every night the row went back and forth and the study that lost it was listed
    again. The copy the index holds stays; while the server lists it there, the other fails
    as on the first night (exit 1), whether both studies are listed in one run or apart."""
    root = tmp_path / "source"
    instances = make_studies(root, 2, seed=31)
    first, second = study_uids(instances)
    twin = next(i for i in instances if i.study_uid == second)
    _restudied(twin, root / "twin.dcm", first, "2.25.3101")
    url = growing_server(root)

    def holder(out: Path) -> str:
        return next(r["study"] for r in manifest_rows(out) if r["sop"] == twin.sop_uid)

    mirror = tmp_path / "mirror"
    reasons = []
    for night in range(3):
        result = run_installed("sync", "--url", url, "-o", str(mirror), "--json")
        assert result.returncode == 1, (night, result.stderr)
        summary = json.loads(result.stdout)
        reasons.append([f["reason"] for f in summary["failures"]])
        assert summary["instances"]["downloaded"] == (12 if night == 0 else 0), night
    kept = holder(mirror)  # the first listed, on the first night
    other, series = (first, "2.25.3101") if kept == second else (second, twin.series_uid)
    reason = (
        f"instance {twin.sop_uid} of series {series}: the server lists the same SOP Instance "
        f"UID in study {kept} too; only that one is downloaded"
    )
    assert reasons == [[reason]] * 3
    assert not (mirror / other / series).exists()

    apart = tmp_path / "apart"  # the first study alone, then the other, then both, twice
    runs = [[first], [second], [second, first], [first, second]]
    codes = [run_installed("download", *uids, "--url", url, "-o", str(apart), "--recheck")
             for uids in runs]  # fmt: skip
    assert [c.returncode for c in codes] == [0, 1, 1, 1], [c.stderr for c in codes]
    assert holder(apart) == first
    assert not (apart / second / twin.series_uid / f"{twin.sop_uid}.dcm").exists()


def test_sync_says_a_series_moved_to_another_study_and_reports_each_instance_once(
    tmp_path: Path, growing_server: Any
) -> None:
    """The archive moves a series to another study (its StudyInstanceUID rewritten). Sync
    fetched it again without a word, left the old files out of the index, and its --report
    had the moved instances twice (`present` in the old study, `downloaded` in the new), more
    rows than the summary's total. It says they changed study and where the old files are
    left, and reports each instance once."""
    root = tmp_path / "source"
    instances = make_studies(root, 2, seed=33)
    out = tmp_path / "mirror"
    assert run_installed("sync", "--url", growing_server(root), "-o", str(out)).returncode == 0
    old = instances[0]
    moved = [i for i in instances if i.series_uid == old.series_uid]
    for instance in moved:
        _restudied(instance, instance.path, "2.25.3301", instance.series_uid)
    url = growing_server(root)

    report = tmp_path / "night.csv"
    result = run_installed("sync", "--url", url, "-o", str(out), "--json", "--report", str(report))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == len(moved)
    assert f"{len(moved)} instances changed study on the server" in result.stderr
    assert "the old files are left in place, out of the index" in result.stderr
    with report.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["instances"]["total"] == len(instances)
    assert len({row["sop"] for row in rows}) == len(rows)
    for instance in moved:
        new = out / "2.25.3301" / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert new.read_bytes() == instance.path.read_bytes()
        assert (out / old.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm").exists()

    again = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sync"]["already_complete"] == 3
    assert "changed study" not in again.stderr


def test_sync_fetches_again_what_was_deleted(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    root, instances = cohort
    url = embedded_server(root)
    out = tmp_path / "mirror"
    assert run_cli("sync", "--url", url, "-o", str(out), "-q").exit_code == 0
    victim = instances[0]
    (out / victim.study_uid / victim.series_uid / f"{victim.sop_uid}.dcm").unlink()

    result = run_cli("sync", "--url", url, "-o", str(out), "--json")

    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["instances"]["downloaded"] == 1
    assert summary["sync"]["already_complete"] == 3
    assert_same_files(instances, out)


def test_sync_verify_checks_the_complete_studies_too(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """A mirror's files damaged on disk, their sizes kept (bit rot) or not (a cut): a plain
    sync trusts the complete studies; `sync --verify`, as `download --verify`, re-hashes
    every file and fetches again what differs."""
    root, instances = cohort
    url = embedded_server(root)
    out = tmp_path / "mirror"
    assert run_installed("sync", "--url", url, "-o", str(out), "-q").returncode == 0
    rotten, cut = instances[0], instances[-1]
    path_of = {i.sop_uid: out / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm" for i in instances}
    data = bytearray(path_of[rotten.sop_uid].read_bytes())
    data[-10:] = bytes(10)  # same size, other bytes
    path_of[rotten.sop_uid].write_bytes(data)
    path_of[cut.sop_uid].write_bytes(path_of[cut.sop_uid].read_bytes()[:-100])

    verified = run_installed("sync", "--url", url, "-o", str(out), "--verify", "--json")

    assert verified.returncode == 0, verified.stderr
    summary = json.loads(verified.stdout)
    assert sorted(summary["repaired"]) == sorted([rotten.sop_uid, cut.sop_uid])
    assert summary["instances"]["downloaded"] == 2
    assert summary["sync"]["already_complete"] == 0  # none taken on trust
    assert_same_files(instances, out)


def test_sync_without_server_counts_trusts_its_completion_records(
    cohort: tuple[Path, list[SynthInstance]],
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    tmp_path: Path,
) -> None:
    """A server whose study search gives no instance count: a study a run recorded complete,
    its files all in place, costs nothing but the study search; one with a file gone is listed
    and completed; --recheck lists them all."""
    root, instances = cohort
    url = embedded_server(root, no_counts=True)
    out = tmp_path / "mirror"

    def sync(*extra: str) -> dict[str, Any]:
        seen_requests.requests.clear()
        result = run_installed("sync", "--url", url, "-o", str(out), "--json", *extra)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def listings() -> list[str]:
        return [p for p, _ in seen_requests.requests if p.endswith(("/series", "/instances"))]

    first = sync()
    assert first["instances"]["downloaded"] == len(instances)
    assert first["sync"]["already_complete"] == 0

    second = sync()
    assert second["sync"]["already_complete"] == 4
    assert second["instances"] == instance_counts(len(instances), skipped=len(instances))
    assert listings() == []  # the study search alone

    victim = instances[0]
    (out / victim.study_uid / victim.series_uid / f"{victim.sop_uid}.dcm").unlink()
    third = sync()
    assert (third["sync"]["already_complete"], third["instances"]["downloaded"]) == (3, 1)
    assert_same_files(instances, out)

    fourth = sync("--recheck")
    assert (fourth["sync"]["already_complete"], fourth["instances"]["downloaded"]) == (0, 0)
    assert listings()  # every study listed from the server


@pytest.mark.parametrize("counts", [True, False])
def test_sync_with_another_layout_moves_the_complete_studies(
    cohort: tuple[Path, list[SynthInstance]],
    embedded_server: StartServer,
    tmp_path: Path,
    counts: bool,
) -> None:
    """`sync --layout NEW` over a mirror made with the default layout: every study ends up
    under NEW, moved, not fetched, whether the server counts a study's instances or not (with
    counts, the complete studies were left in the old layout: exit 0, nothing moved)."""
    root, instances = cohort
    url = embedded_server(root, no_counts=not counts)
    out = tmp_path / "mirror"
    assert run_installed("sync", "--url", url, "-o", str(out), "-q").returncode == 0

    layout = "{study}/{sop}.dcm"
    moved = run_installed("sync", "--url", url, "-o", str(out), "--layout", layout, "--json")

    assert moved.returncode == 0, moved.stderr
    summary = json.loads(moved.stdout)
    every = len(instances)
    assert summary["instances"] == instance_counts(every, skipped=every, moved=every)
    for instance in instances:
        target = out / instance.study_uid / f"{instance.sop_uid}.dcm"
        assert target.read_bytes() == instance.path.read_bytes()
    again = run_installed("sync", "--url", url, "-o", str(out), "--layout", layout, "--json")
    assert json.loads(again.stdout)["sync"]["already_complete"] == 4


def test_sync_exit_codes(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    root, _ = cohort
    url = embedded_server(root)
    out = tmp_path / "mirror"

    # A quiet night is no error for cron: exit 0, nothing said with --quiet.
    nothing = run_cli("sync", "--url", url, "-o", str(out), "--modality", "MR", "--json")
    assert nothing.exit_code == 0, nothing.output
    assert summary_of(nothing)["error"] is None
    assert summary_of(nothing)["sync"]["matched"] == 0
    quiet = run_installed("sync", "--url", url, "-o", str(out), "--modality", "MR", "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    # ... but a wrong URL never reads as an empty result.
    for wrong in (url.replace("/dicomweb", "/dicom-web"), url.replace("/dicomweb", "")):
        broken = run_installed("sync", "--url", wrong, "-o", str(out), "--quiet")
        assert broken.returncode == 3, broken.stderr
        assert f"{wrong} is not a DICOMweb root: {wrong}/studies answered HTTP 404" in (
            broken.stderr
        )

    refused = run_cli("sync", "--url", "http://127.0.0.1:1/dicomweb", "-o", str(out))
    assert refused.exit_code == 3
    assert "connection refused" in refused.stderr

    bad = run_cli("sync", "--url", url, "-o", str(out), "--log-format", "xml")
    assert bad.exit_code == 2

    (out / ".dlstudy").mkdir(parents=True, exist_ok=True)
    with lock_held_by_another_process(out / ".dlstudy"):
        locked = run_cli("sync", "--url", url, "-o", str(out))
    assert locked.exit_code == 5
    assert "in use by another dlstudy run" in locked.stderr


def test_retrieval_is_an_object_however_sync_and_download_end(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """`sync --json` had `"retrieval": null` on a night with nothing to fetch, on a lock
    refusal (exit 5) and on a fatal error, where a download rerun had an object: a script's
    `d["retrieval"]["warnings"]` raised. Now an object however either ends: what the run
    would ask, `settled` false when it fetched nothing; no form at all for a usage error."""
    root, instances = cohort
    url = embedded_server(root)
    out = tmp_path / "mirror"
    study = instances[0].study_uid
    asked = {
        "form": "single-part", "transfer_syntax": "*",
        "accept": "application/dicom; transfer-syntax=*",
        "settled": False, "rejected": [], "warnings": [],
    }  # fmt: skip

    def retrieval(status: int, *args: str) -> dict[str, Any]:
        result = run_installed(*args, "--json")
        assert result.returncode == status, result.stderr
        found: dict[str, Any] = json.loads(result.stdout)["retrieval"]
        return found

    assert retrieval(0, "sync", "--url", url, "-o", str(out))["settled"] is True
    assert retrieval(0, "sync", "--url", url, "-o", str(out)) == asked  # nothing new
    assert retrieval(0, "download", study, "--url", url, "-o", str(out)) == asked
    with lock_held_by_another_process(out / ".dlstudy"):
        assert retrieval(5, "sync", "--url", url, "-o", str(out)) == asked
        assert retrieval(5, "download", study, "--url", url, "-o", str(out)) == asked
    closed = "http://127.0.0.1:9/dicomweb"
    assert retrieval(3, "sync", "--url", closed, "-o", str(tmp_path / "other")) == asked
    nothing = dict.fromkeys(("form", "transfer_syntax", "accept"))
    for usage_error in (["sync", "--study-date", ""], ["download", "1.2.x"]):
        found = retrieval(2, *usage_error, "--url", url, "-o", str(out))
        assert found == {**asked, **nothing}


def test_sync_quiet_still_names_each_failed_instance(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """Cron mails what --quiet prints: a night with failures must not be silent."""
    root, instances = cohort
    url = embedded_server(root, fault_rate=1.0, retry_after=0)
    args = ["--url", url, "-o", str(tmp_path / "mirror"), "--quiet", "--retries", "0"]

    night = run_installed("sync", *args, "--mode", "instance")

    assert night.returncode == 1 and night.stdout == ""
    lines = night.stderr.splitlines()
    assert len(lines) == min(len(instances), 20) + (len(instances) > 20)
    assert all(line.startswith("dlstudy: error: instance ") for line in lines[:20])
    assert "HTTP 503" in lines[0]


@contextmanager
def lock_held_by_another_process(state_dir: Path) -> Iterator[None]:
    """The output lock held by a real second process (in-process takes are re-entrant)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, anyio; from pathlib import Path\n"
            "from dlstudy.store.lock import output_lock\n"
            "async def hold():\n"
            "    async with output_lock(Path(sys.argv[1]), wait=False):\n"
            "        print('held', flush=True); time.sleep(60)\n"
            "anyio.run(hold)",
            str(state_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


# --- shards in separate processes -------------------------------------------------------------


def _wait_all(processes: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    summaries = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
        summaries.append(json.loads(stdout))
    return summaries


def _download_shards(cohort: Path, url: str, tmp_path: Path, count: int) -> list[dict[str, Any]]:
    """`download --from-file COHORT --shard K/COUNT` for every K at once, each into
    tmp_path/shard-K; their --json summaries."""
    processes = [
        subprocess.Popen(
            [*DLSTUDY, "download", "--from-file", str(cohort), "--url", url]
            + ["-o", str(tmp_path / f"shard-{k}"), "--shard", f"{k}/{count}", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(1, count + 1)
    ]
    return _wait_all(processes)


def test_download_shards_in_separate_processes_cover_everything_once(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    root = tmp_path / "source"
    instances = make_studies(root, 9, seed=32)  # 3 + 3 + 3 studies
    everything = set(study_uids(instances))
    url = embedded_server(root)
    uid_file = tmp_path / "cohort.txt"
    uid_file.write_text("# cohort\n" + "\n".join(sorted(everything)) + "\n")
    count = 3

    summaries = _download_shards(uid_file, url, tmp_path, count)

    parts = [downloaded_studies(tmp_path / f"shard-{k}") for k in range(1, count + 1)]
    assert set().union(*parts) == everything
    assert sum(len(part) for part in parts) == len(everything)  # pairwise disjoint
    assert all(parts), [len(part) for part in parts]  # every process had work
    for summary, part in zip(summaries, parts, strict=True):
        assert set(summary["study_uids"]) == part
    assert sum(s["instances"]["downloaded"] for s in summaries) == len(instances)


def test_shards_of_a_list_of_series_never_split_or_repeat_a_study(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """A TCIA-style list (series UIDs, no study) plus a study line naming one of those
    series' studies: every shard looks the series up and keeps those of its own studies, so
    each instance lands once and each study folder in one shard (merged by moving them)."""
    root = tmp_path / "source"
    instances = make_studies(root, 6, seed=33)
    url = embedded_server(root)
    series = list(dict.fromkeys((i.study_uid, i.series_uid) for i in instances))
    whole_study = series[0][0]
    cohort = tmp_path / "cohort.csv"
    rows = [f",{series_uid}" for _, series_uid in series] + [f"{whole_study},"]
    cohort.write_text("StudyInstanceUID,SeriesInstanceUID\n" + "\n".join(rows) + "\n")
    count = 3

    summaries = _download_shards(cohort, url, tmp_path, count)

    parts = [downloaded_studies(tmp_path / f"shard-{k}") for k in range(1, count + 1)]
    assert sum(len(part) for part in parts) == len(set().union(*parts)) == 6
    files = [p.stem for k in range(1, count + 1) for p in (tmp_path / f"shard-{k}").rglob("*.dcm")]
    assert sorted(files) == sorted(i.sop_uid for i in instances)  # each exactly once
    assert sum(s["instances"]["downloaded"] for s in summaries) == len(instances)
    assert all(s["failures"] == [] for s in summaries)


def test_a_shard_whose_series_lines_are_all_another_shards_succeeds(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """One study's series, three shards: the two that look them up and find them in a study
    they do not own have nothing to do, which is a success (exit 0), as for a shard given no
    line at all."""
    root = tmp_path / "source"
    instances = make_studies(root, 1, seed=34)
    url = embedded_server(root)
    cohort = tmp_path / "series.csv"
    series = sorted({i.series_uid for i in instances})
    cohort.write_text("SeriesInstanceUID\n" + "\n".join(series) + "\n")

    summaries = _download_shards(cohort, url, tmp_path, 3)  # each exits 0

    assert sorted(s["instances"]["downloaded"] for s in summaries) == [0, 0, len(instances)]
    assert all(s["error"] is None for s in summaries)


def test_sync_shards_from_a_scheduler_index_cover_everything_once(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """`sync --shard auto` as in a Kubernetes Indexed Job: JOB_COMPLETION_INDEX is 0-based."""
    root = tmp_path / "source"
    instances = make_studies(root, 7, seed=41)
    url = embedded_server(root)
    count = 2
    processes = []
    for index in range(count):
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "DLSTUDY_SHARD_COUNT": str(count)}
        processes.append(
            subprocess.Popen(
                [*DLSTUDY, "sync", "--url", url, "-o", str(tmp_path / f"part-{index}")]
                + ["--shard", "auto", "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    summaries = _wait_all(processes)

    parts = [downloaded_studies(tmp_path / f"part-{index}") for index in range(count)]
    assert set().union(*parts) == set(study_uids(instances))
    assert not parts[0] & parts[1]
    assert [s["sync"]["shard"] for s in summaries] == ["1/2", "2/2"]
    assert all(s["sync"]["matched"] == 7 for s in summaries)


def test_a_shard_with_no_study_succeeds(tmp_path: Path, embedded_server: StartServer) -> None:
    root = tmp_path / "source"
    instances = make_studies(root, 1, seed=51)
    url = embedded_server(root)
    uid = instances[0].study_uid
    other = 1 if shard_of(uid, 2) == 2 else 2
    result = run_cli(
        "download", uid, "--url", url, "-o", str(tmp_path / "o"), "--shard", f"{other}/2"
    )

    assert result.exit_code == 0, result.output
    assert f"shard {other}/2: none of the 1 studies is in this shard" in result.stderr
    assert not (tmp_path / "o").exists()

    # Its --report says so, rows none: it was not written, and an earlier run's stayed.
    for name, header in (("landed.csv", "status,study,series,sop,path,size,digest,reason\n"),
                         ("landed.jsonl", "")):  # fmt: skip
        report = tmp_path / name
        report.write_text("stale,row\n")
        again = run_installed(
            "download", uid, "--url", url, "-o", str(tmp_path / "o"), "--shard", f"{other}/2",
            "--report", str(report),
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert report.read_text() == header


def test_the_example_crontab_line_runs_as_written(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """examples/crontab's command, with only its paths moved into tmp_path and its `pacs`
    profile pointing at the embedded server: a night without new studies is silent, exit 0,
    and logs its summary."""
    root, _ = cohort
    url = embedded_server(root)
    crontab = Path(__file__).resolve().parents[2] / "examples" / "crontab"
    (line,) = [x for x in crontab.read_text().splitlines() if x and not x.startswith("#")]
    command = line.split()[5:]  # after the five schedule fields
    assert command[0].endswith("/dlstudy")
    log_file = tmp_path / "sync.jsonl"
    moved = {"/data/mirror": str(tmp_path / "mirror"), "/var/log/dlstudy/sync.jsonl": str(log_file)}
    args = [moved.get(arg, arg) for arg in command[1:]]
    config = tmp_path / "config.toml"
    config.write_text(f"[servers.pacs]\nurl = '{url}'\n")
    result = run_installed(*args, env={"DLSTUDY_CONFIG": str(config)})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    events = [json.loads(x) for x in log_file.read_text().splitlines()]
    (summary,) = [e for e in events if e["event"] == "run_summary"]
    assert summary["exit_status"] == 0 and summary["failed"] == 0


def test_download_takes_log_format_and_sync_takes_workers(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    root, instances = cohort
    # Every other answer a 503: each retry is a log record.
    url = embedded_server(root, fault_rate=0.5, fault_status=503, seed=3)
    log_file = tmp_path / "download.jsonl"
    study = instances[0].study_uid
    result = run_installed(
        "download", study, "--url", url, "-o", str(tmp_path / "a"), "--quiet",
        "--log-file", str(log_file), "--log-format", "json", "--retries", "20",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any("retrying" in record.get("message", "") for record in records)
    assert all("event" in record for record in records)

    result = run_installed(
        "sync", "--url", url, "-o", str(tmp_path / "b"), "--workers", "1", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processes"] == 1


def test_a_download_json_log_ends_with_how_the_run_ended(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """`--log-file` ends with how the run ended, the summary and every failure, or the
    error: in JSON too (a download's JSON log had none of it, and was empty after exit 3,
    as only sync ends its log with a run_summary event)."""
    root, instances = cohort
    url = embedded_server(root, fault_rate=0.5, fault_status=503, seed=3)
    log_file = tmp_path / "download.jsonl"
    study = instances[0].study_uid
    result = run_installed(
        "download", study, "--url", url, "-o", str(tmp_path / "a"), "--quiet", "--json",
        "--log-file", str(log_file), "--log-format", "json", "--retries", "0",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    failures = json.loads(result.stdout)["failures"]
    assert failures
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    outcome = [r for r in records if r.get("logger") == "dlstudy.outcome"]
    assert "downloaded" in outcome[0]["message"], outcome
    assert [r["message"] for r in outcome[1:]] == [f"failed: {f['reason']}" for f in failures]

    log_file.unlink()
    result = run_installed(
        "download", study, "--url", "http://127.0.0.1:9/dicomweb", "-o", str(tmp_path / "b"),
        "--log-file", str(log_file), "--log-format", "json", "--retries", "0",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert records and records[-1]["level"] == "error", records
    assert records[-1]["message"] in result.stderr


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_query_table_keeps_identifiers_whole_at_any_width(width: int) -> None:
    """On a terminal: study UIDs, patient IDs and dates are never cut; a narrow terminal gets
    two lines a study rather than a table with its columns dropped."""
    from dlstudy.cli.query_cmd import render
    from dlstudy.dicomweb.search import StudyRecord

    uid = "1.2.826.0.1.3680043.8.498.10368276145766581392437474382614256379"
    record = StudyRecord(
        study_uid=uid, patient_id="PAT-000123456", patient_name="NGUYEN^CHLOE",
        study_date="20260105", study_time="083000", accession="A1",
        description="CT CHEST WITH CONTRAST PROTOCOL 7", modalities=("CT", "SR"), series=4,
        instances=1203,
    )  # fmt: skip
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", str(width))
        render([record, record], "table", out)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= width for line in lines)
    text = out.getvalue()
    assert text.count(uid) == 2 and text.count("PAT-000123456") == 2
    assert text.count("20260105") == 2 and "1203" in text
    if width >= 200:
        assert "NGUYEN^CHLOE" in text and "Description" in text


@pytest.mark.parametrize("columns", [80, 120])
def test_the_query_table_on_a_terminal_of_80_and_120_columns(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, columns: int
) -> None:
    root, instances = cohort
    url = embedded_server(root)
    code, text = run_on_a_terminal("query", "--url", url, columns=columns)
    assert code == 0, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(len(line) <= columns for line in lines), lines
    for uid in study_uids(instances):
        assert uid in text  # whole, never cut
    rows = [
        json.loads(x)
        for x in run_installed("query", "--url", url, "--json").stdout.split("\n")
        if x
    ]
    for row in rows:
        assert row["patient_id"] in text and row["study_date"] in text


def test_a_terminated_sync_ends_its_json_log_with_the_run_summary(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """The JSON log of a cron sync says how every run ended, a SIGTERM included."""
    import signal
    import time

    root = tmp_path / "src"
    generate(root, SynthSpec(series=2, instances=30, size=100_000, seed=9))
    slow = embedded_server(root, latency=0.05)
    out, log_file = tmp_path / "out", tmp_path / "sync.log"
    run = subprocess.Popen(
        [*DLSTUDY, "sync", "--url", slow, "-o", str(out), "-c", "1", "--log-file", str(log_file),
         "--log-format", "json", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(out.rglob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, stderr
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = [e for e in events if not str(e.get("logger", "")).startswith("dlstudy.server")]
    ends = [e for e in events if e["event"] == "run_summary"]
    assert len(ends) == 1, events[-3:]
    assert (ends[0]["error"], ends[0]["exit_status"]) == ("terminated", 143)


@pytest.mark.parametrize("command", ["download", "sync", "catalog pull"])
def test_quiet_keeps_the_summary_line_off_stderr_when_stopped(
    command: str, embedded_server: StartServer, tmp_path: Path
) -> None:
    """--quiet leaves only errors on stderr (cron mails nothing else): a run stopped by SIGTERM
    says only that it was, as one that ends prints no summary line under --quiet."""
    import signal
    import time

    root = tmp_path / "src"
    study = generate(root, SynthSpec(studies=3, series=2, instances=30, size=4096, seed=5))[0]
    slow = embedded_server(root, latency=0.1)
    out, db = tmp_path / "out", tmp_path / "pacs.duckdb"
    args = {
        "download": ["download", study.study_uid, "-o", str(out), "-c", "1"],
        "sync": ["sync", "-o", str(out), "-c", "1"],
        "catalog pull": ["catalog", "pull", "--db", str(db), "--page-size", "1"],
    }[command]
    run = start_installed(*args, "--url", slow, "-q")
    started = (
        (lambda: db.exists()) if command == "catalog pull" else (lambda: any(out.rglob("*.dcm")))
    )
    deadline = time.monotonic() + 60
    while not started() and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    output, _ = run.communicate(timeout=60)
    assert run.returncode == 143, output
    assert output.splitlines() == [output.splitlines()[-1]], output
    assert output.startswith("dlstudy: error: terminated; "), output


@pytest.mark.parametrize("command", ["download", "sync"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_shard_is_a_usage_error_not_every_study(
    tmp_path: Path, embedded_server: StartServer, command: str, value: str
) -> None:
    """`--shard "$SHARD"` with SHARD unset in a job script: without this, every task would
    download the whole list (as an empty filter would match the whole archive)."""
    root = tmp_path / "source"
    instances = make_studies(root, 2, seed=35)
    url = embedded_server(root)
    cohort = tmp_path / "cohort.txt"
    cohort.write_text("\n".join(study_uids(instances)) + "\n")
    what = ["--from-file", str(cohort)] if command == "download" else []
    out = tmp_path / "out"

    result = run_installed(command, *what, "--url", url, "-o", str(out), "--shard", value)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "dlstudy: error: --shard is empty: give K/N or auto, or leave the option out for every "
        "study"
    ]
    assert downloaded_studies(out) == set()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("\u00b9/4", "--shard must look like K/N (e.g. 2/8) or be 'auto', not '\u00b9/4'"),
        ("\u0661/4", "--shard must look like K/N (e.g. 2/8) or be 'auto', not '\u0661/4'"),
        ("1/" + "9" * 5000, f"--shard 1/{'9' * 57}…: K and N must be between 1 and 1000000"),
        ("1/" + "9" * 24, f"--shard 1/{'9' * 24}: K and N must be between 1 and 1000000"),
    ],
)
def test_a_shard_with_digits_int_cannot_read_is_one_line(
    tmp_path: Path, embedded_server: StartServer, value: str, message: str
) -> None:
    """A superscript digit passes str.isdigit() and a number of 4,300 digits int()'s limit:
    each was a traceback (exit 1); an Arabic-Indic digit was read as a shard number."""
    root = tmp_path / "source"
    instances = make_studies(root, 1, seed=36)
    url = embedded_server(root)
    out = tmp_path / "out"

    result = run_installed(
        "download", *study_uids(instances), "--url", url, "-o", str(out), "--shard", value
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"dlstudy: error: {message}"]
    assert downloaded_studies(out) == set()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"SLURM_ARRAY_TASK_ID": "\u0661", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY_TASK_ID"),
        ({"JOB_COMPLETION_INDEX": "\uff10", "DLSTUDY_SHARD_COUNT": "2"}, "JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETIONS": "\uff12"}, "JOB_COMPLETIONS"),
        (
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "\u0661",
             "SLURM_ARRAY_TASK_COUNT": "4"},
            "SLURM_ARRAY_TASK_MIN",
        ),
    ],
)  # fmt: skip
def test_shard_auto_refuses_digits_other_than_ascii(
    tmp_path: Path, embedded_server: StartServer, variables: dict[str, str], named: str
) -> None:
    """An Arabic-Indic or fullwidth digit in the scheduler's variable was read as a number by
    `--shard auto` (int() reads them), where `--shard K/N` refuses it."""
    root = tmp_path / "source"
    instances = make_studies(root, 1, seed=37)
    url = embedded_server(root)
    out = tmp_path / "out"

    result = run_installed(
        "download", *study_uids(instances), "--url", url, "-o", str(out), "--shard", "auto",
        env=variables,
    )  # fmt: skip

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: --shard auto: {named}=") and "not a number" in line
    assert downloaded_studies(out) == set()


# The interpreter and its libraries take about 65 MB; every line of the list kept until the
# shard was chosen took about 500 bytes (215 MB for this list on a 2-core machine).
SHARD_OF_LIST_PEAK_MB = 130


def test_a_shard_of_a_long_list_keeps_only_its_own_lines(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """A list of 300,000 lines, `--shard K/50`: the other shards' lines are dropped as they
    are read, so the shard holds its own part only; it still downloads its studies."""
    root = tmp_path / "source"
    instances = make_studies(root, 2, seed=37)
    url = embedded_server(root)
    studies = study_uids(instances)
    count = 50
    number = shard_of(studies[0], count)
    others = (f"2.25.{10**30 + n}" for n in range(400_000))
    fakes = [uid for uid in others if shard_of(uid, count) != number][:300_000]
    cohort = tmp_path / "cohort.txt"
    cohort.write_text("\n".join([*fakes, *studies]) + "\n")
    out = tmp_path / "out"

    result, peak_mb = run_installed_measured(
        "download", "--from-file", str(cohort), "--url", url, "-o", str(out),
        "--shard", f"{number}/{count}", "--json", peak_file=tmp_path / "peak", timeout=600,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    mine = {uid for uid in studies if shard_of(uid, count) == number}
    assert set(summary_of(result)["study_uids"]) == mine == downloaded_studies(out)
    assert peak_mb <= SHARD_OF_LIST_PEAK_MB, peak_mb


def test_sync_verify_events_count_only_what_it_downloaded(
    cohort: tuple[Path, list[SynthInstance]], embedded_server: StartServer, tmp_path: Path
) -> None:
    """Files adopted after `.dlstudy` was lost are fetched again by `--verify`: those that
    were the server's bytes count as present (`skipped`), in the summary and in each
    study_finished event alike; only the damaged one as downloaded."""
    root, instances = cohort
    url = embedded_server(root)
    out = tmp_path / "mirror"
    assert run_installed("sync", "--url", url, "-o", str(out), "-q").returncode == 0
    shutil.rmtree(out / ".dlstudy")
    rotten = instances[0]
    path = out / rotten.study_uid / rotten.series_uid / f"{rotten.sop_uid}.dcm"
    data = bytearray(path.read_bytes())
    data[-10:] = bytes(10)
    path.write_bytes(data)
    log_file = tmp_path / "verify.jsonl"
    log = ["--log-file", str(log_file), "--log-format", "json"]

    verified = run_installed("sync", "--url", url, "-o", str(out), "--verify", "--json", *log)

    assert verified.returncode == 0, verified.stderr
    summary = json.loads(verified.stdout)
    assert summary["repaired"] == [rotten.sop_uid]
    assert summary["instances"]["downloaded"] == 1
    assert summary["instances"]["skipped"] == len(instances) - 1
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    finished = {e["study"]: e["downloaded"] for e in events if e["event"] == "study_finished"}
    assert finished == {
        uid: int(uid == rotten.study_uid) for uid in {i.study_uid for i in instances}
    }
    assert_same_files(instances, out)
