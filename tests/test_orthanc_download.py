"""`dlstudy download` against a real Orthanc + DICOMweb plugin: no options beyond --url.

Orthanc answers single-part requests with 400, speaks HTTP/1.1 only and streams multipart
responses with `Connection: close`; dlstudy must negotiate all of that and still write exactly
the bytes Orthanc stored (its REST `GET /instances/{id}/file`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from dlstudy.synth import PRESETS, generate

from .cli_helpers import run_cli, summary_of
from .fixtures.orthanc import OrthancError, OrthancServer
from .test_orthanc_server import PYDICOM_TEST_FILES, SLOW_TO_REJECT

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class StoredInstance:
    study: str
    series: str
    sop: str
    orthanc_study: str
    data: bytes


@pytest.fixture(scope="module")
def loaded(
    orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory
) -> list[StoredInstance]:
    """pydicom's test files and a synthetic study, as Orthanc stored them."""
    orthanc.reset()
    synth_dir = tmp_path_factory.mktemp("synth-for-orthanc")
    synthetic = [i.path for i in generate(synth_dir, PRESETS["small"])]
    files = sorted(p for p in PYDICOM_TEST_FILES.glob("*.dcm") if p.name not in SLOW_TO_REJECT)
    stored = []
    for path in [*synthetic, *files]:
        try:
            answer = orthanc.upload(path)
        except OrthancError:
            continue  # Orthanc refuses some of pydicom's deliberately broken files
        if answer["Status"] != "Success":
            continue
        tags = orthanc.client.get(f"/instances/{answer['ID']}/simplified-tags").json()
        stored.append(
            StoredInstance(
                tags["StudyInstanceUID"],
                tags["SeriesInstanceUID"],
                tags["SOPInstanceUID"],
                answer["ParentStudy"],
                orthanc.stored_file(answer["ID"]),
            )
        )
    return stored


def addressable_studies(stored: list[StoredInstance]) -> dict[str, list[StoredInstance]]:
    """Studies WADO-RS can serve: Orthanc 404s a study UID stored under two PatientIDs, and
    an instance whose SOP UID it stored twice (tests/ORTHANC_NOTES.md)."""
    sop_counts = Counter(s.sop for s in stored)
    studies: dict[str, list[StoredInstance]] = {}
    for s in stored:
        studies.setdefault(s.study, []).append(s)
    return {
        uid: members
        for uid, members in studies.items()
        if len({m.orthanc_study for m in members}) == 1
        and all(sop_counts[m.sop] == 1 for m in members)
    }


def assert_byte_exact(members: list[StoredInstance], out: Path) -> None:
    for m in members:
        assert (out / m.study / m.series / f"{m.sop}.dcm").read_bytes() == m.data, m.sop


def test_synthetic_study_downloads_byte_exact_with_only_the_url(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    studies = addressable_studies(loaded)
    synthetic = next(uid for uid, members in studies.items() if len(members) == 60)

    result = run_cli(
        "download", synthetic, "--url", orthanc.dicomweb_url, "-o", str(tmp_path), "--json"
    )

    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["instances"] == {"total": 60, "downloaded": 60, "skipped": 0, "failed": 0}
    assert summary["http_version"] == "HTTP/1.1"  # h2c refused, fell back once
    assert summary["retrieval"]["form"] == "multipart"
    assert summary["retrieval"]["rejected"] == ["application/dicom; transfer-syntax=* -> HTTP 400"]
    assert summary["retrieval"]["warnings"] == []
    assert_byte_exact(studies[synthetic], tmp_path)


def test_pydicom_test_files_download_byte_exact(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    studies = addressable_studies(loaded)
    uids = sorted(uid for uid, members in studies.items() if len(members) < 60)
    assert len(uids) >= 10

    result = run_cli(
        "download", *uids, "--url", orthanc.dicomweb_url, "-o", str(tmp_path), "--json"
    )

    summary = summary_of(result)
    assert result.exit_code == 0, "\n".join(f["reason"] for f in summary["failures"])
    expected = sum(len(studies[uid]) for uid in uids)
    assert summary["instances"]["downloaded"] == expected
    for uid in uids:
        assert_byte_exact(studies[uid], tmp_path)


@pytest.mark.parametrize("mode", ["series", "study"])
def test_bulk_modes_against_orthanc(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance], mode: str
) -> None:
    studies = addressable_studies(loaded)
    synthetic = next(uid for uid, members in studies.items() if len(members) == 60)

    result = run_cli(
        "download",
        synthetic,
        "--url",
        orthanc.dicomweb_url,
        "-o",
        str(tmp_path),
        "--json",
        "--mode",
        mode,
    )

    assert result.exit_code == 0, result.output
    assert summary_of(result)["instances"]["downloaded"] == 60
    assert_byte_exact(studies[synthetic], tmp_path)
