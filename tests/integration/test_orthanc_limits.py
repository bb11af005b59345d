"""The installed CLI against an Orthanc whose search results are capped (LimitFindResults,
LimitFindInstances). Orthanc then sends the first cap + 1 results of a search and nothing past
them whatever the offset, without a Warning or a count: paging cannot see the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from pydicom import dcmread

from dlstudy.dicomweb.search import StudyQuery, StudyRecord, stream
from dlstudy.server.synth import SynthInstance, SynthSpec, generate
from dlstudy.settings import Settings

from ..cli_helpers import installed_download, run_installed
from ..fixtures.orthanc import OrthancServer, orthanc_configured

pytestmark = pytest.mark.integration

SERIES = 7  # more than the 5 series (cap 4 + 1) Orthanc lists of a study


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc-capped")
    with orthanc_configured(workdir, LimitFindResults=4, LimitFindInstances=0) as server:
        yield server


def upload_study(orthanc: OrthancServer, root: Path, seed: int) -> list[SynthInstance]:
    spec = SynthSpec(studies=1, series=SERIES, instances=2, size=2048, seed=seed)
    instances = generate(root, spec)
    for instance in instances:
        assert orthanc.upload(instance.path)["Status"] == "Success"
    return instances


def upload_a_day(orthanc: OrthancServer, root: Path, day: str, seed: int) -> list[SynthInstance]:
    """10 studies of one instance each, all of `day`, in an Orthanc emptied first."""
    orthanc.reset()
    spec = SynthSpec(studies=10, series=1, instances=1, size=1024, seed=seed,
                     study_dates=(day, day))  # fmt: skip
    instances = generate(root, spec)
    for instance in instances:
        assert orthanc.upload(instance.path)["Status"] == "Success"
    return instances


@pytest.mark.parametrize("mode", ["instance", "series"])
def test_a_study_of_more_series_than_orthanc_lists_comes_whole(
    capped: OrthancServer, tmp_path: Path, mode: str
) -> None:
    capped.reset()
    instances = upload_study(capped, tmp_path / "source", seed=71)
    out = tmp_path / "out"
    code, summary, stderr = installed_download(
        capped.dicomweb_url, instances[0].study_uid, out, "--mode", mode
    )
    assert code == 0, stderr
    assert summary["instances"]["downloaded"] == len(instances) == SERIES * 2
    for i in instances:
        data = (out / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm").read_bytes()
        assert data == capped.stored_file(capped.find_instance(i.sop_uid))


def test_a_study_orthanc_cannot_list_whole_is_exit_1(tmp_path: Path) -> None:
    with orthanc_configured(
        tmp_path / "orthanc", LimitFindResults=4, LimitFindInstances=6
    ) as orthanc:
        instances = upload_study(orthanc, tmp_path / "source", seed=72)
        code, summary, stderr = installed_download(
            orthanc.dicomweb_url, instances[0].study_uid, tmp_path / "out"
        )
    assert code == 1, stderr
    [failure] = summary["failures"]
    assert "5 of its 7 series" in failure["reason"], failure
    assert "LimitFindResults" in failure["reason"]
    assert summary["instances"]["downloaded"] == 0


def upload_studies(orthanc: OrthancServer, root: Path, count: int) -> list[str]:
    """`count` one-instance studies dated evenly over 2020, 1 January to 31 December: their
    UIDs, earliest first."""
    spec = SynthSpec(studies=count, series=1, instances=1, size=1024, seed=73,
                     study_dates=("20200101", "20201231"))  # fmt: skip
    instances = generate(root, spec)
    for instance in instances:
        assert orthanc.upload(instance.path)["Status"] == "Success"
    return [i.study_uid for i in instances]


def test_a_study_search_orthanc_cuts_is_exit_1_for_query_and_listed_again_by_sync(
    capped: OrthancServer, tmp_path: Path
) -> None:
    """10 studies, `LimitFindResults: 4`: Orthanc sends 5 and nothing at any offset. Paging
    ends there, and `query` and `sync` exited 0 with half the archive (`sync` downloaded it).
    A search of each half of the dates listed brings studies the search did not: `query`
    exits 1, saying why; `sync` lists the search again by date, as catalog pull does, and
    syncs all 10; narrowed by --study-date to 5 studies, the same search is whole."""
    capped.reset()
    studies = upload_studies(capped, tmp_path / "source", 10)
    url = capped.dicomweb_url

    listed = run_installed("query", "--url", url, "--uids")
    assert listed.returncode == 1, listed.stderr
    (line,) = listed.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: could not list {url}/studies completely: it sent 5")
    assert "LimitFindResults" in line and "--study-date" in line
    assert len(set(listed.stdout.split()) & set(studies)) == 5  # what it did send, printed

    out = tmp_path / "out"
    synced = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert synced.returncode == 0, synced.stderr
    assert "the server cut the search (it sent 5 studies, and nothing past them)" in synced.stderr
    assert json.loads(synced.stdout)["sync"]["synced"] == 10
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == set(studies)

    narrowed = run_installed("query", "--url", url, "--uids", "--study-date", "20200301-20201001")
    assert narrowed.returncode == 0, narrowed.stderr
    assert len(narrowed.stdout.split()) == 5


def test_a_study_that_comes_while_the_search_is_checked_is_no_cut(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """An archive taking studies while it is searched: one that comes after the listing shows
    up in the check's date window, and is found at the listing's end too: no cut, exit 0."""
    orthanc.reset()
    upload_studies(orthanc, tmp_path / "source", 6)
    day = ("20200601", "20200601")
    late_spec = SynthSpec(series=1, instances=1, size=1024, seed=74, study_dates=day)
    (late,) = generate(tmp_path / "late", late_spec)
    listed: list[str] = []

    def each(record: StudyRecord) -> None:
        if not listed:  # the whole listing is one page, already read: this one comes after it
            assert orthanc.upload(late.path)["Status"] == "Success"
        listed.append(record.study_uid)

    stream(Settings(url=orthanc.dicomweb_url), StudyQuery(), each)
    assert len(listed) == 6 and late.study_uid not in listed


def test_a_catalog_pull_of_an_orthanc_that_cuts_its_search_finds_every_study(
    capped: OrthancServer, tmp_path: Path
) -> None:
    """`catalog pull` of the 10 studies Orthanc lists only 5 of at a time: the page after the
    first brings nothing, the halves of the dates listed bring others, so the pull splits the
    scope by date until each window's answer is whole: all 10 catalogued (it had 5)."""
    capped.reset()
    studies = upload_studies(capped, tmp_path / "source", 10)
    db = tmp_path / "catalog.duckdb"
    assert pull_everything(capped, db) == set(studies)

    # What the error of a cut `sync` suggests: the catalog's studies, synced without a search.
    out = tmp_path / "out"
    synced = run_installed(
        "sync", "--catalog", str(db), "--url", capped.dicomweb_url, "-o", str(out), "--json"
    )
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["instances"]["downloaded"] == 10
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == set(studies)


