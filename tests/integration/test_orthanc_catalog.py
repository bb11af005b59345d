"""`dlstudy catalog` against a real Orthanc + DICOMweb plugin: pull (paged by offset and split
by date, Orthanc gives no truncation warning: a full page is the sign), a later pull after an
upload, and `sync --catalog` byte for byte against what Orthanc stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import run_installed
from ..fixtures.orthanc import OrthancServer

pytestmark = pytest.mark.integration


def upload(orthanc: OrthancServer, root: Path, studies: int, seed: int) -> list[SynthInstance]:
    spec = SynthSpec(
        studies=studies, series=1, instances=2, size=2048, seed=seed,
        study_dates=("20200101", "20200105"),
    )  # fmt: skip
    instances = generate(root, spec)
    for instance in instances:
        assert orthanc.upload(instance.path)["Status"] == "Success"
    return instances


def pull(orthanc: OrthancServer, db: Path, *extra: str) -> dict[str, Any]:
    result = run_installed(
        "catalog", "pull", "--url", orthanc.dicomweb_url, "--db", str(db), "--json", *extra
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def uids_in(db: Path) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT study_uid FROM studies").fetchall()}


def test_orthanc_catalog_pull_update_and_sync(orthanc: OrthancServer, tmp_path: Path) -> None:
    orthanc.reset()
    first = upload(orthanc, tmp_path / "one", 5, seed=71)
    paged, split = tmp_path / "paged.duckdb", tmp_path / "split.duckdb"

    assert pull(orthanc, paged, "--page-size", "2")["studies"] == 5
    assert pull(orthanc, split, "--page-size", "2", "--walk", "split")["studies"] == 5
    expected = {i.study_uid for i in first}
    assert uids_in(paged) == uids_in(split) == expected

    second = upload(orthanc, tmp_path / "two", 2, seed=72)
    update = pull(orthanc, paged, "--page-size", "2")
    assert (update["kind"], update["studies"], update["new"]) == ("update", 7, 2)
    with duckdb.connect(str(paged), read_only=True) as con:
        changes = con.execute("SELECT study_uid, change FROM changes").fetchall()
    assert set(changes) == {(i.study_uid, "new") for i in second}

    out = tmp_path / "out"
    synced = run_installed(
        "sync", "--catalog", str(paged), "--url", orthanc.dicomweb_url, "-o", str(out), "--json"
    )
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["instances"]["downloaded"] == 14
    for i in first + second:
        data = (out / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm").read_bytes()
        assert data == orthanc.stored_file(orthanc.find_instance(i.sop_uid))
