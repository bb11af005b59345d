"""`dlstudy sync` in flat memory: each study the search (or the catalog) returns is examined as
it arrives and not kept (a night of 200,000 studies held them all: 245 MB, 317 MB from a
catalog), through the installed CLI against a virtual archive on 127.0.0.1
(benchmarks/sync_memory.py measures the sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlstudy.server import VirtualSpec

from ..cli_helpers import run_installed, run_installed_measured
from ..fixtures.embedded_server import StartServer

pytestmark = pytest.mark.integration

STUDIES = 100_000
# The interpreter and its libraries take about 65 MB, the search's set of the UIDs it has
# seen (to tell a repeated result from a new one) about 140 bytes a study: 80 MB in all on a
# busy 2-core machine. Keeping every study's record, as sync did, took 138 MB.
PEAK_MB = 110
# With DuckDB and the catalog's sorted selection (each study's UID and instance count): 129
# MB. Every study's record, sorted with all its columns, took 220 MB.
CATALOG_PEAK_MB = 170


def test_a_night_of_many_studies_is_synced_in_flat_memory(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """Every study of a large archive is searched and examined; those of one shard in a
    thousand (a hundred one-instance studies) are downloaded, the others cost only their
    search result."""
    url = embedded_server(None, virtual=VirtualSpec(STUDIES, study_size=1), max_page_size=1000)

    result, peak_mb = run_installed_measured(
        "sync", "--url", url, "-o", str(tmp_path / "out"), "--shard", "1/1000", "--json",
        peak_file=tmp_path / "peak", timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["sync"]["matched"] == STUDIES
    assert 0 < summary["sync"]["in_shard"] == summary["instances"]["downloaded"] < 1000
    assert peak_mb <= PEAK_MB, peak_mb


def test_a_night_from_a_large_catalog_is_synced_in_flat_memory(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """As above, the studies taken from a catalog of the archive (`sync --catalog`)."""
    url = embedded_server(None, virtual=VirtualSpec(STUDIES, study_size=1), max_page_size=1000)
    catalog = tmp_path / "pacs.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(catalog), timeout=900)
    assert pulled.returncode == 0, pulled.stderr[-2000:]

    result, peak_mb = run_installed_measured(
        "sync", "--catalog", str(catalog), "--url", url, "-o", str(tmp_path / "out"),
        "--shard", "1/1000", "--json", peak_file=tmp_path / "peak", timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["sync"]["matched"] == STUDIES
    assert 0 < summary["sync"]["in_shard"] == summary["instances"]["downloaded"] < 1000
    assert peak_mb <= CATALOG_PEAK_MB, peak_mb
