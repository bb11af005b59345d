"""Every line of a cohort list answered for, through the installed CLI against the embedded
server: a row whose UIDs do not belong together fails as the list's mistake without taking a
right row's instance with it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dlstudy.dicomweb.shard import Shard
from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import DLSTUDY, run_installed, run_installed_measured
from ..cohort_helpers import read_report
from ..fixtures.embedded_server import StartServer

pytestmark = pytest.mark.integration

HEADER = "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID\n"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[SynthInstance]:
    """One study of two series of two small instances."""
    root = tmp_path_factory.mktemp("lines")
    return generate(root, SynthSpec(studies=1, series=2, instances=2, size=4 * 1024, seed=22))


def row(study: str, series: str, sop: str = "") -> str:
    return f"{study},{series},{sop}\n"


@pytest.mark.parametrize("wrong_first", [True, False])
def test_a_row_whose_uids_do_not_belong_together_fails_alone(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer, wrong_first: bool
) -> None:
    """The SOP of one series listed with the other: that row fails naming its line and what
    does not match; the right row naming the same instance downloads it (exit 1)."""
    url = embedded_server(cohort[0].path.parents[2])
    one, other = cohort[0], next(i for i in cohort if i.series_uid != cohort[0].series_uid)
    right = row(one.study_uid, one.series_uid, one.sop_uid)
    wrong = row(one.study_uid, other.series_uid, one.sop_uid)
    listing = tmp_path / "cohort.csv"
    listing.write_text(HEADER + (wrong + right if wrong_first else right + wrong))
    out, report = tmp_path / "out", tmp_path / "landed.csv"
    done = run_installed(
        "download", "--url", url, "-o", str(out), "-q",
        "--from-file", str(listing), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert (out / one.study_uid / one.series_uid / f"{one.sop_uid}.dcm").exists()
    line = 2 if wrong_first else 3
    [error] = done.stderr.splitlines()
    assert error.startswith(f"dlstudy: error: --from-file {listing}: line {line}: "), error
    assert f"is not in series {other.series_uid}" in error
    assert "do not belong together" in error and "server lists" not in error
    rows = read_report(report)
    assert [(r["status"], r["series"]) for r in rows] == (
        [("failed", other.series_uid), ("downloaded", one.series_uid)]
    )
    assert rows[0]["reason"] == error.removeprefix("dlstudy: error: ")


def test_a_row_naming_an_instance_a_listed_series_has_elsewhere_fails_alone(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A whole series listed, and a row giving one of its instances another series: the
    listing is the server's word; the series downloads whole, the row fails as the list's."""
    url = embedded_server(cohort[0].path.parents[2])
    one, other = cohort[0], next(i for i in cohort if i.series_uid != cohort[0].series_uid)
    listing = tmp_path / "cohort.csv"
    listing.write_text(
        HEADER + row(one.study_uid, other.series_uid, one.sop_uid) + row("", one.series_uid)
    )
    out = tmp_path / "out"
    done = run_installed(
        "download", "--url", url, "-o", str(out), "--json", "-q", "--from-file", str(listing)
    )
    assert done.returncode == 1, done.stderr
    [failure] = json.loads(done.stdout)["failures"]
    assert "line 2: " in failure["reason"] and "do not belong together" in failure["reason"]
    in_series = [i for i in cohort if i.series_uid == one.series_uid]
    assert json.loads(done.stdout)["instances"]["downloaded"] == len(in_series) == 2


