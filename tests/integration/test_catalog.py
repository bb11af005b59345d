"""`dlstudy catalog`: pull an archive into a local DuckDB catalog, query it offline, sync by
difference. Through the installed CLI against the embedded server (its page cap and
ignore-offset knobs) and against Orthanc (tests/integration/test_orthanc_catalog.py)."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import subprocess
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import duckdb
import pydicom
import pytest

from dlstudy.server import VirtualSpec
from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import DLSTUDY, assert_same_files, run_installed
from ..fixtures.embedded_server import SeenRequests, StartServer

pytestmark = pytest.mark.integration


def synth(root: Path, studies: int, *, seed: int, dates: tuple[str, str]) -> list[SynthInstance]:
    spec = SynthSpec(
        studies=studies, series=1, instances=2, size=1024, seed=seed, study_dates=dates
    )
    return generate(root, spec)


def study_uids(instances: list[SynthInstance]) -> set[str]:
    return {i.study_uid for i in instances}


def pull(url: str, db: Path, *extra: str) -> dict[str, Any]:
    result = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *extra)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def catalog_rows(db: Path, sql: str = "SELECT * FROM studies ORDER BY study_uid") -> list[Any]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def catalog_query(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_installed("catalog", "query", "--db", str(db), *args)


@pytest.mark.parametrize("cap", [1, 2])
def test_a_capped_archive_that_ignores_offset_is_enumerated_completely(
    embedded_server: StartServer, tmp_path: Path, cap: int
) -> None:
    """30 studies over 10 days (3 a day): a page of 1 or 2 and no offset means splitting by
    date down to single days, then by time of day."""
    source = tmp_path / "source"
    instances = synth(source, 30, seed=cap, dates=("20180101", "20180110"))
    capped = embedded_server(source, max_page_size=cap, ignore_offset=True)
    db = tmp_path / "c.duckdb"

    summary = pull(capped, db)

    assert summary["studies"] == 30 and summary["unreachable"] == 0
    assert {r[0] for r in catalog_rows(db)} == study_uids(instances)
    # every attribute as an uncapped `dlstudy query` sees it
    plain = embedded_server(source)
    searched = run_installed("query", "--url", plain, "--json")
    assert searched.returncode == 0, searched.stderr
    listed = catalog_query(db, "--json")
    assert listed.returncode == 0, listed.stderr
    key = "study_uid"
    expected = sorted((json.loads(x) for x in searched.stdout.splitlines()), key=lambda r: r[key])
    got = sorted((json.loads(x) for x in listed.stdout.splitlines()), key=lambda r: r[key])
    assert got == expected
    with duckdb.connect(str(db), read_only=True) as con:
        states = dict(con.execute("SELECT state, count(*) FROM windows GROUP BY state").fetchall())
        assert states.get("split", 0) > 10  # it really had to split (date, then time)
        keys = [k for (k,) in con.execute("SELECT key FROM windows").fetchall()]
    assert any(" " in k for k in keys), "no window was split by time of day"


def blank(instances: list[SynthInstance], uids: Collection[str], keyword: str) -> None:
    """`keyword` left empty ("") in the files of the studies `uids`; removed if `keyword` is
    StudyTime, which the embedded server and Orthanc then match to no time range."""
    for instance in instances:
        if instance.study_uid in uids:
            ds = pydicom.dcmread(instance.path)
            if keyword == "StudyTime":
                del ds.StudyTime
            else:
                setattr(ds, keyword, "")
            ds.save_as(instance.path, enforce_file_format=True)


def set_study_times(instances: list[SynthInstance], times: list[str]) -> None:
    """The studies' StudyTime, one of `times` each, in the order of their UIDs."""
    order = sorted(study_uids(instances))
    for instance in instances:
        ds = pydicom.dcmread(instance.path)
        ds.StudyTime = times[order.index(instance.study_uid)]
        ds.save_as(instance.path, enforce_file_format=True)


