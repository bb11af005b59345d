"""Ctrl-C and SIGTERM: exit 130 / 143, no temp file left behind, and the rerun resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..cli_helpers import DLSTUDY, _clean_environment, ctrl_c_as_at_a_terminal
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
            preexec_fn=ctrl_c_as_at_a_terminal,
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


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_list_is_read_ends_with_the_json_summary(
    tmp_path: Path, signum: int, status: int
) -> None:
    """`make-list | dlstudy download --from-file - --json` stopped while the list is still
    coming: the documented status, one line, and the --json object a script reads (SIGTERM
    killed the process mute; both left stdout empty)."""
    command = [DLSTUDY, "download", "--from-file", "-", "--url", "http://127.0.0.1:9/"]
    process = subprocess.Popen(
        [*command, "-o", str(tmp_path / "out"), "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_environment(None),
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    _wait_until_reading_stdin(process.pid)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == status, stderr
    said = "terminated" if signum == signal.SIGTERM else "interrupted"
    assert stderr.strip().splitlines()[-1].startswith(f"dlstudy: error: {said};"), stderr
    summary = json.loads(stdout)
    assert (summary["error"], summary["exit_status"]) == (said, status)


def test_sigterm_at_any_moment_of_a_sync_prints_its_json_summary(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Whenever SIGTERM ends a `sync --json` with 143 (not killed by it while Python starts,
    before dlstudy runs), stdout holds the summary object; between the command's start and
    the run's own handlers it held nothing but the error line."""
    url = embedded_server(synth_study.root, latency=0.2)
    whole = _seconds([DLSTUDY, "sync", "--url", url, "-o", str(tmp_path / "timed"), "-c", "2"])
    steps = 12
    handled = 0
    for step in range(steps):
        out = tmp_path / f"out{step}"
        process = subprocess.Popen(
            [DLSTUDY, "sync", "--url", url, "-o", str(out), "-c", "2", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_environment(None),
        )
        time.sleep(whole * step / steps / 2)  # start-up and the run's first moments
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        if process.returncode in (-signal.SIGTERM, 0):
            continue  # killed before the command began, or done before the signal came
        assert process.returncode == 143, stderr
        handled += 1
        summary = json.loads(stdout)
        assert (summary["error"], summary["exit_status"]) == ("terminated", 143), stderr
        assert [p for p in out.rglob("*") if p.name.endswith(".part")] == []
    assert handled >= steps // 3


def _wait_until_reading_stdin(pid: int) -> None:
    """Until the process blocks in read(0, ...) (/proc/PID/syscall: number 0, first argument
    0): the list is being read."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/syscall").read_text().split()
        except OSError:
            fields = []
        if fields[:2] == ["0", "0x0"]:
            return
        time.sleep(0.05)
    raise AssertionError("the process never read its standard input")
