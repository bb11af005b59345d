"""Listings are never silently incomplete: however many pages a capped archive needs, every
result is listed; when paging cannot get them all, the run says so and exits 1."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pydicom
import pytest

from dlstudy.server import VirtualArchive, VirtualSpec
from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import (
    STOP_SIGNALS,
    instance_counts,
    run_installed,
    stop_installed,
)
from ..fixtures.embedded_server import SeenRequests, StartServer

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_a_page_cap_of_one_still_lists_a_series_of_10001_instances(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """10,002 QIDO pages of one result each: past the 10,000 pages the pager used to stop at."""
    spec = VirtualSpec(1, seed=5, study_size=10_001)
    archive = VirtualArchive(spec)
    url = embedded_server(None, virtual=spec, max_page_size=1)
    study = archive.study_uid(0)
    out = tmp_path / "out"

    result = run_installed("download", study, "--url", url, "-o", str(out), "--json", timeout=600)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"] == instance_counts(10_001, downloaded=10_001)
    for st, se, sop in list(archive.instances_of(study))[::1000]:
        assert (out / st / se / f"{sop}.dcm").read_bytes() == archive.expected_bytes(st, se, sop)


def test_a_server_that_ignores_offset_fails_the_study_with_exit_1(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    spec = VirtualSpec(3, seed=5, study_size=25)
    archive = VirtualArchive(spec)
    url = embedded_server(None, virtual=spec, max_page_size=10, ignore_offset=True)
    study = archive.study_uid(1)

    plain = run_installed("download", study, "--url", url, "-o", str(tmp_path / "a"))
    assert plain.returncode == 1
    errors = [line for line in plain.stderr.splitlines() if line.startswith("dlstudy: error:")]
    assert len(errors) == 1
    assert f"could not list {url}/studies/{study}/series/" in errors[0]
    assert "completely: 10 results" in errors[0] and "ignores offset" in errors[0]

    as_json = run_installed("download", study, "--url", url, "-o", str(tmp_path / "b"), "--json")
    assert as_json.returncode == 1
    summary = json.loads(as_json.stdout)
    assert summary["exit_status"] == 1
    assert summary["instances"]["downloaded"] == 0
    (failure,) = summary["failures"]
    assert failure["study"] == study and "could not list" in failure["reason"]
    assert not list((tmp_path / "b").rglob("*.dcm"))


def test_a_full_page_repeated_for_the_next_offset_is_no_whole_listing(
    embedded_server: StartServer,
) -> None:
    """A server that honours limit but ignores offset, no page cap, no Warning: 299: the
    first page is as long as asked for (1,000), the next one repeats it. The 500 studies
    after those cannot be listed: exit 1 after the first 1,000 (it was exit 0 with 1,000 of
    1,500)."""
    spec = VirtualSpec(1500, seed=5, mix="mimic")
    url = embedded_server(None, virtual=spec, ignore_offset=True)

    result = run_installed("query", "--url", url, "--uids")

    assert result.returncode == 1, result.stderr
    assert f"dlstudy: error: could not list {url}/studies completely: 1000 results" in (
        result.stderr
    )
    assert "ignores offset" in result.stderr
    assert result.stdout.split() == list(VirtualArchive(spec).study_uids())[:1000]


def test_query_exits_1_and_sync_lists_again_a_study_search_paging_cannot_complete(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Pages of 10 (announced) from a server that ignores offset: query prints the first page
    and exits 1; sync (which exited 1 likewise) lists the search again by date, as catalog
    pull does, and syncs all 30."""
    spec = VirtualSpec(30, seed=5, mix="mimic")
    capped = embedded_server(None, virtual=spec, max_page_size=10, ignore_offset=True)
    result = run_installed("query", "--url", capped, "--uids")
    assert result.returncode == 1
    assert result.stderr.startswith(f"dlstudy: error: could not list {capped}/studies completely")
    # The first page is printed as it came; the error and exit 1 say the listing is not whole.
    assert result.stdout.split() == list(VirtualArchive(spec).study_uids())[:10]

    out = tmp_path / "out"
    synced = run_installed("sync", "--url", capped, "-o", str(out), "--json")
    assert synced.returncode == 0, synced.stderr
    summary = json.loads(synced.stdout)
    assert summary["sync"]["matched"] == summary["sync"]["synced"] == 30
    assert summary["failures"] == []
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == set(VirtualArchive(spec).study_uids())

    honest = embedded_server(None, virtual=spec, max_page_size=10)
    listed = run_installed("query", "--url", honest, "--uids")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == list(VirtualArchive(spec).study_uids())


