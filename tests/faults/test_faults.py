"""Fault injection, end to end through the real CLI: each fault is injected for real (server
knobs, a TCP fault proxy, the kernel) and the test checks what dlstudy did about it.

docs/reliability.md is this file's summary; keep them in step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import blake3
import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import (
    DLSTUDY,
    assert_same_files,
    download_json,
    installed_download,
    run_installed,
    run_installed_measured,
    run_on_a_terminal,
    start_installed,
    summary_of,
)
from ..faultproxy import Fault, FaultProxy
from ..fixtures.embedded_server import StartServer, SynthStudy, TlsFiles
from ..manifest_helpers import index_of, manifest_rows, replace_with_legacy
from ..tools import missing_tool, mounted

pytestmark = pytest.mark.integration


def port_of(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def final_path(out: Path, instance: SynthInstance) -> Path:
    return out / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"


def assert_complete(out: Path, instances: list[SynthInstance]) -> None:
    for instance in instances:
        assert final_path(out, instance).read_bytes() == instance.path.read_bytes()
    assert temp_files(out) == []


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".part")] + [
        p for p in (out / ".dlstudy" / "incoming").glob("*")
    ]


@pytest.fixture
def proxy_factory() -> Iterator[list[FaultProxy]]:
    proxies: list[FaultProxy] = []
    yield proxies
    for proxy in proxies:
        proxy.close()


def download(url: str, study: str, out: Path, *extra: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    result = download_json(study, url, out, *extra)
    return result.exit_code, summary_of(result), result.stderr


# --- network faults -------------------------------------------------------------------------


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_tcp_reset_mid_body_is_retried(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    proxy_factory: list[FaultProxy],
    http: str,
) -> None:
    url = embedded_server(synth_study.root)
    proxy = FaultProxy(port_of(url), Fault("reset", after_bytes=150_000, connections={1, 2}))
    proxy_factory.append(proxy)

    status, summary, _ = download(proxy.url(), synth_study.study_uid, tmp_path, "--http", http)

    assert status == 0, summary["failures"]
    assert proxy.faulted == [1, 2]
    assert_complete(tmp_path, synth_study.instances)


@pytest.mark.parametrize("kind", ["reset", "close"])
def test_tls_handshakes_cut_mid_run_are_connected_again(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    proxy_factory: list[FaultProxy],
    tls_ca: TlsFiles,
    kind: str,
) -> None:
    """A TLS server restarting resets (or closes) the connections in its backlog during
    their handshake: a broken connection, connected again as a refused one is (for up to
    --timeout), not a TLS failure. It stopped the run at once, `TLS handshake with
    '127.0.0.1' failed: Recv failure: Connection reset by peer` (or `unexpected eof`),
    exit 3, where the same restart over http:// cost nothing."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    proxy = FaultProxy(port_of(url), Fault(kind, connections={2, 3, 4}))
    proxy_factory.append(proxy)
    tls_url = proxy.url().replace("http://", "https://")

    status, summary, stderr = download(
        tls_url, synth_study.study_uid, tmp_path, "--http", "1.1", "-c", "4",
        "--ca-bundle", str(tls_ca.ca_pem),
    )  # fmt: skip

    assert status == 0, stderr
    assert proxy.faulted == [2, 3, 4]
    assert_complete(tmp_path, synth_study.instances)


def test_dripping_qido_answer_is_cut_off_and_retried(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    proxy_factory: list[FaultProxy],
) -> None:
    url = embedded_server(synth_study.root)
    drip = Fault("drip", after_bytes=2_000, connections={2}, drip_interval=0.05)
    proxy = FaultProxy(port_of(url), drip)
    proxy_factory.append(proxy)
    started = time.monotonic()

    status, summary, _ = download(
        proxy.url(), synth_study.study_uid, tmp_path, "--http", "1.1", "--timeout", "1"
    )

    assert status == 0, summary["failures"]
    assert proxy.faulted == [2]
    assert time.monotonic() - started < 20
    assert_complete(tmp_path, synth_study.instances)


def test_stalled_connection_times_out_and_is_retried(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    proxy_factory: list[FaultProxy],
) -> None:
    url = embedded_server(synth_study.root)
    # Connections 1-3 carry the QIDO searches (3 series at once); 4 is only instances.
    proxy = FaultProxy(port_of(url), Fault("stall", after_bytes=20_000, connections={4}))
    proxy_factory.append(proxy)
    started = time.monotonic()

    status, summary, _ = download(
        proxy.url(), synth_study.study_uid, tmp_path, "--http", "1.1", "--timeout", "1", "-c", "4"
    )

    assert status == 0, summary["failures"]
    assert 4 in proxy.faulted
    assert time.monotonic() - started < 20
    assert_complete(tmp_path, synth_study.instances)


