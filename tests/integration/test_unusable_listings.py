"""QIDO answers with results no one can download (no UID, or one that is no UID), through the
installed CLI against a scripted server on 127.0.0.1: never a silent exit 0 with instances or
studies missing, never a usage error for what the server sent, and the rest goes on."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import duckdb
import httpx
import pytest

from ..cli_helpers import run_installed
from ..factories import STUDY, element, instance_json, part10, series_json
from ..fixtures.scripted_routes import Routes

pytestmark = pytest.mark.integration

SERIES = [f"{STUDY}.5", f"{STUDY}.6"]
SOPS = {series: [f"{series}.{i}" for i in (1, 2)] for series in SERIES}
DICOM_JSON = {"Content-Type": "application/dicom+json"}


def dicom_json(items: list[dict[str, Any]]) -> httpx.Response:
    return httpx.Response(200, headers=DICOM_JSON, content=json.dumps(items).encode())


def serve_study(
    scripted: Routes,
    *,
    series: Callable[[], list[dict[str, Any]]] = lambda: [series_json(s) for s in SERIES],
    instances: Callable[[str], list[dict[str, Any]]] = lambda s: [
        instance_json(sop) for sop in SOPS[s]
    ],
    study_instances: object = None,
) -> None:
    """The study listed series by series (no study-wide instance search), its files served;
    `study_instances`: the NumberOfStudyRelatedInstances its study search gives, if any."""
    base = f"/dicomweb/studies/{STUDY}"
    scripted.get(f"{base}/instances").mock(return_value=httpx.Response(400))
    scripted.get(f"{base}/series").mock(side_effect=lambda _: dicom_json(series()))

    def study() -> dict[str, Any]:
        # The study search a series listing not proven whole is checked by: its series count.
        item = {"0020000D": element("UI", STUDY), "00201206": element("IS", len(series()))}
        if study_instances is not None:
            item["00201208"] = element("IS", study_instances)
        return item

    scripted.get("/dicomweb/studies").mock(side_effect=lambda _: dicom_json([study()]))
    for uid in SERIES:
        scripted.get(f"{base}/series/{uid}/instances").mock(
            side_effect=lambda _, uid=uid: dicom_json(instances(uid))
        )
        for sop in SOPS[uid]:
            body = part10(STUDY, uid, sop)
            scripted.get(f"{base}/series/{uid}/instances/{sop}").mock(
                return_value=httpx.Response(200, headers={"Content-Type": "application/dicom"},
                                            content=body)
            )  # fmt: skip


def download(scripted: Routes, out: Path) -> tuple[int, dict[str, Any]]:
    result = run_installed(
        "download", STUDY, "--url", scripted.base, "-o", str(out), "--json", "--http", "1.1"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_rerun_moves_no_file_into_a_series_its_header_contradicts(
    scripted: Routes, tmp_path: Path
) -> None:
    """The server lists a downloaded series' instances under another series UID: a rerun
    moved the files there as if --layout had changed (`moved 2`, exit 0), each now in a folder
    its own header contradicts, and --verify passed them. Only a move within the same study
    and series is a layout's; these are fetched again, and their header refused."""
    other = f"{STUDY}.999"
    listed = {"first": SERIES[0]}
    serve_study(
        scripted,
        series=lambda: [series_json(listed["first"]), series_json(SERIES[1])],
        instances=lambda s: [instance_json(sop) for sop in SOPS[SERIES[0] if s == other else s]],
    )
    scripted.get(f"/dicomweb/studies/{STUDY}/series/{other}/instances").mock(
        side_effect=lambda _: dicom_json([instance_json(sop) for sop in SOPS[SERIES[0]]])
    )
    for sop in SOPS[SERIES[0]]:  # the same files, their header naming the first series
        scripted.get(f"/dicomweb/studies/{STUDY}/series/{other}/instances/{sop}").mock(
            return_value=httpx.Response(200, headers={"Content-Type": "application/dicom"},
                                        content=part10(STUDY, SERIES[0], sop))
        )  # fmt: skip
    out = tmp_path / "out"
    status, _ = download(scripted, out)
    assert status == 0
    listed["first"] = other
    result = run_installed("download", STUDY, "--url", scripted.base, "-o", str(out), "--json",
                           "--http", "1.1", "--recheck")  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["moved"] == 0
    reasons = [failure["reason"] for failure in summary["failures"]]
    assert len(reasons) == 2, reasons
    assert all(f"expected {other}" in reason for reason in reasons), reasons
    assert not [p for p in (out / STUDY / other).rglob("*") if p.is_file()]
    for sop in SOPS[SERIES[0]]:  # still where their header says they belong
        assert (out / STUDY / SERIES[0] / f"{sop}.dcm").read_bytes() == part10(
            STUDY, SERIES[0], sop
        )


