"""`download --from-file` with cohort lists and `--report`, through the installed CLI, against
the embedded server: only what a list names is fetched, and the report lists exactly the files
written, byte-exact."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import DLSTUDY, instance_counts, run_installed
from ..cohort_helpers import assert_report_is_exact, files_under, read_report
from ..fixtures.embedded_server import SeenRequests, StartServer

pytestmark = pytest.mark.integration

TCIA_HEADER = """downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
includeAnnotation=true
noOfrRetry=4
databasketId=manifest-1600709154662.tcia
manifestVersion=3.0
ListOfSeriesToDownload=
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[SynthInstance]:
    """Two studies of three series of four small instances."""
    root = tmp_path_factory.mktemp("cohort")
    return generate(root, SynthSpec(studies=2, series=3, instances=4, size=8 * 1024, seed=20))


def source_of(instances: list[SynthInstance]) -> dict[str, bytes]:
    return {i.sop_uid: i.path.read_bytes() for i in instances}


def series_of(instances: list[SynthInstance]) -> dict[str, list[SynthInstance]]:
    found: dict[str, list[SynthInstance]] = {}
    for i in instances:
        found.setdefault(i.series_uid, []).append(i)
    return found


def qido(seen: SeenRequests) -> list[tuple[str, dict[str, str]]]:
    """The QIDO searches the server was asked: path and parameters, in order."""
    searches = []
    for path, query in seen.requests:
        if path.endswith(("/studies", "/series", "/instances")):
            searches.append((path, dict(parse_qsl(query.decode()))))
    return searches


def download(url: str, out: Path, *args: str) -> tuple[int, dict[str, object], str]:
    done = run_installed("download", "--url", url, "-o", str(out), "--json", *args)
    return done.returncode, json.loads(done.stdout), done.stderr