def test_dripping_server_fails_that_instance_within_a_few_windows(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    proxy_factory: list[FaultProxy],
) -> None:
    url = embedded_server(synth_study.root)
    drip = Fault("drip", after_bytes=10_000, connections={4}, drip_interval=0.05)
    proxy = FaultProxy(port_of(url), drip)
    proxy_factory.append(proxy)
    started = time.monotonic()

    status, summary, _ = download(
        proxy.url(),
        synth_study.study_uid,
        tmp_path,
        "--http",
        "1.1",
        "--timeout",
        "1",
        "--retries",
        "0",
        "-c",
        "4",
    )

    elapsed = time.monotonic() - started
    assert status == 1
    assert summary["instances"]["failed"] == 1
    assert summary["instances"]["downloaded"] == 59
    assert "stalled (less than 64 KiB in 1 s)" in summary["failures"][0]["reason"]
    assert elapsed < 10, elapsed  # a few windows, not the drip's hours
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("status_code", [429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_and_throttle_the_pool(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, status_code: int
) -> None:
    url = embedded_server(
        synth_study.root, fault_rate=0.2, fault_status=status_code, retry_after=0, seed=5
    )
    status, summary, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0, summary["failures"]
    if status_code in (429, 503):
        assert summary["throttled"] > 0
    assert_complete(tmp_path, synth_study.instances)


def test_transient_500s_in_a_transfer_syntax_the_server_makes_are_still_retried(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A 500 to an instance asked in an explicit transfer syntax is tried again (three
    attempts in all), and the instances that come in it keep the server's 500s from being
    taken for a transfer syntax it cannot make. (With `*`, the test above: every retry.)"""
    # One request at a time: the faults fall on the same requests in every run, and with this
    # seed no instance gets three in a row (one in 125 would, at this rate).
    url = embedded_server(synth_study.root, fault_rate=0.2, fault_status=500, retry_after=0, seed=1)
    status, summary, stderr = installed_download(
        url, synth_study.study_uid, tmp_path,
        "--transfer-syntax", "1.2.840.10008.1.2.1", "--concurrency", "1",
    )  # fmt: skip
    assert status == 0, summary["failures"]
    assert summary["retried"] >= 10
    assert "not asked" not in stderr
    assert_complete(tmp_path, synth_study.instances)


def test_retry_after_is_honoured(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(
        synth_study.root, fault_rate=0.15, fault_status=429, retry_after=1, seed=1
    )
    started = time.monotonic()
    status, summary, _ = download(
        url, synth_study.study_uid, tmp_path, "--series", synth_study.series_uids[0]
    )
    assert status == 0, summary["failures"]
    assert summary["throttled"] >= 1
    assert time.monotonic() - started >= 1.0  # the pool waited as it was told


def test_retry_after_as_an_http_date_is_honoured(tmp_path: Path) -> None:
    from ..scripted_servers import busy_with_http_date

    with busy_with_http_date(count=3, delay=2.0) as (url, study, waits):
        status, summary, _ = download(url, study, tmp_path, "--http", "1.1")
    assert status == 0, summary["failures"]
    assert len(waits) == 3
    assert summary["retried"] == 3
    # The date names a whole second 1-2 s ahead: every retry waited at least ~1 s for it.
    assert min(waits) >= 0.9, waits


def test_sync_counts_the_retries_of_its_search_and_of_its_download(tmp_path: Path) -> None:
    from ..scripted_servers import busy_with_http_date

    with busy_with_http_date(count=3, delay=0.0) as (url, _study, waits):
        result = run_installed("sync", "--url", url, "-o", str(tmp_path), "--http", "1.1")
    assert result.returncode == 0, result.stderr
    assert len(waits) == 3
    # The study search once, each instance once: on the summary line the cron log keeps.
    assert result.stderr.splitlines()[-1].endswith("; 4 retries"), result.stderr


@pytest.mark.parametrize("status_code", [400, 403, 404, 406])
def test_definitive_answers_are_reported_not_retried(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, status_code: int
) -> None:
    url = embedded_server(synth_study.root, fault_rate=0.1, fault_status=status_code, seed=2)
    status, summary, _ = download(url, synth_study.study_uid, tmp_path, "--mode", "instance")
    if status_code == 403:
        assert status == 3  # 403 means the credentials are not enough: nothing else will work
        return
    assert status == 1
    assert summary["instances"]["failed"] > 0
    for failure in summary["failures"]:
        assert failure["status_code"] == status_code
        assert "attempts" not in failure["reason"]
    assert summary["retried"] == 0


def test_http2_goaway_mid_run_loses_nothing(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, max_requests_per_connection=3)
    status, summary, _ = download(url, synth_study.study_uid, tmp_path, "--http", "2", "-c", "16")
    assert status == 0, summary["failures"]
    assert summary["http_version"] == "HTTP/2"
    assert_complete(tmp_path, synth_study.instances)


def test_resets_and_503s_on_a_thousand_instances_complete_byte_exact(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=4, instances=250, size=4096, seed=11))
    url = embedded_server(
        source, fault_rate=0.1, retry_after=1, drop_after_bytes=1500, drop_rate=0.1, seed=3
    )
    out = tmp_path / "out"
    status, summary, _ = download(url, instances[0].study_uid, out, "--http", "1.1")
    assert status == 0, summary["failures"]
    assert summary["instances"]["downloaded"] == 1000
    assert summary["throttled"] > 0
    assert_complete(out, instances)


# --- auth faults ----------------------------------------------------------------------------


def minting_command(tmp_path: Path, *, fail_after: int | None = None) -> tuple[str, Path]:
    """A token command minting tok-1, tok-2, ... (counting its runs in a file)."""
    counter = tmp_path / "runs"
    fail = f'[ "$n" -gt {fail_after} ] && exit 7; ' if fail_after else ""
    command = (
        f"n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; "
        f"{fail}echo tok-$n"
    )
    return command, counter


def test_expired_token_is_refreshed_once_for_all_workers(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, token="tok", token_expires_after=25)
    command, counter = minting_command(tmp_path)
    out = tmp_path / "out"

    status, summary, stderr = download(
        url, synth_study.study_uid, out, "--token-command", command, "-c", "8"
    )

    assert status == 0, summary["failures"]
    runs = int(counter.read_text())
    assert 2 <= runs <= 5  # ~70 requests / 25 per token; not one refresh per worker
    assert "tok-" not in stderr and "tok-" not in str(summary)
    assert_complete(out, synth_study.instances)


@pytest.mark.parametrize("mode", ["instance", "series"])
def test_tokens_expiring_under_many_requests_in_flight_never_stop_the_run(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, mode: str
) -> None:
    """Each token works for 2 requests while 8 are in flight: most 401s come back to requests
    sent with a token already replaced. They are replayed with the current one; only a fresh
    token refused on its first use would stop the run."""
    url = embedded_server(synth_study.root, token="tok", token_expires_after=2)
    command, counter = minting_command(tmp_path)
    out = tmp_path / "out"

    status, summary, stderr = download(
        url, synth_study.study_uid, out, "--token-command", command, "-c", "8", "--mode", mode
    )

    assert status == 0, (stderr, summary.get("failures"))
    runs = int(counter.read_text())
    requests = len(synth_study.instances) + len(synth_study.series_uids) + 2
    assert 2 <= runs <= requests  # renewed as tokens expire, never more than once a request
    assert "tok-" not in stderr and "tok-" not in str(summary)
    assert_complete(out, synth_study.instances)


def test_failed_token_refresh_stops_the_run_with_exit_3(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, token="tok", token_expires_after=10)
    command, _ = minting_command(tmp_path, fail_after=1)
    status, summary, stderr = download(
        url, synth_study.study_uid, tmp_path / "o", "--token-command", command
    )
    assert status == 3
    assert "--token-command failed with exit status 7" in stderr
    assert "tok-" not in stderr and "tok-" not in str(summary)


def test_second_401_after_refresh_stops_the_run(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, token="right")
    status, _, stderr = download(
        url, synth_study.study_uid, tmp_path, "--token-command", "echo wrong-token"
    )
    assert status == 3
    assert "server rejected the token --token-command printed: HTTP 401 on " in stderr
    assert stderr.rstrip().endswith("(check what the command prints)"), stderr
    assert "wrong-token" not in stderr


def test_a_command_printing_the_expired_token_again_stops_the_run_after_one_refresh(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """The token expires mid-run and the command prints the same one again (a stale cache):
    it runs once more, not in a loop, and the line names the command, not --token or --user
    (it said `server rejected the credentials: ... (check --token / --user / --password)`)."""
    url = embedded_server(synth_study.root, token="tok", token_expires_after=5)
    runs = tmp_path / "runs"
    command = f"echo run >> {runs}; echo tok"
    status, summary, stderr = download(
        url, synth_study.study_uid, tmp_path / "o", "--token-command", command
    )
    assert status == 3, stderr
    assert runs.read_text().splitlines() == ["run", "run"]  # at the start, one refresh
    assert summary["error"].startswith(
        "server rejected the token --token-command printed: HTTP 401 on "
    ), summary["error"]


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie nobody reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@contextmanager
def started_by_a_token_command(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A token command whose shell waits on a `sleep 1000` it started, and the file that
    child's pid is written to; the child is killed after the test, if still there."""
    pid_file = tmp_path / "child.pid"
    try:
        yield f"sleep 1000 & echo $! > {pid_file}; wait; echo tok", pid_file
    finally:
        if pid_file.exists() and alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)


def test_a_token_command_past_its_time_limit_is_killed_with_what_it_started(
    tmp_path: Path,
) -> None:
    """Killing the shell alone left its child running (and holding the command's output
    open): the command runs in a session of its own, killed whole."""
    import anyio

    from dlstudy.errors import AuthError
    from dlstudy.http.auth import TokenCommand

    with started_by_a_token_command(tmp_path) as (command, pid_file):
        with pytest.raises(AuthError, match="did not finish within 1 s"):
            anyio.run(TokenCommand(command, timeout=1).fetch)
        assert gone_within(int(pid_file.read_text()), 5)


def test_ctrl_c_during_a_token_command_kills_it_and_exits_130(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, token="tok")
    with started_by_a_token_command(tmp_path) as (command, pid_file):
        run = subprocess.Popen(
            [DLSTUDY, "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path / "o"),
             "--token-command", command],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not pid_file.exists() or not pid_file.read_text().strip():
                assert time.monotonic() < deadline and run.poll() is None, run.stderr
                time.sleep(0.05)
            run.send_signal(signal.SIGINT)
            _, stderr = run.communicate(timeout=20)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert gone_within(int(pid_file.read_text()), 5)


# --- what the server sends ------------------------------------------------------------------


@pytest.fixture
def own_study(tmp_path: Path) -> tuple[Path, list[SynthInstance]]:
    """A private copy of a small study, safe to damage."""
    root = tmp_path / "served"
    return root, generate(root, SynthSpec(series=1, instances=10, size=16 * 1024, seed=9))


def forge_in_place(path: Path, data: bytes) -> None:
    """Put `data` in the file, cut or padded to its size, keeping its inode and modification
    time: the embedded server sends a file only while it is the one it indexed, so only such a
    forgery makes it send wrong bytes."""
    found = path.stat()
    with path.open("r+b") as file:
        file.write(data[: found.st_size].ljust(found.st_size, b"\0"))
    os.utime(path, ns=(found.st_atime_ns, found.st_mtime_ns))


def test_wrong_instance_from_the_server_is_retried_then_reported(
    tmp_path: Path, embedded_server: StartServer, own_study: tuple[Path, list[SynthInstance]]
) -> None:
    root, instances = own_study
    url = embedded_server(root)
    victim, other = instances[0], instances[1]
    forge_in_place(victim.path, other.path.read_bytes())  # the server now sends the wrong file
    out = tmp_path / "out"

    status, summary, _ = download(url, victim.study_uid, out, "--retries", "1")

    assert status == 1
    [failure] = summary["failures"]
    assert failure["sop_instance_uid"] == victim.sop_uid
    assert "SOP Instance UID in the file is" in failure["reason"]
    assert not final_path(out, victim).exists()
    assert temp_files(out) == []


def test_html_served_as_dicom_is_rejected_at_once(
    tmp_path: Path, embedded_server: StartServer, own_study: tuple[Path, list[SynthInstance]]
) -> None:
    root, instances = own_study
    url = embedded_server(root)
    victim = instances[3]
    page = b"<!DOCTYPE html><html><body>" + b"Please log in. " * 50 + b"</html>"
    forge_in_place(victim.path, page.ljust(victim.size, b" "))
    out = tmp_path / "out"

    status, summary, _ = download(url, victim.study_uid, out)

    assert status == 1
    [failure] = summary["failures"]
    assert "response is not DICOM (looks like an HTML page)" in failure["reason"]
    assert "attempts" not in failure["reason"]
    assert not final_path(out, victim).exists()


def test_hostile_uids_never_become_paths(tmp_path: Path) -> None:
    from ..scripted_servers import hostile_uids

    out, report = tmp_path / "out", tmp_path / "report.csv"
    with hostile_uids() as (url, study, good):
        status, summary, _ = download(url, study, out, "--http", "1.1", "--report", str(report))

    assert status == 1
    assert summary["instances"]["downloaded"] == len(good)
    assert summary["instances"]["failed"] == 3  # counted like any failed instance
    reasons = [f["reason"] for f in summary["failures"]]
    assert len(reasons) == 3 and all("invalid instance UID '" in r for r in reasons), reasons
    assert all("InstanceRef" not in r for r in reasons)
    too_long = "1." + "2" * 63  # digits and dots: its length is what is wrong
    assert (
        f"instance {too_long!r}: the server lists it with an invalid instance UID {too_long!r} "
        "(a UID is digits and dots, at most 64 characters): not downloaded"
    ) in reasons  # (it said "digits and dots" alone)
    rows = report.read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == ["downloaded"] * 2 + ["failed"] * 3
    assert not Path("/tmp/dlstudy-pwned").exists()
    assert all(out in p.parents for p in out.rglob("*"))
    assert sorted(p.stem for p in out.rglob("*.dcm")) == sorted(good)


def test_secret_headers_never_follow_a_redirect_to_another_origin(tmp_path: Path) -> None:
    """Neither the token, nor --header values, nor the archive's session cookie go to another
    origin. The cookie did: cookies are scoped by host, not port, so httpx's jar sent it to
    the other port of the same host (and would to http:// from https://)."""
    from ..scripted_servers import redirecting_pair

    cookie = "session=c00k1e-secret; Path=/; HttpOnly"
    with redirecting_pair(cookie) as (url, study, seen_by_other_origin):
        status, summary, _ = download(
            url,
            study,
            tmp_path / "out",
            "--token",
            "t0ps3cret",
            "--header",
            "X-Api-Key: k3y",
            "--http",
            "1.1",
        )
    assert status == 0, summary["failures"]
    assert seen_by_other_origin, "the redirect target was never asked"
    for headers in seen_by_other_origin:
        assert "authorization" not in headers and "x-api-key" not in headers
        assert "cookie" not in headers, headers


STUDY_ARG = "STUDY"  # stands for the study UID in a parametrized command


@pytest.mark.parametrize(
    "command",
    [
        ("download", STUDY_ARG, "-o", "OUT", "--json"),
        ("query",),
        ("sync", "-o", "OUT"),
        ("bench", STUDY_ARG, "--repeat", "1"),
    ],
)
def test_a_search_redirected_to_another_origin_that_refuses_it_stops_at_once(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    command: tuple[str, ...],
) -> None:
    """An archive that moved (every request redirected to another origin, as http:// to
    https://) gets no credentials there, and is refused: that is said at once, naming the
    new origin. It was taken for an expired presigned link, `asking the archive again`: 7
    attempts over 14-23 s, then exit 3 all the same."""
    from ..scripted_servers import moved_archive

    target = embedded_server(synth_study.root, token="archive-token")
    new_origin = target.removesuffix("/dicomweb")
    swap = {STUDY_ARG: synth_study.study_uid, "OUT": str(tmp_path / "out")}
    args = [swap.get(arg, arg) for arg in command]
    with moved_archive(new_origin) as (url, asked):
        result = run_installed(*args, "--url", url, "--token", "archive-token")

    assert "Traceback" not in result.stderr
    assert result.returncode == 3, result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith(
        f"dlstudy: error: the server redirected the search to another origin, {new_origin}, "
        "which answered HTTP 401 on "
    ), error
    assert error.endswith(f"if {new_origin} is the archive, give it in --url"), error
    assert len(set(asked)) == 1 and len(asked) <= 2, asked  # the h2c probe, then HTTP/1.1
    assert "archive-token" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [("download", STUDY_ARG, "-o", "OUT"), ("query",)])
def test_a_redirect_target_that_cannot_be_reached_is_the_one_named(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """An archive that sends every request to another origin that refuses connections (a
    firewalled https:// port): the line names that origin, redacted, and where the redirect
    came from. It named the archive, which had answered: `connection refused by
    127.0.0.1:<the archive's port> (<the archive's URL>)`."""
    from ..scripted_servers import moved_archive

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    swap = {STUDY_ARG: "1.2.3.4", "OUT": str(tmp_path / "out")}
    args = [swap.get(arg, arg) for arg in command]
    with moved_archive(dead) as (url, asked):
        keyed = f"{url}?subscription-key=k3y-secret"
        result = run_installed(*args, "--url", keyed, "--timeout", "1", "--http", "1.1")

    assert "Traceback" not in result.stderr and "k3y-secret" not in result.stderr
    assert result.returncode == 3, result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith(
        f"dlstudy: error: connection refused by {dead.removeprefix('http://')} "
        f"({dead}/dicomweb/studies"
    ), error
    assert "subscription-key=***&includefield=" in error, error
    assert f"; redirected there from {url}/studies" in error, error


@pytest.mark.parametrize(
    "command",
    [("query", "--json"), ("sync", "-o", "OUT"), ("download", STUDY_ARG, "-o", "OUT", "--json")],
)
def test_a_search_redirected_to_an_invalid_url_stops_with_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """An archive that redirects every request to a Location with a scheme and no host
    (`http:127.0.0.1:PORT/...`, its slashes left out): one line naming that Location,
    redacted, exit 3. It was a traceback of httpx.InvalidURL (183 lines), exit 1, and no
    JSON on stdout."""
    from ..scripted_servers import moved_archive

    swap = {STUDY_ARG: "1.2.3.4", "OUT": str(tmp_path / "out")}
    args = [swap.get(arg, arg) for arg in command]
    with moved_archive("http:127.0.0.1:9") as (url, asked):
        keyed = f"{url}?subscription-key=k3y-secret"
        result = run_installed(*args, "--url", keyed, "--http", "1.1")

    assert "Traceback" not in result.stderr and "k3y-secret" not in result.stderr
    assert result.returncode == 3, result.stderr
    error = result.stderr.splitlines()[-1]
    searched = "/studies/1.2.3.4/series" if command[0] == "download" else "/studies"
    assert error.startswith(
        "dlstudy: error: QIDO search: redirected to an invalid URL, "
        f"'http:127.0.0.1:9/dicomweb{searched}?subscription-key=***&"
    ), error
    assert error.endswith(f"', from {url}{searched}"), error
    # Not retried (it would redirect there again): each search asked once directly, once
    # more through httpx, which follows redirects.
    assert max(Counter(asked).values()) <= 2, asked
    if command[0] == "download":
        assert "redirected to an invalid URL" in json.loads(result.stdout)["error"]


def behind_redirecting_nginx(folder: Path, archive: str, keep_query: bool) -> Any:
    """nginx redirecting `/dicomweb/...` to `/moved/dicomweb/...`, which it passes on to the
    `archive` (an embedded server's base URL); with `keep_query=False` the redirect drops the
    query, as `$uri` (a common mistake for `$request_uri`) does."""
    from ..fixtures.proxies import nginx

    backend = archive.removesuffix("/dicomweb")
    kept = "$request_uri" if keep_query else "$uri"
    return nginx(
        folder,
        f"location /dicomweb/ {{ return 301 /moved{kept}; }}\n"
        f"location /moved/ {{ rewrite ^/moved/(.*)$ /$1 break; proxy_pass {backend}; }}",
    )


def test_a_search_redirected_without_its_query_stops_before_any_download(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A redirect whose Location drops the query turned `--modality MR` into a search for
    every study: `sync` downloaded the archive's CT studies, `query` listed them, exit 0, not
    a word. The search stops now (exit 3), naming the redirect's target; one that keeps the
    query is followed as before."""
    archive = embedded_server(synth_study.root)
    other = "1.2.3.4.5.6"
    searches = [
        ("query", "--modality", "MR"),
        ("query", "--filter", f"StudyInstanceUID={other}"),
        ("sync", "--modality", "MR", "-o", str(tmp_path / "out"), "-q"),
    ]
    with behind_redirecting_nginx(tmp_path / "nginx", archive, keep_query=False) as origin:
        url = f"{origin}/dicomweb?subscription-key=k3y-secret"
        for args in searches:
            result = run_installed(*args, "--url", url)
            assert result.returncode == 3, (args, result.stderr)
            (error,) = result.stderr.splitlines()
            assert error.startswith(
                f"dlstudy: error: the server redirected the search {origin}/dicomweb/studies?"
            ), error
            assert f" to {origin}/moved/dicomweb/studies, which drops the search's query" in error
            assert "k3y-secret" not in error
            assert result.stdout == ""
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.dcm"))

    with behind_redirecting_nginx(tmp_path / "nginx2", archive, keep_query=True) as origin:
        url = f"{origin}/dicomweb"
        assert run_installed("query", "--modality", "MR", "--url", url).returncode == 4
        result = run_installed("query", "--modality", "CT", "--uids", "--url", url)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [synth_study.study_uid]


def test_a_redirect_from_https_to_plain_http_is_warned_of_once(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """An https:// archive that sends every request to plain http://: followed (an archive
    may hand instances out from a store on its own network), without the credentials, and
    said once, as what comes from there is not encrypted. It was followed silently."""
    from ..scripted_servers import moved_archive

    target = embedded_server(synth_study.root).removesuffix("/dicomweb")
    out = tmp_path / "out"
    with moved_archive(target, tls=(str(tls_ca.cert), str(tls_ca.key))) as (url, asked):
        result = run_installed(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
            "--ca-bundle", str(tls_ca.ca_pem), "--token", "archive-token",
        )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert asked and url.startswith("https://")
    assert len(list(out.rglob("*.dcm"))) == len(synth_study.instances)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(
        f"dlstudy: warning: the server redirects to plain http:// ({target}/dicomweb/studies"
    ), warnings
    assert warnings[0].endswith(
        "what comes from there is not encrypted; credentials and --header values are not sent there"
    ), warnings
    assert "archive-token" not in result.stdout + result.stderr


def test_a_redirect_to_plain_http_is_warned_of_once_by_all_workers(
    tmp_path: Path, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """`--workers 3`: each process has its own client, and each said it (three lines of the
    same warning for one run). Said once per run, by whichever process met it first."""
    from ..scripted_servers import moved_archive

    root = tmp_path / "source"
    instances = generate(root, SynthSpec(series=3, instances=60, size=8 * 1024, seed=7))
    target = embedded_server(root).removesuffix("/dicomweb")
    out = tmp_path / "out"
    with moved_archive(target, tls=(str(tls_ca.cert), str(tls_ca.key))) as (url, _):
        result = run_installed(
            "download", instances[0].study_uid, "--url", url, "-o", str(out), "--json",
            "--ca-bundle", str(tls_ca.ca_pem), "--workers", "3", "--mode", "instance",
        )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processes"] == 3
    assert len(list(out.rglob("*.dcm"))) == len(instances)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert "redirects to plain http://" in warnings[0]


def asked_for(sops: list[str], asked: list[str], times: int) -> None:
    """Each SOP asked for `times` times; once more for the first requests, which went to the
    archive directly before its first redirect sent every request through httpx."""
    counts = Counter(asked)
    assert set(counts) == set(sops)
    assert all(times <= counts[sop] <= times + 1 for sop in sops), counts


@pytest.mark.parametrize("refused", [1, 100], ids=["expired once", "always expired"])
def test_an_expired_presigned_link_is_asked_for_again_never_stops_the_run(
    tmp_path: Path, refused: int
) -> None:
    """A 403 from a redirect target on another origin is not the archive refusing the
    credentials: the instance is fetched again from the archive, which hands out a fresh link.
    The links' signatures and credentials appear in no output."""
    from ..factories import part10
    from ..scripted_servers import PRESIGNED_CREDENTIAL, SERIES, SOPS, presigned_pair

    out, log_file = tmp_path / "out", tmp_path / "run.log"
    with presigned_pair(refused) as (url, study, asked, signatures):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "-v",
            "--log-file", str(log_file), "--http", "1.1", "--mode", "instance",
            "--retries", "3", "--token", "archive-token",
        )  # fmt: skip

    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    if refused == 1:
        assert result.returncode == 0, result.stderr
        asked_for(SOPS, asked, 2)  # each instance asked for again, once
        for sop in SOPS:
            (path,) = out.rglob(f"{sop}.dcm")
            assert path.read_bytes() == part10(study, SERIES, sop)
    else:
        assert result.returncode == 1, result.stderr  # not 3: the archive never refused
        reasons = [f["reason"] for f in summary["failures"]]
        assert len(reasons) == len(SOPS)
        assert all("from the redirect target" in r and "expired link" in r for r in reasons)
        asked_for(SOPS, asked, 4)  # the first try and three retries
    outputs = result.stdout + result.stderr + log_file.read_text()
    for secret in [*signatures, PRESIGNED_CREDENTIAL, "archive-token"]:
        assert secret not in outputs


@pytest.mark.parametrize("refused", [1, 100], ids=["expired once", "always expired"])
def test_a_401_from_an_expired_link_is_no_expired_token(tmp_path: Path, refused: int) -> None:
    """With --token-command, a link that expired and says so with 401 (a link holding its own
    token) is the link's, not the run's token: the instance is asked of the archive again and
    the command is not run again. It was taken for the token expiring: the command ran again
    and the request was replayed; a link refused again was then the archive refusing a fresh
    token, `server rejected the credentials: HTTP 401 on <the link>`, exit 3 (the replay's
    history began at the link's 401, so the redirect went unseen)."""
    from ..factories import part10
    from ..scripted_servers import SERIES, SOPS, presigned_pair

    out, runs = tmp_path / "out", tmp_path / "runs"
    command = f"echo run >> {runs}; echo archive-token"
    with presigned_pair(refused, status=401) as (url, study, asked, signatures):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--mode", "instance", "--retries", "3", "--token-command", command,
        )  # fmt: skip

    assert "Traceback" not in result.stderr
    assert runs.read_text().splitlines() == ["run"]  # at the start only
    assert not any(signature in result.stdout + result.stderr for signature in signatures)
    if refused == 1:
        assert result.returncode == 0, result.stderr
        asked_for(SOPS, asked, 2)  # each instance asked for again, once
        for sop in SOPS:
            (path,) = out.rglob(f"{sop}.dcm")
            assert path.read_bytes() == part10(study, SERIES, sop)
    else:
        assert result.returncode == 1, result.stderr  # not 3: the archive never refused
        reasons = [f["reason"] for f in json.loads(result.stdout)["failures"]]
        assert len(reasons) == len(SOPS)
        assert all("HTTP 401 from the redirect target" in r for r in reasons), reasons
        asked_for(SOPS, asked, 4)  # the first try and three retries


# --- local faults ---------------------------------------------------------------------------


def run_subprocess(
    args: list[str], *, prefix: tuple[str, ...] = (), **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "dlstudy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_file_size_limit_gives_one_line_and_a_clean_exit(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"

    def limit_file_size() -> None:  # the kernel refuses writes past 30 KB with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    result = run_subprocess(
        ["download", synth_study.study_uid, "--url", url, "-o", str(out)],
        preexec_fn=limit_file_size,
    )

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors and "File too large" in errors[0]
    assert temp_files(out) == []


def test_disk_full_gives_one_line_and_keeps_what_was_committed(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    if os.geteuid() != 0:
        missing_tool("mounting a small tmpfs needs root")
    url = embedded_server(synth_study.root)
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        result = run_subprocess(["download", synth_study.study_uid, "--url", url, "-o", str(mount)])
        assert result.returncode == 1, result.stderr
        assert "No space left on device" in result.stderr
        kept = list(mount.rglob("*.dcm"))
        assert 0 < len(kept) < 60
        for path in kept:
            assert path.read_bytes() == synth_study.by_sop(path.stem).path.read_bytes()
        assert temp_files(mount) == []

        # The disk still full, as cron finds it the next night: one line, and the JSON.
        filler = mount / "filler"
        with filler.open("wb", buffering=0) as fill, contextlib.suppress(OSError):
            while True:
                fill.write(b"\0" * 4096)
        again = run_subprocess(
            ["download", synth_study.study_uid, "--url", url, "-o", str(mount), "--json"]
        )
        assert again.returncode == 1, again.stderr
        assert again.stderr.splitlines() == [
            f"dlstudy: error: cannot write '{mount}/.dlstudy/lock': No space left on device"
        ]
        assert json.loads(again.stdout)["exit_status"] == 1
        assert sorted(mount.rglob("*.dcm")) == sorted(kept)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path) -> None:
    with (disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


@pytest.mark.parametrize("mode", ["series", "instance"])
def test_an_output_folder_turned_read_only_mid_run_is_no_network_error(
    tmp_path: Path, embedded_server: StartServer, mode: str
) -> None:
    """OUT turned read-only mid-run (a read-only mount of it swapped in, as a disk is
    remounted after an error): the run stops, saying it cannot write there, exit 1. In
    series mode it first warned `bulk retrieval stopped after 24 parts: network error
    ([Errno 30] Read-only file system: '…/.dlstudy/incoming/….part') on http://…` and asked
    the server again instance by instance: a local failure taken for the network's."""
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=2, instances=60, size=16 * 1024, seed=5))
    url = embedded_server(source)
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen(
        [DLSTUDY, "download", instances[0].study_uid, "--url", url, "-o", str(out), "--json",
         "--mode", mode, "-c", "1", "--max-rate", "256K"],  # 2 MB: the run lasts ~8 s
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(out.rglob("*.dcm")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with mounted(out, "--bind", "-o", "ro", str(out)):
            stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    assert "Traceback" not in stderr, stderr
    assert run.returncode == 1, stderr
    assert "network error" not in stderr and "bulk retrieval" not in stderr, stderr
    error = stderr.splitlines()[-1]
    # the part being written as the mount came fails to be renamed; or the next one opened
    said = (f"dlstudy: error: cannot create '{out}/", f"dlstudy: error: cannot write in '{out}/")
    assert error.startswith(said) and error.endswith("': Read-only file system"), error
    summary = json.loads(stdout)
    assert 0 < summary["instances"]["downloaded"] < len(instances)
    assert summary["instances"]["downloaded"] == len(list(out.rglob("*.dcm")))
    rerun = run_installed("download", instances[0].study_uid, "--url", url, "-o", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert_complete(out, instances)  # and the temp file it could not remove is gone


@pytest.mark.parametrize("server", ["up", "down"])
def test_a_report_on_a_full_disk_is_one_line_and_the_summary(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, server: str
) -> None:
    """The instances go to a disk with room, `--report` to a full one: its rows fail as
    their buffer is written out, mid-run (server up) or as the report is discarded after
    the server's error (down). Both were an OSError traceback, no `--json` object."""
    url = embedded_server(synth_study.root) if server == "up" else "http://127.0.0.1:1/dicomweb"
    out = tmp_path / "out"
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as disk:
        fill(disk)
        report = disk / "landed.csv"
        args = ["download", synth_study.study_uid, "--url", url, "-o", str(out), "--json"]
        result = run_installed(*args, "--report", str(report))

        assert "Traceback" not in result.stderr
        summary = json.loads(result.stdout)
        if server == "up":
            assert result.returncode == 1, result.stderr
            assert result.stderr.splitlines()[-1] == (
                f"dlstudy: error: cannot write --report '{report}': No space left on device"
            )
            on_disk = len(list(out.rglob("*.dcm")))
            assert summary["instances"]["downloaded"] == len(manifest_rows(out)) == on_disk > 0
        else:
            assert result.returncode == 3, result.stderr
            assert "connection refused" in summary["error"]
        assert summary["exit_status"] == result.returncode
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no report, no temp file
    if server == "up":
        rerun = run_installed(*args)
        assert rerun.returncode == 0, rerun.stderr
        assert_complete(out, synth_study.instances)


@pytest.mark.parametrize("command", ["download", "sync"])
def test_a_log_file_on_a_full_disk_fails_the_run_in_one_line(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, command: str
) -> None:
    """Each record that could not be written was a `--- Logging error ---` traceback on
    stderr, and the run exited 0: a cron job's lost log looked like a quiet night."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    what = [synth_study.study_uid] if command == "download" else []
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as disk:
        fill(disk)
        log = disk / "run.log"
        result = run_installed(
            command, *what, "--url", url, "-o", str(out), "--json", "-q", "--log-file", str(log)
        )

    lost = f"cannot write --log-file '{log}': No space left on device"
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"dlstudy: error: {lost}"]
    summary = json.loads(result.stdout)
    assert (summary["error"], summary["exit_status"]) == (lost, 1)
    assert summary["instances"]["downloaded"] == 60
    assert_complete(out, synth_study.instances)


def test_a_json_summary_onto_a_full_disk_is_one_line_and_never_exit_0(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`download --json > run.json` (`sync`, `catalog pull`) on a full disk (/dev/full) was an
    OSError traceback; a run that went well says so in one line and exits 1, one that failed
    keeps its status."""
    url = embedded_server(synth_study.root)
    out = str(tmp_path / "out")
    lost = "dlstudy: error: cannot write the output: No space left on device"
    dead = "http://127.0.0.1:1/dicomweb"
    for command, status, lines in (
        (["download", synth_study.study_uid, "--url", url, "-o", out], 1, [lost]),
        (["sync", "--url", url, "-o", out], 1, [lost]),
        (["download", "1.2.3", "--url", dead, "-o", out], 3, [lost, "connection refused"]),
        (["catalog", "pull", "--url", url, "--db", str(tmp_path / "c.duckdb")], 1, [lost]),
    ):
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [DLSTUDY, *command, "--json"],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                check=False,
            )
        assert result.returncode == status, (command, result.stderr)
        said = result.stderr.splitlines()
        assert len(said) == len(lines), (command, result.stderr)
        assert all(part in line for line, part in zip(said, lines, strict=True)), said
    assert_complete(tmp_path / "out", synth_study.instances)


def test_every_command_printing_to_a_full_disk_says_so_in_one_line(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`bench` (its table and its --json object), `synth` and `--version` into a file on a
    full disk (/dev/full) were OSError tracebacks; now one line and exit 1, as for the other
    commands (a bench that failed keeps its status)."""
    url = embedded_server(synth_study.root)
    lost = "dlstudy: error: cannot write the output: No space left on device"
    bench = ["bench", "--url", url, synth_study.study_uid, "--strategy", "study", "-c", "1"]
    bench += ["--http", "1.1", "--repeat", "1"]
    for command, status in (
        ([*bench], 1),
        ([*bench, "--json"], 1),
        (["bench", "--url", url, "1.2.3", "--json"], 4),
        (["synth", str(tmp_path / "synth"), "--instances", "2"], 1),
        (["--version"], 1),
    ):
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [DLSTUDY, *command], stdout=full, stderr=subprocess.PIPE, text=True,
                timeout=120, check=False,
            )  # fmt: skip
        assert result.returncode == status, (command, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        said = [line for line in result.stderr.splitlines() if "error" in line]
        assert said[0] == lost, (command, result.stderr)


def test_a_report_in_a_read_only_folder_is_a_usage_error_before_any_request(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    with mounted(shelf, "--bind", "-o", "ro", str(shelf)):
        result = run_installed(
            *("download", synth_study.study_uid, "--url", url, "-o", str(tmp_path / "out")),
            *("--json", "--report", str(shelf / "landed.csv")),
        )

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"dlstudy: error: cannot write --report '{shelf}/landed.csv': Read-only file system"
    ]
    assert json.loads(result.stdout)["exit_status"] == 2
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_permission_denied_gives_one_line(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    blocked = out / synth_study.study_uid
    blocked.mkdir(parents=True)
    blocked.chmod(0o555)
    # Root ignores permissions: drop the capabilities that let it (util-linux's setpriv).
    prefix = (
        ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")
        if os.geteuid() == 0
        else ()
    )

    result = run_subprocess(
        ["download", synth_study.study_uid, "--url", url, "-o", str(out)], prefix=prefix
    )

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors and "Permission denied" in errors[0]


def test_kill_at_a_random_moment_then_rerun_gives_the_whole_study(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=4, instances=250, size=16 * 1024, seed=13))
    url = embedded_server(source, latency=0.005)  # per request: the run lasts well over 1 s
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "dlstudy",
        "download",
        instances[0].study_uid,
        "--url",
        url,
        "-o",
        str(out),
        "-q",
        "--mode",
        "instance",  # many small instances would go series by series: too quick to kill
        "-c",
        "4",
    ]
    process = subprocess.Popen(args)
    deadline = time.monotonic() + 30
    while not any(out.rglob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.8))
    process.kill()
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL

    rerun = subprocess.run(
        [*args, "--json"], capture_output=True, text=True, timeout=120, check=False
    )

    assert rerun.returncode == 0, rerun.stderr
    assert_complete(out, instances)


def test_verify_finds_a_corrupted_file_and_fetches_it_again(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    status, _, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0
    victim = synth_study.instances[5]
    target = final_path(tmp_path, victim)
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte flipped: only a hash can tell
    target.write_bytes(bytes(data))

    status, summary, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0 and summary["instances"]["downloaded"] == 0  # size matches: trusted

    status, summary, _ = download(url, synth_study.study_uid, tmp_path, "--verify")
    assert status == 0
    assert summary["repaired"] == [victim.sop_uid]
    assert summary["instances"]["downloaded"] == 1
    assert target.read_bytes() == victim.path.read_bytes()


def test_the_manifest_holds_each_files_blake3_and_older_sha256_entries_still_verify(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """New entries carry the BLAKE3 of the bytes on disk; a JSONL manifest written by an earlier
    dlstudy (SHA-256) is imported and is still what --verify checks against: a corrupted file
    it lists is found and fetched again, and the good ones are not."""
    url = embedded_server(synth_study.root)
    status, _, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0
    rows = manifest_rows(tmp_path)
    assert len(rows) == len(synth_study.instances)
    for row in rows:
        data = (tmp_path / row["path"]).read_bytes()
        assert row["digest"] == "blake3:" + blake3.blake3(data).hexdigest()

    older = [
        {
            **row,
            "digest": "sha256:" + hashlib.sha256((tmp_path / row["path"]).read_bytes()).hexdigest(),
        }
        for row in rows
    ]
    replace_with_legacy(tmp_path, older)
    victim = synth_study.instances[3]
    target = final_path(tmp_path, victim)
    data = bytearray(target.read_bytes())
    data[-7] ^= 0x01
    target.write_bytes(bytes(data))

    status, summary, _ = download(url, synth_study.study_uid, tmp_path, "--verify")
    assert status == 0
    assert summary["repaired"] == [victim.sop_uid]
    assert summary["instances"]["downloaded"] == 1
    assert target.read_bytes() == victim.path.read_bytes()


def test_second_run_on_the_same_output_is_refused_or_waits(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    slow = embedded_server(synth_study.root, latency=0.05)
    args = ["download", synth_study.study_uid, "--url", slow, "-o", str(tmp_path), "-q", "-c", "1"]
    first = subprocess.Popen([sys.executable, "-m", "dlstudy", *args])
    try:
        deadline = time.monotonic() + 30
        while not any(tmp_path.rglob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run_subprocess(args)
        assert second.returncode == 5
        assert "is in use by another dlstudy run (pid" in second.stderr
        waiting = run_subprocess([*args, "--wait", "--json"])
        assert waiting.returncode == 0, waiting.stderr
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
        first.wait()


def test_a_run_under_flock_of_its_output_folder_takes_that_lock_as_its_own(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`flock -n OUT dlstudy sync -o OUT`, a usual cron guard: dlstudy found OUT locked, by
    the descriptor it inherited from flock(1), and said it was in use by another run (exit 5
    every night; with --wait it waited on itself for ever). A run not under that flock is
    still refused while it holds."""
    slow = embedded_server(synth_study.root, latency=0.05)
    out = tmp_path / "out"
    out.mkdir()
    args = ["download", synth_study.study_uid, "--url", slow, "-o", str(out), "-q", "-c", "1"]
    first = subprocess.Popen(
        ["flock", "-n", str(out), DLSTUDY, *args, "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(out.rglob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run_installed(*args)
        assert second.returncode == 5, second.stderr
        assert "is in use by another dlstudy run" in second.stderr
        _, said = first.communicate(timeout=60)
        assert first.returncode == 0, said
    finally:
        with contextlib.suppress(ProcessLookupError):  # flock and the dlstudy it runs
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert_same_files(synth_study.instances, out)


def test_a_flock_that_dlstudy_cannot_hold_is_named(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`flock -o OUT dlstudy ...` closes flock(1)'s descriptor before running dlstudy, so the
    lock is another process's: exit 5 stays right, but the line said `in use by another
    dlstudy run` where none runs. It names the other likely holder."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        ["flock", "-o", str(out), DLSTUDY, "download", synth_study.study_uid, "--url", url,
         "-o", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert result.stderr == (
        f"dlstudy: error: output folder '{out}' is in use by another process (a dlstudy run, "
        "or a flock of the folder); use --wait to wait for it\n"
    )


def test_the_lock_holds_when_the_state_folder_is_deleted_under_a_run(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """OUT/.dlstudy deleted while a run fills OUT (a user tidying up, `rm -rf OUT/.dlstudy`
    to "reset" it): a second run into OUT is still refused, exit 5 and one line (its new lock
    file was a new lock, and both runs wrote the same files)."""
    slow = embedded_server(synth_study.root, latency=0.1)
    args = ["download", synth_study.study_uid, "--url", slow, "-o", str(tmp_path), "-q", "-c", "1"]
    first = start_installed(*args)
    try:
        deadline = time.monotonic() + 30
        while not any(tmp_path.rglob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.02)
        shutil.rmtree(tmp_path / ".dlstudy")
        second = run_installed(*args)
        assert second.returncode == 5, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.endswith(
            "is in use by another process (a dlstudy run, or a flock of the folder); use "
            "--wait to wait for it\n"
        )
        said, _ = first.communicate(timeout=60)
        assert first.returncode == 0, said
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("command", ["download", "sync"])
def test_ctrl_c_stops_a_run_waiting_for_the_lock(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, command: str
) -> None:
    """--wait waits as long as the other run holds the folder (hours, maybe): Ctrl-C ends
    the wait at once, exit 130, with the --json object."""
    from ..integration.test_query_sync import lock_held_by_another_process

    url = embedded_server(synth_study.root)
    (tmp_path / ".dlstudy").mkdir()
    target = [synth_study.study_uid] if command == "download" else []
    with lock_held_by_another_process(tmp_path / ".dlstudy"):
        waiter = subprocess.Popen(
            [DLSTUDY, command, *target, "--url", url, "-o", str(tmp_path), "--wait", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        said = _first_line_within(waiter, 30)  # started, and waiting for the lock
        assert "is in use by another dlstudy run (pid" in said, said
        assert said.endswith(": waiting for it to end (--wait)\n"), said
        waiter.send_signal(signal.SIGINT)
        stdout, stderr = waiter.communicate(timeout=30)  # the holder holds it for 60 s
    assert waiter.returncode == 130, stderr
    assert json.loads(stdout)["error"] == "interrupted"
    assert stderr.strip().splitlines()[-1].startswith("dlstudy: error: interrupted;")


def _first_line_within(process: subprocess.Popen[str], seconds: float) -> str:
    """The first line the process writes on stderr, if it comes within `seconds`."""
    assert process.stderr is not None
    ready, _, _ = select.select([process.stderr], [], [], seconds)
    return process.stderr.readline() if ready else ""


def test_compressed_qido_is_decoded_and_a_compressed_instance_never_stored(
    tmp_path: Path,
) -> None:
    """QIDO JSON may come compressed (httpx decodes it); an instance is stored as the server
    sent it, so one that comes gzipped although identity was asked is refused, not decoded
    (decoding could expand it without bound) and not kept compressed under a .dcm name."""
    from ..scripted_servers import SOPS, compressing

    out = tmp_path / "out"
    with compressing() as (url, study, asked):
        status, summary, _ = download(url, study, out, "--http", "1.1", "--mode", "instance")

    assert status == 1
    assert summary["instances"]["total"] == len(SOPS)  # the listing was read
    assert summary["instances"]["downloaded"] == 0
    reasons = {f["reason"] for f in summary["failures"]}
    assert all("gzip-encoded body, though identity was asked for" in r for r in reasons)
    assert set(asked) == {"identity"}
    assert not list(out.rglob("*.dcm")) and not list(out.rglob("*.part"))


@pytest.mark.parametrize(
    ("how", "status", "said"),
    [
        ("huge-count", 0, None),  # a count past any number is no count: the list decides
        ("deep-json", 3, "QIDO answer nests too deep to be DICOM JSON"),
        ("redirect-loop", 1, "too many redirects (a loop?)"),
        ("redirect-to-file", 1, "redirected to a file:// URL, which is not HTTP"),
        ("redirect-without-slashes", 1, "redirected to an invalid URL, 'http:127.0.0.1:"),
    ],
)
def test_odd_answers_get_one_line_and_an_exit_code_never_a_traceback(
    tmp_path: Path, how: str, status: int, said: str | None
) -> None:
    from ..scripted_servers import SOPS, misbehaving

    out = tmp_path / "out"
    with misbehaving(how) as (url, study):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--mode", "instance", "--retries", "1",
        )  # fmt: skip
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    if status == 0:
        assert summary["instances"]["downloaded"] == len(SOPS)
    elif status == 1:
        reasons = {f["reason"] for f in summary["failures"]}
        assert len(summary["failures"]) == len(SOPS) and all(said in r for r in reasons)
        assert not list(out.rglob("*.dcm"))
    else:
        assert said in summary["error"]


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("gzip-bomb", "an answer larger than 32 MiB once decoded from http://127.0.0.1:"),
        ("huge-page", "an answer larger than 32 MiB from http://127.0.0.1:"),
        ("cut-gzip", "a gzip answer cut short from http://127.0.0.1:"),
        ("brotli", "an answer in content-coding 'br', which was not asked for"),
    ],
)
def test_a_qido_answer_too_big_or_badly_coded_is_refused_in_flat_memory(
    tmp_path: Path, how: str, said: str
) -> None:
    from ..scripted_servers import oversized_qido

    out = tmp_path / "out"
    with oversized_qido(how) as (url, study):
        result, peak_mb = run_installed_measured(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--retries", "1", peak_file=tmp_path / "peak",
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert said in line and said in json.loads(result.stdout)["error"]
    assert peak_mb <= 100, peak_mb
    assert not list(out.rglob("*.dcm"))


def test_a_200_mb_header_is_refused_in_flat_memory(tmp_path: Path) -> None:
    from ..scripted_servers import misbehaving

    with misbehaving("huge-header") as (url, study):
        result, peak_mb = run_installed_measured(
            "download", study, "--url", url, "-o", str(tmp_path / "out"), "--json",
            "--http", "1.1", "--retries", "1", peak_file=tmp_path / "peak",
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "a header or answer larger than libcurl accepts" in json.loads(result.stdout)["error"]
    assert peak_mb <= 100, peak_mb


@pytest.mark.parametrize(
    ("cut_first", "form"),
    [
        (2, None),
        (100, None),
        # Each encoding the walk reads, one way or another (they were let through unread:
        # a cut file was committed, exit 0, and --verify kept it).
        (2, "big endian"),
        (100, "big endian"),
        (100, "deflated"),
        (100, "bare"),
    ],
    ids=lambda value: {2: "cut, then whole", 100: "always cut"}.get(value, value),
)
def test_a_body_cut_where_http_cannot_tell_is_never_committed(
    tmp_path: Path, cut_first: int, form: str | None
) -> None:
    """A close-delimited HTTP/1.1 body that stops halfway looks complete to HTTP; the Part 10
    walk finds it short: retried, and never kept under its final name."""
    from ..factories import part10
    from ..scripted_servers import SERIES, cutting

    out = tmp_path / "out"
    with cutting(cut_first, form=form) as (url, study, sops):
        status, summary, _ = installed_download(
            url, study, out, "--http", "1.1", "--mode", "instance", "--retries", "2"
        )
    if cut_first < len(sops):
        assert status == 0, summary["failures"]
        assert summary["instances"]["downloaded"] == len(sops)
        for sop in sops:  # each file whole: the cut answers were retried, not kept
            (path,) = out.rglob(f"{sop}.dcm")
            whole = part10(study, SERIES, sop, payload=b"\1" * 65536, form=form)
            assert path.read_bytes() == whole
    else:
        assert status == 1
        reasons = [f["reason"] for f in summary["failures"]]
        assert len(reasons) == len(sops) and all("the file is incomplete" in r for r in reasons)
        assert not list(out.rglob("*.dcm"))
    assert not list(out.rglob("*.part"))


@pytest.mark.parametrize("cut_first", [2, 100], ids=["cut, then whole", "always cut"])
def test_a_search_answer_cut_where_http_cannot_tell_is_asked_again(
    tmp_path: Path, cut_first: int
) -> None:
    """A close-delimited QIDO answer that stops halfway looks complete to HTTP, and its JSON
    is broken: the run stopped at once, `QIDO answer is malformed JSON (...: cut short?)`,
    exit 3, where a cut HTTP sees is retried. Now asked again, as such a cut is."""
    from ..scripted_servers import cutting_searches

    out = tmp_path / "out"
    with cutting_searches(cut_first) as (url, study, sops):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--retries", "3",
        )  # fmt: skip
    summary = json.loads(result.stdout)
    if cut_first == 2:
        assert result.returncode == 0, result.stderr
        assert summary["instances"]["downloaded"] == len(sops)
        assert summary["retried"] >= 2
    else:
        assert result.returncode == 3, result.stderr
        assert "QIDO answer is malformed JSON" in summary["error"]
        assert "cut short?" in summary["error"] and "attempts" in summary["error"]


def test_a_tls_body_cut_without_close_notify_is_never_committed(
    tmp_path: Path, tls_ca: TlsFiles
) -> None:
    """The same close-delimited body over TLS, the connection closed halfway without
    close_notify: a truncation, retried, and reported; never a file under its final name."""
    from ..scripted_servers import cutting

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(tls_ca.cert), str(tls_ca.key))
    out = tmp_path / "out"
    with cutting(100, tls) as (url, study, sops):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--mode", "instance", "--retries", "1", "--ca-bundle", str(tls_ca.ca_pem),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == 0
    reasons = [f["reason"] for f in summary["failures"]]
    assert len(reasons) == len(sops) and all("connection broken" in r for r in reasons), reasons
    assert not list(out.rglob("*.dcm")) and not list(out.rglob("*.part"))


def one_series_answer(path: bytes, sops: list[str], payload: bytes) -> tuple[bytes, bytes]:
    """A scripted archive of the one series SERIES of STUDY, holding `sops`: the content type
    and body it answers at `path` (its series or instance listing, or an instance)."""
    from ..factories import instance_json, part10, series_json
    from ..scripted_servers import SERIES, STUDY

    where = path.decode().split("?", 1)[0]
    if where.endswith("/series"):
        return b"application/dicom+json", json.dumps([series_json(SERIES)]).encode()
    if where.endswith(("/instances", "/studies")):
        listing = [instance_json(sop) for sop in sops]
        return b"application/dicom+json", json.dumps(listing).encode()
    body = part10(STUDY, SERIES, where.rsplit("/", 1)[1], payload=payload)
    return b"application/dicom", body


@pytest.mark.parametrize("cut_first", [2, 100], ids=["cut, then whole", "always cut"])
def test_an_http2_stream_ended_early_without_a_length_is_never_committed(
    tmp_path: Path, cut_first: int
) -> None:
    """HTTP/2 with no content-length: END_STREAM halfway through the body looks like a whole
    answer to HTTP; the Part 10 walk finds it short."""
    from ..factories import part10
    from ..scripted_h2 import Peer
    from ..scripted_servers import SERIES, SOPS, STUDY

    answers = [0]

    async def handler(peer: Peer, stream_id: int) -> None:
        kind, body = one_series_answer(peer.path(stream_id), SOPS, b"\1" * 65536)
        if kind == b"application/dicom":
            answers[0] += 1
            if answers[0] <= cut_first:
                body = body[: len(body) // 2]
        peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", kind)])
        await peer.send_body(stream_id, body)

    out = tmp_path / "out"
    with h2_server_in_a_thread(handler) as url:
        status, summary, _ = installed_download(
            url + "/dicomweb", STUDY, out, "--http", "2", "--mode", "instance", "--retries", "2"
        )
    if cut_first < len(SOPS):
        assert status == 0, summary["failures"]
        for sop in SOPS:
            (path,) = out.rglob(f"{sop}.dcm")
            assert path.read_bytes() == part10(STUDY, SERIES, sop, payload=b"\1" * 65536)
    else:
        assert status == 1
        reasons = [f["reason"] for f in summary["failures"]]
        assert len(reasons) == len(SOPS) and all("the file is incomplete" in r for r in reasons)
        assert not list(out.rglob("*.dcm"))
    assert not list(out.rglob("*.part"))


def test_http2_streams_past_the_servers_limit_use_up_no_retry(tmp_path: Path) -> None:
    """A server that allows 1 stream at a time, its SETTINGS late (as over a network):
    libcurl opens more streams before they arrive, the server refuses them (REFUSED_STREAM,
    as nginx's http2_max_concurrent_streams), and libcurl gives one up after sending it again
    5 times ("Connection died"). Those requests were never processed: sent again, with
    --retries 0, every instance arrives and no retry is counted."""
    from ..scripted_h2 import Peer
    from ..scripted_servers import SERIES, STUDY

    sops = [f"{SERIES}.{i}" for i in range(1, 61)]

    async def handler(peer: Peer, stream_id: int) -> None:
        kind, body = one_series_answer(peer.path(stream_id), sops, b"\1" * 4096)
        peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", kind)])
        await peer.send_body(stream_id, body)

    out = tmp_path / "out"
    with h2_server_in_a_thread(handler, max_concurrent_streams=1, settings_delay=0.02) as url:
        status, summary, stderr = installed_download(
            url + "/dicomweb", STUDY, out, "--http", "2", "--mode", "instance", "--retries", "0",
            "-c", "16",
        )  # fmt: skip
    assert status == 0, summary["failures"]
    assert summary["retried"] == 0 and "Connection died" not in stderr
    assert len(list(out.rglob("*.dcm"))) == len(sops)


@contextmanager
def h2_server_in_a_thread(handler: Any, **options: Any) -> Iterator[str]:
    """A scripted HTTP/2 server (tests/scripted_h2.py) on its own loop in a thread;
    `options` go to H2Server (max_concurrent_streams, settings_delay)."""
    import asyncio
    import threading

    from ..scripted_h2 import H2Server

    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with H2Server(handler, **options) as server:
            box.update(url=server.url, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the scripted HTTP/2 server did not start"
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def test_verify_finds_a_file_an_older_version_kept_short(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Its manifest line matches the short file (size and digest): a plain rerun trusts it,
    --verify walks its structure, finds it short, and fetches it again."""
    url = embedded_server(synth_study.root)
    status, _, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0
    victim = synth_study.instances[7]
    target = final_path(tmp_path, victim)
    short = target.read_bytes()[:-1000]
    target.write_bytes(short)
    db = sqlite3.connect(index_of(tmp_path))
    with db:
        db.execute(
            "UPDATE entries SET size = ?, digest = ? WHERE sop = ?",
            (len(short), "blake3:" + blake3.blake3(short).hexdigest(), victim.sop_uid),
        )
    db.close()

    status, summary, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0 and summary["instances"]["downloaded"] == 0  # trusted as recorded

    status, summary, _ = download(url, synth_study.study_uid, tmp_path, "--verify")
    assert status == 0
    assert summary["repaired"] == [victim.sop_uid]
    assert target.read_bytes() == victim.path.read_bytes()


def test_a_folder_at_an_instances_final_path_fails_only_that_instance(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    victim = synth_study.instances[4]
    in_the_way = final_path(tmp_path, victim)
    (in_the_way / "notes").mkdir(parents=True)  # a user's folder, where a file should go
    result = run_installed(
        "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--json",
        "--mode", "instance",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"]["downloaded"] == len(synth_study.instances) - 1
    (failure,) = summary["failures"]
    assert failure["sop_instance_uid"] == victim.sop_uid
    assert failure["reason"].endswith("a folder is in the way")
    assert (in_the_way / "notes").is_dir()  # nothing of the user's was touched


def test_start_up_cleanup_removes_only_dlstudys_own_temp_files(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    mine = tmp_path / "notes" / ".report.docx.part"  # a user's file that looks like a temp
    mine.parent.mkdir()
    mine.write_text("draft")
    victim = synth_study.instances[0]
    stale = final_path(tmp_path, victim).with_name(f".{victim.sop_uid}.dcm.4242-7.part")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed run")
    status, _, _ = download(url, synth_study.study_uid, tmp_path)
    assert status == 0
    assert mine.read_text() == "draft"
    assert not stale.exists()


def test_instances_of_a_stalling_archive_fail_concurrently_not_one_by_one(
    tmp_path: Path,
) -> None:
    """Headers, then nothing, for every instance: a timeout says nothing about the retrieval
    form, so the pool must not wait for one instance to settle the form before trying the
    next (20 instances would cost 20 timeouts, one after the other)."""
    from ..scripted_servers import stalling

    with stalling(20) as (url, study, peak):
        status, summary, stderr = installed_download(
            url, study, tmp_path / "out", "--timeout", "2", "--retries", "0", "-c", "8"
        )
    assert status == 1, stderr
    assert summary["instances"]["failed"] == 20
    assert all("stalled" in f["reason"] for f in summary["failures"]), summary["failures"]
    assert peak[0] >= 4, f"at most {peak[0]} instance requests at once"


_TERMINAL_CONTROL = ("\x1b", "\x07", "\x08")


def test_a_servers_words_are_printed_escaped_never_as_terminal_control(tmp_path: Path) -> None:
    from ..scripted_servers import SOPS, misbehaving

    out, log, report = tmp_path / "out", tmp_path / "run.log", tmp_path / "report.csv"
    with misbehaving("hostile-reason") as (url, study):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--http", "1.1",
            "--mode", "instance", "--log-file", str(log), "--report", str(report),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    written = log.read_text(encoding="utf-8")
    escaped = r"HTTP 418 \x1b]0;owned\x07\x1b[31mred[/]\x08"
    # stderr: each failure as it happens and in the closing list; the log and the report
    # (whose reason column held the raw bytes: `cat report.csv` retitled the terminal): once.
    rows = report.read_text(encoding="utf-8")
    for text, times in ((result.stderr, 2), (written, 1), (rows, 1)):
        assert not any(c in text for c in _TERMINAL_CONTROL), repr(text)
        assert text.count(escaped) == times * len(SOPS), text
    assert all(line.startswith("20") for line in written.splitlines())  # one record a line


def test_bench_draws_a_servers_words_as_text_on_a_terminal(tmp_path: Path) -> None:
    from ..scripted_servers import misbehaving

    with misbehaving("hostile-reason") as (url, study):
        code, drawn = run_on_a_terminal(
            "bench", study, "--url", url, "--strategy", "single-part", "-c", "1",
            "--http", "1.1", "--repeat", "1", "--timeout", "5",
        )  # fmt: skip
    assert "Traceback" not in drawn and "MarkupError" not in drawn, drawn
    assert not any(c in drawn for c in _TERMINAL_CONTROL), repr(drawn)
    assert r"\x1b]0;owned\x07" in drawn, drawn
    assert code == 1, drawn
