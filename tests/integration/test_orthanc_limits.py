"""The installed CLI against an Orthanc whose search results are capped (LimitFindResults,
LimitFindInstances). Orthanc then sends the first cap + 1 results of a search and nothing past
them whatever the offset, without a Warning or a count: paging cannot see the rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import installed_download
from ..fixtures.orthanc import OrthancServer, orthanc_configured

pytestmark = pytest.mark.integration

SERIES = 7  # more than the 5 series (cap 4 + 1) Orthanc lists of a study


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("orthanc-capped")
    with orthanc_configured(workdir, LimitFindResults=4, LimitFindInstances=0) as server:
        yield server


def upload_study(orthanc: OrthancServer, root: Path, seed: int) -> list[SynthInstance]:
    spec = SynthSpec(studies=1, series=SERIES, instances=2, size=2048, seed=seed)
    instances = generate(root, spec)
    for instance in instances:
        assert orthanc.upload(instance.path)["Status"] == "Success"
    return instances


@pytest.mark.parametrize("mode", ["instance", "series"])
def test_a_study_of_more_series_than_orthanc_lists_comes_whole(
    capped: OrthancServer, tmp_path: Path, mode: str
) -> None:
    capped.reset()
    instances = upload_study(capped, tmp_path / "source", seed=71)
    out = tmp_path / "out"
    code, summary, stderr = installed_download(
        capped.dicomweb_url, instances[0].study_uid, out, "--mode", mode
    )
    assert code == 0, stderr
    assert summary["instances"]["downloaded"] == len(instances) == SERIES * 2
    for i in instances:
        data = (out / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm").read_bytes()
        assert data == capped.stored_file(capped.find_instance(i.sop_uid))


def test_a_study_orthanc_cannot_list_whole_is_exit_1(tmp_path: Path) -> None:
    with orthanc_configured(
        tmp_path / "orthanc", LimitFindResults=4, LimitFindInstances=6
    ) as orthanc:
        instances = upload_study(orthanc, tmp_path / "source", seed=72)
        code, summary, stderr = installed_download(
            orthanc.dicomweb_url, instances[0].study_uid, tmp_path / "out"
        )
    assert code == 1, stderr
    [failure] = summary["failures"]
    assert "5 of its 7 series" in failure["reason"], failure
    assert "LimitFindResults" in failure["reason"]
    assert summary["instances"]["downloaded"] == 0
