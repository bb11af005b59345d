"""QIDO answers with results no one can download (no UID, or one that is no UID), through the
installed CLI against a scripted server on 127.0.0.1: never a silent exit 0 with instances or
studies missing, never a usage error for what the server sent, and the rest goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
) -> None:
    """The study listed series by series (no study-wide instance search), its files served."""
    base = f"/dicomweb/studies/{STUDY}"
    scripted.get(f"{base}/instances").mock(return_value=httpx.Response(400))
    scripted.get(f"{base}/series").mock(side_effect=lambda _: dicom_json(series()))
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


@pytest.mark.parametrize("dots", ["..", "."])
def test_a_series_listed_as_a_dot_segment_is_never_asked_for(
    scripted: Routes, tmp_path: Path, dots: str
) -> None:
    """A series UID `..` in a URL path names another resource (`/studies/S/series/..` is the
    study): its instances cannot be asked for. The study fails, one line naming the UID;
    the run was stopped as unreachable (exit 3) by what the study's URL answered."""
    serve_study(scripted, series=lambda: [*map(series_json, SERIES), series_json(dots)])
    status, summary = download(scripted, tmp_path / "out")
    assert status == 1, summary
    (failure,) = summary["failures"]
    assert failure["study"] == STUDY
    assert f"a series with the UID {dots!r}, which is no UID" in failure["reason"]
    assert scripted.get(f"/dicomweb/studies/{STUDY}/instances").call_count == 1  # once, at first
    status, summary = download(scripted, tmp_path / "out")
    assert status == 1 and summary["studies_complete_in_manifest"] == 0


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
