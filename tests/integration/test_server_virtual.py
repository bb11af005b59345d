"""`serve --virtual N`: a generated archive, checked against what its library says it holds."""

from __future__ import annotations

import io
import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from dlstudy.dicomweb.completeness import check_complete
from dlstudy.server import VirtualArchive, VirtualSpec

from ..cli_helpers import run_installed
from ..fixtures.embedded_server import StartServer, split_multipart

pytestmark = pytest.mark.integration

SPEC = VirtualSpec(60, seed=7)
SINGLE = "application/dicom; transfer-syntax=*"
MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def archive() -> VirtualArchive:
    return VirtualArchive(SPEC)


@pytest.fixture
def url(embedded_server: StartServer) -> str:
    return embedded_server(None, virtual=SPEC)


def qido(url: str, path: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}{path}", params=params)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []


def values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return [item[tag]["Value"][0] for item in items]


def study_value(archive: VirtualArchive, i: int, tag: str) -> Any:
    entry = {**archive.study_attributes(i), **archive.study_summary(i)}[tag]
    return entry["Value"]


def test_same_seed_same_archive_another_seed_another() -> None:
    one, two, other = (
        VirtualArchive(SPEC),
        VirtualArchive(SPEC),
        VirtualArchive(VirtualSpec(60, seed=8)),
    )
    assert list(one.study_uids()) == list(two.study_uids())
    assert [one.study_attributes(i) for i in range(60)] == [
        two.study_attributes(i) for i in range(60)
    ]
    study = next(one.study_uids())
    for uids in list(one.instances_of(study))[:5]:
        assert one.expected_bytes(*uids) == two.expected_bytes(*uids)
    assert not set(one.study_uids()) & set(other.study_uids())
    # The first studies of a bigger archive are the smaller one's.
    bigger = VirtualArchive(VirtualSpec(120, seed=7))
    assert list(bigger.study_uids())[:60] == list(one.study_uids())


