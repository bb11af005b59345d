"""Ctrl-C, SIGTERM and SIGHUP: exit 130 / 143 / 129, no temp file left behind, and the rerun
resumes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from dlstudy.server import VirtualArchive, VirtualSpec

from ..cli_helpers import DLSTUDY, _clean_environment, ctrl_c_as_at_a_terminal, stop_installed
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


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "hung up")],
)
def test_sigterm_while_the_cli_starts_is_a_line_not_a_mute_death(
    tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """SIGTERM (cron, systemd, timeout(1)) or SIGHUP while Python still imported the CLI
    killed it mute (-15, -1). Sent ever later after the start, until the command's own
    handling answers (it then blocks reading its list from stdin): each run ends with a line
    and the signal's status, either the start-up's (`dlstudy: terminated`, as Ctrl-C's
    `dlstudy: interrupted`) or the command's. One run may still die of it: a signal in the
    interpreter's own boot, before the console script's entry runs, or in the ~0.2 ms
    between the end of the start-up and the command's own handling, where it kills as it
    always did."""
    boot = max(_seconds([sys.executable, "-c", "pass"]) for _ in range(3))
    command = [DLSTUDY, "download", "--from-file", "-", "--url", "http://127.0.0.1:9/"]
    command += ["-o", str(tmp_path / "out")]
    outcomes: list[str] = []
    delay = max(3 * boot, boot + 0.05)
    while "command's" not in outcomes and len(outcomes) < 40:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_clean_environment(None),
            preexec_fn=ctrl_c_as_at_a_terminal,
        )
        time.sleep(delay)
        process.send_signal(signum)
        process.wait(timeout=60)  # stdin left open: only the signal ends the run
        assert process.stdin is not None and process.stderr is not None
        process.stdin.close()
        stderr = process.stderr.read()
        process.stderr.close()
        assert "Traceback" not in stderr, stderr
        if process.returncode == -signum and not stderr:
            outcomes.append("killed")
        elif stderr.strip() == f"dlstudy: {said}":
            assert process.returncode == status, stderr
            outcomes.append("start-up's")
        else:
            assert process.returncode == status, stderr
            assert stderr.strip().splitlines()[-1].startswith(f"dlstudy: error: {said};")
            outcomes.append("command's")
        delay += 0.03
    assert outcomes.count("killed") <= 1, outcomes
    assert outcomes.count("start-up's") >= 2, outcomes


def test_under_nohup_a_hangup_while_the_cli_starts_is_ignored(tmp_path: Path) -> None:
    """SIGHUP inherited ignored (`nohup`) stays ignored while the CLI starts too: the run
    goes on, here to the end of its (empty) list."""
    boot = max(_seconds([sys.executable, "-c", "pass"]) for _ in range(3))

    def as_nohup_starts_it() -> None:
        ctrl_c_as_at_a_terminal()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    process = subprocess.Popen(
        [DLSTUDY, "download", "--from-file", "-", "--url", "http://127.0.0.1:9/"]
        + ["-o", str(tmp_path / "out")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_environment(None),
        preexec_fn=as_nohup_starts_it,
    )
    time.sleep(max(3 * boot, boot + 0.05))
    for _ in range(10):  # through the start-up
        process.send_signal(signal.SIGHUP)
        time.sleep(0.02)
    _wait_until_reading_stdin(process.pid)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate("", timeout=60)

    assert process.returncode == 2, stderr  # the list named nothing: not stopped
    assert "names no study" in stderr and "hung up" not in stderr, stderr


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
    """Whenever SIGTERM ends a `sync --json` with 143 once the command runs, stdout holds the
    summary object; between the command's start and the run's own handlers it held nothing
    but the error line. (Before the command runs, its options not yet read, the start-up's
    line alone, `dlstudy: terminated`, as for Ctrl-C.)"""
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
            continue  # killed before dlstudy's entry ran, or done before the signal came
        if stderr.strip() == "dlstudy: terminated":
            assert (process.returncode, stdout) == (143, ""), stderr
            continue  # while the CLI started, its options unread: as a Ctrl-C then
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


def _hang_up_once(
    process: subprocess.Popen[str], out: Path, files: int, *, to_group: bool
) -> tuple[str, str]:
    """SIGHUP to `process` (its whole group, with `to_group`) once `files` are in `out` (or a
    minute has gone), then its stdout and stderr when it has ended."""
    try:
        deadline = time.monotonic() + 60
        while len(list(out.rglob("*.dcm"))) < files and time.monotonic() < deadline:
            time.sleep(0.05)
        if to_group:
            os.killpg(process.pid, signal.SIGHUP)
        else:
            process.send_signal(signal.SIGHUP)
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(
    ("command", "to_group"), [("download", True), ("download", False), ("sync", True)]
)
def test_a_hangup_stops_the_run_as_sigterm_does(
    tmp_path: Path, embedded_server: StartServer, command: str, to_group: bool
) -> None:
    """SIGHUP (the terminal or ssh session closed: to the whole process group, or to dlstudy
    alone) killed a run of three processes mute: no line, no --json object, a --log-file
    without its ending, .part files and the report's temp file left. Now it stops as SIGTERM
    does, exit 129."""
    spec = VirtualSpec(1, seed=7, study_size=300)  # enough for 3 processes (50 each)
    url = embedded_server(None, virtual=spec, latency=0.3)
    out, uids = tmp_path / "out", tmp_path / "uids.txt"
    uids.write_text(VirtualArchive(spec).study_uid(0) + "\n")
    chosen = ["--from-file", str(uids)] if command == "download" else []
    log, report = tmp_path / "run.log", tmp_path / "run.csv"
    args = [*chosen, "--url", url, "-o", str(out), "--json", "--workers", "3", "-c", "6"]
    args += ["--mode", "instance", "--report", str(report), "--log-file", str(log)]
    process = subprocess.Popen(
        [DLSTUDY, command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_environment(None),
        preexec_fn=ctrl_c_as_at_a_terminal,
        start_new_session=True,  # a group of its own, as a terminal's job has
    )
    # Once every process is under way: 12 files.
    stdout, stderr = _hang_up_once(process, out, 12, to_group=to_group)

    assert process.returncode == 129, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.splitlines()[-1].startswith("dlstudy: error: hung up; "), stderr
    summary = json.loads(stdout)
    assert (summary["error"], summary["exit_status"]) == ("hung up", 129)
    assert summary["processes"] == 3
    assert 0 < summary["instances"]["downloaded"] < 300
    assert summary["instances"]["failed"] == 0  # what the workers had in hand: interrupted
    assert "hung up" in log.read_text().splitlines()[-1]
    assert not report.exists()  # as for any stop: only a run that ends with a result has one
    left = [p.name for p in tmp_path.rglob("*") if p.name.endswith((".part", ".tmp"))]
    assert left == []


@pytest.mark.parametrize(
    ("signum", "status", "log_format"),
    [(signal.SIGINT, 130, "text"), (signal.SIGTERM, 143, "json")],
)
def test_a_stopped_download_ends_its_log_file_with_the_summary(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    signum: int,
    status: int,
    log_format: str,
) -> None:
    """A stopped `download --log-file` ended its log with the signal's word alone: the
    summary line stderr showed (what was kept of what) was in no log, where a stopped sync's
    log has its run_summary. Now the log ends as stderr does: the summary, then the word."""
    url = embedded_server(synth_study.root, latency=0.2)
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = [synth_study.study_uid, "--url", url, "-o", str(out), "-c", "2"]
    args += ["--log-file", str(log), "--log-format", log_format]
    returncode, stderr = stop_installed(
        "download", *args, signum=signum, ready=lambda: any(out.rglob("*.dcm"))
    )

    assert returncode == status, stderr
    said = "interrupted" if signum == signal.SIGINT else "terminated"
    summary = next(line for line in stderr.splitlines() if "already present" in line)
    assert "failed of 60 instances" in summary
    if log_format == "text":
        last = log.read_text().splitlines()[-2:]
        assert last[0].endswith(f"INFO dlstudy.outcome: {summary}"), last
        assert last[1].endswith(f"WARNING dlstudy.outcome: {said}"), last
    else:
        records = [json.loads(line) for line in log.read_text().splitlines()[-2:]]
        ended = [(r["level"], r["logger"], r["message"]) for r in records]
        assert ended == [("info", "dlstudy.outcome", summary), ("warning", "dlstudy.outcome", said)]


def test_a_closed_terminal_stops_the_run_as_sigterm_does(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """The terminal the run shows its progress in closes (an ssh session lost, a terminal
    window closed): SIGHUP comes, and every write to the terminal fails (EIO). The progress
    display's last frame raised instead of the stop: exit 1, a --log-file without its ending.
    Now the run stops in order, its log says so, exit 129."""
    spec = VirtualSpec(1, seed=7, study_size=300)
    url = embedded_server(None, virtual=spec, latency=0.3)
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = [VirtualArchive(spec).study_uid(0), "--url", url, "-o", str(out), "-c", "6"]
    args += ["--workers", "3", "--mode", "instance", "--log-file", str(log)]
    terminal, its_end = pty.openpty()

    def in_the_terminal() -> None:  # its controlling terminal, as a login shell's job has
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        ctrl_c_as_at_a_terminal()  # SIGHUP at its default, whatever `nohup` handed down

    process = subprocess.Popen(
        [DLSTUDY, "download", *args],
        stdin=its_end,
        stdout=its_end,
        stderr=its_end,
        env={**_clean_environment(None), "COLUMNS": "100"},
        start_new_session=True,
        preexec_fn=in_the_terminal,
    )
    os.close(its_end)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.rglob("*.dcm"))) < 12 and time.monotonic() < deadline:
            _drain(terminal)
        os.close(terminal)  # the terminal closes: the kernel sends SIGHUP
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 129, log.read_text()
    assert log.read_text().splitlines()[-1].endswith("hung up")
    assert 0 < len(list(out.rglob("*.dcm"))) < 300
    assert [p.name for p in out.rglob("*") if p.name.endswith(".part")] == []


def _drain(terminal: int) -> None:
    """Read what the run shows, so that it never waits for the terminal to take more."""
    ready, _, _ = select.select([terminal], [], [], 0.05)
    if ready:
        try:
            os.read(terminal, 65536)
        except OSError:
            pass


def test_under_nohup_a_hangup_does_not_stop_the_run(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`nohup dlstudy ...` is meant to outlive the terminal: SIGHUP, ignored when the run
    starts, stays ignored (the run and its workers go on to the end)."""
    url = embedded_server(synth_study.root, latency=0.3)
    out = tmp_path / "out"
    args = [synth_study.study_uid, "--url", url, "-o", str(out), "--workers", "2", "-c", "2"]

    def as_nohup_starts_it() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    process = subprocess.Popen(
        [DLSTUDY, "download", *args, "--mode", "instance"],
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_environment(None),
        preexec_fn=as_nohup_starts_it,
        start_new_session=True,
    )
    _, stderr = _hang_up_once(process, out, 1, to_group=True)

    assert process.returncode == 0, stderr
    assert len(list(out.rglob("*.dcm"))) == 60