def test_sync_fails_a_study_its_search_counts_more_instances_in_than_listed(
    scripted: Routes, tmp_path: Path
) -> None:
    """The study search counts 7 instances; the series' instance listings give 4, each one
    short page (a cap paging cannot see). sync fetched the 4 and passed the night (exit 0),
    and listed the study again every night after, never complete. The count is now checked
    once the study is downloaded: a failure of its own, exit 1."""
    serve_study(scripted, study_instances=7)
    out = tmp_path / "out"
    for night in (1, 2):
        result = run_installed("sync", "--url", scripted.base, "-o", str(out), "--json",
                               "--http", "1.1")  # fmt: skip
        assert result.returncode == 1, result.stderr
        summary = json.loads(result.stdout)
        reason = (
            f"study {STUDY}: the server's search counts 7 instances in 2 series; listed and "
            "fetched, it has 4 instances in 2 series: not whole (a listing the server cut?); the "
            "next run lists it again"
        )
        assert [f["reason"] for f in summary["failures"]] == [reason], night
        assert f"dlstudy: warning: {reason}" in result.stderr.splitlines()
    assert len(list(out.rglob("*.dcm"))) == 4  # what was listed is kept


def test_sync_of_a_study_that_lost_an_instance_on_the_server_and_on_disk_passes(
    scripted: Routes, tmp_path: Path
) -> None:
    """The archive deletes an instance of a synced study, and the user removes its file from
    the mirror: the index still lists it, so the study is listed again, and all the server
    lists is there. Nothing is short of the server's count: the night passes (exit 0)."""
    kept = {"sops": SOPS[SERIES[0]]}
    serve_study(
        scripted,
        instances=lambda s: [instance_json(sop) for sop in (kept["sops"] if s == SERIES[0]
                                                             else SOPS[s])],
        study_instances=4,
    )  # fmt: skip
    out = tmp_path / "out"
    first = run_installed("sync", "--url", scripted.base, "-o", str(out), "--http", "1.1")
    assert first.returncode == 0, first.stderr
    gone = SOPS[SERIES[0]][0]
    kept["sops"] = SOPS[SERIES[0]][1:]
    (out / STUDY / SERIES[0] / f"{gone}.dcm").unlink()
    scripted.get("/dicomweb/studies").mock(
        side_effect=lambda _: dicom_json([{
            "0020000D": element("UI", STUDY), "00201206": element("IS", 2),
            "00201208": element("IS", 3),
        }])
    )  # fmt: skip
    again = run_installed("sync", "--url", scripted.base, "-o", str(out), "--json",
                          "--http", "1.1")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["failures"] == []


@pytest.mark.parametrize("count", [4294967295, 2147483647, -1, "1e30"])
def test_a_study_count_outside_is_range_is_taken_as_unknown(
    scripted: Routes, tmp_path: Path, count: object
) -> None:
    """NumberOfStudyRelatedInstances of -1, 2147483647 or 4294967295, what a server may send
    for "unknown" (2147483647 failed every sync as short): in a catalog (32-bit counts) it
    stopped every pull with DuckDB's conversion
    error (and any sync whose search had to be split by date, naming a catalog it never asked
    for); -1 made sync count the study complete with nothing on disk (exit 0)."""
    serve_study(scripted, study_instances=count)
    every = sum(len(sops) for sops in SOPS.values())
    db = tmp_path / "c.duckdb"
    pulled = run_installed("catalog", "pull", "--db", str(db), "--url", scripted.base,
                           "--http", "1.1")  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    with duckdb.connect(str(db), read_only=True) as catalog:
        rows = catalog.execute("SELECT study_uid, instances, series FROM studies").fetchall()
    assert rows == [(STUDY, None, len(SERIES))]
    synced = run_installed("sync", "--url", scripted.base, "-o", str(tmp_path / "out"),
                           "--json", "--http", "1.1")  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["instances"]["downloaded"] == every


