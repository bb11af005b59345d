"""Start-up: a download does not import what only other commands, or unusual files, need.

pydicom alone costs ~80 ms to import; httpcore with h11 ~25 ms (httpx loads it only for its own
pool, which dlstudy's requests do not take); tomllib, rich, statistics and the bench, query and
sync modules a few ms to 15 ms each. Each test runs a fresh interpreter and lists which were loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ..fixtures.embedded_server import StartServer, SynthStudy

HEAVY = (
    "dlstudy.bench.runner.runner",
    "dlstudy.bench.runner.chart",
    "dlstudy.report.landed.events",
    "dlstudy.dicomweb.search",
    "dlstudy.server",
    "dlstudy.jobs.sync",
    "dlstudy.server.synth",
    "h2",
    "h11",
    "hpack",
    "httpcore",
    "hyperframe",
    "multiprocessing",
    "pydicom",
    "rich",
    "statistics",
    "tomllib",
)

_REPORT = f"""
import json, sys
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""


def loaded_by(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after `code` ran in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code + _REPORT],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_importing_the_cli_loads_none_of_them() -> None:
    assert loaded_by("import dlstudy.cli.app") == []


def test_a_download_loads_none_of_them(
    synth_study: SynthStudy, embedded_server: StartServer, tmp_path: Path
) -> None:
    url = embedded_server(synth_study.root)
    # One process: by default a download on a multi-core machine forks a standing-by worker
    # before its event loop starts (engine/standby.py), and that needs multiprocessing.
    argv = ["dlstudy", "download", "--url", url, synth_study.study_uid, "-o", str(tmp_path), "-q"]
    argv += ["--workers", "1"]
    code = f"""
import sys
from dlstudy.cli.app import app
sys.argv = {argv!r}
try:
    app()  # main() would end the process before the report
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
"""
    assert loaded_by(code) == []
    assert len(list(tmp_path.rglob("*.dcm"))) == len(synth_study.instances)


def test_the_other_commands_still_find_what_they_import() -> None:
    code = """
from dlstudy.cli import bench_cmd, query_cmd, sync_cmd
from dlstudy.config import load
from dlstudy.dicomweb.search import attribute_id
import dlstudy.bench.runner, dlstudy.jobs.sync
assert attribute_id("00100020") == "PatientID"
assert dlstudy.bench.runner.DEFAULT_CONCURRENCY == bench_cmd.DEFAULT_CONCURRENCY
"""
    assert "pydicom" in loaded_by(code)