def test_a_realistic_mix_over_years(archive: VirtualArchive) -> None:
    modalities = {m for i in range(len(archive)) for m in archive.modalities(i)}
    assert modalities == {"CR", "DX", "CT", "MR", "SEG", "SR"}
    for i in range(len(archive)):
        counts = [archive.instance_count(i, j) for j in range(archive.series_count(i))]
        kinds = {archive.modality(i, j) for j in range(archive.series_count(i))}
        if kinds <= {"CR", "DX"}:
            assert sum(counts) <= 4
        if "CT" in kinds or "MR" in kinds:
            assert sum(counts) >= 20
    years = {archive.date[i] // 10000 for i in range(len(archive))}
    assert len(years) >= 8
    patients = [archive.patient_id(i) for i in range(len(archive))]
    assert len(set(patients)) < len(patients)  # some patients have several studies


def test_every_instance_is_a_valid_part10_file(archive: VirtualArchive, tmp_path: Path) -> None:
    seen = set()
    for i in range(len(archive)):
        for j in range(archive.series_count(i)):
            modality = archive.modality(i, j)
            if modality in seen:
                continue
            seen.add(modality)
            data = archive.instance_bytes(i, j, 0)
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.Modality == modality
            assert ds.SOPInstanceUID == archive.sop_uid(i, j, 0)
            assert ds.StudyInstanceUID == archive.study_uid(i)
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            if modality != "SR":
                assert len(ds.PixelData) >= ds.Rows * ds.Columns // 8
            path = tmp_path / f"{modality}.dcm"
            path.write_bytes(data)
            check_complete(path, transfer_syntax="1.2.840.10008.1.2.1", size=len(data), label="x")
    assert seen == {"CR", "DX", "CT", "MR", "SEG", "SR"}


def test_study_size_and_mimic_shapes() -> None:
    one = VirtualArchive(VirtualSpec(2, study_size=10_001))
    assert [one.series_count(0), one.instance_count(0, 0), one.modality(0, 0)] == [1, 10_001, "CT"]
    mimic = VirtualArchive(VirtualSpec(300, mix="mimic"))
    sizes = {mimic.study_size[i] for i in range(300)}
    assert sizes == {1, 2, 3, 4}
    assert {m for i in range(300) for m in mimic.modalities(i)} == {"DX"}


def test_the_index_keeps_a_few_bytes_per_study() -> None:
    tracemalloc.start()
    try:
        VirtualArchive(VirtualSpec(50_000, seed=3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / 50_000 < 100  # bytes a study: a million studies in well under 300 MB


def test_foreign_and_malformed_uids_are_not_found(archive: VirtualArchive) -> None:
    other = VirtualArchive(VirtualSpec(60, seed=8))
    assert archive.position(other.study_uid(0), 0) is None
    assert archive.position(archive.series_uid(0, 0), 0) is None  # a series UID is no study
    assert archive.position("2.25.12345", 0) is None
    assert archive.position("2.25.0" + archive.study_uid(0)[5:], 0) is None  # leading zero
    assert archive.select([archive.study_uid(0), archive.series_uid(1, 0)]) == []


def test_qido_study_search_matches_the_usual_keys(url: str, archive: VirtualArchive) -> None:
    everything = qido(url, "/studies")
    assert values(everything, "0020000D") == list(archive.study_uids())
    i = 3
    by_patient = qido(url, "/studies", PatientID=archive.patient_id(i))
    expected = [archive.study_uid(n) for n in range(60) if archive.patient[n] == archive.patient[i]]
    assert values(by_patient, "0020000D") == expected

    family = archive.patient_name(i).split("^")[0]
    by_name = qido(url, "/studies", PatientName=f"{family[:3].lower()}*")
    assert {v["Alphabetic"].split("^")[0] for v in values(by_name, "00100010")} == {family}
    assert len(by_name) == sum(1 for n in range(60) if archive.patient_name(n).startswith(family))

    dates = sorted(archive.date[n] for n in range(60))
    low, high = dates[10], dates[40]
    in_range = qido(url, "/studies", StudyDate=f"{low}-{high}")
    assert sorted(int(v) for v in values(in_range, "00080020")) == dates[10:41]
    assert len(qido(url, "/studies", StudyDate=f"-{low}")) == 11
    typo = httpx.get(f"{url}/studies", params={"StudyDate": f"{low}-{high}x"})
    assert typo.status_code == 400 and typo.text.startswith("StudyDate: cannot read")

    with_seg = qido(url, "/studies", ModalitiesInStudy="SEG")
    assert with_seg and all("SEG" in item["00080061"]["Value"] for item in with_seg)
    assert len(with_seg) == sum(1 for n in range(60) if "SEG" in archive.modalities(n))

    pair = f"{archive.study_uid(5)},{archive.study_uid(2)}"
    assert values(qido(url, "/studies", StudyInstanceUID=pair), "0020000D") == [
        archive.study_uid(2),
        archive.study_uid(5),
    ]
    assert values(qido(url, "/studies", AccessionNumber=archive.accession(9)), "0020000D") == [
        archive.study_uid(9)
    ]
    assert qido(url, "/studies", AccessionNumber="ACC99999999") == []


def test_study_level_counts(url: str, archive: VirtualArchive) -> None:
    for item in qido(url, "/studies", limit=10):
        uid = item["0020000D"]["Value"][0]
        listed = list(archive.instances_of(uid))
        assert item["00201208"]["Value"] == [len(listed)]
        assert item["00201206"]["Value"] == [len({series for _, series, _ in listed})]


def test_qido_series_and_instance_levels(url: str, archive: VirtualArchive) -> None:
    i = next(n for n in range(60) if archive.series_count(n) > 2)
    study = archive.study_uid(i)
    series = qido(url, f"/studies/{study}/series")
    assert values(series, "0020000E") == [archive.series_uid(i, j) for j in range(len(series))]
    assert values(series, "00201209") == [archive.instance_count(i, j) for j in range(len(series))]
    j = len(series) - 1
    instances = qido(url, f"/studies/{study}/series/{archive.series_uid(i, j)}/instances")
    assert values(instances, "00080018") == [
        sop for _, se, sop in archive.instances_of(study) if se == archive.series_uid(i, j)
    ]
    assert len(qido(url, f"/studies/{study}/instances")) == archive.study_size[i]

    wanted = archive.sop_uid(i, 1, 2)
    found = qido(url, "/instances", SOPInstanceUID=wanted)
    assert values(found, "00080018") == [wanted]
    assert values(found, "0020000D") == [study]  # unscoped: the study's attributes too
    assert values(qido(url, "/series", SeriesInstanceUID=archive.series_uid(i, 1)), "0020000E") == [
        archive.series_uid(i, 1)
    ]
    srs = qido(url, "/series", Modality="SR")
    assert len(srs) == sum(
        1
        for n in range(60)
        for m in range(archive.series_count(n))
        if archive.modality(n, m) == "SR"
    )
    patient = archive.patient_id(i)
    assert len(qido(url, "/instances", PatientID=patient)) == sum(
        archive.study_size[n] for n in range(60) if archive.patient_id(n) == patient
    )
    assert len(qido(url, "/series")) == archive.first_series[-1]
    assert (
        qido(url, f"/studies/{study}/series", SeriesInstanceUID=archive.series_uid(i + 1, 0)) == []
    )
    assert httpx.get(f"{url}/studies/{study}/series?NoSuchKey=1").status_code == 400


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_a_big_answer_arrives_whole(embedded_server: StartServer, http2: bool) -> None:
    """An answer over a megabyte goes out in chunks (as a file would); it must arrive whole,
    with the length it announced."""
    spec = VirtualSpec(1, seed=7, study_size=2500)
    url = embedded_server(None, virtual=spec)
    archive = VirtualArchive(spec)
    with httpx.Client(http1=not http2, http2=http2) as client:
        response = client.get(f"{url}/instances", params={"includefield": "all", "limit": 2500})
    assert response.status_code == 200
    assert len(response.content) == int(response.headers["content-length"]) > 3 * 2**20
    study = archive.study_uid(0)
    assert values(response.json(), "00080018") == [sop for *_, sop in archive.instances_of(study)]


def test_limit_offset_paging_and_the_page_cap(
    embedded_server: StartServer, archive: VirtualArchive
) -> None:
    url = embedded_server(None, virtual=SPEC)
    pages = [qido(url, "/studies", limit=7, offset=o) for o in range(0, 70, 7)]
    assert [uid for page in pages for uid in values(page, "0020000D")] == list(archive.study_uids())
    assert pages[-1] == []  # past the end: 204

    capped = embedded_server(None, virtual=SPEC, max_page_size=25)
    response = httpx.get(f"{capped}/studies", params={"offset": 10})
    assert len(response.json()) == 25
    warning = response.headers["warning"]
    assert re.fullmatch(
        r"299 [^:]+:\d+: There are 25 additional results that can be requested", warning
    )
    last = httpx.get(f"{capped}/studies", params={"offset": 35})
    assert len(last.json()) == 25 and "warning" not in last.headers
    asked_less = httpx.get(f"{capped}/studies", params={"limit": 5})
    assert len(asked_less.json()) == 5 and "warning" not in asked_less.headers


def test_wado_single_part_and_multipart(url: str, archive: VirtualArchive) -> None:
    i = next(n for n in range(60) if archive.series_count(n) > 1 and archive.study_size[n] < 800)
    study = archive.study_uid(i)
    listed = list(archive.instances_of(study))
    st, se, sop = listed[1]
    single = httpx.get(
        f"{url}/studies/{st}/series/{se}/instances/{sop}", headers={"accept": SINGLE}
    )
    assert single.status_code == 200
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == archive.expected_bytes(st, se, sop)
    assert int(single.headers["content-length"]) == len(single.content)

    for path, expected in [
        (f"/studies/{study}", listed),
        (f"/studies/{study}/series/{se}", [u for u in listed if u[1] == se]),
        (f"/studies/{st}/series/{se}/instances/{sop}", [listed[1]]),
    ]:
        response = httpx.get(f"{url}{path}", headers={"accept": MULTIPART})
        assert response.status_code == 200
        parts = split_multipart(response.content, response.headers["content-type"])
        assert [body for _, body in parts] == [archive.expected_bytes(*u) for u in expected]

    assert httpx.get(f"{url}/studies/{study}", headers={"accept": SINGLE}).status_code == 406
    assert httpx.get(f"{url}/studies/2.25.1234", headers={"accept": MULTIPART}).status_code == 404
    metadata = httpx.get(f"{url}/studies/{st}/series/{se}/metadata").json()
    assert [m["00080018"]["Value"][0] for m in metadata] == [u[2] for u in listed if u[1] == se]


def test_metadata_holds_what_each_instance_holds(url: str, archive: VirtualArchive) -> None:
    """The metadata of an instance is the instance without its pixel data: it left out its
    maker and its pixel module (or an SR's document flags), which its bytes held."""
    seen: set[str] = set()
    for i in range(len(archive)):
        for st, se, sop in archive.instances_of(archive.study_uid(i)):
            dataset = pydicom.dcmread(io.BytesIO(archive.expected_bytes(st, se, sop)))
            if dataset.Modality in seen:
                continue
            seen.add(dataset.Modality)
            if "PixelData" in dataset:  # (an SR has none)
                del dataset.PixelData
            expected = dataset.to_json_dict()
            (metadata,) = httpx.get(
                f"{url}/studies/{st}/series/{se}/instances/{sop}/metadata"
            ).json()
            assert metadata == expected, dataset.Modality
    assert seen == {"CR", "DX", "CT", "MR", "SEG", "SR"}


def test_same_seed_serves_the_same_listing_and_bytes(embedded_server: StartServer) -> None:
    first, second = (embedded_server(None, virtual=SPEC) for _ in range(2))
    assert qido(first, "/studies", limit=20) == [
        json.loads(json.dumps(item).replace(second, first))
        for item in qido(second, "/studies", limit=20)
    ]
    archive = VirtualArchive(SPEC)
    st, se, sop = next(archive.instances_of(archive.study_uid(4)))
    path = f"/studies/{st}/series/{se}/instances/{sop}"
    bodies = {httpx.get(f"{u}{path}", headers={"accept": SINGLE}).content for u in (first, second)}
    assert bodies == {archive.expected_bytes(st, se, sop)}


def test_download_from_the_virtual_archive_is_byte_exact(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    spec = VirtualSpec(40, seed=11)
    archive = VirtualArchive(spec)
    url = embedded_server(None, virtual=spec)
    small = [uid for i, uid in enumerate(archive.study_uids()) if archive.study_size[i] < 400][:4]
    out = tmp_path / "out"
    result = run_installed("download", *small, "--url", url, "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = [uids for study in small for uids in archive.instances_of(study)]
    assert summary["instances"]["downloaded"] == len(expected)
    for st, se, sop in expected:
        assert (out / st / se / f"{sop}.dcm").read_bytes() == archive.expected_bytes(st, se, sop)
    files = [p for p in out.rglob("*.dcm") if ".dlstudy" not in p.parts]
    assert len(files) == len(expected)


def test_serves_option_ranges_are_the_virtual_archives_limits() -> None:
    from dlstudy.cli import server_cmds
    from dlstudy.server import virtual_spec

    assert server_cmds.MAX_VIRTUAL_STUDIES == virtual_spec.MAX_STUDIES
    assert server_cmds.MAX_VIRTUAL_STUDY_SIZE == virtual_spec.MAX_INSTANCES


def test_serve_needs_a_folder_or_virtual_not_both(tmp_path: Path) -> None:
    neither = run_installed("serve", "--port", "0")
    both = run_installed("serve", str(tmp_path), "--virtual", "3", "--port", "0")
    for result in (neither, both):
        assert result.returncode == 2
        assert "serve needs a DIR or --virtual N" in result.stderr
    mix_alone = run_installed("serve", str(tmp_path), "--mix", "mimic")
    assert mix_alone.returncode == 2 and "--virtual" in mix_alone.stderr
    for studies, bound in (
        ("0", "greater than or equal to 1"),
        ("20000001", "less than or equal to 20000000"),
    ):  # (4294967295 was a MemoryError traceback)
        bad = run_installed("serve", "--virtual", studies, "--port", "0")
        assert bad.returncode == 2, bad.stderr  # the option named (it was "Invalid value:")
        assert bad.stderr.startswith(f"dlstudy: error: Invalid value for '--virtual': Input "
                                     f"should be {bound}"), bad.stderr  # fmt: skip
