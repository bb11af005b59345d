"""`--max-rate`: the installed CLI against the embedded server keeps a whole run under the cap,
every file byte for byte, over HTTP/2 and HTTP/1.1, one request per instance or a multipart
response per series, in one process or several. Only lower bounds on time are asserted: a
busy machine makes a run slower, never faster than its cap allows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import assert_same_files, installed_download, run_installed
from ..fixtures.embedded_server import StartServer, SynthStudy

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def timed_download(url: str, study: str, out: Path, *extra: str) -> tuple[int, dict, str, float]:  # type: ignore[type-arg]
    started = time.monotonic()
    code, summary, stderr = installed_download(url, study, out, *extra)
    return code, summary, stderr, time.monotonic() - started


@pytest.mark.parametrize(
    "extra",
    [("--http", "2"), ("--http", "1.1"), ("--mode", "series")],
    ids=["h2c", "http1.1", "series"],
)
def test_a_run_keeps_under_its_max_rate(
    synth_study: SynthStudy, embedded_server: StartServer, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"

    code, summary, stderr, took = timed_download(
        url, synth_study.study_uid, out, "--max-rate", "1M", *extra
    )

    assert code == 0, stderr
    assert_same_files(synth_study.instances, out)
    assert summary["bytes"] > 3 * MIB
    assert took >= summary["bytes"] / MIB  # seconds: not a byte faster than 1 MiB/s
    assert summary["concurrency"] == 2  # one transfer per 512 KiB/s of the cap


def capped_instance_run(
    embedded_server: StartServer, tmp_path: Path, instances: int, seed: int, workers: str
) -> tuple[dict, float]:  # type: ignore[type-arg]
    """A study of 2 series of `instances` 24 KiB instances, one request each, under a 1 MiB/s
    cap with `--workers N`: every file as served, exit 0; the summary and the wall time."""
    spec = SynthSpec(series=2, instances=instances, size=24 * 1024, seed=seed)
    files = generate(tmp_path / "source", spec)
    url = embedded_server(tmp_path / "source")
    out = tmp_path / "out"

    code, summary, stderr, took = timed_download(
        url, files[0].study_uid, out, "--max-rate", "1M", "--workers", workers,
        "--mode", "instance",
    )  # fmt: skip

    assert code == 0, stderr
    assert_same_files(files, out)
    return summary, took


def test_worker_processes_share_the_max_rate(embedded_server: StartServer, tmp_path: Path) -> None:
    """--workers 2: each process keeps to half of the cap, so the run keeps to all of it."""
    summary, took = capped_instance_run(embedded_server, tmp_path, 60, seed=81, workers="2")

    assert summary["processes"] == 2
    assert took >= summary["bytes"] / MIB


def test_workers_that_do_not_start_leave_the_whole_cap_to_the_run(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """--workers 3 under a 1 MiB/s cap, which allows 2 transfers: none is left for a worker,
    so none starts, and the one process ran at a third of the cap (three times as long as the
    cap allows). The one upper bound on time here: a run that mostly sleeps, which a busy
    machine hardly slows."""
    summary, took = capped_instance_run(embedded_server, tmp_path, 80, seed=83, workers="3")

    assert summary["processes"] == 1  # no transfer left over for a worker
    at_the_cap = summary["bytes"] / MIB  # seconds; at a third of it, three times as long
    assert at_the_cap <= took < 1.5 * at_the_cap + 1, (took, at_the_cap)


def test_many_transfers_asked_for_under_a_low_cap_all_arrive(
    synth_study: SynthStudy, embedded_server: StartServer, tmp_path: Path
) -> None:
    """`-c 64` under 256 KiB/s: the cap runs one transfer at a time. With 60 at once, the
    server sent every small instance ahead into the client, went idle, closed the connection
    after its 5 s keep-alive, and the transfers still waiting on it failed (`Send failure:
    Broken pipe`: 39 of 40)."""
    url = embedded_server(synth_study.root)
    two_series = sorted({i.series_uid for i in synth_study.instances})[:2]
    wanted = [i for i in synth_study.instances if i.series_uid in two_series]
    out = tmp_path / "out"
    series = [arg for uid in two_series for arg in ("--series", uid)]

    code, summary, stderr = installed_download(
        url, synth_study.study_uid, out, "--max-rate", "256K", "-c", "64", "--retries", "0",
        "--mode", "instance", *series,
    )  # fmt: skip

    assert code == 0, stderr
    assert summary["instances"]["downloaded"] == len(wanted) == 40
    assert summary["concurrency"] == 1
    assert_same_files(wanted, out)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("fast", "must be bytes per second, such as 50M"),
        ("-5M", "must be bytes per second, such as 50M"),
        ("1K", "--max-rate 1024 bytes/s is below what --timeout 30 asks a transfer to bring"),
        # libcurl's OverflowError was a traceback
        ("10000000000G", "--max-rate must be at most 9223372036854775807 bytes/s (libcurl's"),
    ],
)
def test_a_max_rate_it_cannot_keep_is_a_usage_error(value: str, said: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_installed(
        "download", "1.2.3", "--url", "http://127.0.0.1:9/dicomweb", "-o", str(out),
        "--max-rate", value,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
