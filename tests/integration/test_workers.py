"""`--workers N`: the per-instance pool in several processes, with one owner of the results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dlstudy.engine import workers as workers_module
from dlstudy.engine.claims import SharedClaims
from dlstudy.engine.workers import (
    AUTO_MAX_WORKERS,
    MIN_INSTANCES_PER_WORKER,
    WORKER_SILENCE_SECONDS,
    available_cpus,
    worker_count,
)
from dlstudy.model import InstanceRef
from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import (
    DLSTUDY,
    assert_same_files,
    download_json,
    instance_counts,
    run_cli,
    run_installed,
    summary_of,
)
from ..fixtures.embedded_server import SeenRequests, StartServer
from ..manifest_helpers import manifest_rows
from ..tools import missing_tool

pytestmark = pytest.mark.integration


def test_auto_is_one_process_per_cpu_up_to_four(monkeypatch: pytest.MonkeyPatch) -> None:
    for cpus, expected in [(1, 1), (2, 2), (3, 3), (16, AUTO_MAX_WORKERS)]:
        monkeypatch.setattr("dlstudy.engine.workers.available_cpus", lambda cpus=cpus: cpus)
        assert worker_count(0, 10_000) == expected
    assert worker_count(0, MIN_INSTANCES_PER_WORKER) == 1  # too few to be worth a process
    assert available_cpus() >= 1


def test_worker_count_and_split() -> None:
    assert worker_count(4, 10) == 1
    assert worker_count(4, 2 * MIN_INSTANCES_PER_WORKER) == 2
    assert worker_count(2, 10_000) == 2


def test_claims_hand_out_each_instance_once_across_processes() -> None:
    """Two processes and two event-loop pools taking from one list: nothing twice, nothing lost."""
    from dlstudy.engine.workers import _start_context

    context = _start_context()  # what a run uses: the fork server here
    refs = [InstanceRef("1", "1.2", f"1.2.{i}") for i in range(500)]
    claims = SharedClaims(refs, context.Value("q", 0))
    parent_end, child_end = context.Pipe(duplex=False)
    child = context.Process(target=_claim_all, args=(claims, child_end))
    child.start()
    child_end.close()
    mine = [ref.sop_uid for ref in claims]
    theirs = parent_end.recv()
    child.join(10)
    assert sorted(mine + theirs) == sorted(ref.sop_uid for ref in refs)
    assert claims.claim() is None


def _claim_all(claims: SharedClaims, conn: Any) -> None:
    conn.send([ref.sop_uid for ref in claims])


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, list[SynthInstance]]:
    root = tmp_path / "source"
    return root, generate(root, SynthSpec(series=2, instances=100, size=200 * 1024, seed=31))


@pytest.mark.parametrize("profile", ["standard", "orthanc"])
def test_two_workers_download_everything_byte_exact(
    tmp_path: Path,
    embedded_server: StartServer,
    study: tuple[Path, list[SynthInstance]],
    profile: str,
) -> None:
    root, instances = study
    url = embedded_server(root, profile=profile)
    out = tmp_path / "out"

    result = download_json(instances[0].study_uid, url, out, "--workers", "2")

    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["instances"] == instance_counts(200, downloaded=200)
    assert summary["processes"] == 2
    assert summary["bytes"] == sum(i.size for i in instances)
    assert_same_files(instances, out)
    assert len(manifest_rows(out)) == 200  # one owner writes the manifest

    rerun = download_json(instances[0].study_uid, url, out, "--workers", "2")
    assert summary_of(rerun)["instances"]["skipped"] == 200


@pytest.mark.parametrize("workers", ["2", "3"])
def test_workers_are_forked_before_the_event_loop_starts(
    tmp_path: Path,
    embedded_server: StartServer,
    study: tuple[Path, list[SynthInstance]],
    workers: str,
) -> None:
    """Python 3.12+ warns (DeprecationWarning) when a multi-threaded process forks: the
    installed CLI, warnings made errors, forks its workers while it has one thread and no
    event loop, and they wait for their share of the run."""
    root, instances = study
    url = embedded_server(root)
    result = run_installed(
        "download", instances[0].study_uid, "--url", url, "-o", str(tmp_path / "out"),
        "--json", "--workers", workers, "--mode", "instance", "-v",
        env={"PYTHONWARNINGS": "error::DeprecationWarning"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processes"] == int(workers)
    assert f"{int(workers) - 1} worker processes forked before the event loop" in result.stderr
    assert "Warning" not in result.stderr
    assert_same_files(instances, tmp_path / "out")


def test_workers_come_from_the_fork_server_when_threads_already_run(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """A library caller with threads of its own: no fork of this process at all."""
    root, instances = study
    url = embedded_server(root)
    script = (
        "import logging, sys, threading, dlstudy\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait, daemon=True).start()\n"
        "s = dlstudy.download([sys.argv[1]], sys.argv[2], output=sys.argv[3], workers=2,\n"
        "                     mode='instance')\n"
        "print(s.processes, s.downloaded)\n"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script,
         instances[0].study_uid, url, str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "200"]
    assert "1 worker processes started by forkserver" in result.stderr
    assert_same_files(instances, out)


def test_failures_in_workers_are_reported(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    root, instances = study
    url = embedded_server(root, fault_rate=0.2, fault_status=404, seed=4)
    result = download_json(
        instances[0].study_uid, url, tmp_path, "--workers", "2", "--mode", "instance"
    )
    assert result.exit_code == 1
    summary = summary_of(result)
    counts = summary["instances"]
    assert counts["downloaded"] + counts["failed"] == 200 and counts["failed"] > 0
    assert all(f["status_code"] == 404 for f in summary["failures"])


def test_every_process_counts_its_throttle_answers_and_retries_in_the_summary(
    tmp_path: Path,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    study: tuple[Path, list[SynthInstance]],
) -> None:
    """`throttled` and `retried` are every 503 the server answered an instance request with
    (each one retried), whichever process received it (the workers report theirs as they
    end)."""
    root, instances = study
    url = embedded_server(root, fault_rate=0.2, fault_status=503, retry_after=0, seed=6)
    result = download_json(
        instances[0].study_uid, url, tmp_path, "--workers", "2", "--mode", "instance"
    )
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["processes"] == 2
    assert summary["throttled"] == seen_requests.instance_statuses[503] > 0
    assert summary["retried"] == summary["throttled"]
    assert summary["instances"]["downloaded"] == 200


def test_expired_token_in_a_worker_stops_the_run(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    root, instances = study
    url = embedded_server(root, token="tok", token_expires_after=30)
    runs = tmp_path / "runs"
    # Mints tok-1, tok-2, ... but fails from its fourth run on. Both processes run it: the
    # count is taken under a lock, so two runs never mint the same token (which the server
    # would then count twice).
    command = (
        f"exec 9>>{runs}.lock; flock 9; "
        f"n=$(( $(cat {runs} 2>/dev/null || echo 0) + 1 )); echo $n > {runs}; "
        f'[ "$n" -gt 3 ] && exit 9; echo tok-$n'
    )
    result = run_cli(
        "download", instances[0].study_uid, "--url", url, "-o", str(tmp_path / "o"),
        "--workers", "2", "--token-command", command, "--mode", "instance",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "--token-command failed with exit status 9" in result.stderr
    assert [p for p in (tmp_path / "o").rglob("*.part")] == []


def test_workers_connect_again_when_the_server_refuses_as_they_start(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """The server (here the fault proxy in front of it) refuses connections for 2 s from the
    run's first instance request, as the workers start: it has answered this run, so each
    worker's first requests connect again, as the parent's do."""
    from ..faultproxy import FaultProxy

    root, instances = study
    url = embedded_server(root)
    proxy = FaultProxy(int(url.split(":")[2].split("/")[0]), refuse=(b"/instances/", 2.0))
    out = tmp_path / "out"
    try:
        result = run_installed(
            "download", instances[0].study_uid, "--url", proxy.url(), "-o", str(out),
            "--json", "--workers", "2", "--mode", "instance", "--http", "1.1",
        )  # fmt: skip
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.refused_windows == 1
    assert json.loads(result.stdout)["processes"] == 2
    assert_same_files(instances, out)


def test_ctrl_c_while_a_worker_runs_its_token_command_kills_the_command(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """A worker's first token comes from its own run of the command; stopped meanwhile (the
    parent's SIGTERM after Ctrl-C), it kills the command whole, as the parent does."""
    root, instances = study
    url = embedded_server(root, token="tok")
    runs, child = tmp_path / "runs", tmp_path / "child.pid"
    # The parent's run prints the token at once; a worker's waits on a child it started.
    command = (
        f"exec 9>>{runs}.lock; flock 9; "
        f"n=$(( $(cat {runs} 2>/dev/null || echo 0) + 1 )); echo $n > {runs}; exec 9>&-; "
        f'if [ "$n" -gt 1 ]; then sleep 1000 & echo $! > {child}; wait; fi; echo tok'
    )
    process = subprocess.Popen(
        [DLSTUDY, "download", instances[0].study_uid, "--url", url, "-o", str(tmp_path / "o"),
         "--workers", "2", "--mode", "instance", "--token-command", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not child.exists() or not child.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None, "no worker started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        pid = int(child.read_text())
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if child.exists() and _alive(pid := int(child.read_text())):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie nobody reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_ctrl_c_stops_the_workers_cleanly(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "dlstudy", "download", instances[0].study_uid, "--url", slow,
        "-o", str(out), "--workers", "2", "-c", "4", "--mode", "instance", "--json",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.dcm"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert [p for p in out.rglob("*") if p.name.endswith(".part")] == []
    # What the worker committed while it stopped is counted and in the manifest: the summary,
    # the manifest and the disk agree.
    landed = len(list(out.rglob("*.dcm")))
    summary = json.loads(stdout)
    assert summary["instances"]["downloaded"] == landed == len(manifest_rows(out))
    assert summary["processes"] == 2  # the worker ran, though the run did not finish
    rerun = subprocess.run(
        [*command[:command.index(slow)], embedded_server(root), *command[command.index(slow) + 1:]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert_same_files(instances, out)


def test_workers_die_with_a_killed_parent(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "dlstudy", "download", instances[0].study_uid, "--url", slow,
            "-o", str(out), "--workers", "2", "-c", "4", "--mode", "instance", "-q",
        ]
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.dcm"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    time.sleep(1.0)  # the workers got SIGTERM from the kernel and stopped
    before = sorted(p.name for p in out.rglob("*") if p.is_file())
    time.sleep(1.0)
    after = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert before == after  # nothing is still writing
    # SIGKILL gives the parent no chance to remove a temp file it was writing (the next run
    # does); the workers, stopped by SIGTERM, remove theirs. Temp names carry the writer's pid.
    leftovers = [p.name for p in out.rglob("*.part")]
    assert [name for name in leftovers if f".{process.pid}-" not in name] == []


def _shared_semaphore(pid: int) -> int:
    """The address of process `pid`'s one multiprocessing semaphore: the lock of the counter
    the processes claim instances from (a POSIX semaphore mapped from /dev/shm)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    (line,) = [line for line in maps if "/dev/shm/sem." in line]
    return int(line.split("-", 1)[0], 16)


def _run_with_three_processes(
    url: str, study_uid: str, out: Path, *output: str
) -> tuple[subprocess.Popen[str], list[int]]:
    """`download --workers 3` of the slow server's study, once 10 files landed: the process
    and its two workers' pids. `output`: --json (stdout and stderr apart) or -q."""
    if shutil.which("gdb") is None:
        missing_tool("gdb is not installed")
    if platform.machine() != "x86_64":
        pytest.skip("the breakpoint's condition reads the first argument from %rdi")
    process = subprocess.Popen(
        [
            DLSTUDY, "download", study_uid, "--url", url, "-o", str(out),
            "--workers", "3", "-c", "6", "--mode", "instance", *output,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if "--json" in output else subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.dcm"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [int(pid) for pid in children]
    assert len(workers) == 2
    return process, workers


def _kill_holding_the_claims_lock(pid: int) -> None:
    """gdb stops process `pid` as it takes the claims lock, lets the others queue for it for
    2 s, and kills it."""
    gdb = subprocess.run(
        [
            "gdb", "-p", str(pid), "-batch",
            "-ex", f"break *sem_trywait if $rdi == {_shared_semaphore(pid):#x}",
            "-ex", "continue", "-ex", "finish", "-ex", 'printf "taken: %d\\n", $rax == 0',
            "-ex", "shell sleep 2", "-ex", "kill",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "taken: 1" in gdb.stdout, gdb.stdout + gdb.stderr


def _a_rerun_completes(url: str, instances: list[SynthInstance], out: Path) -> None:
    rerun = run_installed("download", instances[0].study_uid, "--url", url, "-o", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert_same_files(instances, out)


def test_workers_end_when_the_parent_is_killed_holding_the_claims_lock(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """SIGKILL (the OOM killer, `timeout -s KILL`) landing while the parent holds the lock of
    the shared counter: gdb stops the parent as it takes that lock and, once the workers
    finished their transfers and wait for it too, kills the parent. The workers
    waited for the lock for good, asleep in the kernel (the SIGTERM it sends them only wakes a
    Python handler), holding the caller's stdout and stderr open: a cron job's or a CI step's
    pipe never closed."""
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    process, workers = _run_with_three_processes(slow, instances[0].study_uid, out, "-q")
    _kill_holding_the_claims_lock(process.pid)
    process.wait(timeout=10)

    try:  # until the workers end too, the pipe stays open: then its reader gets its end
        output, _ = process.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)  # its pipe closed as it exits
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        for pid in workers:  # none left behind by a failing run
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in output, output
    _a_rerun_completes(slow, instances, out)


def test_the_run_ends_when_a_worker_is_killed_holding_the_claims_lock(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """The OOM killer takes a worker while it holds the lock of the shared counter (gdb stops
    it there, lets the others queue for it, kills it). The parent waited for the lock for
    good, deaf to Ctrl-C and SIGTERM, the output folder locked: every later run exited 5.
    Now the run ends, exit 1, the summary counting what did not land as failed."""
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    process, (victim, other) = _run_with_three_processes(
        slow, instances[0].study_uid, out, "--json"
    )
    _kill_holding_the_claims_lock(victim)

    try:
        stdout, stderr = process.communicate(timeout=90)
    finally:
        for pid in (process.pid, other):  # none left behind by a failing run
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    summary = json.loads(stdout)
    counts = summary["instances"]
    assert counts["failed"] > 0 and counts["downloaded"] + counts["failed"] == len(instances)
    assert counts["downloaded"] == len(manifest_rows(out))
    assert "its worker process ended early" in summary["failures"][0]["reason"]
    assert not _alive(other)
    _a_rerun_completes(slow, instances, out)


def test_a_waiting_worker_ends_quietly_with_a_killed_parent(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """Killed while it still lists the study: the worker forked for it has no job yet, and
    the SIGTERM the kernel sends it ends it without a word (it used to print a traceback)."""
    root, instances = study
    slow = embedded_server(root, latency=1.0)  # the listing takes seconds
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "dlstudy", "download", instances[0].study_uid, "--url", slow,
            "-o", str(out), "--workers", "2", "--mode", "instance",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / ".dlstudy").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.kill()
    _, stderr = process.communicate(timeout=30)  # until the worker, too, closed the pipe

    assert process.returncode == -signal.SIGKILL
    assert "Traceback" not in stderr and "Terminated" not in stderr, stderr


@pytest.mark.parametrize(
    ("near", "standby", "busy"),
    [(False, True, True), (False, True, False), (True, True, False), (True, False, False)],
)
def test_by_default_workers_start_only_when_the_event_loop_is_cpu_bound(
    tmp_path: Path,
    embedded_server: StartServer,
    study: tuple[Path, list[SynthInstance]],
    monkeypatch: pytest.MonkeyPatch,
    near: bool,
    standby: bool,
    busy: bool,
) -> None:
    """--workers 0 watches this process's CPU use for a moment (_busy) and the verdict decides;
    for a server that answers QIDO within NEAR_SERVER_SECONDS, workers forked before the event
    loop start without it, but one the fork server would start (a process start-up) still
    waits for the verdict."""
    monkeypatch.setattr("dlstudy.engine.workers.available_cpus", lambda: 2)
    # In-process, the embedded server's thread makes forking before the loop look unsafe.
    monkeypatch.setattr("dlstudy.engine.standby._safe_to_fork", lambda: standby)
    quickest = 0.001 if near else 0.050
    monkeypatch.setattr("dlstudy.http.client.Transport._time_reply", _replies_in(quickest))
    watched: list[float] = []

    async def verdict(seconds: float) -> bool:
        watched.append(seconds)
        return busy

    monkeypatch.setattr("dlstudy.engine.workers._busy", verdict)
    root, instances = study
    url = embedded_server(root)
    out = tmp_path / "out"
    result = download_json(instances[0].study_uid, url, out, "--mode", "instance")
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    at_once = near and standby
    assert watched == ([] if at_once else [workers_module._WATCH_SECONDS])
    assert summary["processes"] == (2 if busy or at_once else 1)
    assert summary["instances"]["downloaded"] == 200
    assert_same_files(instances, out)
    assert len(manifest_rows(out)) == 200


@pytest.mark.parametrize("near", [True, False])
def test_the_processes_together_never_exceed_the_concurrency(
    tmp_path: Path,
    embedded_server: StartServer,
    study: tuple[Path, list[SynthInstance]],
    monkeypatch: pytest.MonkeyPatch,
    seen_requests: SeenRequests,
    near: bool,
) -> None:
    """Whether the workers start at once (a near server: this process keeps to its share from
    the start) or after the watch (this process first uses all of --concurrency), the instance
    requests in flight across every process never exceed --concurrency: the shares add up."""
    monkeypatch.setattr("dlstudy.engine.workers.available_cpus", lambda: 2)
    monkeypatch.setattr(
        "dlstudy.http.client.Transport._time_reply", _replies_in(0.001 if near else 0.050)
    )
    # Workers start at once only when forked before the loop (see the test above).
    monkeypatch.setattr("dlstudy.engine.standby._safe_to_fork", lambda: near)

    async def busy(seconds: float) -> bool:
        await anyio.sleep(seconds)
        return True

    monkeypatch.setattr("dlstudy.engine.workers._busy", busy)
    root, instances = study
    url = embedded_server(root, latency=0.05)  # so that requests overlap
    out = tmp_path / "out"
    result = download_json(instances[0].study_uid, url, out, "--mode", "instance", "-c", "8")
    assert result.exit_code == 0, result.output
    assert summary_of(result)["processes"] == 2
    assert_same_files(instances, out)
    assert seen_requests.instance_requests == 200
    assert 4 <= seen_requests.peak_instances <= 8


def _replies_in(seconds: float) -> Any:
    """Transport._time_reply as if every QIDO answer took `seconds` (the embedded server's
    speed varies with the machine's load)."""

    def time_reply(self: Any, response: httpx.Response) -> None:
        self.quickest_reply = seconds

    return time_reply


def test_a_server_is_near_when_it_answered_within_the_threshold() -> None:
    assert workers_module.is_near(0.001)
    assert not workers_module.is_near(workers_module.NEAR_SERVER_SECONDS)
    assert not workers_module.is_near(0.020)
    assert not workers_module.is_near(None)  # no query timed (a library caller's own refs)


@pytest.mark.parametrize(("share", "expected"), [(1.0, True), (0.91, True), (0.85, False)])
def test_busy_is_cpu_time_over_wall_time(
    monkeypatch: pytest.MonkeyPatch, share: float, expected: bool
) -> None:
    assert workers_module._BUSY == 0.9
    clock = {"wall": 100.0, "cpu": 5.0}

    async def fake_sleep(seconds: float) -> None:
        clock["wall"] += seconds
        clock["cpu"] += share * seconds

    monkeypatch.setattr("dlstudy.engine.workers.time.monotonic", lambda: clock["wall"])
    monkeypatch.setattr("dlstudy.engine.workers.time.process_time", lambda: clock["cpu"])
    monkeypatch.setattr("dlstudy.engine.workers.anyio.sleep", fake_sleep)
    assert anyio.run(workers_module._busy, 0.1) is expected


# threshold: 0.9 of a CPU


def _download_with_a_worker(
    url: str, study_uid: str, out: Path
) -> tuple[subprocess.Popen[str], list[str], list[str]]:
    """`download --workers 2 --json` of the study, once its worker runs and 10 files landed:
    the process, its worker's pid, the command."""
    command = [
        DLSTUDY, "download", study_uid, "--url", url, "-o", str(out),
        "--workers", "2", "-c", "4", "--mode", "instance", "--json",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    workers: list[str] = []
    while not workers and time.monotonic() < deadline:
        time.sleep(0.05)
        found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
        workers = found.stdout.split()
    assert workers, "no worker process started"
    while len(list(out.rglob("*.dcm"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, workers, command


def test_a_killed_worker_fails_its_instances_and_the_run_reports(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """A worker killed mid-run (the OOM killer, a stray kill -9): what it had not reported
    fails, the summary says so (exit 1, the --json object), and a rerun fetches the rest."""
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    process, workers, command = _download_with_a_worker(slow, instances[0].study_uid, out)
    subprocess.run(["kill", "-9", workers[0]], check=True)
    stdout, stderr = process.communicate(timeout=120)

    assert "Traceback" not in stderr, stderr
    assert process.returncode == 1, stderr
    summary = json.loads(stdout)
    reasons = [failure["reason"] for failure in summary["failures"]]
    assert reasons and all("its worker process ended early" in r for r in reasons), reasons
    counts = summary["instances"]
    assert counts["downloaded"] + counts["failed"] == counts["total"] == len(instances)
    rerun = subprocess.run(
        [*command[:4], embedded_server(root), *command[5:]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert_same_files(instances, out)


def test_a_stopped_worker_is_ended_after_its_silence_and_the_run_reports(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """A worker that stops answering (SIGSTOP here; a loop blocked on a hung file system):
    the parent waited for it for ever once the others were done, holding the output folder's
    lock, so every cron rerun exited 5. Its heartbeat stops, so after WORKER_SILENCE_SECONDS
    it is ended: its instances fail, exit 1 with one warning, and a rerun fetches them."""
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    process, workers, command = _download_with_a_worker(slow, instances[0].study_uid, out)
    stopped = int(workers[0])
    os.kill(stopped, signal.SIGSTOP)
    try:
        stdout, stderr = process.communicate(timeout=WORKER_SILENCE_SECONDS + 90)
    finally:
        for pid in (stopped, process.pid):  # none left behind by a failing run
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in stderr, stderr
    assert process.returncode == 1, stderr
    warned = [line for line in stderr.splitlines() if f"worker process {stopped}" in line]
    assert warned == [
        f"dlstudy: warning: worker process {stopped} sent nothing for "
        f"{WORKER_SILENCE_SECONDS:.0f} s (stopped or hung): ended; what it had in hand fails, "
        "and a rerun fetches it"
    ], stderr
    counts = json.loads(stdout)["instances"]
    assert counts["failed"] > 0
    assert counts["downloaded"] + counts["failed"] == counts["total"] == len(instances)
    _a_rerun_completes(slow, instances, out)


def test_a_run_paused_whole_keeps_its_workers(
    tmp_path: Path, embedded_server: StartServer, study: tuple[Path, list[SynthInstance]]
) -> None:
    """Ctrl-Z then `fg` (a paused container, a suspended SLURM job) stops the parent and its
    workers alike for longer than WORKER_SILENCE_SECONDS: once woken, the parent took its own
    pause for the workers' silence and killed one (exit 1, its instances failed). A worker
    that speaks within a few heartbeats of the parent waking is alive."""
    root, instances = study
    slow = embedded_server(root, latency=0.05)
    out = tmp_path / "out"
    command = [
        DLSTUDY, "download", instances[0].study_uid, "--url", slow, "-o", str(out),
        "--workers", "2", "-c", "4", "--mode", "instance", "--json",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(out.rglob("*.dcm"))) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGSTOP)
        time.sleep(WORKER_SILENCE_SECONDS + 3)
        os.killpg(process.pid, signal.SIGCONT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # none left behind by a failing run
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    assert "sent nothing" not in stderr, stderr
    assert json.loads(stdout)["instances"]["downloaded"] == len(instances)
    assert_same_files(instances, out)
