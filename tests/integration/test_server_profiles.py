"""Vendor profiles: the retrieve quirks of Orthanc and dcm4chee, reproduced (see DOMAIN.md)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.fixtures.embedded_server import StartServer, SynthStudy, split_multipart

pytestmark = pytest.mark.integration

MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def instance_url(base: str, study: SynthStudy, index: int = 0) -> str:
    i = study.instances[index]
    return f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"


def test_orthanc(synth_study: SynthStudy, embedded_server: StartServer) -> None:
    base = embedded_server(synth_study.root, profile="orthanc")
    with httpx.Client(timeout=10) as client:
        single = client.get(
            instance_url(base, synth_study), headers={"accept": "application/dicom"}
        )
        assert single.status_code == 400
        for accept in (MULTIPART, "*/*"):
            response = client.get(
                f"{base}/studies/{synth_study.study_uid}", headers={"accept": accept}
            )
            assert response.headers["connection"] == "close"
            content_type = response.headers["content-type"]
            match = re.fullmatch(
                r"multipart/related; type=application/dicom; boundary=(\S+)", content_type
            )
            assert match and len(match.group(1)) == 70 and '"' not in match.group(1)
            parts = split_multipart(response.content, content_type)
            assert [body for _, body in parts] == [
                i.path.read_bytes() for i in synth_study.instances
            ]
            headers, _ = parts[0]
            assert set(headers) == {"content-type", "content-length", "mime-version"}
            assert headers["mime-version"] == "1.0"
            assert headers["content-length"] == str(synth_study.instances[0].size)


def test_dcm4chee(synth_study: SynthStudy, embedded_server: StartServer) -> None:
    base = embedded_server(synth_study.root, profile="dcm4chee")
    with httpx.Client(timeout=10) as client:
        single = client.get(
            instance_url(base, synth_study), headers={"accept": "application/dicom"}
        )
        assert single.status_code == 406
        series = synth_study.series_uids[0]
        url = f"{base}/studies/{synth_study.study_uid}/series/{series}"
        response = client.get(url, params={"accept": MULTIPART})  # the ?accept= form dcm4chee takes
        content_type = response.headers["content-type"]
        assert re.fullmatch(
            r'multipart/related;start="<1@resteasy-multipart>";type="application/dicom";'
            r" boundary=[0-9a-f-]+",
            content_type,
        )
        parts = split_multipart(response.content, content_type)
        expected = [i for i in synth_study.instances if i.series_uid == series]
        assert [body for _, body in parts] == [i.path.read_bytes() for i in expected]
        for headers, _ in parts:
            assert headers == {
                "content-type": "application/dicom;transfer-syntax=1.2.840.10008.1.2.1"
            }


def test_unknown_profile_rejected(synth_study: SynthStudy, embedded_server: StartServer) -> None:
    with pytest.raises(ValueError, match="profile"):
        embedded_server(synth_study.root, profile="pacs9000")