def test_a_series_without_its_uid_fails_the_study(scripted: Routes, tmp_path: Path) -> None:
    """A series the server lists without a Series Instance UID cannot be listed nor fetched:
    the study fails (exit 1) and is not recorded complete, so a rerun asks again."""
    broken = [{"00080060": element("CS", "CT")}, series_json(SERIES[1])]
    serve_study(scripted, series=lambda: broken)
    status, summary = download(scripted, tmp_path / "out")
    assert status == 1, summary
    (failure,) = summary["failures"]
    assert "without a usable Series Instance UID (0020000E)" in failure["reason"]
    assert failure["study"] == STUDY
    status, summary = download(scripted, tmp_path / "out")  # asked again, not taken as complete
    assert status == 1 and summary["studies_complete_in_manifest"] == 0


@pytest.mark.parametrize(
    "bad",
    [{"00080016": element("UI", "1.2")}, {"00080018": {"vr": "UI", "Value": "1.2.3"}},
     {"00080018": element("UI", "")}],
    ids=["missing", "not-a-list", "empty"],
)  # fmt: skip
def test_an_instance_without_a_usable_uid_fails_the_study(
    scripted: Routes, tmp_path: Path, bad: dict[str, Any]
) -> None:
    def instances(series: str) -> list[dict[str, Any]]:
        return [instance_json(sop) for sop in SOPS[series]] + [bad] * (series == SERIES[0])

    serve_study(scripted, instances=instances)
    status, summary = download(scripted, tmp_path / "out")
    assert status == 1, summary
    (failure,) = summary["failures"]
    assert "without a usable SOP Instance UID (00080018)" in failure["reason"]


def studies(*uids: str | None) -> httpx.Response:
    items = [{"0020000D": element("UI", uid)} if uid else {"00100020": element("LO", "P")}
             for uid in uids]  # fmt: skip
    return dicom_json(items)


def test_query_says_a_study_result_without_a_uid_was_left_out(scripted: Routes) -> None:
    scripted.get("/dicomweb/studies").mock(return_value=studies(STUDY, None))
    result = run_installed("query", "--url", scripted.base, "--uids")
    assert result.returncode == 1, result.stderr
    assert result.stdout == f"{STUDY}\n"
    assert result.stderr == (
        "dlstudy: error: the server sent a result without a Study Instance UID (0020000D): "
        "not listed\n"
    )


@pytest.mark.parametrize("command", ["query", "sync"])
def test_a_json_error_object_sent_with_200_is_no_result(
    scripted: Routes, tmp_path: Path, command: str
) -> None:
    """A gateway's `{"error": "quota exceeded"}` with a 200: it was taken as one study without
    a UID (exit 1, the server's words unsaid). It is a server fault, exit 3, in its words."""
    scripted.get("/dicomweb/studies").mock(
        return_value=httpx.Response(200, headers={"Content-Type": "application/json"},
                                    content=b'{"error": "quota exceeded"}')
    )  # fmt: skip
    output = ["-o", str(tmp_path / "out")] if command == "sync" else []
    result = run_installed(command, "--url", scripted.base, *output, "--http", "1.1")
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "dlstudy: error: QIDO answer holds no DICOM attribute (HTTP 200 (application/json): "
        "quota exceeded) on http://127.0.0.1:"
    ), line
    assert result.stdout == ""


def test_sync_fails_what_it_cannot_download_and_syncs_the_rest(
    scripted: Routes, tmp_path: Path
) -> None:
    """A study listed without a UID, or with one that is no UID: failures of their own (exit
    1), not a usage error stopping the night; the good study is synced."""
    serve_study(scripted)
    scripted.get("/dicomweb/studies").mock(return_value=studies(STUDY, "../../escape", None))
    out = tmp_path / "out"
    result = run_installed(
        "sync", "--url", scripted.base, "-o", str(out), "--json", "--http", "1.1"
    )
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == 4
    reasons = [failure["reason"] for failure in summary["failures"]]
    assert reasons == [
        "the server lists a study with an invalid UID '../../escape': not downloaded",
        "the search sent a result without a Study Instance UID (0020000D)",
    ]
    assert not (tmp_path / "escape").exists() and not (out.parent.parent / "escape").exists()