def test_tcia_manifest_fetches_only_its_series_and_reports_each_file(
    tmp_path: Path,
    cohort: list[SynthInstance],
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    by_series = series_of(cohort)
    wanted = [list(by_series)[1], list(by_series)[4]]  # one series of each study
    manifest = tmp_path / "manifest-1600709154662.tcia"
    manifest.write_text(TCIA_HEADER + "".join(uid + "\n" for uid in wanted))
    out, report = tmp_path / "out", tmp_path / "landed.csv"

    code, summary, stderr = download(
        url, out, "--from-file", str(manifest), "--report", str(report)
    )

    assert code == 0, stderr
    expected = [i for uid in wanted for i in by_series[uid]]
    assert summary["instances"] == instance_counts(8, downloaded=8)
    rows = read_report(report)
    assert len(rows) == 8
    assert {r["sop"] for r in rows} == {i.sop_uid for i in expected}
    assert_report_is_exact(rows, out, source_of(cohort), status="downloaded")
    # One lookup per series, then its instance listing; nothing else of either study.
    searches = qido(seen_requests)
    lookups = [params for path, params in searches if path == "/dicomweb/series"]
    assert sorted(p["SeriesInstanceUID"] for p in lookups) == sorted(wanted)
    listings = [path for path, _ in searches if path != "/dicomweb/series"]
    assert sorted(listings) == sorted(
        f"/dicomweb/studies/{by_series[uid][0].study_uid}/series/{uid}/instances" for uid in wanted
    )

    # The rerun finds everything present, and says so, row by row.
    report_again = tmp_path / "again.jsonl"
    code, summary, stderr = download(
        url, out, "--from-file", str(manifest), "--report", str(report_again)
    )
    assert code == 0, stderr
    assert summary["instances"] == instance_counts(8, skipped=8)
    assert_report_is_exact(read_report(report_again), out, source_of(cohort), status="present")


def test_csv_of_mixed_levels_fetches_what_each_row_names(
    tmp_path: Path,
    cohort: list[SynthInstance],
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    by_series = series_of(cohort)
    s = list(by_series.values())
    study_a, study_b = s[0][0].study_uid, s[3][0].study_uid
    rows = [
        "collection,StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,Modality",
        f"x,{study_a},{s[0][0].series_uid},,CT",  # study + series
        f"x,,{s[1][0].series_uid},,CT",  # a series alone
        f"x,{study_b},{s[3][0].series_uid},{s[3][2].sop_uid},CT",  # all three: no lookup
        f"x,,,{s[4][1].sop_uid},CT",  # a SOP alone
        f"x,{study_a},{s[0][0].series_uid},,CT",  # a repeat: fetched once
        "x,,2.25.999000111,,CT",  # a series the server does not have
        f"x,{study_b},2.25.999000222,2.25.999000333,CT",  # an instance it does not have
    ]
    listing = tmp_path / "idc_export.csv"
    listing.write_text("\n".join(rows) + "\n")
    out, report = tmp_path / "out", tmp_path / "landed.jsonl"

    code, summary, stderr = download(url, out, "--from-file", str(listing), "--report", str(report))

    assert code == 1, stderr  # the rest is downloaded, the missing lines fail
    expected = [*s[0], *s[1], s[3][2], s[4][1]]
    instances = summary["instances"]
    assert instances == instance_counts(11, downloaded=10, failed=1), summary
    report_rows = read_report(report)
    assert_report_is_exact(report_rows, out, source_of(cohort), status="downloaded")
    assert {r["sop"] for r in report_rows if r["status"] == "downloaded"} == {
        i.sop_uid for i in expected
    }
    failed = {r["reason"] for r in report_rows if r["status"] == "failed"}
    assert failed == {
        f"--from-file {listing}: line 7: series 2.25.999000111 not found on the server",
        f"--from-file {listing}: line 8: instance 2.25.999000333: not found on the server "
        "(HTTP 404)",
    }
    assert {f["reason"] for f in summary["failures"]} == failed  # type: ignore[attr-defined]
    assert [r["reason"] for r in report_rows if r["status"] == "repeat"] == [
        f"--from-file {listing}: line 6: repeat of line 2, fetched once"
    ]
    # Only the lines without their study were looked up; no study was listed whole.
    searches = qido(seen_requests)
    assert sorted(path for path, _ in searches if "/series/" not in path) == [
        "/dicomweb/instances",
        "/dicomweb/series",
        "/dicomweb/series",
    ]


def test_plain_list_of_sop_uids_fetches_only_those_instances(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    picked = [cohort[1], cohort[6], cohort[17]]
    listing = tmp_path / "sops.txt"
    listing.write_text("# QC passed\n" + "".join(i.sop_uid + "\n" for i in picked))
    out, report = tmp_path / "out", tmp_path / "landed.csv"

    code, summary, stderr = download(url, out, "--from-file", str(listing), "--report", str(report))

    assert code == 0, stderr
    assert summary["instances"]["downloaded"] == 3  # type: ignore[index]
    rows = read_report(report)
    assert {r["sop"] for r in rows} == {i.sop_uid for i in picked}
    assert_report_is_exact(rows, out, source_of(cohort), status="downloaded")


def test_nothing_found_exits_4_with_a_report_of_what_was_missing(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    listing = tmp_path / "uids.txt"
    listing.write_text("2.25.1\n2.25.2\n")
    report = tmp_path / "landed.csv"

    code, summary, _ = download(
        url, tmp_path / "out", "--from-file", str(listing), "--report", str(report)
    )

    assert code == 4
    assert summary["error"] == "none of the 2 listed items was found on the server"
    rows = read_report(report)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["reason"] == (
        f"--from-file {listing}: line 1: UID 2.25.1 not found on the server as a study, "
        "series or instance"
    )


def test_report_needs_a_known_extension_and_never_leaves_a_stale_file(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    done = run_installed(
        "download", "1.2.3", "--url", "http://127.0.0.1:1/x", "--report", str(tmp_path / "r.txt")
    )
    assert done.returncode == 2
    assert "--report" in done.stderr and ".csv or .jsonl" in done.stderr
    assert not list(tmp_path.iterdir())

    # An earlier report goes when a run starts; a run that cannot reach its server leaves none.
    report = tmp_path / "landed.csv"
    report.write_text("status,study\ndownloaded,1.2.3\n")
    done = run_installed(
        "download", "1.2.3", "--url", "http://127.0.0.1:1/x", "-o", str(tmp_path / "out"),
        "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert not report.exists()
    assert list(tmp_path.iterdir()) == []  # nor the output folder it made, empty


def test_study_uid_arguments_are_reported_too(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    study = cohort[0].study_uid
    out, report = tmp_path / "out", tmp_path / "landed.csv"

    code, summary, stderr = download(url, out, study, "--report", str(report))

    assert code == 0, stderr
    rows = read_report(report)
    assert len(rows) == 12 == len(files_under(out))
    assert_report_is_exact(rows, out, source_of(cohort), status="downloaded")


@pytest.mark.slow
def test_ten_thousand_series_rows_cost_one_lookup_each(
    tmp_path: Path, embedded_server: StartServer, seen_requests: SeenRequests
) -> None:
    """A 10,000-row CSV of series: each series the list names without its study is looked up
    once (those the server has, and those it has not), each found one listed once, no study
    listed whole; the run ends with every found instance on disk and in the report."""
    root = tmp_path / "archive"
    archive = generate(root, SynthSpec(studies=4, series=50, instances=1, size=1024, seed=21))
    # hypercorn closes a connection after 1,000 requests by default (GOAWAY), and the requests
    # in flight on it are sent again: retries, which this test does not count.
    url = embedded_server(root, max_requests_per_connection=100_000)
    real = [i.series_uid for i in archive]
    unknown = [f"2.25.{10**12 + n}" for n in range(10_000 - len(real))]
    listing = tmp_path / "qc_passed.csv"
    with listing.open("w") as fp:
        fp.write("SeriesInstanceUID,qc\n")
        for n, uid in enumerate(unknown):
            fp.write(f"{uid},ok\n")
            if n % 49 == 0 and real:
                fp.write(f"{real.pop()},ok\n")
        fp.writelines(f"{uid},ok\n" for uid in real)
    assert listing.read_text().count("\n") == 10_001
    out, report = tmp_path / "out", tmp_path / "landed.csv"

    done = run_installed(
        "download", "--url", url, "-o", str(out), "--from-file", str(listing),
        "--report", str(report), "--quiet", timeout=600,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr  # the unknown series fail, the rest is there
    rows = read_report(report)
    assert len(rows) == 10_000
    assert sum(r["status"] == "failed" for r in rows) == len(unknown)
    assert_report_is_exact(
        rows, out, {i.sop_uid: i.path.read_bytes() for i in archive}, status="downloaded"
    )
    searches = qido(seen_requests)
    lookups = [p["SeriesInstanceUID"] for path, p in searches if path == "/dicomweb/series"]
    assert len(lookups) == len(set(lookups)) == 10_000
    listings = [path for path, _ in searches if path != "/dicomweb/series"]
    assert len(listings) == len(set(listings)) == len(archive)
    assert all(path.endswith("/instances") and "/series/" in path for path in listings)


def test_library_takes_cohort_items_and_writes_the_report(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    import dlstudy

    url = embedded_server(cohort[0].path.parents[2])
    series = series_of(cohort)
    wanted = list(series)[3]  # of the other study
    listing = tmp_path / "cohort.tcia"
    inside = list(series)[0]  # of the study listed too: its instances are fetched once
    listing.write_text(TCIA_HEADER + wanted + "\n" + inside + "\n")
    out, report = tmp_path / "out", tmp_path / "landed.jsonl"

    summary = dlstudy.download(
        [cohort[0].study_uid, *dlstudy.read_cohort(listing)], url, output=out, report=str(report)
    )

    assert summary.exit_status == 0
    assert summary.total == summary.downloaded == 16  # a study and another series
    rows = read_report(report)
    assert {r["sop"] for r in rows} == {i.sop_uid for i in [*cohort[:12], *series[wanted]]}
    assert_report_is_exact(rows, out, source_of(cohort), status="downloaded")


def test_dlstudys_own_csv_outputs_read_back_as_cohorts(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """`query --csv > cohort.csv` (as the docs show), a `--report` CSV, and the same from
    stdin: each is a cohort list `download --from-file` reads by dlstudy's own columns."""
    url = embedded_server(cohort[0].path.parents[2])
    queried = run_installed("query", "--url", url, "--csv")
    assert queried.returncode == 0, queried.stderr
    listing = tmp_path / "cohort.csv"
    listing.write_text(queried.stdout)
    a, b = tmp_path / "a", tmp_path / "b"
    status, summary, stderr = download(url, a, "--from-file", str(listing),
                                       "--report", str(tmp_path / "landed.csv"))  # fmt: skip
    assert status == 0, stderr
    assert summary["instances"]["downloaded"] == len(cohort)

    status, summary, stderr = download(
        url, tmp_path / "b", "--from-file", str(tmp_path / "landed.csv")
    )
    assert status == 0, stderr
    assert summary["instances"]["downloaded"] == len(cohort)
    same = [{p.relative_to(out.resolve()) for p in files_under(out)} for out in (a, b)]
    assert same[0] == same[1]

    piped = subprocess.run(
        [DLSTUDY, "download", "--url", url, "-o", str(tmp_path / "c"), "--from-file", "-",
         "--json"],
        input=queried.stdout, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["instances"]["downloaded"] == len(cohort)


def test_a_killed_runs_report_temp_file_is_removed_by_the_next_run(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A run killed mid-way leaves its report's temp file; the next run with that --report
    removes it, and leaves one whose writer still runs (another run's, in the making)."""
    url = embedded_server(cohort[0].path.parents[2])
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f".landed.csv.{dead.pid}-0123abcd.tmp"
    alive = tmp_path / f".landed.csv.{os.getpid()}-89abcdef.tmp"
    for temp in (orphan, alive):
        temp.write_text("status,study\n")
    status, _, stderr = download(url, tmp_path / "out", cohort[0].study_uid,
                                 "--report", str(tmp_path / "landed.csv"))  # fmt: skip
    assert status == 0, stderr
    assert not orphan.exists() and alive.exists()
    assert (tmp_path / "landed.csv").is_file()
