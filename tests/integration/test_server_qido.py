"""QIDO-RS of the embedded server, through a real socket: levels, matching, paging, fields."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from dlstudy.server import ServerOptions, running_server
from dlstudy.server.synth import SynthInstance, SynthSpec, generate

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Archive:
    root: Path
    instances: list[SynthInstance]
    studies: dict[str, pydicom.Dataset]  # study UID -> header of its first instance

    def study_uids(self, **where: str) -> list[str]:
        return sorted(
            uid for uid, ds in self.studies.items() if all(ds.get(k) == v for k, v in where.items())
        )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("qido")
    written = generate(root, SynthSpec(studies=3, series=2, instances=3, size=4096))
    written += generate(
        root, SynthSpec(studies=1, series=1, instances=2, size=4096, modality="MR", seed=5)
    )
    studies: dict[str, pydicom.Dataset] = {}
    for instance in written:
        if instance.study_uid not in studies:
            studies[instance.study_uid] = pydicom.dcmread(instance.path, stop_before_pixels=True)
    return Archive(root, written, studies)


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[httpx.Client]:
    with running_server(ServerOptions(root=archive.root)) as url:
        with httpx.Client(base_url=url, timeout=10) as client:
            yield client


def values(result: dict[str, Any], tag: str) -> list[Any]:
    return list(result.get(tag, {}).get("Value", []))


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [values(r, tag)[0] for r in results]


def search(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params=params)
    if response.status_code == 204:
        assert response.content == b""
        return []
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    result: list[dict[str, Any]] = response.json()
    return result


def test_study_level_default_attributes(client: httpx.Client, archive: Archive) -> None:
    results = search(client, "/studies")
    assert uids(results) == sorted(archive.studies)  # stable order: by Study Instance UID
    mr = next(r for r in results if values(r, "00080061") == ["MR"])
    ds = archive.studies[values(mr, "0020000D")[0]]
    assert values(mr, "00100010") == [{"Alphabetic": str(ds.PatientName)}]
    assert values(mr, "00100020") == [ds.PatientID]
    assert values(mr, "00080020") == [ds.StudyDate]
    assert values(mr, "00080050") == [ds.AccessionNumber]
    assert values(mr, "00201206") == [1] and values(mr, "00201208") == [2]
    assert mr["00081190"]["vr"] == "UR"
    base = str(client.base_url).rstrip("/")
    assert values(mr, "00081190") == [f"{base}/studies/{ds.StudyInstanceUID}"]
    assert list(mr) == sorted(mr)  # DICOM JSON keys in tag order


def test_series_and_instance_levels(client: httpx.Client, archive: Archive) -> None:
    study = archive.instances[0].study_uid
    series = search(client, f"/studies/{study}/series")
    assert len(series) == 2
    assert [values(s, "00200011") for s in series] == [[1], [2]]
    assert all(values(s, "00080060") == ["CT"] and values(s, "00201209") == [3] for s in series)
    assert values(series[0], "00081190")[0].endswith(
        f"/studies/{study}/series/{uids(series, '0020000E')[0]}"
    )

    se = uids(series, "0020000E")[0]
    instances = search(client, f"/studies/{study}/series/{se}/instances")
    assert [values(i, "00200013") for i in instances] == [[1], [2], [3]]
    first = instances[0]
    ds = pydicom.dcmread(
        next(i.path for i in archive.instances if i.sop_uid == uids(instances, "00080018")[0]),
        stop_before_pixels=True,
    )
    assert values(first, "00080016") == [ds.SOPClassUID]
    assert values(first, "00280010") == [ds.Rows] and values(first, "00280011") == [ds.Columns]
    assert values(first, "00083002") == ["1.2.840.10008.1.2.1"]
    assert values(first, "0020000E") == [se] and values(first, "0020000D") == [study]
    assert values(first, "00081190")[0].endswith(f"/series/{se}/instances/{ds.SOPInstanceUID}")


def test_study_instances_and_top_level_resources(client: httpx.Client, archive: Archive) -> None:
    study = archive.instances[0].study_uid
    assert len(search(client, f"/studies/{study}/instances")) == 6
    assert len(search(client, "/series")) == 3 * 2 + 1
    everything = search(client, "/instances")
    assert sorted(uids(everything, "00080018")) == sorted(i.sop_uid for i in archive.instances)
    # top-level instance results carry the study attributes too
    assert all("00100020" in r for r in everything)


@pytest.mark.parametrize("name", ["PatientID", "00100020"])
def test_match_patient_id_by_keyword_or_tag(
    client: httpx.Client, archive: Archive, name: str
) -> None:
    uid, ds = next(iter(archive.studies.items()))
    assert uids(search(client, "/studies", **{name: ds.PatientID})) == [uid]


def test_match_uid_list_and_accession(client: httpx.Client, archive: Archive) -> None:
    some = sorted(archive.studies)[1:3]
    assert uids(search(client, "/studies", StudyInstanceUID=",".join(some))) == some
    assert uids(search(client, "/studies", StudyInstanceUID="\\".join(some))) == some
    uid, ds = next(iter(archive.studies.items()))
    assert uids(search(client, "/studies", AccessionNumber=ds.AccessionNumber)) == [uid]


def test_patient_name_wildcards_ignore_case(client: httpx.Client, archive: Archive) -> None:
    ds = next(iter(archive.studies.values()))
    family = str(ds.PatientName).split("^")[0]
    expected = sorted(
        u for u, d in archive.studies.items() if str(d.PatientName).startswith(family + "^")
    )
    assert uids(search(client, "/studies", PatientName=f"{family.lower()}^*")) == expected
    assert uids(search(client, "/studies", PatientName=f"?{family[1:]}^*")) == expected
    assert uids(search(client, "/studies", PatientName=str(ds.PatientName).lower())) == sorted(
        u for u, d in archive.studies.items() if d.PatientName == ds.PatientName
    )
    assert search(client, "/studies", PatientName="NOBODY*") == []


def test_study_date_ranges(client: httpx.Client, archive: Archive) -> None:
    dates = sorted(ds.StudyDate for ds in archive.studies.values())  # synth: one day apart

    def by_date(query: str) -> list[str]:
        return sorted(values(r, "00080020")[0] for r in search(client, "/studies", StudyDate=query))

    assert by_date(dates[1]) == [d for d in dates if d == dates[1]]
    assert by_date(f"{dates[1]}-{dates[2]}") == [d for d in dates if dates[1] <= d <= dates[2]]
    assert by_date(f"-{dates[1]}") == [d for d in dates if d <= dates[1]]
    assert by_date(f"{dates[2]}-") == [d for d in dates if d >= dates[2]]
    assert by_date("19000101-19001231") == []


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        ("/studies", "StudyDate", "2024-13-45"),
        ("/studies", "StudyDate", "garbage"),
        ("/studies", "StudyDate", "20240145"),  # no 45th day
        ("/studies", "StudyDate", "20240101-20230101x"),
        ("/studies", "StudyDate", "-"),
        ("/studies", "PatientBirthDate", "1970"),
        ("/studies", "StudyTime", "2599"),
        ("/studies", "StudyTime", "noon-"),
        ("/series", "SeriesDate", "20240101-2024"),
    ],
)
def test_an_unreadable_date_or_time_is_400_naming_it(
    client: httpx.Client, path: str, name: str, value: str
) -> None:
    """A typo in a date answered 204 (no match): a client could not tell it from an empty
    archive."""
    response = client.get(path, params={name: value})
    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith(f"{name}: cannot read {value!r} as a ")


def test_every_date_and_time_form_is_still_read(client: httpx.Client) -> None:
    for name, value in [
        ("StudyDate", "2026.01.05"),  # the old form
        ("StudyDate", "20240229-"),
        ("StudyDate", "20240101-20230101"),  # an empty range, not a malformed one
        ("StudyTime", "09"),
        ("StudyTime", "0900-1000"),
        ("StudyTime", "09:00:30.123456"),
        ("StudyTime", "235960"),  # a leap second
        ("StudyDate", ""),
        ("StudyTime", "*"),
    ]:
        status = client.get("/studies", params={name: value}).status_code
        assert status in (200, 204), (name, value, status)


def test_modality_matching(client: httpx.Client, archive: Archive) -> None:
    assert len(search(client, "/studies", ModalitiesInStudy="MR")) == 1
    assert len(search(client, "/studies", ModalitiesInStudy="CT,MR")) == 4
    assert len(search(client, "/series", Modality="CT")) == 6
    assert len(search(client, "/instances", Modality="MR")) == 2


def test_series_and_sop_uid_matching(client: httpx.Client, archive: Archive) -> None:
    target = archive.instances[4]
    found = search(client, "/instances", SeriesInstanceUID=target.series_uid)
    assert {uids([r], "0020000E")[0] for r in found} == {target.series_uid} and len(found) == 3
    found = search(client, f"/studies/{target.study_uid}/instances", SOPInstanceUID=target.sop_uid)
    assert uids(found, "00080018") == [target.sop_uid]


def test_no_match_is_204(client: httpx.Client) -> None:
    response = client.get("/studies", params={"PatientID": "nobody"})
    assert response.status_code == 204 and response.content == b""
    assert client.get("/studies/1.2.3/series").status_code == 204


def test_limit_offset_pages_cover_everything_once(client: httpx.Client, archive: Archive) -> None:
    pages = [search(client, "/instances", limit=4, offset=offset) for offset in range(0, 40, 4)]
    flat = [sop for page in pages for sop in uids(page, "00080018")]
    assert len(flat) == len(set(flat)) == len(archive.instances)
    assert [len(p) for p in pages if p] == [4, 4, 4, 4, 4]
    assert search(client, "/instances", offset=1000) == []
    # stable ordering: the same query twice gives the same order
    assert uids(search(client, "/instances"), "00080018") == flat
    assert client.get("/studies", params={"limit": "-1"}).status_code == 400
    assert client.get("/studies", params={"offset": "x"}).status_code == 400


def test_include_fields(client: httpx.Client, archive: Archive) -> None:
    study = archive.instances[0].study_uid
    results = search(
        client, f"/studies/{study}/instances", includefield="Manufacturer,00180050", limit=1
    )
    assert values(results[0], "00080070") == ["dlstudy"]
    assert values(results[0], "00180050") == [1.25]
    results = search(client, f"/studies/{study}/instances", includefield="all", limit=1)
    assert values(results[0], "00280030") == [0.75, 0.75]  # PixelSpacing, from the file
    assert "7FE00010" not in results[0]
    studies = client.get(
        "/studies",
        params=[
            ("includefield", "StudyDescription"),
            ("includefield", "InstitutionName"),
            ("ModalitiesInStudy", "CT"),
        ],
    )
    first = studies.json()[0]
    assert values(first, "00081030") == ["CT CHEST"]
    assert values(first, "00080080") == ["dlstudy synthetic hospital"]


def test_unknown_and_unsupported_keys(client: httpx.Client) -> None:
    assert client.get("/studies", params={"NotAKeyword": "x"}).status_code == 400
    response = client.get("/studies", params={"SeriesDescription": "x"})  # not a study attribute
    assert response.status_code == 200
    assert (
        "299" in response.headers["warning"] and "SeriesDescription" in response.headers["warning"]
    )


def test_json_only(client: httpx.Client) -> None:
    assert client.get("/studies", headers={"accept": "application/dicom"}).status_code == 406
    assert client.get("/studies", headers={"accept": "application/json"}).status_code == 200


def test_max_page_size_warns_with_the_remaining_count(archive: Archive) -> None:
    with running_server(ServerOptions(root=archive.root, max_page_size=5)) as url:
        with httpx.Client(base_url=url) as client:
            response = client.get("/instances")
            assert response.status_code == 200 and len(response.json()) == 5
            assert response.headers["warning"] == (
                f"299 {client.base_url.netloc.decode()}: There are {len(archive.instances) - 5}"
                " additional results that can be requested"
            )
            last = client.get("/instances", params={"offset": 15})
            assert len(last.json()) == len(archive.instances) - 15 and "warning" not in last.headers
            small = client.get("/instances", params={"limit": 3})  # the client's limit: no warning
            assert len(small.json()) == 3 and "warning" not in small.headers


def test_ignore_offset_returns_the_same_page(archive: Archive) -> None:
    with running_server(
        ServerOptions(root=archive.root, max_page_size=4, ignore_offset=True)
    ) as url:
        with httpx.Client(base_url=url) as client:
            first = client.get("/instances", params={"limit": 4}).json()
            again = client.get("/instances", params={"limit": 4, "offset": 4}).json()
            assert first == again


def test_no_counts_leaves_every_count_out(archive: Archive) -> None:
    counts = {"00201206", "00201208", "00201209"}
    with running_server(ServerOptions(root=archive.root, no_counts=True)) as url:
        with httpx.Client(base_url=url) as client:
            study = archive.instances[0].study_uid
            for path in ("/studies", "/series", "/instances", f"/studies/{study}/series"):
                answer = client.get(path, params={"includefield": "all"}).json()
                assert answer and all(not counts & item.keys() for item in answer), path
    with running_server(ServerOptions(root=archive.root)) as url:
        with httpx.Client(base_url=url) as client:  # (which the default answer has)
            assert {"00201206", "00201208"} <= client.get("/studies").json()[0].keys()