def test_uids_padded_as_dicom_pads_them_are_read_without_the_padding(
    scripted: Routes, tmp_path: Path
) -> None:
    """DICOM pads a UID of odd length with one trailing NUL (PS3.5 6.2); a server that leaves
    it in its JSON (or a space, as some do) lists the same study, series and instances: they
    are synced under their UIDs (a NUL made each an invalid UID, nothing downloaded, exit 1)."""
    serve_study(
        scripted,
        series=lambda: [series_json(f"{uid}\0") for uid in SERIES],
        instances=lambda series: [instance_json(f"{sop}\0 ") for sop in SOPS[series]],
    )
    scripted.get("/dicomweb/studies").mock(return_value=studies(f"{STUDY}\0"))
    out = tmp_path / "out"
    result = run_installed("sync", "--url", scripted.base, "-o", str(out), "--json")
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["instances"]["downloaded"] == 4
    for series in SERIES:
        for sop in SOPS[series]:
            assert (out / STUDY / series / f"{sop}.dcm").read_bytes() == part10(STUDY, series, sop)


# UIDs a server may send that are no UIDs, each a way out of the resource it names in a URL
# path: dot segments (libcurl resolves them), and what a proxy that decodes the path before it
# resolves it turns into one.
NO_UIDS = ["..", ".", "../x", "%2E%2E", "1.2/../.."]


def assert_only_asked_for(scripted: Routes, *paths: str) -> None:
    """Every request the server got was for one of `paths` (a query aside), as sent."""
    asked = {raw.split("?", 1)[0] for raw in scripted.raw_paths}
    assert asked <= set(paths), asked
    assert not scripted.unmatched


@pytest.mark.parametrize("bad", NO_UIDS)
def test_a_series_listed_with_no_uid_is_never_asked_for(
    scripted: Routes, tmp_path: Path, bad: str
) -> None:
    """A series UID `..` in a URL path names another resource (`/studies/S/series/..` is the
    study), and `../x`, percent-encoded, is one through a proxy that decodes the path: its
    instances cannot be asked for. The study fails, one line naming the UID; the run was
    stopped as unreachable (exit 3) by what the study's URL answered."""
    serve_study(scripted, series=lambda: [*map(series_json, SERIES), series_json(bad)])
    status, summary = download(scripted, tmp_path / "out")
    assert status == 1, summary
    (failure,) = summary["failures"]
    assert failure["study"] == STUDY
    assert f"a series with the UID {bad!r}, which is no UID" in failure["reason"]
    assert scripted.get(f"/dicomweb/studies/{STUDY}/instances").call_count == 1  # once, at first
    status, summary = download(scripted, tmp_path / "out")
    assert status == 1 and summary["studies_complete_in_manifest"] == 0
    base = f"/dicomweb/studies/{STUDY}"
    assert_only_asked_for(
        scripted,
        f"{base}/instances",
        f"{base}/series",
        "/dicomweb/studies",
        *(f"{base}/series/{uid}/instances" for uid in SERIES),
        *(f"{base}/series/{uid}/instances/{sop}" for uid in SERIES for sop in SOPS[uid]),
    )


def test_a_series_uid_that_breaks_the_rules_harmlessly_costs_only_its_own_instances(
    scripted: Routes, tmp_path: Path
) -> None:
    """A series UID with letters can name nothing else in a URL path (percent-encoded): it is
    listed like any other, so the study's other series still come; its own instances fail,
    each reported (the store takes no such name), and the run is not a success."""
    odd = f"{STUDY}.abc"
    serve_study(scripted, series=lambda: [*map(series_json, SERIES), series_json(odd)])
    listing = scripted.get(f"/dicomweb/studies/{STUDY}/series/{odd}/instances").mock(
        return_value=dicom_json([instance_json(f"{odd}.1")])
    )
    out = tmp_path / "out"
    status, summary = download(scripted, out)
    assert status == 1, summary
    assert listing.call_count == 1
    for uid in SERIES:
        for sop in SOPS[uid]:
            assert (out / STUDY / uid / f"{sop}.dcm").read_bytes() == part10(STUDY, uid, sop)
    assert summary["instances"]["downloaded"] == 4, summary
    assert summary["failures"], summary


