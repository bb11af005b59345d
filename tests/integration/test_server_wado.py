"""WADO-RS of the embedded server: single-part, multipart, negotiation, metadata, 404s."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom.data
import pytest

from tests.fixtures.embedded_server import StartServer, SynthStudy, split_multipart

pytestmark = pytest.mark.integration

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = "application/octet-stream"
PYDICOM_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


@pytest.fixture
def client(synth_study: SynthStudy, embedded_server: StartServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embedded_server(synth_study.root), timeout=10) as client:
        yield client


def instance_path(study: SynthStudy, index: int = 0) -> str:
    i = study.instances[index]
    return f"/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom; transfer-syntax=*",
        "application/dicom;transfer-syntax=*",
        "application/dicom",
        f"application/dicom; transfer-syntax={EXPLICIT}",
        'application/dicom; transfer-syntax="*"',
    ],
)
def test_single_part_is_the_file(
    client: httpx.Client, synth_study: SynthStudy, accept: str
) -> None:
    response = client.get(instance_path(synth_study, 3), headers={"accept": accept})
    assert response.status_code == 200
    assert response.content == synth_study.instances[3].path.read_bytes()
    assert response.headers["content-length"] == str(synth_study.instances[3].size)
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"


def test_accept_from_query_parameter(client: httpx.Client, synth_study: SynthStudy) -> None:
    response = client.get(
        instance_path(synth_study), params={"accept": "application/dicom; transfer-syntax=*"}
    )
    assert response.headers["content-type"].startswith("application/dicom;")
    assert response.content == synth_study.instances[0].path.read_bytes()


def test_single_part_other_transfer_syntax_is_406(
    client: httpx.Client, synth_study: SynthStudy
) -> None:
    accept = f"application/dicom; transfer-syntax={JPEG_BASELINE}"
    assert client.get(instance_path(synth_study), headers={"accept": accept}).status_code == 406


@pytest.mark.parametrize("level", ["study", "series"])
def test_single_part_above_instance_level_is_406(
    client: httpx.Client, synth_study: SynthStudy, level: str
) -> None:
    i = synth_study.instances[0]
    path = f"/studies/{i.study_uid}" + (f"/series/{i.series_uid}" if level == "series" else "")
    assert (
        client.get(path, headers={"accept": "application/dicom; transfer-syntax=*"}).status_code
        == 406
    )


@pytest.mark.parametrize(
    "accept",
    [
        MULTIPART,
        "multipart/related; type=application/dicom; transfer-syntax=*",
        "multipart/related;transfer-syntax=*;type=application/dicom",
        'multipart/related ;  type = "application/dicom" ; transfer-syntax = *',
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}',
        'multipart/related; type="application/dicom"',
        "*/*",
        None,
    ],
)
def test_multipart_study(client: httpx.Client, synth_study: SynthStudy, accept: str | None) -> None:
    headers = {"accept": accept} if accept else {}
    if accept is None:
        client.headers.pop("accept")  # httpx sends */* by default; this is "no Accept at all"
    response = client.get(f"/studies/{synth_study.study_uid}", headers=headers)
    assert response.status_code == 200
    assert "content-length" not in response.headers  # streamed
    assert response.headers["transfer-encoding"] == "chunked"
    parts = split_multipart(response.content, response.headers["content-type"])
    assert len(parts) == len(synth_study.instances)
    for (headers_, body), instance in zip(parts, synth_study.instances, strict=True):
        assert body == instance.path.read_bytes()
        assert headers_["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
        assert headers_["content-length"] == str(instance.size)
        assert headers_["content-location"] == str(client.base_url).rstrip("/") + (
            f"/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}"
        )


def test_multipart_series_and_instance(client: httpx.Client, synth_study: SynthStudy) -> None:
    series = synth_study.series_uids[1]
    response = client.get(
        f"/studies/{synth_study.study_uid}/series/{series}", headers={"accept": MULTIPART}
    )
    parts = split_multipart(response.content, response.headers["content-type"])
    expected = [i for i in synth_study.instances if i.series_uid == series]
    assert [body for _, body in parts] == [i.path.read_bytes() for i in expected]

    response = client.get(instance_path(synth_study, 5), headers={"accept": MULTIPART})
    ((_, body),) = split_multipart(response.content, response.headers["content-type"])
    assert body == synth_study.instances[5].path.read_bytes()


def test_multipart_content_type_and_boundary(client: httpx.Client, synth_study: SynthStudy) -> None:
    first = client.get(instance_path(synth_study), headers={"accept": MULTIPART})
    second = client.get(instance_path(synth_study), headers={"accept": MULTIPART})
    content_type = first.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary="')
    assert content_type != second.headers["content-type"]  # a fresh random boundary each time
    boundary = content_type.split('boundary="')[1].rstrip('"')
    assert first.content.startswith(f"--{boundary}\r\n".encode())
    assert first.content.endswith(f"\r\n--{boundary}--\r\n".encode())


def test_preference_by_q_value(client: httpx.Client, synth_study: SynthStudy) -> None:
    accept = f"application/dicom; q=0.5, {MULTIPART}"
    response = client.get(instance_path(synth_study), headers={"accept": accept})
    assert response.headers["content-type"].startswith("multipart/related")
    accept = f"{MULTIPART}; q=0.2, application/dicom; transfer-syntax=*"
    response = client.get(instance_path(synth_study), headers={"accept": accept})
    assert response.headers["content-type"].startswith("application/dicom;")


@pytest.mark.parametrize(
    "accept",
    ["image/jpeg", 'multipart/related; type="image/jpeg"', "application/dicom+json", "text/html"],
)
def test_unacceptable_types_are_406(
    client: httpx.Client, synth_study: SynthStudy, accept: str
) -> None:
    assert client.get(instance_path(synth_study), headers={"accept": accept}).status_code == 406


def test_head_sends_length_without_body(client: httpx.Client, synth_study: SynthStudy) -> None:
    response = client.head(instance_path(synth_study), headers={"accept": "application/dicom"})
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == str(synth_study.instances[0].size)


@pytest.mark.parametrize(
    "path",
    [
        "/studies/1.2.3",
        "/studies/1.2.3/metadata",
        "/studies/{st}/series/1.2.3",
        "/studies/{st}/series/{se}/instances/1.2.3",
        "/studies/{st}/series/{se}/instances/1.2.3/metadata",
        "/studies/{st}/series/{se}/instances/{sop}/frames/1",
        "/studies/metadata",
        "/studies/{st}/series/metadata",
        "/nothing-here",
    ],
)
def test_unknown_resources_are_404(
    client: httpx.Client, synth_study: SynthStudy, path: str
) -> None:
    i = synth_study.instances[0]
    url = path.format(st=i.study_uid, se=i.series_uid, sop=i.sop_uid)
    assert client.get(url, headers={"accept": "application/dicom"}).status_code == 404
    outside = httpx.URL(str(client.base_url)).copy_with(path="/studies")
    assert client.get(outside).status_code == 404
    assert client.post("/studies").status_code == 405


def test_metadata_at_each_level(client: httpx.Client, synth_study: SynthStudy) -> None:
    i = synth_study.instances[0]
    study = client.get(f"/studies/{i.study_uid}/metadata")
    assert study.headers["content-type"] == "application/dicom+json"
    assert len(study.json()) == len(synth_study.instances)
    series = client.get(f"/studies/{i.study_uid}/series/{i.series_uid}/metadata").json()
    assert len(series) == 20
    (one,) = client.get(instance_path(synth_study) + "/metadata").json()
    assert one["00080018"]["Value"] == [i.sop_uid]
    assert one["00100010"]["Value"][0]["Alphabetic"]
    assert "7FE00010" not in one and "00280010" in one
    assert (
        client.get(
            f"/studies/{i.study_uid}/metadata", headers={"accept": "application/dicom"}
        ).status_code
        == 406
    )


def test_metadata_gives_a_large_binary_value_as_a_bulk_data_uri(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """A 200 MB OB value was sent inline, base64 in the JSON: 800 MB of the server's memory.
    Above 1 MiB a binary value is a BulkDataURI now (PS3.18 F.2.6), and the URI serves it."""
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    big, small = bytes(range(256)) * (3 * 4096 + 1), b"\x07" * 100_000
    block = ds.private_block(0x0041, "DLSTUDY TEST", create=True)
    block.add_new(0x10, "OB", big)
    block.add_new(0x11, "OB", small)
    ds.save_as(tmp_path / "big.dcm")
    big_key, small_key = f"{block.get_tag(0x10):08X}", f"{block.get_tag(0x11):08X}"
    url = embedded_server(tmp_path)
    path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
    path += ds.SOPInstanceUID
    with httpx.Client(base_url=url, timeout=30) as client:
        (one,) = client.get(path + "/metadata").json()
        (found,) = client.get("/instances", params={"includefield": "all"}).json()
        single = client.get(f"{path}/bulkdata/{big_key}", headers={"accept": OCTETS})
        multi = client.get(f"{path}/bulkdata/{big_key}")
        missing = client.get(f"{path}/bulkdata/{small_key}")  # inline, so no bulk data
    assert one[big_key] == {"vr": "OB", "BulkDataURI": f"{url}{path}/bulkdata/{big_key}"}
    assert found[big_key] == one[big_key]
    assert base64.b64decode(one[small_key]["InlineBinary"]) == small
    assert one["00100010"]["Value"][0]["Alphabetic"] and "7FE00010" not in one
    assert single.status_code == 200 and single.headers["content-type"] == OCTETS
    assert single.content == big and single.headers["content-length"] == str(len(big))
    assert multi.status_code == 200
    assert multi.headers["content-type"].startswith('multipart/related; type="application/oc')
    ((headers, value),) = split_multipart(multi.content, multi.headers["content-type"])
    assert headers["content-type"] == OCTETS and value == big
    assert missing.status_code == 404


@pytest.fixture(scope="module")
def real_world_url() -> Iterator[str]:
    from dlstudy.server import ServerOptions, running_server

    with running_server(ServerOptions(root=PYDICOM_FILES)) as url:
        yield url


def find(client: httpx.Client, name: str) -> str:
    """The instance URL of one of pydicom's test files, found by its SOP Instance UID."""
    ds = pydicom.dcmread(PYDICOM_FILES / name, stop_before_pixels=True, force=True)
    (result,) = client.get("/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    url: str = result["00081190"]["Value"][0]
    return url


def test_real_world_files_indexed_and_skipped(real_world_url: str) -> None:
    with httpx.Client(base_url=real_world_url) as client:
        instances = client.get("/instances").json()
        assert len(instances) > 100
        syntaxes = {r["00083002"]["Value"][0] for r in instances}
        assert {EXPLICIT, JPEG_BASELINE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"} <= syntaxes


@pytest.mark.parametrize(
    ("name", "ts"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", JPEG_BASELINE),
        ("rtstruct.dcm", "1.2.840.10008.1.2"),  # no preamble, no file meta: implicit VR LE
        ("ExplVR_BigEnd.dcm", "1.2.840.10008.1.2.2"),
    ],
)
def test_real_world_files_served_as_stored(real_world_url: str, name: str, ts: str) -> None:
    with httpx.Client(base_url=real_world_url) as client:
        url = find(client, name)
        response = client.get(url, headers={"accept": "application/dicom; transfer-syntax=*"})
        assert response.content == (PYDICOM_FILES / name).read_bytes()
        assert response.headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
        same = client.get(url, headers={"accept": f"application/dicom; transfer-syntax={ts}"})
        assert same.status_code == 200
        default = client.get(url, headers={"accept": "application/dicom"})
        assert default.status_code == (200 if ts == EXPLICIT else 406)  # no transcoding


def test_real_world_study_mixed_syntaxes(real_world_url: str) -> None:
    with httpx.Client(base_url=real_world_url) as client:
        url = find(client, "SC_rgb_jpeg_dcmtk.dcm").split("/series/")[0]
        assert (
            client.get(
                url, headers={"accept": 'multipart/related; type="application/dicom"'}
            ).status_code
            == 406
        )
        response = client.get(url, headers={"accept": MULTIPART})
        assert response.status_code == 200
        assert split_multipart(response.content, response.headers["content-type"])
        assert client.get(url + "/metadata").status_code == 200