def test_a_day_orthanc_cuts_is_listed_again_by_time_of_day(
    capped: OrthancServer, tmp_path: Path
) -> None:
    """The nightly `sync --study-date DAY`, 10 studies of that day behind `LimitFindResults:
    4`: the windows that check a short listing were the days before and after the one listed,
    outside the search, so the 5 studies Orthanc sent were taken for the whole day, exit 0.
    The day is now also asked for in two StudyTime windows: `query` exits 1; `sync` lists the
    day again, split by time of day until each answer is whole, as a catalog pull of the day
    does: all 10."""
    instances = upload_a_day(capped, tmp_path / "source", "20200601", seed=75)
    url, day = capped.dicomweb_url, ("--study-date", "20200601")

    listed = run_installed("query", "--url", url, "--uids", *day)
    assert listed.returncode == 1, listed.stdout
    assert "StudyDate 20200601 and StudyTime" in listed.stderr, listed.stderr
    assert "LimitFindResults" in listed.stderr

    out = tmp_path / "out"
    synced = run_installed("sync", "--url", url, "-o", str(out), "--json", *day)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["sync"]["synced"] == 10
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == {i.study_uid for i in instances}

    db = tmp_path / "day.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *day)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["studies"] == 10
    night = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert night.returncode == 0, night.stderr
    assert json.loads(night.stdout)["sync"]["already_complete"] == 10


