"""Ctrl-C and SIGTERM: exit 130 / 143, no temp file left behind, and the rerun resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..fixtures.embedded_server import StartServer, SynthStudy

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_and_rerun_resumes(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    signum: int,
    status: int,
) -> None:
    slow = embedded_server(synth_study.root, latency=0.2)
    command = [
        sys.executable,
        "-m",
        "dlstudy",
        "download",
        synth_study.study_uid,
        "--url",
        slow,
        "-o",
        str(tmp_path),
        "-c",
        "2",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(tmp_path.rglob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the download is under way
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == status, stderr
    assert "rerun the same command to resume" in stderr
    assert "already present, 0 failed of 60 instances" in stderr  # the summary line
    kept = list(tmp_path.rglob("*.dcm"))
    assert 0 < len(kept) < 60
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".part")] == []

    fast = embedded_server(synth_study.root)
    command[command.index(slow)] = fast
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert rerun.returncode == 0, rerun.stderr
    assert f"{60 - len(kept)} downloaded, {len(kept)} already present" in rerun.stderr
    for instance in synth_study.instances:
        target = tmp_path / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert target.read_bytes() == instance.path.read_bytes()
