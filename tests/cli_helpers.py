"""Run the real CLI in-process and read its JSON summary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from dlstudy.cli.app import app


def run_cli(
    *args: str, env: dict[str, str | None] | None = None, input: str | None = None
) -> Result:
    return CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)


def download_json(study_uid: str, url: str, out: Path, *extra: str) -> Result:
    """`dlstudy download STUDY_UID --url URL -o OUT --json EXTRA...`, in-process."""
    return run_cli("download", study_uid, "--url", url, "-o", str(out), "--json", *extra)


def summary_of(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def assert_same_files(instances: list[Any], output: Path) -> None:
    """Every source instance is under OUT/<study>/<series>/<sop>.dcm with identical bytes."""
    for instance in instances:
        target = output / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert target.read_bytes() == instance.path.read_bytes(), target
    written = [p for p in output.rglob("*") if p.is_file() and ".dlstudy" not in p.parts]
    assert len(written) == len(instances)


# The console script pip installed beside this interpreter: the command users run.
DLSTUDY = str(Path(sys.executable).with_name("dlstudy"))
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# CA bundles a machine may name for every client (dlstudy trusts them without --ca-bundle).
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR")


def _clean_environment(env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without proxies, CA bundles or DLSTUDY_ settings, plus
    `env`."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in PROXY_VARIABLES
        and name not in CA_VARIABLES
        and not name.startswith("DLSTUDY_")
    }
    return {**clean, **(env or {})}


def run_installed(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The installed `dlstudy ARGS...` in a subprocess, with no proxy from this machine's
    environment (and none of the developer's DLSTUDY_ settings) unless `env` gives one."""
    return _run([DLSTUDY, *args], env, timeout, cwd, preexec_fn)


# Root ignores file permissions: with these capabilities dropped (util-linux's setpriv) the
# installed script meets permissions as any other user does.
_WITHOUT_ROOT_BYPASS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run_installed_as_a_user(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """run_installed, with file permissions counting even when the tests run as root."""
    prefix = _WITHOUT_ROOT_BYPASS if os.geteuid() == 0 else []
    return _run([*prefix, DLSTUDY, *args], env, timeout, cwd)


def start_installed(*args: str) -> subprocess.Popen[str]:
    """The installed `dlstudy ARGS...` started as for run_installed, for a test that reads
    its output while it runs: stdout and stderr in one pipe, in the order they were written."""
    return subprocess.Popen(
        [DLSTUDY, *args],
        env=_clean_environment(None),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(
    argv: list[str],
    env: dict[str, str] | None,
    timeout: float,
    cwd: Path | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        preexec_fn=preexec_fn,
        env=_clean_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def installed_download(url: str, study: str, out: Path, *extra: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    """The installed `dlstudy download STUDY --url URL -o OUT --json EXTRA...`: its exit
    status, summary and stderr; a traceback fails the test."""
    result = run_installed("download", study, "--url", url, "-o", str(out), "--json", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def run_on_a_terminal(*args: str, columns: int = 160) -> tuple[int, str]:
    """The installed `dlstudy ARGS...` with a pseudo-terminal as its stdout and stderr, as in
    an interactive shell; returns its exit status and what it drew (escape codes removed)."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    process = subprocess.Popen(
        [DLSTUDY, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closes with the process
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    code = process.wait(timeout=120)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))
    return code, text


# Runs a command and writes its peak resident set (KiB, its own and its children's) to a file.
_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


def run_installed_measured(
    *args: str, peak_file: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`run_installed`, and the run's peak resident memory in MB (the largest of its process
    and the worker processes it started)."""
    result = _run(
        [sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), DLSTUDY, *args], env, timeout
    )
    return result, int(peak_file.read_text()) / 1024


def download_list(
    url: str, lines: list[str], work: Path, *, timeout: float = 600
) -> tuple[dict, Path]:  # type: ignore[type-arg]
    """The installed `dlstudy download --from-file` of `lines` (written to WORK/uids.txt) into
    WORK/out, with --json: asserts exit 0 and returns the summary and OUT."""
    uids = work / "uids.txt"
    uids.write_text("\n".join(lines) + "\n")
    out = work / "out"
    result = run_installed(
        "download", "--from-file", str(uids), "--url", url, "-o", str(out), "--json",
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), out


def instance_counts(
    total: int, *, downloaded: int = 0, skipped: int = 0, moved: int = 0, failed: int = 0
) -> dict[str, int]:
    """The `instances` object of a --json summary."""
    return {
        "total": total,
        "downloaded": downloaded,
        "skipped": skipped,
        "moved": moved,
        "failed": failed,
    }


# Ctrl-C, SIGTERM and SIGHUP, with the exit status and the word a stopped run ends on.
STOP_SIGNALS = [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated"),
    (signal.SIGHUP, 129, "hung up"),
]


def ctrl_c_as_at_a_terminal() -> None:
    """In the child, before dlstudy starts (a `preexec_fn`): SIGINT at its default, as a
    terminal's Ctrl-C finds it. A background job of a non-interactive shell (a CI runner may
    be one) inherits it ignored, and POSIX has it stay so: the signal then does nothing.
    SIGHUP too, which tests run under `nohup` would inherit ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def stop_installed(
    *args: str, signum: int, after: float = 0.0, ready: Callable[[], bool] | None = None
) -> tuple[int, str]:
    """The installed `dlstudy ARGS...`, SIGINT at its default (as at a terminal), sent `signum`
    once `ready()` holds (waited for at most 60 s) and `after` seconds more: its exit status
    and stderr. Killed whatever happens, so a test that fails leaves no run behind."""
    run = subprocess.Popen(
        [DLSTUDY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while ready is not None and not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready is None or ready(), f"dlstudy {' '.join(args)}: never got ready"
        time.sleep(after)
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
        run.communicate()
    return run.returncode, stderr
