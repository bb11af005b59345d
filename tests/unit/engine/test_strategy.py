"""`--mode auto` picks a strategy per study and says why in --json."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlstudy.engine.strategy import AUTO_BULK_MIN_INSTANCES, SMALL_INSTANCE_BYTES, choose
from dlstudy.server.synth import SynthSpec, generate

from ...cli_helpers import assert_same_files, run_cli, summary_of
from ...fixtures.embedded_server import StartServer, SynthStudy


def test_choose() -> None:
    assert choose("1.2", 10, None).mode == "instance"
    assert choose("1.2", AUTO_BULK_MIN_INSTANCES, SMALL_INSTANCE_BYTES).mode == "series"
    assert choose("1.2", AUTO_BULK_MIN_INSTANCES, SMALL_INSTANCE_BYTES + 1).mode == "instance"
    assert "probe instance failed" in choose("1.2", 500, None).why


@pytest.mark.integration
@pytest.mark.parametrize("profile", ["standard", "orthanc"])
def test_many_small_instances_go_series_by_series(
    tmp_path: Path, embedded_server: StartServer, profile: str
) -> None:
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=3, instances=50, size=4096, seed=21))
    url = embedded_server(source, profile=profile)
    out = tmp_path / "out"

    result = run_cli("download", instances[0].study_uid, "--url", url, "-o", str(out), "--json")

    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    [choice] = summary["strategy"]
    assert choice["mode"] == "series"
    assert "150 instances of ~4 KiB" in choice["why"]
    assert summary["instances"]["downloaded"] == 150
    assert_same_files(instances, out)


@pytest.mark.integration
def test_small_study_stays_per_instance(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    result = run_cli("download", synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--json")
    assert result.exit_code == 0
    [choice] = summary_of(result)["strategy"]
    assert choice == {
        "study": synth_study.study_uid,
        "mode": "instance",
        "why": "60 instances: too few to be worth a probe",
    }


@pytest.mark.integration
def test_server_without_series_retrieval_falls_back_per_instance(tmp_path: Path) -> None:
    from ...scripted_servers import static_like

    with static_like(120) as (url, study, sops):
        result = run_cli(
            "download", study, "--url", url, "-o", str(tmp_path), "--json", "--http", "1.1"
        )
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["instances"]["downloaded"] == 120
    [choice] = summary["strategy"]
    assert choice["mode"] == "instance"
    assert "the server refused it (bulk retrieval: HTTP 403" in choice["why"]
    assert sorted(p.stem for p in tmp_path.rglob("*.dcm")) == sorted(sops)
