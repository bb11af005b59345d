"""Every line of a cohort list answered for, through the installed CLI against the embedded
server: a row whose UIDs do not belong together fails as the list's mistake without taking a
right row's instance with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import run_installed
from ..cohort_helpers import read_report
from ..fixtures.embedded_server import StartServer

pytestmark = pytest.mark.integration

HEADER = "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID\n"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[SynthInstance]:
    """One study of two series of two small instances."""
    root = tmp_path_factory.mktemp("lines")
    return generate(root, SynthSpec(studies=1, series=2, instances=2, size=4 * 1024, seed=22))


def row(study: str, series: str, sop: str = "") -> str:
    return f"{study},{series},{sop}\n"


@pytest.mark.parametrize("wrong_first", [True, False])
def test_a_row_whose_uids_do_not_belong_together_fails_alone(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer, wrong_first: bool
) -> None:
    """The SOP of one series listed with the other: that row fails naming its line and what
    does not match; the right row naming the same instance downloads it (exit 1)."""
    url = embedded_server(cohort[0].path.parents[2])
    one, other = cohort[0], next(i for i in cohort if i.series_uid != cohort[0].series_uid)
    right = row(one.study_uid, one.series_uid, one.sop_uid)
    wrong = row(one.study_uid, other.series_uid, one.sop_uid)
    listing = tmp_path / "cohort.csv"
    listing.write_text(HEADER + (wrong + right if wrong_first else right + wrong))
    out, report = tmp_path / "out", tmp_path / "landed.csv"
    done = run_installed(
        "download", "--url", url, "-o", str(out), "-q",
        "--from-file", str(listing), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert (out / one.study_uid / one.series_uid / f"{one.sop_uid}.dcm").exists()
    line = 2 if wrong_first else 3
    [error] = done.stderr.splitlines()
    assert error.startswith(f"dlstudy: error: --from-file {listing}: line {line}: "), error
    assert f"is not in series {other.series_uid}" in error
    assert "do not belong together" in error and "server lists" not in error
    rows = read_report(report)
    assert [(r["status"], r["series"]) for r in rows] == (
        [("failed", other.series_uid), ("downloaded", one.series_uid)]
    )
    assert rows[0]["reason"] == error.removeprefix("dlstudy: error: ")


def test_a_row_naming_an_instance_a_listed_series_has_elsewhere_fails_alone(
    tmp_path: Path, cohort: list[SynthInstance], embedded_server: StartServer
) -> None:
    """A whole series listed, and a row giving one of its instances another series: the
    listing is the server's word; the series downloads whole, the row fails as the list's."""
    url = embedded_server(cohort[0].path.parents[2])
    one, other = cohort[0], next(i for i in cohort if i.series_uid != cohort[0].series_uid)
    listing = tmp_path / "cohort.csv"
    listing.write_text(
        HEADER + row(one.study_uid, other.series_uid, one.sop_uid) + row("", one.series_uid)
    )
    out = tmp_path / "out"
    done = run_installed(
        "download", "--url", url, "-o", str(out), "--json", "-q", "--from-file", str(listing)
    )
    assert done.returncode == 1, done.stderr
    [failure] = json.loads(done.stdout)["failures"]
    assert "line 2: " in failure["reason"] and "do not belong together" in failure["reason"]
    in_series = [i for i in cohort if i.series_uid == one.series_uid]
    assert json.loads(done.stdout)["instances"]["downloaded"] == len(in_series) == 2