def test_studies_in_the_last_second_of_a_time_window_are_catalogued(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Nine studies of one day behind a silent cap of 2, offset ignored: the walk splits the
    day by time. The windows were `000000-115959` and `120000-235959`, which neither the
    embedded server nor Orthanc matches 11:59:59.5 or 23:59:59.999 to: 7 of 9, exit 0, and
    a --full pull then recorded the two as gone from the archive."""
    source = tmp_path / "source"
    instances = synth(source, 9, seed=81, dates=("20200101", "20200101"))
    whole = [f"{h:02d}0000" for h in range(8, 15)]
    set_study_times(instances, [*whole, "235959.999", "115959.5"])
    capped = embedded_server(source, max_page_size=2, ignore_offset=True, silent_cap=True)
    db = tmp_path / "c.duckdb"

    first = pull(capped, db)
    full = pull(capped, db, "--full")

    assert (first["studies"], first["unreachable"]) == (9, 0)
    assert {r[0] for r in catalog_rows(db)} == study_uids(instances)
    assert (full["studies"], full["deleted"]) == (9, 0)


@pytest.mark.parametrize("silent", [False, True])
@pytest.mark.parametrize("key", ["StudyDate", "StudyTime"])
def test_a_server_that_ignores_the_windows_keys_stops_the_pull(
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    tmp_path: Path,
    key: str,
    silent: bool,
) -> None:
    """A gateway in front of a capped archive that drops StudyDate (or StudyTime): every
    window brought the same first page. With a Warning the walk split down to one-second
    windows, ~2^17 requests a day, without end; with a silent cap it took 4 of 30 studies and
    exited 0. The first answer with a study outside the window asked for stops the pull,
    exit 1, and a --full pull records nothing as gone."""
    source = tmp_path / "source"
    days = ("20200101", "20200110") if key == "StudyDate" else ("20200101", "20200101")
    instances = synth(source, 30, seed=82, dates=days)
    db = tmp_path / "c.duckdb"
    assert pull(embedded_server(source), db)["studies"] == 30
    capped = embedded_server(source, max_page_size=4, ignore_offset=True, silent_cap=silent)
    seen_requests.gateway_keys = {key}

    for pulled, extra in ((tmp_path / "new.duckdb", []), (db, ["--full", "--archive-moved"])):
        result = run_installed(
            "catalog", "pull", "--url", capped, "--db", str(pulled), "--json", *extra
        )

        assert result.returncode == 1, result.stderr
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("dlstudy: error:")]
        assert f"the server ignores {key}" in line, line
        summary = json.loads(result.stdout)
        assert summary["exit_status"] == 1 and summary["requests"] < 100, summary
    assert {r[0] for r in catalog_rows(db)} == study_uids(instances)
    assert catalog_rows(db, "SELECT * FROM changes WHERE change = 'deleted'") == []


def test_offset_paging_with_a_cap_of_one(embedded_server: StartServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    instances = synth(source, 7, seed=5, dates=("20200101", "20200103"))
    url = embedded_server(source, max_page_size=1)
    db = tmp_path / "c.duckdb"
    summary = pull(url, db)
    assert summary["studies"] == 7
    assert {r[0] for r in catalog_rows(db)} == study_uids(instances)
    (offset_ok,) = catalog_rows(db, "SELECT value FROM meta WHERE key = 'offset_ok'")
    assert offset_ok == ("1",)
    # --walk split never pages by offset: same studies, by windows
    split_db = tmp_path / "split.duckdb"
    assert pull(url, split_db, "--walk", "split")["studies"] == 7
    assert catalog_rows(split_db, "SELECT study_uid FROM studies ORDER BY 1") == catalog_rows(
        db, "SELECT study_uid FROM studies ORDER BY 1"
    )


def test_a_pull_killed_at_a_random_moment_resumes_to_the_same_catalog(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    synth(source, 100, seed=7, dates=("20170101", "20170220"))
    url = embedded_server(source, max_page_size=2, ignore_offset=True, latency=0.03)
    reference = tmp_path / "reference.duckdb"
    started = time.monotonic()
    pull(url, reference)
    uninterrupted = time.monotonic() - started

    db = tmp_path / "killed.duckdb"
    rng = random.Random()
    kills = 0
    for _ in range(6):  # killed twice, at random moments of the walk (bounded retries)
        process = subprocess.Popen(
            [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30  # a slow start-up must not make the kill land first
        while not db.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.2, 0.6) * uninterrupted)
        process.send_signal(signal.SIGKILL)
        killed = process.wait(timeout=30) == -signal.SIGKILL
        pulls = _pulls_recorded(db)
        if not pulls:  # killed before the pull recorded itself: no walk to resume yet
            continue
        if kills == 0:  # the first kill must land mid-walk (the second may find it done)
            assert killed, "the pull ended before the kill"
            assert pulls == [(None,)]
        kills += 1
        if kills == 2:
            break
    assert kills == 2
    if catalog_rows(db, "SELECT finished FROM pulls") == [(None,)]:  # killed twice
        summary = pull(url, db)
        assert (summary["pull"], summary["kind"], summary["resumed"]) == (1, "first", True)

    assert catalog_rows(db, "SELECT pull, kind FROM pulls") == [(1, "first")]
    assert catalog_rows(db) == catalog_rows(reference)


def _pulls_recorded(db: Path) -> list[Any]:
    """The `finished` column of the catalog's pulls; none before a pull has recorded itself."""
    if not db.exists():
        return []
    try:
        return catalog_rows(db, "SELECT finished FROM pulls")
    except duckdb.CatalogException:  # the file is made, its tables not yet
        return []


def _add_instance(study_dir: Path) -> Path:
    """One more instance in the first series of a study on disk (a copy, new SOP UID)."""
    source = next(study_dir.rglob("*.dcm"))
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".9"
    target = source.with_name(f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(target, enforce_file_format=True)
    return target


def test_a_later_pull_finds_exactly_what_was_added(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    today = dt.date.today()
    old = synth(source, 20, seed=11, dates=("20150101", "20150110"))
    recent_first = (today - dt.timedelta(days=3)).strftime("%Y%m%d")
    recent = synth(source, 3, seed=12, dates=(recent_first, today.strftime("%Y%m%d")))
    db = tmp_path / "c.duckdb"
    first = pull(embedded_server(source, max_page_size=3), db)
    assert first["studies"] == 23

    added = synth(source, 5, seed=13, dates=("20150103", "20150107"))
    grown = recent[0]
    _add_instance(source / grown.study_uid)
    # a server restarted (to index the new files) is the same archive on another port
    second = pull(embedded_server(source, max_page_size=3), db, "--archive-moved")

    assert second["kind"] == "update" and second["studies"] == 28
    assert second["new"] == 5 and second["instances_changed"] == 1
    changes = catalog_rows(
        db, "SELECT study_uid, change, instances_before, instances_after FROM changes"
    )
    assert {(u, c) for u, c, _, _ in changes} == {(u, "new") for u in study_uids(added)} | {
        (grown.study_uid, "instances_added")
    }
    assert (grown.study_uid, "instances_added", 2, 3) in changes
    assert {r[0] for r in catalog_rows(db)} == study_uids(old + recent + added)
    # nothing new: a third pull changes nothing
    third = pull(embedded_server(source, max_page_size=3), db, "--archive-moved")
    assert (third["new"], third["instances_changed"], third["studies"]) == (0, 0, 28)


def test_query_outputs_filters_and_sql(embedded_server: StartServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    instances = synth(source, 6, seed=21, dates=("20190101", "20190106"))
    db = tmp_path / "c.duckdb"
    pull(embedded_server(source), db)
    uids = sorted(study_uids(instances))

    assert sorted(catalog_query(db, "--uids").stdout.split()) == uids
    csv_lines = catalog_query(db, "--csv").stdout.splitlines()
    assert csv_lines[0].startswith("study_uid,patient_id,patient_name,study_date")
    assert len(csv_lines) == 7
    dated = catalog_query(db, "--study-date", "20190102-20190103", "--json")
    assert {json.loads(x)["study_date"] for x in dated.stdout.splitlines()} == {
        "20190102",
        "20190103",
    }
    where = catalog_query(db, "--where", "study_date >= '20190105' AND instances = 2", "--uids")
    assert len(where.stdout.split()) == 2
    first = json.loads(catalog_query(db, "--json").stdout.splitlines()[0])
    by_patient = catalog_query(db, "--patient-id", first["patient_id"][:-1] + "?", "--uids")
    assert first["study_uid"] in by_patient.stdout.split()
    count = catalog_query(
        db, "--sql", "SELECT count(*) AS n, sum(instances) FROM studies", "--json"
    )
    assert json.loads(count.stdout) == {"n": 6, "sum(instances)": 12}
    none = catalog_query(db, "--modality", "MR")
    assert none.returncode == 4 and none.stderr.startswith("dlstudy: error: no study")
    bad = catalog_query(db, "--where", "no_such_column = 1")
    assert bad.returncode == 2
    (line,) = bad.stderr.splitlines()
    assert line.startswith("dlstudy: error: catalog query failed:")
    missing = catalog_query(tmp_path / "nothere.duckdb", "--uids")
    assert missing.returncode == 2 and "no catalog at" in missing.stderr


def test_download_from_catalog_and_sync_catalog_fetch_exactly_what_is_missing(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    instances = synth(source, 6, seed=31, dates=("20210101", "20210106"))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db)
    out = tmp_path / "out"

    status = run_installed("catalog", "status", "--db", str(db), "-o", str(out))
    assert status.returncode == 0, status.stderr
    assert status.stdout.split("\n")[2].split()[:2] == ["missing", "6"]

    where = "study_date <= '20210102'"
    one = run_installed(
        "download", "--from-catalog", str(db), "--where", where, "--url", url, "-o", str(out),
        "--json",
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["instances"]["downloaded"] == 4
    missing = run_installed(
        "catalog", "status", "--db", str(db), "-o", str(out), "--state", "missing", "--uids"
    )
    downloaded = set(json.loads(one.stdout)["study_uids"])
    assert len(downloaded) == 2
    assert set(missing.stdout.split()) == study_uids(instances) - downloaded

    two = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)
    assert summary["instances"]["downloaded"] == 8
    assert summary["sync"]["already_complete"] == 2
    assert_same_files(instances, out)
    done = run_installed("catalog", "status", "--db", str(db), "-o", str(out), "--json")
    assert {json.loads(x)["state"] for x in done.stdout.splitlines()} == {"complete"}
    again = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert json.loads(again.stdout)["instances"]["downloaded"] == 0


def test_download_from_catalog_fails_a_study_with_an_invalid_uid_alone(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A catalog holds what the server sent: a study UID that is no UID (a path, letters) is a
    failure of that study (exit 1) with its reason in --json and --report, not a usage error
    stopping the run; the other studies are downloaded, nothing is written outside OUT."""
    source = tmp_path / "source"
    instances = synth(source, 1, seed=37, dates=("20210101", "20210101"))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db)
    bad = ["../../x", "1.2.abc"]
    with duckdb.connect(str(db)) as con:
        for uid in bad:
            con.execute("INSERT INTO studies SELECT * REPLACE (? AS study_uid) FROM studies "
                        "LIMIT 1", [uid])  # fmt: skip
    out = tmp_path / "out" / "run"
    report = tmp_path / "landed.csv"
    result = run_installed(
        "download", "--from-catalog", str(db), "--url", url, "-o", str(out), "--json",
        "--report", str(report),
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == 2
    assert_same_files(instances, out)
    failed = {failure["study"]: failure["reason"] for failure in summary["failures"]}
    assert failed == {
        uid: f"the catalog lists a study with an invalid UID {uid!r}: not downloaded" for uid in bad
    }
    rows = report.read_text().splitlines()
    assert sum(row.startswith("failed,") for row in rows) == 2
    assert any(row.startswith("failed,../../x,") for row in rows)
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "x").exists()
    text = run_installed("download", "--from-catalog", str(db), "--url", url, "-o", str(out))
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "invalid UID '../../x'" in text.stderr


def _add_invalid_uids(db: Path, uids: list[str]) -> None:
    """Catalogue studies under UIDs that are no UIDs, as a server may send them."""
    with duckdb.connect(str(db)) as con:
        for uid in uids:
            con.execute("INSERT INTO studies SELECT * REPLACE (? AS study_uid) FROM studies "
                        "LIMIT 1", [uid])  # fmt: skip


def test_sync_catalog_says_the_catalog_lists_an_invalid_uid(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """With --catalog the UID came from the catalog, not from a search of the server: it said
    'the server lists', where download --from-catalog says 'the catalog lists'."""
    source = tmp_path / "source"
    synth(source, 1, seed=39, dates=("20210101", "20210101"))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db)
    _add_invalid_uids(db, ["../../x"])
    out = tmp_path / "out"
    result = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert result.returncode == 1, result.stderr
    (failure,) = json.loads(result.stdout)["failures"]
    reason = "the catalog lists a study with an invalid UID '../../x': not downloaded"
    assert failure["reason"] == reason


def test_download_from_catalog_with_an_invalid_uid_and_no_study_found_fails(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """An invalid catalogued UID failed and the other studies are gone from the server: that is
    a run that failed (exit 1, as sync --catalog), not one where nothing matched (it was 4)."""
    source = tmp_path / "source"
    instances = synth(source, 1, seed=40, dates=("20210101", "20210101"))
    db = tmp_path / "c.duckdb"
    pull(embedded_server(source), db)
    _add_invalid_uids(db, ["1.2.abc"])
    instances[0].path.unlink()
    (tmp_path / "empty").mkdir()
    url = embedded_server(tmp_path / "empty")  # the archive now: the study deleted
    pull(url, db, "--archive-moved")  # (an update pull: it keeps the catalogued studies)
    out = tmp_path / "out"
    result = run_installed("download", "--from-catalog", str(db), "--url", url, "-o", str(out),
                           "--json")  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["exit_status"] == 1 and summary["error"] is None
    reasons = sorted(f["reason"] for f in summary["failures"])
    assert len(reasons) == 2 and "invalid UID '1.2.abc'" in reasons[1], reasons
    assert "not found" in reasons[0], reasons


def test_download_still_refuses_an_invalid_study_uid_it_is_given(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A UID typed on the command line or in --from-file is the user's: still a usage error."""
    source = tmp_path / "source"
    synth(source, 1, seed=38, dates=("20210101", "20210101"))
    url = embedded_server(source)
    listed = tmp_path / "uids.txt"
    listed.write_text("1.2.abc\n")
    for given in (["1.2.abc"], ["--from-file", str(listed)]):
        result = run_installed("download", *given, "--url", url, "-o", str(tmp_path / "o"))
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert "invalid" in line and "'1.2.abc'" in line


def test_export_to_parquet_and_csv_reads_back(embedded_server: StartServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    synth(source, 4, seed=41, dates=("20220101", "20220104"))
    db = tmp_path / "c.duckdb"
    pull(embedded_server(source), db)
    rows = catalog_rows(db, "SELECT study_uid, instances FROM studies ORDER BY 1")
    for name in ("c.parquet", "c.csv"):
        target = tmp_path / name
        result = run_installed("catalog", "export", "--db", str(db), "--to", str(target))
        assert result.returncode == 0, result.stderr
        with duckdb.connect() as con:
            back = con.execute(f"SELECT study_uid, instances FROM '{target}' ORDER BY 1").fetchall()
        assert back == rows
    # Modalities in a CSV as `catalog query --csv` writes them (`CT`, `CT\\MR`), not `[CT]`.
    exported = (tmp_path / "c.csv").read_text().splitlines()
    queried = run_installed("catalog", "query", "--db", str(db), "--csv").stdout.splitlines()
    column = exported[0].split(",").index("modalities")
    assert sorted(line.split(",")[column] for line in exported[1:]) == sorted(
        line.split(",")[queried[0].split(",").index("modalities")] for line in queried[1:]
    )
    assert "[" not in exported[1]
    wrong = run_installed("catalog", "export", "--db", str(db), "--to", str(tmp_path / "c.xlsx"))
    assert wrong.returncode == 2 and "--to must end in .parquet or .csv" in wrong.stderr


def test_series_level(embedded_server: StartServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    spec = SynthSpec(studies=3, series=2, instances=2, size=1024, seed=51)
    instances = generate(source, spec)
    db = tmp_path / "c.duckdb"
    pull(embedded_server(source), db, "--level", "series")
    series = catalog_rows(db, "SELECT series_uid, instances FROM series ORDER BY 1")
    assert series == sorted({(i.series_uid, 2) for i in instances})


@pytest.mark.parametrize("silent", [True, False])
def test_series_a_server_cannot_list_whole_are_counted_and_listed_again(
    embedded_server: StartServer, tmp_path: Path, silent: bool
) -> None:
    """A study of 7 series behind a page cap of 4, offset ignored. Cut silently: the catalog
    took its 4 series for all of them, exit 0. Announced (Warning: 299): the listing error
    ended the pull before it finished, and every later pull again, so the catalog never
    opened ("its first pull has not finished"). Now the other studies' series are catalogued,
    that study's are not, the pull ends (exit 1, saying so) and the next pull asks again."""
    source = tmp_path / "source"
    big = generate(source, SynthSpec(studies=1, series=7, instances=1, size=1024, seed=52,
                                     study_dates=("20210606", "20210606")))  # fmt: skip
    small = generate(source, SynthSpec(studies=2, series=2, instances=1, size=1024, seed=53,
                                       study_dates=("20210101", "20210101")))  # fmt: skip
    url = embedded_server(source, max_page_size=4, ignore_offset=True, silent_cap=silent)
    db = tmp_path / "c.duckdb"
    for _ in range(2):
        result = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json",
                               "--level", "series")  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["series_cut"] == 1
        said = [line for line in result.stderr.splitlines() if big[0].study_uid in line]
        assert len(said) == 1 and "its series are not catalogued" in said[0], result.stderr
        assert result.stderr.splitlines()[-1] == (
            "dlstudy: error: the listing is incomplete: the series of some studies could not "
            "be listed whole (see above); the next pull lists them again"
        )
    series = catalog_rows(db, "SELECT series_uid FROM series ORDER BY 1")
    assert series == sorted((i.series_uid,) for i in small)
    studies = run_installed("catalog", "query", "--db", str(db), "--uids")
    assert studies.returncode == 0 and len(studies.stdout.split()) == 3


def test_usage_errors_are_one_line(embedded_server: StartServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    synth(source, 2, seed=61, dates=("20220101", "20220102"))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db, "--study-date", "20220101")
    other = run_installed("catalog", "pull", "--url", url, "--db", str(db))
    assert other.returncode == 2
    assert "was pulled with other filters (study_date=20220101)" in other.stderr
    where = run_installed("download", "--where", "true", "--url", url, "-o", str(tmp_path / "o"))
    assert where.returncode == 2 and "--from-catalog" in where.stderr
    with duckdb.connect(str(db)):  # another process holds the catalog
        held = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--study-date",
                             "20220101")  # fmt: skip
    assert held.returncode == 5, held.stderr
    assert held.stderr.startswith("dlstudy: error: catalog") and "in use" in held.stderr
    refused = run_installed(
        "catalog", "pull", "--url", "http://127.0.0.1:1/dicomweb", "--db", str(tmp_path / "x.db")
    )
    assert refused.returncode == 3
    (line,) = refused.stderr.splitlines()
    assert line.startswith("dlstudy: error: ") and "refused" in line
    not_a_catalog = tmp_path / "notes.txt"
    not_a_catalog.write_text("mine")
    bad = catalog_query(not_a_catalog, "--uids")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert not_a_catalog.read_text() == "mine"


def test_a_run_refused_for_its_catalog_or_list_leaves_no_output_folder(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """download and sync that stop on their catalog (held by another process, no catalog, a
    bad --where) or their --from-file make nothing: sync made OUT before reading the catalog."""
    source = tmp_path / "source"
    synth(source, 1, seed=67, dates=("20220101", "20220101"))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db)
    junk = tmp_path / "junk.db"
    junk.write_text("mine")
    out = tmp_path / "out"
    runs: list[tuple[int, tuple[str, ...]]] = []
    for catalog in (db, junk, tmp_path / "none.db"):
        runs += [
            (5 if catalog == db else 2, ("download", "--from-catalog", str(catalog))),
            (5 if catalog == db else 2, ("sync", "--catalog", str(catalog))),
        ]
    runs += [
        (2, ("sync", "--catalog", str(db), "--where", "instances >")),
        (2, ("download", "--from-file", str(tmp_path / "no-list.txt"))),
    ]
    for expected, args in runs:
        if expected == 5:
            with duckdb.connect(str(db)):  # another process holds the catalog
                result = run_installed(*args, "--url", url, "-o", str(out))
        else:
            result = run_installed(*args, "--url", url, "-o", str(out))
        assert result.returncode == expected, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert not out.exists(), args


def test_pull_refuses_a_database_that_is_no_catalog(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A user's own DuckDB file given as --db is left exactly as it was: a one-line usage
    error, whether its tables have other names or one is called `studies`. A new database
    without tables, or an empty file, becomes a catalog."""
    source = tmp_path / "source"
    instances = synth(source, 2, seed=62, dates=("20220101", "20220102"))
    url = embedded_server(source)
    foreign = {
        "other": "CREATE TABLE measurements (id INTEGER, value DOUBLE)",
        "studies": "CREATE TABLE studies (id INTEGER, title VARCHAR)",
    }
    for name, ddl in foreign.items():
        db = tmp_path / f"{name}.duckdb"
        with duckdb.connect(str(db)) as con:
            con.execute(ddl)
            con.execute("INSERT INTO " + ddl.split()[2] + " VALUES (1, 2)")
        before = db.read_bytes()
        refused = run_installed("catalog", "pull", "--url", url, "--db", str(db))
        assert refused.returncode == 2, refused.stderr
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"dlstudy: error: {db} is a DuckDB database but not a dlstudy")
        for reading in (  # what reads a catalog says so too, rather than an SQL error
            ["catalog", "query", "--db", str(db)],
            ["catalog", "status", "--db", str(db), "-o", str(tmp_path / "out")],
            ["catalog", "export", "--db", str(db), "--to", str(tmp_path / "x.csv")],
            ["download", "--from-catalog", str(db), "--url", url, "-o", str(tmp_path / "o")],
            ["sync", "--catalog", str(db), "--url", url, "-o", str(tmp_path / "o")],
        ):
            result = run_installed(*reading)
            assert result.returncode == 2, (reading, result.stderr)
            assert result.stderr == (
                f"dlstudy: error: {db} is a DuckDB database but not a dlstudy catalog "
                f"(it holds {ddl.split()[2]})\n"
            ), reading
        assert db.read_bytes() == before
        assert not db.with_name(db.name + ".wal").exists()
    blank = tmp_path / "blank.duckdb"
    duckdb.connect(str(blank)).close()
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    for db in (blank, empty):
        assert pull(url, db)["studies"] == 2
        assert {r[0] for r in catalog_rows(db)} == study_uids(instances)


def archive_of(db: Path) -> str:
    (row,) = catalog_rows(db, "SELECT value FROM meta WHERE key = 'archive'")
    return str(row[0])


def test_a_catalog_lists_one_archive(embedded_server: StartServer, tmp_path: Path) -> None:
    """A pull from another server would add its studies as 'new': refused, naming both
    addresses without their secrets, unless --archive-moved says it is the same archive at a
    new address. A first pull that reached nothing binds no address, nor does an
    --archive-moved pull that reached nothing; a catalog from before addresses were recorded
    takes the next one pulled."""
    first, second = tmp_path / "first", tmp_path / "second"
    synth(first, 2, seed=63, dates=("20220101", "20220102"))
    synth(second, 3, seed=64, dates=("20220101", "20220102"))
    url_a, url_b = embedded_server(first), embedded_server(second)
    db = tmp_path / "c.duckdb"
    dead = run_installed("catalog", "pull", "--url", "http://127.0.0.1:1/dicomweb", "--db", str(db))
    assert dead.returncode == 3, dead.stderr
    assert pull(url_a + "/", db)["studies"] == 2  # the mistyped first --url bound nothing
    assert archive_of(db) == url_a
    before = catalog_rows(db)

    host_b = url_b.removeprefix("http://")
    secret_b = f"http://radiology:pw-secret@{host_b}?subscription-key=key-secret"
    refused = run_installed("catalog", "pull", "--url", secret_b, "--db", str(db))
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.splitlines()
    assert line == (
        f"dlstudy: error: catalog {db} lists the archive at {url_a}, not {url_b}: use another "
        "--db for another archive, or --archive-moved if it is the same archive at a new address"
    )
    assert catalog_rows(db) == before and archive_of(db) == url_a

    moved = embedded_server(first)  # the same archive at a new address
    # Moved to a mistyped address first: that pull reached nothing, so it binds nothing (it
    # bound the typo, and the next night's pull with the right --url was refused, exit 2).
    typo = run_installed(
        "catalog", "pull", "--url", "http://127.0.0.1:1/dicomwbe", "--db", str(db),
        "--archive-moved",
    )  # fmt: skip
    assert typo.returncode == 3, typo.stderr
    assert pull(moved, db)["new"] == 0
    assert archive_of(db) == moved
    assert pull(moved, db, "--archive-moved")["new"] == 0
    assert pull(moved, db)["new"] == 0
    with duckdb.connect(str(db)) as con:  # as catalogs were written before addresses
        con.execute("DELETE FROM meta WHERE key = 'archive'")
    assert pull(url_a, db)["new"] == 0
    assert archive_of(db) == url_a


def test_sync_and_download_refuse_a_catalog_of_another_archive(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """sync --catalog with the --url of another archive failed each study as not found,
    exit 1, never saying the catalog lists another archive (and an archive holding the same
    UIDs would have been downloaded from). Refused as a pull is, naming both addresses without
    their secrets, exit 2, before any request; from the catalog's own archive both still run."""
    first, second = tmp_path / "first", tmp_path / "second"
    synth(first, 2, seed=65, dates=("20220101", "20220102"))
    synth(second, 3, seed=66, dates=("20220101", "20220102"))
    url_a, url_b = embedded_server(first), embedded_server(second)
    db, out = tmp_path / "c.duckdb", tmp_path / "out"
    pull(url_a, db)
    asked = len(seen_requests.requests)
    host_b = url_b.removeprefix("http://")
    secret_b = f"http://radiology:pw-secret@{host_b}?subscription-key=key-secret"
    said = (
        f"dlstudy: error: catalog {db} lists the archive at {url_a}, not {url_b}: give that "
        "--url, or pull this archive into another --db (--archive-moved if the archive moved)"
    )
    for command in (["sync", "--catalog"], ["download", "--from-catalog"]):
        result = run_installed(*command, str(db), "--url", secret_b, "-o", str(out), "--json")
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [said]
        assert json.loads(result.stdout)["exit_status"] == 2
    assert len(seen_requests.requests) == asked and not out.exists()
    for command in (["sync", "--catalog"], ["download", "--from-catalog"]):
        result = run_installed(*command, str(db), "--url", url_a + "/", "-o", str(out))
        assert result.returncode == 0, (command, result.stderr)


def test_pull_counts_every_request_it_sent(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """The page that finds out whether offset works is a request too (it was left out)."""
    url = embedded_server(None, virtual=VirtualSpec(500), max_page_size=50)
    summary = pull(url, tmp_path / "c.duckdb")
    assert summary["studies"] == 500
    sent = [path for path, _ in seen_requests.requests if path.endswith("/studies")]
    assert len(sent) == 10  # pages of 50: the last one carries no Warning
    assert summary["requests"] == len(sent)


def test_sync_of_a_catalogued_study_gone_from_the_server_fails_it_every_night(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A study the catalog lists and the archive no longer has is a failure of that study:
    exit 1 every night, also once it is the only one left to fetch (not 4, nothing matched)."""
    source = tmp_path / "source"
    instances = synth(source, 2, seed=71, dates=("20220101", "20220102"))
    db = tmp_path / "c.duckdb"
    pull(embedded_server(source), db)
    gone = instances[0].study_uid
    for instance in instances:
        if instance.study_uid == gone:
            instance.path.unlink()
    url = embedded_server(source)  # the archive as it is now: one study fewer
    # An update pull leaves it (only a full walk can tell a study is gone).
    update = pull(url, db, "--archive-moved")
    assert (update["kind"], update["deleted"], update["studies"]) == ("update", 0, 2)
    out = tmp_path / "out"
    for night in (1, 2):
        result = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
        assert result.returncode == 1, (night, result.stderr)
        summary = json.loads(result.stdout)
        assert summary["exit_status"] == 1 and summary["error"] is None
        assert [f["study"] for f in summary["failures"]] == [gone], night
        assert summary["sync"]["matched"] == 2
        assert "not found" in summary["failures"][0]["reason"]
    plain = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out))
    assert plain.returncode == 1 and f"study {gone} not found" in plain.stderr

    # A --full pull removes it, records it, and the nights are whole again.
    full = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--full")
    assert full.returncode == 0, full.stderr
    assert ", 1 gone from the archive;" in full.stderr
    (kept,) = study_uids(instances) - {gone}
    assert catalog_rows(db, "SELECT study_uid FROM studies") == [(kept,)]
    assert catalog_rows(
        db, "SELECT study_uid, change, instances_before, instances_after FROM changes"
    ) == [(gone, "deleted", 2, None)]
    night = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert night.returncode == 0, night.stderr
    assert json.loads(night.stdout)["failures"] == []


def test_a_full_pull_removes_only_what_a_split_walk_could_have_found(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A walk split by date asks for no study without a StudyDate: such a catalogued study
    is not taken as gone (the first pull found it in the whole listing); a dated one is."""
    source = tmp_path / "source"
    instances = synth(source, 6, seed=72, dates=("20220101", "20220103"))
    undated = instances[0].study_uid
    blank(instances, {undated}, "StudyDate")
    db = tmp_path / "c.duckdb"
    assert pull(embedded_server(source), db)["studies"] == 6
    gone = next(i.study_uid for i in instances if i.study_uid != undated)
    for instance in instances:
        if instance.study_uid == gone:
            instance.path.unlink()

    full = pull(
        embedded_server(source, max_page_size=2, ignore_offset=True),
        db,
        "--full",
        "--archive-moved",
    )

    assert (full["kind"], full["deleted"], full["studies"]) == ("full", 1, 5)
    assert catalog_rows(db, "SELECT study_uid FROM changes WHERE change = 'deleted'") == [(gone,)]
    assert undated in {r[0] for r in catalog_rows(db, "SELECT study_uid FROM studies")}


def test_a_pull_split_without_a_count_says_undated_studies_may_be_missed(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """30 studies, the 3 whose UIDs sort last without a StudyDate, behind a silent cap of 4
    (no count, offset ignored): the first page listed none of them, so the split walk took
    27 and said nothing, exit 0. It cannot know whether undated studies exist: it says they
    may be missing (stderr and --json notes); exit 0 stays, as the catalog.md explains."""
    source = tmp_path / "source"
    instances = synth(source, 30, seed=83, dates=("20200101", "20200110"))
    undated = sorted(study_uids(instances))[-3:]
    blank(instances, undated, "StudyDate")
    capped = embedded_server(source, max_page_size=4, ignore_offset=True, silent_cap=True)
    db = tmp_path / "c.duckdb"

    result = run_installed("catalog", "pull", "--url", capped, "--db", str(db), "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["studies"] == 27
    (note,) = [n for n in summary["notes"] if "StudyDate" in n]  # (days split by time: one more)
    assert "studies without a StudyDate" in note and "may be missing" in note, note
    text = run_installed("catalog", "pull", "--url", capped, "--db", str(db), "--full")
    assert "catalog: the search gave no count" in text.stderr, text.stderr


def test_a_day_split_by_time_says_what_its_studies_without_a_study_time_may_lack(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Seven studies of one day, the 2 whose UIDs sort last without a StudyTime, behind a cap
    of 4 that ignores offset: the day is split by time, and no time range matches an empty
    time, so both were missed, exit 0 with no word (or, counted, said to have no StudyDate).
    With a count, the 2 its halves do not hold are unreachable, exit 1; without one, the day's
    first page listed neither, so a note says they may be missing, exit 0."""
    source = tmp_path / "source"
    instances = synth(source, 7, seed=84, dates=("20200301", "20200301"))
    untimed = sorted(study_uids(instances))[-2:]
    blank(instances, untimed, "StudyTime")
    day = ("--study-date", "20200301")

    counted = embedded_server(source, max_page_size=4, ignore_offset=True)
    db = tmp_path / "counted.duckdb"
    result = run_installed("catalog", "pull", "--url", counted, "--db", str(db), "--json", *day)
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["studies"], summary["unreachable"]) == (5, 2), summary
    assert summary["notes"] == [
        "2 studies of the server's count of 20200301 are in no time window (no StudyTime?) "
        "and could not be asked for"
    ]

    silent = embedded_server(source, max_page_size=4, ignore_offset=True, silent_cap=True)
    summary = pull(silent, tmp_path / "silent.duckdb", *day)
    assert (summary["studies"], summary["unreachable"]) == (5, 0), summary
    (note,) = summary["notes"]
    assert "of 20200301 gave no count" in note and "without a StudyTime" in note, note


def set_retired_forms(instances: list[SynthInstance], dates: list[str], times: list[str]) -> None:
    """The studies' StudyDate and StudyTime, one of `dates` and `times` each in the order of
    their UIDs, written in the retired ACR-NEMA forms old archives still send (`2020.01.02`,
    `12:30:00`: PS3.5 6.2 has readers accept them)."""
    order = sorted(study_uids(instances))
    for instance in instances:
        ds = pydicom.dcmread(instance.path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's about the retired form: it is the point
            ds.StudyDate = dates[order.index(instance.study_uid)]
            ds.StudyTime = times[order.index(instance.study_uid)]
        ds.save_as(instance.path, enforce_file_format=True)


RETIRED_DATES = ["2020.01.01", "2020.01.02", "2020.01.03", "2020.01.04"]
RETIRED_TIMES = ["08:00:00", "12:30:00.5", "12:30", "23:59:59"]


def test_dates_and_times_in_the_retired_form_are_catalogued_as_the_filters_compare_them(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """An archive that sends `2020.01.02` and `12:30:00`, behind a cap of 2 with a count:
    the catalog kept them as sent, so a pull with --study-date split by date counted every
    study as in no date window (unreachable 4, exit 1), `catalog query --study-date` found
    none, and a --full pull took none as gone. Stored as `20200102` and `123000`, all work."""
    source = tmp_path / "source"
    instances = synth(source, 4, seed=91, dates=("20200101", "20200104"))
    set_retired_forms(instances, RETIRED_DATES, RETIRED_TIMES)
    uids = sorted(study_uids(instances))
    capped = embedded_server(source, max_page_size=2, ignore_offset=True)
    db = tmp_path / "c.duckdb"

    first = pull(capped, db, "--study-date", "20200101-20200104")

    assert (first["studies"], first["unreachable"], first["notes"]) == (4, 0, [])
    assert catalog_rows(db, "SELECT study_date, study_time FROM studies ORDER BY 1") == [
        ("20200101", "080000"),
        ("20200102", "123000.5"),
        ("20200103", "1230"),
        ("20200104", "235959"),
    ]
    dated = catalog_query(db, "--study-date", "20200102-20200103", "--uids")
    assert (dated.returncode, dated.stdout.split()) == (0, uids[1:3]), dated.stderr
    for instance in instances:
        if instance.study_uid == uids[0]:
            instance.path.unlink()
    again = embedded_server(source, max_page_size=2, ignore_offset=True)  # (it reads it anew)
    full = pull(again, db, "--study-date", "20200101-20200104", "--full", "--archive-moved")
    assert (full["studies"], full["deleted"], full["unreachable"]) == (3, 1, 0)


@pytest.mark.parametrize(
    ("study_date", "dates"),
    [
        ("20200101-20201231", ["2020.01.01", "2020.12.31"]),
        ("-20201231", ["2019.12.31", "2020.01.01", "2020.12.31"]),
        ("20200101-", ["2020.01.01", "2020.12.31", "2021.01.01"]),
        ("20201231", ["2020.12.31"]),
    ],
)
def test_catalog_query_study_date_ranges_hold_their_edges_and_no_undated_study(
    embedded_server: StartServer, tmp_path: Path, study_date: str, dates: list[str]
) -> None:
    """Studies on each side of a year's edges, in the retired form, and two whose StudyDate
    is no date (`2020`, `UNKNOWN`): a range holds its first and last day and none past them.
    Compared as text, the open ranges also selected `2020` (up to 20201231) and `UNKNOWN`
    (from 20200101)."""
    source = tmp_path / "source"
    instances = synth(source, 6, seed=93, dates=("20200101", "20200106"))
    sent = ["2019.12.31", "2020.01.01", "2020.12.31", "2021.01.01", "2020", "UNKNOWN"]
    set_retired_forms(instances, sent, ["12:00:00"] * 6)
    db = tmp_path / "c.duckdb"
    pull(embedded_server(source), db)
    by_date = dict(zip(sent, sorted(study_uids(instances)), strict=True))

    result = catalog_query(db, "--study-date", study_date, "--uids")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [by_date[date] for date in dates]


def test_a_catalog_holding_dates_in_the_retired_form_is_normalised_by_its_next_pull(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A catalog an earlier dlstudy filled with `2020.01.02` and `12:30:00` as sent: its next
    pull rewrites them as `20200102` and `123000` before it begins, so its count of the scope
    matches the server's and the scope is not walked again."""
    source = tmp_path / "source"
    instances = synth(source, 4, seed=92, dates=("20200101", "20200104"))
    set_retired_forms(instances, RETIRED_DATES, RETIRED_TIMES)
    capped = embedded_server(source, max_page_size=2, ignore_offset=True)
    db = tmp_path / "c.duckdb"
    pull(capped, db, "--study-date", "20200101-20200104")
    normal = catalog_rows(db, "SELECT study_uid, study_date, study_time FROM studies ORDER BY 1")
    with duckdb.connect(str(db)) as con:  # as an earlier dlstudy stored them
        for uid, (date, time_) in zip(
            sorted(study_uids(instances)),
            zip(RETIRED_DATES, RETIRED_TIMES, strict=True),
            strict=True,
        ):
            con.execute(
                "UPDATE studies SET study_date = ?, study_time = ? WHERE study_uid = ?",
                [date, time_, uid],
            )

    second = pull(capped, db, "--study-date", "20200101-20200104")

    assert (second["kind"], second["studies"], second["unreachable"]) == ("update", 4, 0)
    assert catalog_rows(db, "SELECT state FROM windows WHERE pull = 2") == [("unchanged",)]
    assert (
        catalog_rows(db, "SELECT study_uid, study_date, study_time FROM studies ORDER BY 1")
        == normal
    )


def test_a_full_pull_that_could_not_list_everything_removes_nothing(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Three studies in one second of one day, pages of 2 and no offset: that window cannot
    be listed, so a study missing from the walk may be there: nothing is taken as gone."""
    source = tmp_path / "source"
    instances = synth(source, 4, seed=73, dates=("20220101", "20220101"))
    for instance in instances:
        ds = pydicom.dcmread(instance.path)
        ds.StudyTime = "120000"
        ds.save_as(instance.path, enforce_file_format=True)
    db = tmp_path / "c.duckdb"
    assert pull(embedded_server(source), db)["studies"] == 4
    gone = instances[0].study_uid
    for instance in instances:
        if instance.study_uid == gone:
            instance.path.unlink()
    capped = embedded_server(source, max_page_size=2, ignore_offset=True)

    result = run_installed(
        "catalog", "pull", "--url", capped, "--db", str(db), "--full", "--archive-moved", "--json"
    )

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["unreachable"] == 3 and summary["deleted"] == 0
    assert "studies gone from the archive were not looked for" in " ".join(summary["notes"])
    assert gone in {r[0] for r in catalog_rows(db, "SELECT study_uid FROM studies")}


def test_every_catalog_command_takes_its_db_from_the_config_file(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """`db` in the config file (DLSTUDY_CONFIG, or --config with a --server profile) serves
    query, status and export as it serves pull; without it anywhere, each names what to give."""
    instances = synth(tmp_path / "source", 2, seed=7, dates=("20200101", "20200102"))
    url = embedded_server(tmp_path / "source")
    config = tmp_path / "conf" / "db.toml"
    config.parent.mkdir()
    config.write_text('[defaults]\ndb = "pacs.duckdb"\n[servers.other]\ndb = "other.duckdb"\n')
    env = {"DLSTUDY_CONFIG": str(config)}
    pulled = run_installed("catalog", "pull", "--url", url, "--quiet", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "conf" / "pacs.duckdb").is_file()

    listed = run_installed("catalog", "query", "--uids", env=env)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == study_uids(instances)
    status = run_installed("catalog", "status", "-o", str(tmp_path / "out"), "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert [json.loads(line)["state"] for line in status.stdout.splitlines()] == ["missing"] * 2
    to = tmp_path / "studies.csv"
    exported = run_installed("catalog", "export", "--to", str(to), env=env)
    assert exported.returncode == 0, exported.stderr
    assert len(to.read_text().splitlines()) == 3  # a header and two studies

    # The profile's db, chosen by --server: there is none at that path.
    other = run_installed("catalog", "query", "--config", str(config), "--server", "other")
    assert other.returncode == 2, other.stderr
    assert f"no catalog at {tmp_path / 'conf' / 'other.duckdb'}" in other.stderr
    for args in (("query",), ("status",), ("export", "--to", str(to))):
        result = run_installed("catalog", *args)
        assert result.returncode == 2, result.stderr
        assert (
            "Missing option '--db' (or DLSTUDY_DB, or db in the config file). "
            f"(see 'dlstudy catalog {args[0]} --help')"
        ) in result.stderr
    result = run_installed("catalog", "export", env=env)
    assert result.returncode == 2, result.stderr
    assert "Missing option '--to' (or DLSTUDY_TO, or to in the config file)." in result.stderr