def first_page_only(items: list[dict[str, Any]]) -> Callable[[httpx.Request], httpx.Response]:
    """A search answer: `items` at offset 0, nothing after (a catalog asks the next page)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return dicom_json(items if request.url.params.get("offset", "0") == "0" else [])

    return answer


@pytest.mark.parametrize("bad", NO_UIDS)
def test_catalog_pull_never_asks_for_the_series_of_a_study_with_no_uid(
    scripted: Routes, tmp_path: Path, bad: str
) -> None:
    """`catalog pull --level series` lists each study's series at /studies/{uid}/series: a
    study the server lists as `..` asked for /series (the whole archive's series, catalogued
    as that study's). Such a study is catalogued as sent (a download fails it) and its series
    are never asked for: one warning naming it, and the pull ends (exit 0)."""
    scripted.get("/dicomweb/studies").mock(side_effect=first_page_only(
        [{"0020000D": element("UI", uid)} for uid in (STUDY, bad)]
    ))  # fmt: skip
    scripted.get(f"/dicomweb/studies/{STUDY}/series").mock(
        return_value=dicom_json([series_json(uid) for uid in SERIES])
    )
    db = tmp_path / "c.duckdb"
    result = run_installed(
        "catalog", "pull", "--url", scripted.base, "--db", str(db), "--level", "series", "--json"
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    warning = (
        f"dlstudy: warning: the server lists a study with the UID {bad!r}, which is no UID "
        "and cannot be asked for: its series are not catalogued\n"
    )
    assert result.stderr.count(warning) == 1, result.stderr
    assert_only_asked_for(scripted, "/dicomweb/studies", f"/dicomweb/studies/{STUDY}/series")
    with duckdb.connect(str(db), read_only=True) as con:
        studies_in = con.execute("SELECT study_uid FROM studies ORDER BY 1").fetchall()
        series_in = con.execute("SELECT study_uid, series_uid FROM series ORDER BY 2").fetchall()
    assert studies_in == sorted([(STUDY,), (bad,)])
    assert series_in == [(STUDY, uid) for uid in SERIES]
    again = run_installed(
        "catalog", "pull", "--url", scripted.base, "--db", str(db), "--level", "series", "--json"
    )
    assert again.returncode == 0 and warning not in again.stderr, again.stderr


@pytest.mark.parametrize("bad", NO_UIDS)
def test_a_listed_series_found_in_a_study_with_no_uid_is_never_asked_for(
    scripted: Routes, tmp_path: Path, bad: str
) -> None:
    """A --from-file line naming a series alone: the server is asked which study holds it
    (/series?SeriesInstanceUID=), then for its instances under that study. A study answered
    as `..` made that /studies/../series/S/instances, another resource. That line fails, one
    line naming the UID (exit 1); the other lines are downloaded."""
    good, lost = SERIES
    base = f"/dicomweb/studies/{STUDY}"

    def lookup(request: httpx.Request) -> httpx.Response:
        series = request.url.params["SeriesInstanceUID"]
        study = STUDY if series == good else bad
        return dicom_json([{**series_json(series), "0020000D": element("UI", study)}])

    scripted.get("/dicomweb/series").mock(side_effect=lookup)
    scripted.get(f"{base}/series/{good}/instances").mock(
        return_value=dicom_json([instance_json(sop) for sop in SOPS[good]])
    )
    for sop in SOPS[good]:
        scripted.get(f"{base}/series/{good}/instances/{sop}").mock(return_value=httpx.Response(
            200, headers={"Content-Type": "application/dicom"}, content=part10(STUDY, good, sop)
        ))  # fmt: skip
    listing = tmp_path / "cohort.csv"
    listing.write_text(f"SeriesInstanceUID\n{good}\n{lost}\n")
    out = tmp_path / "out"
    result = run_installed(
        "download", "--from-file", str(listing), "--url", scripted.base, "-o", str(out),
        "--json", "--http", "1.1",
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == 2
    (failure,) = summary["failures"]
    assert failure["series"] == lost
    assert f"in a study with the UID {bad!r}, which is no UID" in failure["reason"], failure
    assert_only_asked_for(
        scripted,
        "/dicomweb/series",
        f"{base}/series/{good}/instances",
        *(f"{base}/series/{good}/instances/{sop}" for sop in SOPS[good]),
    )


def test_verbose_query_logs_each_qido_request_without_secrets(scripted: Routes) -> None:
    """-v says what was asked and what came back, the key in the URL masked."""
    scripted.get("/dicomweb/studies").mock(return_value=studies(STUDY))
    url = scripted.base + "?apikey=s3cr3t-k3y"
    result = run_installed("query", "--url", url, "--uids", "-v")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "QIDO " in line]
    assert " DEBUG dlstudy.dicomweb.qido: QIDO http://127.0.0.1:" in line
    assert "/dicomweb/studies?apikey=***&" in line and line.endswith(": HTTP 200, 1 result")
    assert "s3cr3t" not in result.stderr


def test_a_series_listing_of_the_whole_study_files_each_instance_under_its_own_series(
    scripted: Routes, tmp_path: Path
) -> None:
    """A server that ignores the series in /series/{uid}/instances answers with the whole
    study: each instance is kept with the series it says it is of, fetched once."""

    def whole_study(_series: str) -> list[dict[str, Any]]:
        return [
            {**instance_json(sop), "0020000E": element("UI", series)}
            for series in SERIES
            for sop in SOPS[series]
        ]

    serve_study(scripted, instances=whole_study)
    status, summary = download(scripted, tmp_path / "out")
    assert status == 0, summary["failures"]
    assert summary["instances"]["downloaded"] == 4
    for series in SERIES:
        for sop in SOPS[series]:
            assert (tmp_path / "out" / STUDY / series / f"{sop}.dcm").is_file()


def test_catalog_pull_says_what_it_could_not_catalogue(scripted: Routes, tmp_path: Path) -> None:
    """A study or series result without its UID cannot be catalogued: a warning says so."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/series"):
            return dicom_json([series_json(SERIES[0], count=2), {"00080060": element("CS", "CT")}])
        return studies(STUDY, None)

    scripted.get("/dicomweb/studies", prefix=True).mock(side_effect=answer)
    db = str(tmp_path / "c.db")
    result = run_installed(
        "catalog", "pull", "--url", scripted.base, "--db", db, "--level", "series"
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "dlstudy: warning: the server sent a study result without a Study Instance UID "
        "(0020000D): not catalogued",
        f"dlstudy: warning: study {STUDY}: the server listed 1 series without a Series "
        "Instance UID (0020000E): not catalogued",
    ]