def test_every_repeated_line_has_a_report_row_naming_the_line_it_repeats(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A list checked against its report finds each line: a repeat is fetched once and has a
    `repeat` row with the UIDs it gave and the line it repeats."""
    url = embedded_server(cohort[0].path.parents[2])
    one = cohort[0]
    instance, series = row(one.study_uid, one.series_uid, one.sop_uid), row("", one.series_uid)
    listing = tmp_path / "cohort.csv"
    listing.write_text(HEADER + instance + series + instance + series + series)
    report = tmp_path / "landed.jsonl"
    done = run_installed(
        "download", "--url", url, "-o", str(tmp_path / "out"), "-q",
        "--from-file", str(listing), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = read_report(report)
    repeats = [
        (r["study"], r["series"], r["sop"], r["reason"]) for r in rows if r["status"] == "repeat"
    ]
    label = f"--from-file {listing}"
    assert repeats == [
        (
            one.study_uid,
            one.series_uid,
            one.sop_uid,
            f"{label}: line 4: repeat of line 2, fetched once",
        ),
        (None, one.series_uid, None, f"{label}: line 5: repeat of line 3, fetched once"),
        (None, one.series_uid, None, f"{label}: line 6: repeat of line 3, fetched once"),
    ]
    downloaded = [r["sop"] for r in rows if r["status"] == "downloaded"]
    assert sorted(downloaded) == sorted(i.sop_uid for i in cohort if i.series_uid == one.series_uid)


def test_a_sharded_run_reports_each_repeated_line_once(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A series named without its study is every shard's until it is looked up: each shard
    wrote a `repeat` row for its repeats, so the shards' reports had one per shard. Only the
    shard that takes the line (its study's, or the series' own when no shard finds it) does."""
    url = embedded_server(cohort[0].path.parents[2])
    one = cohort[0]
    missing = "1.2.826.0.1.3680043.2.1125.99"
    series = row("", one.series_uid)
    listing = tmp_path / "cohort.csv"
    listing.write_text(HEADER + series + series + row("", missing) + row("", missing))
    repeats: dict[int, list[str | None]] = {}
    for number in (1, 2):
        report = tmp_path / f"landed-{number}.csv"
        done = run_installed(
            "download", "--url", url, "-o", str(tmp_path / f"out-{number}"), "-q",
            "--from-file", str(listing), "--report", str(report), "--shard", f"{number}/2",
        )  # fmt: skip
        assert done.returncode in (0, 1, 4), done.stderr
        repeats[number] = [r["series"] for r in read_report(report) if r["status"] == "repeat"]
    assert repeats == {
        number: [
            uid
            for uid, key in ((one.series_uid, one.study_uid), (missing, missing))
            if Shard(number, 2).owns(key)
        ]
        for number in (1, 2)
    }


def test_a_repeated_study_uid_argument_has_a_report_row_as_a_repeated_line_does(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """`download A A --report FILE`: the second A was dropped without a row or a word, where
    a repeated line of a list has its `repeat` row. It has one now, naming the argument it
    repeats; the study is fetched once."""
    url = embedded_server(cohort[0].path.parents[2])
    study = cohort[0].study_uid
    report = tmp_path / "landed.csv"
    done = run_installed(
        "download", study, study, "--url", url, "-o", str(tmp_path / "out"), "-v",
        "--report", str(report), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"]["downloaded"] == len(cohort)
    rows = read_report(report)
    repeats = [(r["study"], r["reason"]) for r in rows if r["status"] == "repeat"]
    assert repeats == [(study, "STUDY_UID argument 2: repeat of argument 1, fetched once")]
    assert sorted(r["sop"] for r in rows if r["status"] == "downloaded") == sorted(
        i.sop_uid for i in cohort
    )
    assert "1 repeated STUDY_UID arguments: each fetched once" in done.stderr


# A list of one series, repeated: the interpreter and its libraries take about 60 MB; the items
# of 300,000 rows, kept until repeats were removed, took ~100 MB more. Dropped as they are read,
# the rows cost their line numbers (16 bytes each) and their report rows, which are streamed.
REPEATED_ROWS = 300_000
GROWTH_MB = 30


def test_repeated_rows_are_dropped_as_they_are_read(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    url = embedded_server(cohort[0].path.parents[2])
    peaks = []
    for rows in (3, REPEATED_ROWS):
        listing = tmp_path / f"{rows}.csv"
        listing.write_text(HEADER + row("", cohort[0].series_uid) * rows)
        result, peak_mb = run_installed_measured(
            "download", "--url", url, "-o", str(tmp_path / f"out-{rows}"), "-q",
            "--from-file", str(listing), "--report", str(tmp_path / f"landed-{rows}.csv"),
            peak_file=tmp_path / "peak", timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        peaks.append(peak_mb)
    assert peaks[1] - peaks[0] <= GROWTH_MB, peaks
    # the series' two instances, and a `repeat` row for each line after the first
    assert len(read_report(tmp_path / f"landed-{REPEATED_ROWS}.csv")) == REPEATED_ROWS + 1


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_comment_lines_in_a_tcia_manifests_header_are_skipped(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer, via: str
) -> None:
    """`#` lines before and among the header's keys, as a curator annotates a manifest."""
    url = embedded_server(cohort[0].path.parents[2])
    series = cohort[0].series_uid
    manifest = tmp_path / "lidc.tcia"
    manifest.write_text(
        "# LIDC subset, exported 2026-12-01\n"
        "downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/x\n"
        "  # retries are dlstudy's --retries\n"
        "noOfrRetry=4\n"
        "manifestVersion=3.0\n"
        f"ListOfSeriesToDownload=\n{series}\n"
    )
    source = str(manifest) if via == "file" else "-"
    done = subprocess.run(
        [DLSTUDY, "download", "--url", url, "-o", str(tmp_path / "out"), "--json",
         "--from-file", source],
        input=manifest.read_bytes() if via == "stdin" else b"", capture_output=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    in_series = [i for i in cohort if i.series_uid == series]
    assert json.loads(done.stdout)["instances"]["downloaded"] == len(in_series) == 2


def test_a_plain_series_uid_in_another_shard_than_its_study_is_said_and_documented(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A plain list naming a study and one of its series: the series goes by its own UID, so
    when that is another shard's, both shards download its instances. Not fixed (routing a
    plain UID by its study would cost every shard a lookup of every UID): the shard that finds
    the UID to be a series warns, and the docs say so instead of promising disjoint shards."""
    url = embedded_server(cohort[0].path.parents[2])
    study = cohort[0].study_uid
    count, series = next(
        (count, i.series_uid)
        for count in range(2, 9)
        for i in cohort
        if Shard(1, count).owns(i.series_uid) != Shard(1, count).owns(study)
    )
    listing = tmp_path / "uids.txt"
    listing.write_text(f"{study}\n{series}\n")
    landed: dict[int, set[str]] = {}
    warned = []
    for number in range(1, count + 1):
        out = tmp_path / f"shard-{number}"
        done = run_installed("download", "--url", url, "-o", str(out), "--from-file",
                             str(listing), "--shard", f"{number}/{count}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        landed[number] = {p.name for p in out.rglob("*.dcm")}
        if "1 plain UID is a series or instance: --shard routed it by its own UID" in done.stderr:
            warned.append(number)
    by_series = [number for number in landed if Shard(number, count).owns(series)]
    assert warned == by_series
    in_series = {f"{i.sop_uid}.dcm" for i in cohort if i.series_uid == series}
    assert landed[by_series[0]] == in_series  # (and its study's shard has them too)
    assert sum(len(files) for files in landed.values()) == len(cohort) + len(in_series)
    usage = (Path(__file__).parents[2] / "docs" / "usage.md").read_text(encoding="utf-8")
    assert "if another line names its study, two shards\ndownload the same instances" in usage

    # One shard of one has no other to share with: no warning (it warned). Two such lines
    # of one shard are named both (it named the first alone).
    lower = sorted({i.series_uid for i in cohort} | {i.sop_uid for i in cohort})
    number, pair = next(
        (n, (a, b)) for a in lower for b in lower for n in (1, 2)
        if a < b and Shard(n, 2).owns(a) and Shard(n, 2).owns(b)
    )  # fmt: skip
    listing.write_text("\n".join(pair) + "\n")
    for shard, said in (("1/1", None), (f"{number}/2", f"{listing}: lines 1, 2: 2 plain UIDs")):
        done = run_installed("download", "--url", url, "-o", str(tmp_path / shard[0]),
                             "--from-file", str(listing), "--shard", shard)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (said in done.stderr) if said else ("--shard routed" not in done.stderr), shard
