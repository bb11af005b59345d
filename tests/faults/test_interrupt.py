"""Ctrl-C and SIGTERM: exit 130 / 143, no temp file left behind, and the rerun resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..cli_helpers import DLSTUDY, _clean_environment
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


def test_ctrl_c_while_the_cli_starts_is_a_line_not_a_traceback() -> None:
    """A Ctrl-C at any moment of start-up (imports, building and parsing the command) ends as
    an interrupt: one line, exit 130. Only the interpreter's own boot, before the console
    script's entry runs, is left out (three times its time on this machine)."""
    boot = max(_seconds([sys.executable, "-c", "pass"]) for _ in range(3))
    command = [DLSTUDY, "download", "1.2.3", "--url", "http://127.0.0.1:9/", "-o", "/dev/null/x"]
    whole = _seconds(command)
    first = max(3 * boot, boot + 0.05)
    steps = 12
    seen: dict[int, int] = {}
    for step in range(steps):
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_environment(None),
        )
        time.sleep(first + (whole - first) * step / steps)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        assert process.returncode in (130, 2), stderr  # 2: it had already failed on -o
        seen[process.returncode] = seen.get(process.returncode, 0) + 1
        if process.returncode == 130:
            last = stderr.strip().splitlines()[-1]  # said by main, or by the command itself
            assert last == "dlstudy: interrupted" or "error: interrupted;" in last, stderr
    assert seen.get(130, 0) >= steps // 2, seen


def _seconds(command: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(
        command, capture_output=True, check=False, timeout=60, env=_clean_environment(None)
    )
    return time.monotonic() - start
