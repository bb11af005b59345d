"""`dlstudy bench` through the real CLI: the embedded server (standard and Orthanc profiles, TLS),
a static tree behind nginx, and a real Orthanc; plus the units of the report and the chart."""

from __future__ import annotations

import contextvars
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from dlstudy.bench.chart import nice_ticks, png_converter, render_svg, write_chart
from dlstudy.bench.report import BenchReport, CellResult, percentile
from dlstudy.http.curl import CurlTransport
from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import DLSTUDY, STOP_SIGNALS, ctrl_c_as_at_a_terminal, run_cli, run_installed
from ..fixtures.embedded_server import SeenRequests, StartServer, SynthStudy, TlsFiles
from ..fixtures.orthanc import OrthancServer
from ..tools import missing_tool

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("single-part", "multipart-instance", "series", "study")
SVG = "{http://www.w3.org/2000/svg}"


def bench_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("bench", *args, "--json")
    data: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, data


def rows_by_cell(data: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {(r["strategy"], r["concurrency"], r["http"]): r for r in data["rows"]}


def qido_order(url: str, study_uid: str) -> list[str]:
    """SOP Instance UIDs in the order QIDO lists them (series, then each series' instances)."""
    with httpx.Client(base_url=url, timeout=10) as client:
        series = client.get(f"/studies/{study_uid}/series").json()
        sops = []
        for item in series:
            series_uid = item["0020000E"]["Value"][0]
            instances = client.get(f"/studies/{study_uid}/series/{series_uid}/instances").json()
            sops += [i["00080018"]["Value"][0] for i in instances]
    return sops


# -- the embedded server ------------------------------------------------------------------------


@pytest.mark.integration
def test_matrix_on_the_embedded_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    synth_study: SynthStudy,
    embedded_server: StartServer,
) -> None:
    url = embedded_server(synth_study.root)
    monkeypatch.chdir(tmp_path)
    chart = tmp_path / "bench.svg"
    code, data = bench_json(
        synth_study.study_uid,
        "--url",
        url,
        "-c",
        "1",
        "--concurrency",
        "4",
        "--repeat",
        "1",
        "--limit",
        "10",
        "--chart",
        str(chart),
    )
    assert code == 0, data
    first_ten = qido_order(url, synth_study.study_uid)[:10]
    expected_bytes = sum(synth_study.by_sop(sop).path.stat().st_size for sop in first_ten)

    rows = rows_by_cell(data)
    expected_cells = {
        (strategy, level, http)
        for strategy in STRATEGIES
        for level in ((1,) if strategy == "study" else (1, 4))
        for http in ("1.1", "2")
    }
    assert set(rows) == expected_cells
    for (_, level, http), row in rows.items():
        assert row["status"] == "ok", row
        totals = {"runs": 1, "bytes": expected_bytes, "instances": 10, "failures": 0}
        assert row["totals"] == {**totals, "requests": row["totals"]["requests"]}, row
        assert row["http_version"] == ("HTTP/2" if http == "2" else "HTTP/1.1")
        assert 1 <= row["max_in_flight"] <= level
        assert row["mb_per_s"]["median"] > 0 and row["instances_per_s"]["median"] > 0
        assert row["ttfb_ms"]["p50"] is not None and row["qido_ms"]["p50"] is not None
        assert len(row["runs"]) == 1
    assert rows[("single-part", 1, "1.1")]["accept"] == "application/dicom; transfer-syntax=*"
    assert data["instances_in_study"] == len(synth_study.instances)
    assert data["instances_measured"] == 10 and data["qido_ms"]["requests"] > 0
    assert data["exit_status"] == 0 and data["error"] is None and data["chart"] == str(chart)

    # Nothing but the chart was written: the bytes were counted and dropped.
    assert [p.name for p in tmp_path.rglob("*")] == ["bench.svg"]
    svg = ET.parse(chart).getroot()
    assert svg.tag == f"{SVG}svg"
    drawn = {(g.get("data-strategy"), g.get("data-http")) for g in svg.iter(f"{SVG}g")}
    for strategy in STRATEGIES:
        assert (strategy, "1.1") in drawn and (strategy, "2") in drawn
    texts = "".join(t.text or "" for t in svg.iter(f"{SVG}text"))
    assert "series · HTTP/2" in texts and "MB/s" in texts and url in texts