def test_a_page_cap_the_server_does_not_announce_still_lists_everything(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """No Warning: 299, no 206, no counts (Orthanc's LimitFindResults): a page shorter than
    asked for is not taken as the end until the next page says so."""
    spec = VirtualSpec(9, seed=5, study_size=23)
    archive = VirtualArchive(spec)
    url = embedded_server(None, virtual=spec, max_page_size=4, silent_cap=True, no_counts=True)

    listed = run_installed("query", "--url", url, "--uids")
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(archive.study_uids())

    study = archive.study_uid(2)
    out = tmp_path / "out"
    result = run_installed("download", study, "--url", url, "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    wanted = list(archive.instances_of(study))
    assert summary["instances"]["downloaded"] == len(wanted) == 23
    for st, se, sop in wanted:
        assert (out / st / se / f"{sop}.dcm").read_bytes() == archive.expected_bytes(st, se, sop)

    synced = run_installed("sync", "--url", url, "-o", str(tmp_path / "mirror"), "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["sync"]["matched"] == 9


def _undated_first(root: Path) -> tuple[set[str], set[str]]:
    """6 one-series studies over 1-3 January 2022, 3 of them stripped of their StudyDate
    (the embedded server lists those first): every UID, and the undated ones."""
    instances = generate(root, SynthSpec(studies=6, series=1, instances=2, size=1024, seed=91,
                                         study_dates=("20220101", "20220103")))  # fmt: skip
    undated = set(sorted({i.study_uid for i in instances})[:3])
    for instance in instances:
        if instance.study_uid in undated:
            ds = pydicom.dcmread(instance.path)
            ds.StudyDate = ""
            ds.save_as(instance.path, enforce_file_format=True)
    return {i.study_uid for i in instances}, undated


def test_a_silent_cut_is_found_when_no_study_listed_has_a_date(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A server that cuts every page at 2 without saying so, ignores offset and gives no
    count, whose first 2 studies have no StudyDate: the windows that check a short listing
    were made of the dates it listed, none here, so nothing was checked. `query`, `sync` and
    `catalog pull` each took 2 studies of 6 for the whole archive, exit 0."""
    every, undated = _undated_first(tmp_path / "source")
    url = embedded_server(tmp_path / "source", max_page_size=2, ignore_offset=True,
                          silent_cap=True, no_counts=True)  # fmt: skip

    listed = run_installed("query", "--url", url, "--uids")
    assert listed.returncode == 1, listed.stdout
    assert listed.stderr.startswith(f"dlstudy: error: could not list {url}/studies completely")
    assert set(listed.stdout.split()) <= undated  # what it did send: undated ones

    # sync lists the search again as catalog pull does (below): the dated studies and the
    # undated ones it was sent are fetched, and that more undated ones may be missing is the
    # night's failure.
    out = tmp_path / "out"
    synced = run_installed("sync", "--url", url, "-o", str(out), "--json")
    assert synced.returncode == 1, synced.stderr
    summary = json.loads(synced.stdout)
    assert summary["sync"]["matched"] == 5
    (failure,) = summary["failures"]
    assert failure["reason"].startswith("the search could not be listed completely: some")
    assert "without a StudyDate" in failure["reason"]
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == (every - undated) | set(
        listed.stdout.split()
    )

    # A catalog pull splits the search by date and finds every dated study, but studies
    # without a date are found only as far as the first page: that cannot be proven whole.
    db = tmp_path / "c.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json")
    assert pulled.returncode == 1, pulled.stderr
    summary = json.loads(pulled.stdout)
    assert summary["unreachable"] is None
    assert any("without a StudyDate" in note for note in summary["notes"]), summary["notes"]
    with duckdb.connect(str(db), read_only=True) as con:
        found = {uid for (uid,) in con.execute("SELECT study_uid FROM studies").fetchall()}
    assert every - undated <= found and len(found & undated) == 2

    # Scoped to dates, the pull asks for no undated study: whole, exit 0.
    dated = tmp_path / "dated.duckdb"
    scoped = run_installed("catalog", "pull", "--url", url, "--db", str(dated), "--json",
                           "--study-date", "20220101-20220103")  # fmt: skip
    assert scoped.returncode == 0, scoped.stderr
    assert json.loads(scoped.stdout)["studies"] == 3


def test_a_silent_cut_is_found_when_every_study_listed_is_of_one_day(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """6 studies of one day (a nightly `sync --study-date yesterday`), a server that cuts
    every page at 2 without saying so, ignores offset and gives no count: the windows that
    check a short listing were the days before and after the one listed, which hold nothing
    (or lie outside the search), so the listing of 2 was taken as whole, exit 0, by `query`,
    `sync` and `catalog pull`. The day's studies are now also asked for in two StudyTime
    windows, and sync lists such a search again as catalog pull does."""
    instances = generate(tmp_path / "source", SynthSpec(
        studies=6, series=1, instances=2, size=1024, seed=92, study_dates=("20220101", "20220101")
    ))  # fmt: skip
    every = {i.study_uid for i in instances}
    url = embedded_server(tmp_path / "source", max_page_size=2, ignore_offset=True,
                          silent_cap=True, no_counts=True)  # fmt: skip

    for scope in ((), ("--study-date", "20220101")):
        listed = run_installed("query", "--url", url, "--uids", *scope)
        assert listed.returncode == 1, (scope, listed.stdout)
        assert "could not list" in listed.stderr and "StudyTime" in listed.stderr, listed.stderr

    # sync lists the cut search again, as catalog pull does: the whole day.
    out = tmp_path / "out"
    synced = run_installed("sync", "--url", url, "-o", str(out), "--study-date", "20220101")
    assert synced.returncode == 0, synced.stderr
    assert "the server cut the search (it sent 2 studies, and nothing past them)" in synced.stderr
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == every
    assert not (out / ".dlstudy" / "search.duckdb").exists()

    # catalog pull splits the day by time of day: every study, whole.
    for name, scope in (("day", ("--study-date", "20220101")), ("all", ())):
        db = tmp_path / f"{name}.duckdb"
        pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *scope)
        assert pulled.returncode == 0, pulled.stderr
        with duckdb.connect(str(db), read_only=True) as con:
            found = {uid for (uid,) in con.execute("SELECT study_uid FROM studies").fetchall()}
        assert found == every, name


def test_a_listing_all_of_one_second_says_it_cannot_be_checked(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """7 studies of one day and one second behind a silent cap of 4 (offset ignored): no
    window narrower than the search can hold a study it did not send, so `query` took the 4
    for whole, exit 0, without a word (as did `sync` and `catalog pull`). Whether it was cut
    cannot be known; each now says so."""
    source = tmp_path / "source"
    for instance in generate(source, SynthSpec(studies=7, series=1, instances=1, size=1024,
                                               seed=93)):  # fmt: skip
        dataset = pydicom.dcmread(instance.path)
        dataset.StudyDate, dataset.StudyTime = "20230303", "101010"
        dataset.save_as(instance.path)
    url = embedded_server(source, max_page_size=4, ignore_offset=True, silent_cap=True)
    said = (
        "the 4 studies it sent are all of one second (20230303 101010): no narrower search "
        "can show whether the server cut it there"
    )
    listed = run_installed("query", "--url", url, "--uids", "--study-date", "20230303")
    assert len(listed.stdout.split()) == 4
    assert said in listed.stderr, listed.stderr
    synced = run_installed("sync", "--url", url, "-o", str(tmp_path / "out"))
    assert synced.returncode == 0 and said in synced.stderr, synced.stderr
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(tmp_path / "c.duckdb"))
    assert pulled.returncode == 0 and said in pulled.stderr, pulled.stderr


@pytest.mark.parametrize("capped", [True, False])
def test_a_server_that_ignores_study_date_says_a_cut_cannot_be_told(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path, capped: bool
) -> None:
    """A gateway that drops StudyDate in front of an archive that cuts every search at 4
    without saying so (offset ignored, no count): the two StudyDate windows that check a
    short listing each brought the same first 4 studies, all listed, so `query` and `sync`
    took 4 of 12 for the whole archive, exit 0, without a word. A window's answer holding
    studies outside it shows the date was ignored and the check proves nothing: both say
    so. Without a cap the answers are the same but for their length, so the same words, and
    exit 0 as with the cap: a gateway that drops StudyDate is no failure of a night."""
    instances = generate(tmp_path / "source", SynthSpec(
        studies=12, series=1, instances=1, size=1024, seed=94, study_dates=("20220101", "20220112")
    ))  # fmt: skip
    every = {i.study_uid for i in instances}
    cap = {"max_page_size": 4, "ignore_offset": True, "silent_cap": True} if capped else {}
    url = embedded_server(tmp_path / "source", no_counts=True, **cap)
    seen_requests.gateway_keys = {"StudyDate"}
    said = "the server ignores StudyDate (asked for StudyDate "
    cannot = "whether it cut the search cannot be told"
    sent = 4 if capped else 12

    listed = run_installed("query", "--url", url, "--uids")
    assert listed.returncode == 0, listed.stderr
    assert len(set(listed.stdout.split()) & every) == sent
    (warning,) = [line for line in listed.stderr.splitlines() if said in line]
    assert warning.startswith("dlstudy: warning:") and cannot in warning, warning
    assert f"it sent {sent} studies" in warning, warning

    out = tmp_path / "out"
    synced = run_installed("sync", "--url", url, "-o", str(out))
    assert synced.returncode == 0, synced.stderr
    assert said in synced.stderr and cannot in synced.stderr, synced.stderr
    assert len({p.parts[-3] for p in out.rglob("*.dcm")}) == sent


@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS)
def test_a_signal_while_sync_lists_a_cut_search_again_stops_it_cleanly(
    embedded_server: StartServer, tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """Stopped while it listed the cut search again, sync printed an AttributeError traceback
    (the catalog pull's summary, carried by the interruption, taken for the run's), exit 1.
    Now: the signal's exit, its throwaway catalog removed, and a rerun syncs the whole day."""
    instances = generate(tmp_path / "source", SynthSpec(
        studies=6, series=1, instances=1, size=1024, seed=93, study_dates=("20220101", "20220101")
    ))  # fmt: skip
    url = embedded_server(tmp_path / "source", max_page_size=2, ignore_offset=True,
                          silent_cap=True, no_counts=True, latency=0.3)  # fmt: skip
    out = tmp_path / "out"
    args = ["sync", "--url", url, "-o", str(out), "--study-date", "20220101"]
    search_catalog = out / ".dlstudy" / "search.duckdb"
    returncode, stderr = stop_installed(
        *args,
        signum=signum,
        ready=search_catalog.exists,
        after=0.3,  # (in the walk)
    )
    assert returncode == status, stderr
    assert stderr.splitlines()[-1].startswith(f"dlstudy: error: {said}"), stderr
    assert not search_catalog.exists()

    again = run_installed(*args)
    assert again.returncode == 0, again.stderr
    assert {p.parts[-3] for p in out.rglob("*.dcm")} == {i.study_uid for i in instances}
