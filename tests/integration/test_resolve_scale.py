"""Resolution at archive scale, through the installed console script: a study far bigger than a
QIDO page, a list of many small studies, and both ways of listing a study (one study-wide
instance search when the server's answer carries the study's count, series by series when not).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from dlstudy.server import VirtualArchive, VirtualSpec
from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import download_list, installed_download, instance_counts, run_installed
from ..cohort_helpers import assert_byte_exact
from ..fixtures.embedded_server import SeenRequests, StartServer
from ..fixtures.orthanc import OrthancServer

pytestmark = pytest.mark.integration


def searches(seen: SeenRequests) -> list[str]:
    """The paths of the QIDO searches the server was asked, in order."""
    return [
        path for path, _ in seen.requests if path.endswith(("/studies", "/series", "/instances"))
    ]


def test_a_20000_instance_study_downloads_complete_through_a_page_cap(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    spec = VirtualSpec(1, seed=5, study_size=20_000)
    archive = VirtualArchive(spec)
    study = archive.study_uid(0)
    url = embedded_server(None, virtual=spec, max_page_size=700)  # Warning: 299 past 700
    out = tmp_path / "out"

    code, summary, stderr = installed_download(url, study, out, "--mode", "instance")

    assert code == 0, stderr
    assert summary["instances"] == instance_counts(20_000, downloaded=20_000)
    assert assert_byte_exact(archive, [study], out) == 20_000
    # Listed in one study-wide search, page after capped page; no series listing needed. (A
    # page asked again is a retry, which a machine busy enough to time a request out may see.)
    listings = searches(seen_requests)
    assert set(listings) == {f"/dicomweb/studies/{study}/instances"}
    offsets = {
        parse_qs(query.decode()).get("offset", ["0"])[0]
        for path, query in seen_requests.requests
        if path in listings
    }
    assert sorted(map(int, offsets)) == [700 * page for page in range(29)]  # 28, then empty


def test_a_list_of_500_small_studies_downloads_complete(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    spec = VirtualSpec(500, seed=6, mix="mimic")
    archive = VirtualArchive(spec)
    studies = list(archive.study_uids())
    url = embedded_server(None, virtual=spec)

    summary, out = download_list(url, studies, tmp_path)

    total = sum(archive.study_size)
    assert summary["instances"] == instance_counts(total, downloaded=total)
    assert sorted(summary["study_uids"]) == sorted(studies)
    assert assert_byte_exact(archive, studies, out) == total
    # One instance search per 32 studies (UID list matching), each study in one of them.
    assert searches(seen_requests) == ["/dicomweb/instances"] * 16
    asked = [
        uid
        for path, query in seen_requests.requests
        if path == "/dicomweb/instances"
        for uid in parse_qs(query.decode())["StudyInstanceUID"][0].split(",")
    ]
    assert sorted(asked) == sorted(studies)


def test_a_server_without_study_counts_is_listed_series_by_series(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Orthanc answers a study-wide instance search without NumberOfStudyRelatedInstances:
    the answer cannot be checked complete, so the studies are listed series by series."""
    orthanc.reset()
    instances = generate(tmp_path / "synth", SynthSpec(studies=2, series=2, instances=3, size=4096))
    stored = {}
    for instance in instances:
        answer = orthanc.upload(instance.path)
        stored[instance.sop_uid] = (instance, orthanc.stored_file(answer["ID"]))
    studies = sorted({i.study_uid for i in instances})
    assert len(studies) == 2
    out, log = tmp_path / "out", tmp_path / "run.log"

    result = run_installed(
        "download", *studies, "--url", orthanc.dicomweb_url, "-o", str(out), "--json",
        "--log-file", str(log),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == len(instances)
    for sop, (instance, data) in stored.items():
        path = out / instance.study_uid / instance.series_uid / f"{sop}.dcm"
        assert path.read_bytes() == data
    text = log.read_text()
    # The two studies in one search first (Orthanc matches UID lists), without counts...
    assert text.count("gives no study instance count in an instance search") == 1
    fallbacks = text.count("gives no instance count: series by series")
    assert fallbacks == 0  # ...then series by series, no study asked alone first