def test_a_day_of_a_searchs_own_times_orthanc_cuts_is_not_taken_for_whole(
    capped: OrthancServer, tmp_path: Path
) -> None:
    """`--study-date DAY --filter StudyTime=...`: the search's own StudyTime turned the time
    windows off, and the date windows lie outside the day, so the 5 studies Orthanc sent of
    10 were taken for the whole search, exit 0 (query and sync). The time windows now split
    the times listed inside the search's own."""
    instances = upload_a_day(capped, tmp_path / "source", "20200602", seed=76)
    url = capped.dicomweb_url
    search = ("--study-date", "20200602", "--filter", "StudyTime=000000-235959")

    listed = run_installed("query", "--url", url, "--uids", *search)
    assert listed.returncode == 1, listed.stdout
    assert "StudyDate 20200602 and StudyTime" in listed.stderr, listed.stderr

    out = tmp_path / "out"
    synced = run_installed("sync", "--url", url, "-o", str(out), "--json", *search)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["sync"]["synced"] == 10
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == {i.study_uid for i in instances}

    # The catalog's time windows lie inside the search's own StudyTime, one key a request.
    times = sorted(dcmread(i.path, stop_before_pixels=True).StudyTime for i in instances)
    own = ("--study-date", "20200602", "--filter", f"StudyTime={times[2]}-{times[7]}")
    db = tmp_path / "day.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *own)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["studies"] == 6


def test_a_study_in_the_last_second_of_a_time_window_orthanc_cuts_is_catalogued(
    capped: OrthancServer, tmp_path: Path
) -> None:
    """Nine studies of one day behind `LimitFindResults: 4`, two of them at 11:59:59.5 and
    23:59:59.999: the day is split by time, and Orthanc matched neither to the windows
    `000000-115959` and `120000-235959` (7 of 9, exit 0). The windows' upper bounds now
    hold their whole last second (`115959.999999`), the day's last is open."""
    capped.reset()
    spec = SynthSpec(studies=9, series=1, instances=1, size=1024, seed=77,
                     study_dates=("20200603", "20200603"))  # fmt: skip
    instances = generate(tmp_path / "source", spec)
    times = [*(f"{h:02d}0000" for h in range(8, 15)), "235959.999", "115959.5"]
    for instance, time in zip(instances, times, strict=True):
        ds = dcmread(instance.path)
        ds.StudyTime = time
        ds.save_as(instance.path, enforce_file_format=True)
        assert capped.upload(instance.path)["Status"] == "Success"
    assert pull_everything(capped, tmp_path / "c.duckdb") == {i.study_uid for i in instances}


def pull_everything(orthanc: OrthancServer, db: Path) -> set[str]:
    """`catalog pull` of `orthanc` into `db`, which must pass and say it has every study it
    catalogued; the study UIDs catalogued."""
    pulled = run_installed(
        "catalog", "pull", "--url", orthanc.dicomweb_url, "--db", str(db), "--json"
    )
    assert pulled.returncode == 0, pulled.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        catalogued = {r[0] for r in con.execute("SELECT study_uid FROM studies").fetchall()}
    assert json.loads(pulled.stdout)["studies"] == len(catalogued)
    return catalogued


def test_a_day_orthanc_cuts_with_studies_without_a_study_time_is_not_taken_for_whole(
    capped: OrthancServer, tmp_path: Path
) -> None:
    """Seven studies of one day behind `LimitFindResults: 4`, two without a StudyTime, one
    stored first and one last: the day is split by time, Orthanc matches no empty time to a
    time range, so the one past the day's first page was in no window: 6 of 7, exit 0
    (`catalog pull` and `sync`). No count says how many such studies there are: as for
    studies without a StudyDate, the pull says so, unreachable unknown, exit 1."""
    capped.reset()
    spec = SynthSpec(studies=7, series=1, instances=1, size=1024, seed=78,
                     study_dates=("20200604", "20200604"))  # fmt: skip
    instances = generate(tmp_path / "source", spec)
    untimed = (instances[0], instances[-1])
    for instance in instances:
        if instance in untimed:
            ds = dcmread(instance.path)
            del ds.StudyTime
            ds.save_as(instance.path, enforce_file_format=True)
        assert capped.upload(instance.path)["Status"] == "Success"
    url, day = capped.dicomweb_url, ("--study-date", "20200604")

    db = tmp_path / "c.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *day)
    assert pulled.returncode == 1, pulled.stderr
    summary = json.loads(pulled.stdout)
    assert (summary["studies"], summary["unreachable"]) == (6, None), summary
    (note,) = summary["notes"]
    assert "of 20200604 was cut" in note and "without a StudyTime" in note, note

    synced = run_installed("sync", "--url", url, "-o", str(tmp_path / "out"), "--json", *day)
    assert synced.returncode == 1, synced.stderr
    (failure,) = json.loads(synced.stdout)["failures"]
    assert "without a StudyTime" in failure["reason"], failure