def part10_response(sop: str) -> httpx.Response:
    with warnings.catch_warnings():  # pydicom's about an invalid UID: it is the point
        warnings.simplefilter("ignore")
        body = part10(STUDY, SERIES[0], sop)
    return httpx.Response(200, headers={"Content-Type": "application/dicom"}, content=body)


@pytest.mark.parametrize("strategy", ["single-part", "multipart-instance"])
def test_bench_never_asks_for_nor_keeps_an_instance_listed_with_no_uid(
    scripted: Routes, tmp_path: Path, strategy: str
) -> None:
    """`bench` fetches what the study's listing names: an instance listed as `../x` was
    asked for at /instances/..%2Fx, and with --keep written to KEEP/../x.dcm, outside KEEP.
    Each such instance fails in the run (exit 1), one line naming it; the others are kept."""
    listed = {SERIES[0]: [*SOPS[SERIES[0]], *NO_UIDS], SERIES[1]: SOPS[SERIES[1]]}
    # Whatever is asked for below the series is answered, as the instance its path names.
    scripted.get(f"/dicomweb/studies/{STUDY}/series/{SERIES[0]}", prefix=True).mock(
        side_effect=lambda request: part10_response(unquote(request.url.path.rsplit("/")[-1]))
    )
    serve_study(scripted, instances=lambda s: [instance_json(sop) for sop in listed[s]])
    scripted.get("/dicomweb/studies").mock(return_value=studies(STUDY))  # (is it there?)
    keep = tmp_path / "run" / "kept"
    result = run_installed(
        "bench", STUDY, "--url", scripted.base, "--http", "1.1", "--strategy", strategy,
        "--repeat", "1", "-c", "2", "--json", "--keep", str(keep),
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    first = f"the server lists an instance with the UID {NO_UIDS[0]!r}, which is no UID and"
    assert row["status"].startswith(f"{len(NO_UIDS)} of 9 failed: {first}"), row
    good = [sop for series in SERIES for sop in SOPS[series]]
    assert sorted(p.name for p in keep.iterdir()) == sorted(f"{sop}.dcm" for sop in good)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and keep not in p.parents] == []
    base = f"/dicomweb/studies/{STUDY}"
    assert_only_asked_for(
        scripted,
        "/dicomweb/studies",
        f"{base}/instances",
        f"{base}/series",
        *(f"{base}/series/{uid}/instances" for uid in SERIES),
        *(f"{base}/series/{uid}/instances/{sop}" for uid in SERIES for sop in SOPS[uid]),
    )