@pytest.mark.integration
def test_table_on_stdout_and_progress_on_stderr(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    result = run_cli(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "study", "--repeat", "2"
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"dlstudy bench: {url}, study {synth_study.study_uid}, 60 instances")
    assert lines[2].split()[:3] == ["strategy", "http", "conc"]
    study_rows = [line.split() for line in lines if line.startswith("study ")]
    assert [(r[1], r[2], r[-1]) for r in study_rows] == [("1.1", "1", "ok"), ("2", "1", "ok")]
    assert "QIDO:" in result.stdout
    assert "dlstudy: bench 4/4: study c=1 HTTP/2 run 2" in result.stderr


@pytest.mark.integration
def test_keep_writes_every_instance_byte_identical(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    keep = tmp_path / "kept"
    for strategy in ("series", "single-part", "multipart-instance", "study"):
        code, data = bench_json(
            synth_study.study_uid, "--url", url, "--strategy", strategy, "-c", "3",
            "--http", "2", "--repeat", "1", "--limit", "25", "--keep", str(keep),
        )  # fmt: skip
        assert code == 0 and data["keep"] == str(keep), data
        wanted = qido_order(url, synth_study.study_uid)[:25]
        files = sorted(p.name for p in keep.iterdir())
        assert files == sorted(f"{sop}.dcm" for sop in wanted), strategy
        for sop in wanted:
            assert (keep / f"{sop}.dcm").read_bytes() == synth_study.by_sop(sop).path.read_bytes()
        shutil.rmtree(keep)


@pytest.mark.integration
def test_keep_removes_the_temp_files_a_killed_bench_left(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A bench killed with SIGKILL leaves its temp files in --keep; the next bench removes
    them (they stayed for good). Those of a running process, and a user's `.notes.part`,
    stay: another bench may be writing in the same folder."""
    url = embedded_server(synth_study.root)
    keep = tmp_path / "kept"
    keep.mkdir()
    exited = subprocess.Popen(["true"])  # a pid that is gone
    exited.wait()
    stale = keep / f".1.2.3.dcm.{exited.pid}-7.part"
    alive = keep / f".1.2.4.dcm.{os.getpid()}-1.part"
    mine = keep / ".notes.part"
    for path in (stale, alive, mine):
        path.write_bytes(b"x")
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "study", "--http", "1.1",
        "--repeat", "1", "--keep", str(keep),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and alive.exists() and mine.exists()
    assert len(list(keep.glob("*.dcm"))) == len(synth_study.instances)


@pytest.mark.integration
def test_orthanc_profile_single_part_is_unsupported(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, profile="orthanc")
    code, data = bench_json(
        synth_study.study_uid, "--url", url, "-c", "1", "-c", "2", "--repeat", "2", "--limit", "6"
    )
    assert code == 0, data
    for (strategy, _, _), row in rows_by_cell(data).items():
        if strategy == "single-part":
            assert row["status"] == "unsupported (HTTP 400)" and row["mb_per_s"]["median"] is None
        else:
            assert row["status"] == "ok" and row["totals"]["instances"] == 2 * 6, row
    # Found by the first cell of each HTTP version; the other cells are not run.
    single = rows_by_cell(data)[("single-part", 2, "1.1")]["runs"]
    assert [run["ran"] for run in single] == [False, False]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("server", "strategies", "said"),
    [
        ({"profile": "orthanc"}, ["single-part"], "single-part: HTTP 400"),
        (
            {"fault_rate": 1.0, "fault_status": 404},
            list(STRATEGIES),
            "single-part, multipart-instance, series, study: HTTP 404",
        ),
    ],
)
def test_a_matrix_with_no_cell_the_server_takes_measured_nothing(
    synth_study: SynthStudy,
    embedded_server: StartServer,
    server: dict[str, Any],
    strategies: list[str],
    said: str,
) -> None:
    """Every cell unsupported: the table of `unsupported (HTTP 400)` rows ended with exit 0
    and `error: null`, a bench that measured nothing passing for one that ran. Exit 3, as for
    a server speaking none of the HTTP versions asked for, the rows still printed."""
    url = embedded_server(synth_study.root, **server)
    line = f"nothing was measured: the server takes none of the strategies asked for ({said})"
    args = [synth_study.study_uid, "--url", url, "-c", "1", "--repeat", "1", "--limit", "3"]
    args += [f"--strategy={strategy}" for strategy in strategies]
    result = run_installed("bench", *args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == f"dlstudy: error: {line}"
    assert result.stdout.count(" unsupported (") == 2 * len(strategies)
    result = run_installed("bench", *args, "--json")
    assert result.returncode == 3, result.stderr
    data = json.loads(result.stdout)
    assert (data["error"], data["exit_status"]) == (line, 3)
    assert len(data["rows"]) == 2 * len(strategies)


@pytest.mark.integration
def test_tls_alpn_offers_both_versions(
    synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    code, data = bench_json(
        synth_study.study_uid, "--url", url, "--ca-bundle", str(tls_ca.ca_pem),
        "--strategy", "single-part", "-c", "2", "--repeat", "1", "--limit", "4",
    )  # fmt: skip
    assert code == 0, data
    versions = {row["http"]: row["http_version"] for row in data["rows"]}
    assert versions == {"1.1": "HTTP/1.1", "2": "HTTP/2"}


class _InFlight:
    """Requests between being sent and their response being closed, at the httpx layer."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.total = 0


_counting: contextvars.ContextVar[bool] = contextvars.ContextVar("counting", default=False)


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> _InFlight:
    """Count every request dlstudy sends, below dlstudy: it cannot hide anything from this.

    Every way into a transport a request can take is wrapped (libcurl's handle_async_request
    and get, and httpcore's, httpx's fallback); a transport handing a request to another counts
    it once."""
    counter = _InFlight()

    def wrap(cls: Any, name: str) -> None:
        original = getattr(cls, name)

        async def counting(self: Any, *args: Any, **kwargs: Any) -> httpx.Response:
            if _counting.get():
                return cast(httpx.Response, await original(self, *args, **kwargs))
            token = _counting.set(True)
            counter.now += 1
            counter.total += 1
            counter.peak = max(counter.peak, counter.now)
            try:
                response = cast(httpx.Response, await original(self, *args, **kwargs))
            except BaseException:
                counter.now -= 1
                raise
            finally:
                _counting.reset(token)
            response.stream = _Released(response.stream, counter)
            return response

        monkeypatch.setattr(cls, name, counting)

    for cls, name in (
        (CurlTransport, "handle_async_request"),
        (CurlTransport, "get"),
        (httpx.AsyncHTTPTransport, "handle_async_request"),
    ):
        wrap(cls, name)
    return counter


class _Released(httpx.AsyncByteStream):
    def __init__(self, stream: Any, counter: _InFlight) -> None:
        self.stream = stream
        self.counter = counter
        self.open = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        if self.open:
            self.open = False
            self.counter.now -= 1
        await self.stream.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("level", [1, 3])
def test_concurrency_is_never_exceeded(
    level: int,
    in_flight: _InFlight,
    synth_study: SynthStudy,
    embedded_server: StartServer,
) -> None:
    # With 30 ms per request, workers overlap for sure: the peak is reached, and must hold.
    url = embedded_server(synth_study.root, latency=0.03)
    code, data = bench_json(
        synth_study.study_uid, "--url", url, "-c", str(level), "--repeat", "1", "--limit", "8",
        "--strategy", "single-part", "--strategy", "multipart-instance", "--strategy", "series",
    )  # fmt: skip
    assert code == 0, data
    assert in_flight.total > 8 and in_flight.now == 0
    assert in_flight.peak == level
    assert {row["max_in_flight"] for row in data["rows"]} <= set(range(1, level + 1))


@pytest.mark.integration
def test_exit_codes(tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer) -> None:
    url = embedded_server(synth_study.root)
    uid = synth_study.study_uid
    code, data = bench_json("1.2.3.999", "--url", url, "--repeat", "1")
    assert code == 4 and "not found" in data["error"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/dicomweb"
    code, data = bench_json(uid, "--url", closed, "--http", "1.1")
    assert code == 3 and "refused" in data["error"]
    guarded = embedded_server(synth_study.root, token="sesame")
    code, data = bench_json(uid, "--url", guarded, "--token", "wrong")
    assert code == 3 and "401" in data["error"] and "wrong" not in json.dumps(data)
    for bad in (
        ["--strategy", "frames"],
        ["--http", "3"],
        ["-c", "0"],
        ["--repeat", "0"],
        ["--limit", "0"],
        ["--chart", str(tmp_path / "bench.gif")],
    ):
        result = run_cli("bench", uid, "--url", url, *bad)
        assert result.exit_code == 2, (bad, result.stderr)
        assert result.stderr.startswith("dlstudy: error: "), bad
    assert run_cli("bench", "1.2.x", "--url", url).exit_code == 2
    assert run_cli("bench", uid).exit_code == 2  # no --url
    # With --json, an error found before anything ran still prints the one object.
    for early in (
        ["--url", url, "--http", "3"],
        ["--url", url, "--chart", str(tmp_path / "absent" / "bench.svg")],
        [],
    ):
        code, data = bench_json(uid, *early)
        assert code == 2 and data["exit_status"] == 2 and data["rows"] == [], early
        assert data["error"] and data["error"] in run_cli("bench", uid, *early).stderr, early


@pytest.mark.integration
def test_an_absurd_repeat_is_a_usage_error_not_a_memory_hog(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`--repeat 10**20` (a typo) is refused at once; it built the list of every run first and
    filled the memory (24 GB, then the OOM killer). The child's address space is capped so
    that, before the fix, the test fails with a MemoryError instead of starving the machine."""
    url = embedded_server(synth_study.root)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    for repeat in ("100000000000000000000", "1001"):
        result = subprocess.run(
            [DLSTUDY, "bench", synth_study.study_uid, "--url", url, "--http", "1.1",
             "--strategy", "study", "--repeat", repeat],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            preexec_fn=cap_memory,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-2000:]
        said = f"dlstudy: error: --repeat must be between 1 and 1000, not {repeat}\n"
        assert result.stderr == said
        assert result.stdout == ""


def test_a_failed_request_is_reported_naming_it_once(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, fault_rate=0.2, fault_status=404, seed=3)
    args = ["--repeat", "1", "--strategy", "single-part", "-c", "4", "--http", "1.1"]
    code, data = bench_json(synth_study.study_uid, "--url", url, *args)
    assert code == 1  # requests failed in a cell the server supports
    (row,) = data["rows"]
    count, _, first = row["status"].partition(" failed: ")
    failed, of = count.split(" of ")
    assert 0 < int(failed) < int(of) == len(synth_study.instances), row["status"]
    what, _, reason = first.partition(": ")
    assert what.startswith("instance ") and reason == "not found on the server (HTTP 404)"
    # A partial run is no sample of the cell's speed; its own goodput stays in `runs`.
    assert row["mb_per_s"]["median"] is None and row["repeats"] == 0
    assert row["runs"][0]["mb_per_s"] > 0 and row["runs"][0]["complete"] is False

    # A cell whose every request failed measured no speed: no "0 MB/s" beside the others.
    broken = embedded_server(synth_study.root, fault_rate=1.0, fault_status=503)
    code, data = bench_json(synth_study.study_uid, "--url", broken, *args)
    assert code == 1
    (row,) = data["rows"]
    count = len(synth_study.instances)
    assert row["status"].startswith(f"{count} of {count} failed: instance "), row["status"]
    assert row["mb_per_s"]["median"] is None and row["instances_per_s"]["median"] is None


@pytest.mark.integration
def test_a_run_that_measured_no_speed_says_none_in_json(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Every request fails (503): the row has no median, and each run's own `mb_per_s` and
    `instances_per_s` are null too (they said 0.0, a speed to average with the others)."""
    url = embedded_server(synth_study.root, fault_rate=1.0, fault_status=503)
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--http", "1.1", "--strategy",
        "single-part", "-c", "1", "--repeat", "2", "--limit", "3", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["mb_per_s"]["median"] is None and row["repeats"] == 0
    assert [(run["ran"], run["failures"]) for run in row["runs"]] == [(True, 3), (True, 3)]
    assert all(run["mb_per_s"] is None and run["instances_per_s"] is None for run in row["runs"])


@pytest.mark.integration
@pytest.mark.parametrize("form", ["table", "json"])
def test_a_chart_that_cannot_be_written_leaves_no_half_image(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, form: str
) -> None:
    """The kernel refuses files over 2,000 bytes (EFBIG, as a full disk would): the results
    are printed, then one line saying the chart could not be written, exit 1; no file under
    the chart's name (half an SVG was left there, and the line came twice)."""
    url = embedded_server(synth_study.root)
    chart = tmp_path / "bench.svg"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    result = subprocess.run(
        [DLSTUDY, "bench", synth_study.study_uid, "--url", url, "--strategy", "study",
         "--http", "1.1", "--repeat", "1", "--chart", str(chart)]
        + (["--json"] if form == "json" else []),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("dlstudy: error:")]
    assert errors == [f"dlstudy: error: cannot write --chart {str(chart)!r}: File too large"]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    if form == "json":
        data = json.loads(result.stdout)
        assert data["rows"] and data["chart"] is None and data["exit_status"] == 1
    else:
        assert re.search(r"^study +1\.1 +1 +1 ", result.stdout, re.M), result.stdout


@pytest.mark.integration
def test_a_chart_path_that_is_a_folder_is_refused_before_measuring(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    """It was found only when the chart was written, after the whole matrix had run."""
    url = embedded_server(synth_study.root)
    chart = tmp_path / "bench.svg"
    chart.mkdir()
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "study", "--repeat", "1",
        "--chart", str(chart),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"dlstudy: error: --chart: {str(chart)!r} is a folder\n"
    assert result.stdout == "" and seen_requests.instance_requests == 0


@pytest.mark.integration
def test_a_missing_first_instance_is_a_failure_not_an_unsupported_strategy(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """The first instance asked is not on the server (404; seeded, one request at a time), the
    next ones are: a failure of that instance, exit 1. It made the whole strategy
    `unsupported (HTTP 404)`, a finding, exit 0: a server losing instances measured clean."""
    url = embedded_server(synth_study.root, fault_rate=0.5, fault_status=404, seed=1)
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "single-part", "-c", "1",
        "--http", "1.1", "--repeat", "1", "--limit", "10", "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    (row,) = json.loads(result.stdout)["rows"]
    assert re.fullmatch(r"\d+ of 10 failed: instance [0-9.]+: not found on the server \(HTTP 404\)",
                        row["status"]), row["status"]  # fmt: skip
    assert 0 < row["totals"]["instances"] < 10


@pytest.mark.integration
def test_the_table_says_how_many_runs_each_median_is_over(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A run whose every request failed measured no speed, so the median is over fewer runs
    than --repeat: the table's `runs` column says how many (the heading said "6 runs per cell"
    and the min-max of one run read as a steady server). One request per run, half of them
    answered 500 (seeded, one at a time: the same runs fail every time)."""
    url = embedded_server(synth_study.root, fault_rate=0.5, fault_status=500, seed=1)
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "single-part", "-c", "1",
        "--http", "1.1", "--repeat", "6", "--limit", "1",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    progress = [line for line in result.stderr.splitlines() if " run " in line]
    measured = [line for line in progress if ", 1 instance in " in line]
    assert len(progress) == 6 and 0 < len(measured) < 6, progress
    lines = result.stdout.splitlines()
    assert lines[2].split()[:4] == ["strategy", "http", "conc", "runs"]
    (row,) = [line.split() for line in lines if line.startswith("single-part ")]
    assert row[:4] == ["single-part", "1.1", "1", str(len(measured))]
    status = " ".join(row[11:])  # how many of how many failed: the rate is over the rest
    assert status.startswith(f"{6 - len(measured)} of 6 failed: instance "), status


@pytest.mark.integration
def test_a_slow_rate_below_one_mb_per_s_is_no_zero(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """Small instances behind a slow server move some KB/s: the table and the progress lines
    read `0.0 MB/s, min-max 0.0-0.0`, as if nothing had moved. Below 1, two significant
    digits."""
    instances = generate(tmp_path, SynthSpec(series=1, instances=3, size=300))
    url = embedded_server(tmp_path, latency=0.1)
    result = run_installed(
        "bench", instances[0].study_uid, "--url", url, "--strategy", "single-part", "-c", "1",
        "--http", "1.1", "--repeat", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    small = r"0\.0*[1-9]\d"  # 0.012, 0.0041
    progress = [line for line in result.stderr.splitlines() if " run " in line]
    assert len(progress) == 2 and all(re.search(f": {small} MB/s, ", x) for x in progress)
    (row,) = [line.split() for line in result.stdout.splitlines() if line.startswith("single")]
    assert re.fullmatch(small, row[4]) and re.fullmatch(f"{small}-{small}", row[5]), row


@pytest.mark.integration
def test_the_chart_says_what_failed_and_how_many_runs_it_shows(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """The chart is read without the table: its legend says how many requests of a line
    failed, its subtitle how many runs the points are over (it said "6 repeats" and drew the
    failing line as a clean one)."""
    url = embedded_server(synth_study.root, fault_rate=0.5, fault_status=500, seed=1)
    chart = tmp_path / "bench.svg"
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "single-part", "-c", "1",
        "--http", "1.1", "--repeat", "6", "--limit", "1", "--chart", str(chart),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    measured = [line for line in result.stderr.splitlines() if ", 1 instance in " in line]
    assert 0 < len(measured) < 6
    svg = ET.parse(chart).getroot()
    subtitle = svg.findtext(f"{SVG}desc") or ""
    assert f" · {len(measured)} of 6 runs per cell · " in subtitle, subtitle
    legend = next(g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend")
    (label,) = [t.text for t in legend.iter(f"{SVG}text")]
    assert label == f"single-part · HTTP/1.1: {6 - len(measured)} of 6 failed", label


@pytest.mark.integration
@pytest.mark.parametrize("concurrency", [1, 4])
def test_transfers_open_their_own_connections_in_every_cell(
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    concurrency: int,
) -> None:
    """The timed transfers reused the listing's connections (one per series searched at
    once), so a cell at concurrency 1 paid no connection set-up in its time and one at 16
    paid 14: the cost of connecting weighed on some cells only. Every transfer now goes over
    a connection no QIDO search used, and a cell opens `concurrency` of them."""
    url = embedded_server(synth_study.root)
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--strategy", "single-part",
        "-c", str(concurrency), "--http", "1.1", "--repeat", "1", "--limit", "12", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    searches = {
        peer for path, peer in seen_requests.peers if path.endswith(("/series", "/instances"))
    }
    transfers = {peer for path, peer in seen_requests.peers if "/instances/" in path}
    assert searches and transfers and not searches & transfers, (searches, transfers)
    assert len(transfers) == concurrency


@pytest.mark.integration
def test_a_run_with_failures_is_not_in_the_speed_median(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A run some of whose requests failed fetched less than the cell asked: a server shedding
    load with fast 429s looked as fast as one serving everything, and that run's speed went into
    the row's median beside the complete runs. Now the median, `repeats`, the table's `runs`
    and the progress line count only runs whose every request succeeded. Two instances a run,
    half the requests answered 429 (seeded, one at a time): some runs complete, some partial."""
    args = ["--strategy", "single-part", "-c", "1", "--http", "1.1", "--repeat", "8"]
    args += ["--limit", "2"]
    url = embedded_server(synth_study.root, fault_rate=0.5, fault_status=429, seed=2)
    result = run_installed("bench", synth_study.study_uid, "--url", url, *args, "--json")
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    runs = row["runs"]
    complete = [run for run in runs if run["failures"] == 0]
    partial = [run for run in runs if run["failures"] and run["instances"]]
    assert complete and partial, runs  # the seed gives both kinds
    assert row["repeats"] == len(complete)
    speeds = [run["mb_per_s"] for run in complete]  # each rounded as the row's are
    assert (row["mb_per_s"]["min"], row["mb_per_s"]["max"]) == (min(speeds), max(speeds))
    assert row["totals"]["instances"] == sum(run["instances"] for run in runs)  # all counted
    assert [run["complete"] for run in runs] == [run["failures"] == 0 for run in runs]
    assert "of 16 failed: instance " in row["status"] and "HTTP 429" in row["status"]

    # The table and the progress lines say the same, from a server failing the same requests.
    url = embedded_server(synth_study.root, fault_rate=0.5, fault_status=429, seed=2)
    result = run_installed("bench", synth_study.study_uid, "--url", url, *args)
    assert result.returncode == 1, result.stderr
    (cells,) = [line.split() for line in result.stdout.splitlines() if line.startswith("single")]
    assert cells[3] == str(len(complete)), cells
    progress = [line for line in result.stderr.splitlines() if " run " in line]
    left_out = [line for line in progress if line.endswith(" failed (not in the median)")]
    assert len(left_out) == len(partial), progress
    assert not any(" 0.0 MB/s" in line for line in progress), progress


@pytest.mark.integration
@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS)
@pytest.mark.parametrize("form", ["json", "table"])
def test_a_stopped_bench_prints_what_it_measured(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    signum: int,
    status: int,
    said: str,
    form: str,
) -> None:
    """Ctrl-C, SIGTERM or SIGHUP in the middle of the matrix: the runs that finished are
    printed (the table, or the JSON object with `error` and `exit_status`) and charted, as
    download prints its summary, and the exit status says which signal it was."""
    url = embedded_server(synth_study.root, latency=0.02)
    chart = tmp_path / "bench.svg"
    limit = 5  # instance requests of one run
    args = ["--strategy", "single-part", "-c", "1", "--http", "1.1", "--repeat", "100"]
    args += ["--limit", str(limit), "--chart", str(chart)] + (["--json"] if form == "json" else [])
    bench = subprocess.Popen(
        [DLSTUDY, "bench", synth_study.study_uid, "--url", url, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while seen_requests.instance_requests < 2 * limit + 1:  # two runs done, a third begun
            assert bench.poll() is None and time.monotonic() < deadline, bench.communicate()
            time.sleep(0.02)
        bench.send_signal(signum)
        stdout, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    assert bench.returncode == status, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"dlstudy: error: {said}"
    assert chart.read_text().startswith("<svg")
    finished = seen_requests.instance_requests // limit
    if form == "json":
        data = json.loads(stdout)
        assert (data["error"], data["exit_status"], data["chart"]) == (said, status, str(chart))
        (row,) = data["rows"]
        assert 2 <= len(row["runs"]) <= finished < 100
        assert all(run["instances"] == limit for run in row["runs"])
    else:
        assert stdout.startswith(f"dlstudy bench: {url}, study {synth_study.study_uid}")
        assert re.search(r"^single-part +1\.1 +1 +[0-9.]+ ", stdout, re.M), stdout
        assert f"dlstudy: chart written to {chart}" in stderr


@pytest.mark.integration
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cut_bodies_count_no_bytes(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, strategy: str
) -> None:
    """Throughput is the payload of instances that arrived whole, for every strategy: the bytes
    and instances of a run are exactly the files --keep committed (cut ones are discarded).
    Instances of ~64 KiB: half of them cut at 30 kB, or every series and study response cut
    after two whole parts and a piece of the third."""
    if strategy in ("series", "study"):
        url = embedded_server(synth_study.root, drop_after_bytes=150_000)
    else:
        url = embedded_server(synth_study.root, drop_after_bytes=30_000, drop_rate=0.5, seed=5)
    keep = tmp_path / "keep"
    code, data = bench_json(
        synth_study.study_uid, "--url", url, "--strategy", strategy, "-c", "4", "--http", "1.1",
        "--repeat", "1", "--keep", str(keep),
    )  # fmt: skip
    assert code == 1, data
    (row,) = data["rows"]
    (run,) = row["runs"]
    kept = list(keep.glob("*.dcm"))
    assert run["failures"] > 0
    assert run["bytes"] == sum(path.stat().st_size for path in kept), run
    assert run["instances"] == len(kept)
    assert 0 < len(kept) < len(synth_study.instances)  # some whole, some cut


@pytest.mark.integration
@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "kept"])
@pytest.mark.parametrize("cut_first", [0, 2, 100], ids=["whole", "two cut", "all cut"])
def test_a_body_cut_where_http_cannot_tell_counts_nothing(
    tmp_path: Path, keep: bool, cut_first: int
) -> None:
    """Close-delimited HTTP/1.1 bodies (no Content-Length), the first `cut_first` closed
    halfway: HTTP sees whole bodies, the DICOM structure does not. A cut one is a failure and
    no throughput (half bodies counted as instances, `ok`, exit 0); whole ones count."""
    from ..factories import part10
    from ..scripted_servers import SERIES, cutting

    kept = tmp_path / "kept"
    with cutting(cut_first) as (url, study, sops):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "single-part",
            "-c", "1", "--repeat", "1", "--json", *(["--keep", str(kept)] if keep else []),
        )  # fmt: skip
    whole = {sop: part10(study, SERIES, sop, payload=b"\1" * 65536) for sop in sops}
    arrived = sops[cut_first:]
    assert result.returncode == (1 if cut_first else 0), result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    totals = row["totals"]
    assert totals["instances"] == len(arrived) and totals["failures"] == len(sops) - len(arrived)
    assert totals["bytes"] == sum(len(whole[sop]) for sop in arrived)
    if cut_first:
        assert "the file is incomplete" in row["status"], row["status"]
    if keep:
        assert sorted(p.name for p in kept.iterdir()) == sorted(f"{sop}.dcm" for sop in arrived)
        assert all((kept / f"{sop}.dcm").read_bytes() == whole[sop] for sop in arrived)


@pytest.mark.integration
@pytest.mark.parametrize("keep", [False, True], ids=["dropped", "kept"])
@pytest.mark.parametrize(
    ("cut_to", "reason"),
    [(100, "response too short to be DICOM"), (250, "the file is incomplete")],
    ids=["before DICM", "before the UIDs"],
)
def test_a_body_cut_in_its_header_where_http_cannot_tell_counts_nothing(
    tmp_path: Path, keep: bool, cut_to: int, reason: str
) -> None:
    """As above, the first two bodies closed after `cut_to` bytes: inside the DICOM header,
    where the fast header parser gives up. Judged as download judges them (pydicom, then the
    walk), they are failures; they counted as whole instances (`ok`, exit 0)."""
    from ..factories import part10
    from ..scripted_servers import SERIES, cutting

    kept = tmp_path / "kept"
    with cutting(2, cut_to=cut_to) as (url, study, sops):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "single-part",
            "-c", "1", "--repeat", "1", "--json", *(["--keep", str(kept)] if keep else []),
        )  # fmt: skip
    whole = {sop: part10(study, SERIES, sop, payload=b"\1" * 65536) for sop in sops}
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"].startswith(f"2 of 3 failed: instance {sops[0]}: {reason}"), row
    totals = row["totals"]
    assert (totals["instances"], totals["failures"]) == (1, 2)
    assert totals["bytes"] == len(whole[sops[2]])
    if keep:
        assert [p.name for p in kept.iterdir()] == [f"{sops[2]}.dcm"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("framed", "reason"),
    [
        ("cut", "instance {}: the server's file is incomplete ("),
        ("html", "instance {}: response is not DICOM (looks like an HTML"),
        ("multipart", "instance {}, part 1: the server's file is incomplete ("),
    ],
)
def test_a_body_http_calls_whole_but_not_a_whole_instance_counts_nothing(
    framed: str, reason: str
) -> None:
    """Bodies with a Content-Length they match: the first two are the server's file cut in
    half (truncated at the source), an HTML error page under a 200, or the cut file as a
    multipart part. Download fails them; bench counted them as instances (`ok`, exit 0): they
    are failures and no throughput."""
    from ..factories import part10
    from ..scripted_servers import SERIES, cutting

    with cutting(2, framed=framed) as (url, study, sops):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "single-part",
            "-c", "1", "--repeat", "1", "--json",
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"].startswith(f"2 of 3 failed: {reason.format(sops[0])}"), row
    if framed != "html":  # the bytes came as announced: the server's file is cut, no transfer
        assert row["status"].endswith(" bytes it announced"), row
    totals = row["totals"]
    assert (totals["instances"], totals["failures"]) == (1, 2)
    assert totals["bytes"] == len(part10(study, SERIES, sops[2], payload=b"\1" * 65536))


@pytest.mark.integration
def test_a_cut_single_part_answer_to_a_series_request_names_the_series() -> None:
    """A series asked for, one close-delimited single-part body cut in its header: the line
    names the series asked for (it said `instance None`)."""
    from ..scripted_servers import SERIES, cutting

    with cutting(1, cut_to=250) as (url, study, _):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "series",
            "-c", "1", "--repeat", "1", "--json",
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"].startswith(f"1 of 1 failed: series {SERIES}: the file is incomplete")


@pytest.mark.integration
def test_an_instance_compressed_though_identity_was_asked_is_a_failure() -> None:
    """A server gzips every instance although `Accept-Encoding: identity` was asked: what
    arrives is not the instance (download refuses it, not decoding it), so each request
    fails, as in download, and no bytes count (3 gzip bodies counted as instances, `ok`)."""
    from ..scripted_servers import compressing

    with compressing() as (url, study, asked):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "single-part",
            "--strategy", "multipart-instance", "-c", "1", "--repeat", "1", "--json",
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert set(asked) == {"identity"}
    for row in json.loads(result.stdout)["rows"]:
        assert re.fullmatch(
            r"3 of 3 failed: instance [0-9.]+: the server sent a gzip-encoded body, though "
            r"identity was asked for",
            row["status"],
        ), row["status"]
        assert row["totals"]["instances"] == row["totals"]["bytes"] == 0


@pytest.mark.integration
def test_a_series_answered_with_the_whole_study_is_a_failure_not_a_fast_series(
    tmp_path: Path,
) -> None:
    """A server ignoring the series in the path sends every instance of the study for each
    series: the parts beyond those asked are not counted and the request fails, naming it
    (the series row counted twice the study, `ok`, exit 0)."""
    from ..scripted_servers import whole_study_for_series

    kept = tmp_path / "kept"
    with whole_study_for_series() as (url, study, series):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "series",
            "--strategy", "study", "-c", "1", "--repeat", "1", "--json", "--keep", str(kept),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    rows = {row["strategy"]: row for row in json.loads(result.stdout)["rows"]}
    assert rows["study"]["status"] == "ok" and rows["study"]["totals"]["instances"] == 4
    totals = rows["series"]["totals"]
    assert (totals["requests"], totals["failures"], totals["instances"]) == (2, 2, 4)
    assert re.fullmatch(
        r"2 of 2 failed: series [0-9.]+: 4 instances arrived where 2 were asked \(the rest not "
        r"counted\)",
        rows["series"]["status"],
    ), rows["series"]["status"]
    assert len(list(kept.iterdir())) == 4 and not list(kept.glob(".*"))


def _behind_a_refusing_proxy(
    url: str, marker: str, seconds: float, *args: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """`dlstudy bench --json ARGS` through a fault proxy that refuses new connections for
    `seconds` from the request naming `marker` (closed at the end, if still refusing); the
    result and how many refusal windows opened."""
    from ..faultproxy import FaultProxy

    proxy = FaultProxy(int(url.split(":")[2].split("/")[0]), refuse=(marker.encode(), seconds))
    try:
        result = run_installed("bench", *args, "--url", proxy.url(), "--json", timeout=90)
    finally:
        proxy.close()
    return result, proxy.refused_windows


@pytest.mark.integration
def test_a_connection_refused_mid_run_fails_that_request_and_the_bench_goes_on(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Each connection serves one request; from the 11th instance's on, new ones are refused
    for 7.5 s. The next request, refused for --timeout (5 s), is one failure of its run (with,
    at times, one reset by the proxy as it stops listening); the server is back before
    --timeout more, so the rest are measured, exit 1 (a refused connection ended the whole
    bench, exit 3, where a reset one fails only its request)."""
    url = embedded_server(synth_study.root, max_requests_per_connection=1)
    result, windows = _behind_a_refusing_proxy(
        url, synth_study.instances[10].sop_uid, 7.5, synth_study.study_uid, "--http", "1.1",
        "--strategy", "single-part", "-c", "1", "--repeat", "2", "--timeout", "5", "-v",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert windows == 1 and "cannot connect (" in result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    count = len(synth_study.instances)
    failures = row["totals"]["failures"]
    assert failures in (1, 2) and row["totals"]["instances"] == 2 * count - failures
    assert row["totals"]["runs"] == 2 and [run["failures"] for run in row["runs"]][1] == 0
    assert re.fullmatch(
        rf"{failures} of {2 * count} failed: instance [0-9.]+: connection "
        r"(refused by 127\.0\.0\.1:|broken ).*",
        row["status"],
    ), row["status"]


@pytest.mark.integration
def test_requests_refused_together_ask_once_whether_the_server_is_back(
    synth_study: SynthStudy, embedded_server: StartServer, seen_requests: SeenRequests
) -> None:
    """As above with 4 requests in flight: the refused ones fail together, and one question
    (a search for one study) finds the server back for all of them; each asked again."""
    url = embedded_server(synth_study.root, max_requests_per_connection=1)
    result, windows = _behind_a_refusing_proxy(
        url, synth_study.instances[10].sop_uid, 7.5, synth_study.study_uid, "--http", "1.1",
        "--strategy", "single-part", "-c", "4", "--repeat", "1", "--timeout", "5",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["totals"]["failures"] >= 2, row
    searches = [r for r in seen_requests.requests if r == ("/dicomweb/studies", b"limit=1")]
    assert len(searches) == 2  # the protocol probe, then the one question


@pytest.mark.integration
def test_a_connection_refused_as_a_run_starts_is_tried_again(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """New connections are refused for 1.5 s from the first run's last request, as the second
    run lists the study on a new connection: it connects again, as download does (it was
    refused at once: the bench ended, exit 3)."""
    url = embedded_server(synth_study.root)
    last = qido_order(url, synth_study.study_uid)[-1]
    result, windows = _behind_a_refusing_proxy(
        url, last, 1.5, synth_study.study_uid, "--http", "1.1", "--strategy", "single-part",
        "-c", "1", "--repeat", "2", "--timeout", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert windows == 1
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"] == "ok" and row["totals"]["runs"] == 2


@pytest.mark.integration
@pytest.mark.parametrize("refused_at", ["transfer", "listing"])
def test_a_server_gone_for_good_stops_the_bench_with_one_line(
    synth_study: SynthStudy, embedded_server: StartServer, refused_at: str
) -> None:
    """The server refuses every new connection from the 11th instance's request (one
    connection per request), or from the first run's last request (the next run lists the
    study): the bench stops once --timeout more has passed, with one line, and prints the runs
    that finished; it would have failed each instance left in turn, --timeout each."""
    per_request = refused_at == "transfer"
    url = embedded_server(synth_study.root, max_requests_per_connection=1 if per_request else None)
    marker = (
        synth_study.instances[10].sop_uid
        if per_request
        else qido_order(url, synth_study.study_uid)[-1]
    )
    result, _ = _behind_a_refusing_proxy(
        url, marker, 600, synth_study.study_uid, "--http", "1.1", "--strategy", "single-part",
        "-c", "1", "--repeat", "3", "--timeout", "1",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    said = "the server stopped accepting connections during the bench: connection refused by "
    assert result.stderr.startswith(f"dlstudy: error: {said}127.0.0.1:"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    data = json.loads(result.stdout)
    assert data["error"].startswith(said) and data["exit_status"] == 3
    runs = [run for row in data["rows"] for run in row["runs"]]
    assert len(runs) == (0 if per_request else 1)  # the run cut short is left out


@pytest.mark.integration
def test_kept_counts_are_the_kept_files_when_a_part_cannot_be_kept(tmp_path: Path) -> None:
    """With --keep, the study's second part names an invalid SOP Instance UID: it cannot be
    kept, and the request fails. Its bytes are not counted either: the run's bytes and
    instances are the files kept (the part was counted before it was found unkeepable)."""
    from ..scripted_servers import study_with_a_misnamed_part

    kept = tmp_path / "kept"
    with study_with_a_misnamed_part() as (url, study, good):
        result = run_installed(
            "bench", study, "--url", url, "--http", "1.1", "--strategy", "study", "--repeat",
            "1", "--json", "--keep", str(kept),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"].endswith("a part names an invalid SOP Instance UID '../x'"), row
    files = list(kept.iterdir())
    assert [p.name for p in files] == [f"{good[0]}.dcm"]  # the third part is never reached
    assert row["totals"]["instances"] == 1
    assert row["totals"]["bytes"] == files[0].stat().st_size


@pytest.mark.integration
def test_row_totals_are_sums_over_its_runs(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A row's totals are all of one kind: sums over its runs (bytes and instances were the
    first run's while requests and failures were sums)."""
    url = embedded_server(synth_study.root, fault_rate=0.3, fault_status=404, seed=7)
    args = ["--repeat", "3", "--strategy", "single-part", "-c", "1", "--http", "1.1"]
    code, data = bench_json(synth_study.study_uid, "--url", url, *args)
    assert code == 1
    (row,) = data["rows"]
    runs = row["runs"]
    # one request at a time: the seeded faults fall the same way on every test run
    assert len(runs) == 3 and len({run["instances"] for run in runs}) > 1
    assert row["totals"] == {
        "runs": 3,
        **{key: sum(run[key] for run in runs) for key in ("bytes", "instances", "requests")},
        "failures": sum(run["failures"] for run in runs),
    }
    assert row["totals"]["requests"] == 3 * len(synth_study.instances)
    assert row["totals"]["instances"] + row["totals"]["failures"] == 3 * len(synth_study.instances)
    assert set(row) >= {"totals", "runs"} and not set(row) & {"bytes", "instances", "requests"}


@pytest.mark.integration
def test_download_settings_do_not_shrink_the_matrix(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[defaults]\nconcurrency = 16\nhttp = "auto"\n[servers.lab]\nurl = "{url}"\n'
    )
    result = run_cli(
        "bench", synth_study.study_uid, "--config", str(config), "--server", "lab",
        "--strategy", "study", "--repeat", "1", "--json",
        env={"DLSTUDY_CONCURRENCY": "8", "DLSTUDY_HTTP": "1.1"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    matrix = json.loads(result.stdout)["matrix"]
    assert matrix["concurrency"] == [1, 4, 16, 64] and matrix["http"] == ["1.1", "2"]


# -- nginx serving a static DICOMweb tree (benchmarks/static_tree.py) ----------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def nginx_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """nginx over a tiny static tree: URLs of its HTTP/1.1, h2c and TLS servers, the CA, UIDs."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None or shutil.which("openssl") is None:
        missing_tool("nginx and openssl are needed")
    spec = importlib.util.spec_from_file_location("static_tree", ROOT / "benchmarks/static_tree.py")
    assert spec is not None and spec.loader is not None
    static_tree = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(static_tree)
    folder = tmp_path_factory.mktemp("nginx")
    args = ["--preset", "small", "--series", "2", "--instances", "6"]
    manifest = static_tree.build_dataset(folder / "data", "tiny", args, multipart=True, log=print)
    ca, cert, key = static_tree.make_certificates(folder / "certs")
    ports = dict(zip(("h1", "h2c", "tls", "tls-tuned"), _free_ports(4), strict=True))
    conf = static_tree.nginx_conf(folder / "prefix", folder / "data", ports, cert, key, "1")
    subprocess.run([nginx, "-c", str(conf), "-p", str(folder / "prefix")], check=True, timeout=30)
    pid_file = folder / "prefix" / "nginx.pid"
    try:
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield {
            "h1": f"http://127.0.0.1:{ports['h1']}/tiny/dicomweb",
            "h2c": f"http://127.0.0.1:{ports['h2c']}/tiny/dicomweb",
            "tls": f"https://127.0.0.1:{ports['tls']}/tiny/dicomweb",
            "ca": ca,
            "manifest": manifest,
        }
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)


@pytest.mark.integration
def test_nginx_static_tree(nginx_tree: dict[str, Any]) -> None:
    manifest = nginx_tree["manifest"]
    study_uid = manifest["studies"][0]
    total = sum(i["size"] for i in manifest["instances"])
    code, data = bench_json(
        study_uid, "--url", nginx_tree["tls"], "--ca-bundle", str(nginx_tree["ca"]),
        "-c", "1", "-c", "4", "--repeat", "1",
    )  # fmt: skip
    assert code == 0, data
    # benchmarks/static_tree.py prebuilds multipart files for study, series and instance URLs.
    for (_, _, http), row in rows_by_cell(data).items():
        assert row["status"] == "ok" and row["totals"]["bytes"] == total, row
        assert row["http_version"] == ("HTTP/2" if http == "2" else "HTTP/1.1")
    # Plain http: nginx speaks HTTP/1.1 or h2c on a port, never both.
    code, data = bench_json(study_uid, "--url", nginx_tree["h1"], "--strategy", "study")
    assert code == 0 and "does not speak HTTP/2" in data["notes"][0], data["notes"]
    statuses = {row["http"]: row["status"] for row in data["rows"]}
    assert statuses == {"1.1": "ok", "2": "unsupported (no HTTP/2)"}
    code, data = bench_json(study_uid, "--url", nginx_tree["h1"], "--http", "2")
    assert code == 3 and "does not speak HTTP/2 (" in data["error"], data
    assert "try --http 1.1" in data["error"]


# -- a real Orthanc ------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_orthanc(orthanc: OrthancServer, tmp_path: Path) -> None:
    orthanc.reset()
    spec = SynthSpec(studies=1, series=2, instances=5, size=32 * 1024, seed=71)
    instances = generate(tmp_path / "src", spec)
    stored = [orthanc.upload(instance.path) for instance in instances]
    study_uid = instances[0].study_uid
    total = sum(len(orthanc.stored_file(answer["ID"])) for answer in stored)
    keep = tmp_path / "kept"
    code, data = bench_json(
        study_uid, "--url", orthanc.dicomweb_url, "-c", "1", "-c", "4", "--repeat", "1",
        "--keep", str(keep),
    )  # fmt: skip
    assert code == 0, data
    for (strategy, _, http), row in rows_by_cell(data).items():
        if http == "2":  # Orthanc speaks HTTP/1.1 only
            assert row["status"] == "unsupported (no HTTP/2)", row
        elif strategy == "single-part":
            assert row["status"] == "unsupported (HTTP 400)", row
        else:
            assert row["status"] == "ok" and row["totals"]["instances"] == 10
            assert row["totals"]["bytes"] == total
    assert len(list(keep.iterdir())) == 10


# -- units ---------------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 0.9) == pytest.approx(90.1)


def test_nice_ticks() -> None:
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(9.3) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert nice_ticks(180) == [0.0, 50.0, 100.0, 150.0, 200.0]


def test_chart_of_an_unsupported_row_explains_it_and_escapes_text() -> None:
    report = BenchReport(
        url="http://h/<x>&y",
        study_uid="1.2",
        strategies=("single-part", "study"),
        concurrency=(1,),
        http=("1.1",),
        repeat=1,
        limit=None,
    )
    report.results.append(
        CellResult("single-part", 1, "1.1", 0, unsupported="unsupported (HTTP 400)")
    )
    ok = CellResult("study", 1, "1.1", 0, seconds=0.5, bytes=10**6, instances=4, ttfb=[0.01])
    report.results.append(ok)
    root = ET.fromstring(render_svg(report))
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert "dlstudy bench: http://h/<x>&y" in texts
    assert "single-part · HTTP/1.1: unsupported (HTTP 400)" in texts
    assert report.rows()[1].mb_per_s() == {"median": 2.0, "min": 2.0, "max": 2.0}


def test_png_chart(tmp_path: Path) -> None:
    if png_converter() is None:
        missing_tool("no SVG-to-PNG converter (librsvg2-bin)")
    report = BenchReport("http://h/x", "1.2", ("study",), (1,), ("2",), 1, None)
    report.results.append(CellResult("study", 1, "2", 0, seconds=1.0, bytes=5, instances=1))
    write_chart(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
