"""HTTP/3: `dlstudy download --http 3` (libcurl's QUIC) from `dlstudy serve --http3` (hypercorn
with aioquic) on 127.0.0.1, and what `--http 3` says where it cannot work."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import (
    DLSTUDY,
    assert_same_files,
    installed_download,
    instance_counts,
    run_installed,
)
from ..fixtures.embedded_server import StartServer, SynthStudy, TlsFiles
from .test_server_cli import start

pytestmark = pytest.mark.integration


def test_serve_http3_and_download_over_it_byte_exact(
    tmp_path: Path, synth_study: SynthStudy, tls_ca: TlsFiles
) -> None:
    """Both ends as users run them: the installed `serve --http3` (TCP and UDP on one port),
    and the installed `download --http 3`, one instance per request and then a multipart
    response per series, each file the server's bytes."""
    tls = ["--tls-cert", str(tls_ca.cert), "--tls-key", str(tls_ca.key)]
    proc, url = start(str(synth_study.root), "--port", "0", *tls, "--http3", installed=True)
    try:
        for mode in ("instance", "series"):
            out = tmp_path / mode
            status, summary, stderr = installed_download(
                url, synth_study.study_uid, out,
                "--http", "3", "--ca-bundle", str(tls_ca.ca_pem), "--mode", mode,
            )  # fmt: skip
            assert status == 0, stderr
            assert summary["http_version"] == "HTTP/3"
            assert summary["instances"] == instance_counts(60, downloaded=60)
            assert_same_files(synth_study.instances, out)
        # HTTP/3 multiplexes as HTTP/2 does: the same many streams on one connection.
        assert summary["concurrency"] == 64
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        proc.stderr.close()


def test_serve_http3_stops_on_ctrl_c_mid_download(tmp_path: Path, tls_ca: TlsFiles) -> None:
    """Ctrl-C on the installed `serve --http3` after TLS clients over TCP came and went, while
    an HTTP/3 download that stopped reading is mid-flight: exit 0, no traceback. (The stop
    tripped over a TLS transport closed twice, and hung waiting on the QUIC connection.)"""
    (first, *_) = generate(tmp_path / "data", SynthSpec(series=1, instances=40, size=2**20))
    tls = ["--tls-cert", str(tls_ca.cert), "--tls-key", str(tls_ca.key)]
    ca = ["--ca-bundle", str(tls_ca.ca_pem)]
    proc, url = start(str(tmp_path / "data"), "--port", "0", *tls, "--http3", installed=True)
    out = tmp_path / "out"
    client: subprocess.Popen[bytes] | None = None
    try:
        for http in ("1.1", "2"):  # over TCP and TLS, each connection closed by its client
            listed = run_installed("query", "--url", url, *ca, "--http", http, "--uids")
            assert listed.stdout.split() == [first.study_uid], listed.stderr
        client = subprocess.Popen(
            [DLSTUDY, "download", first.study_uid, "--url", url, *ca, "--http", "3",
             "-o", str(out), "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(600):  # until its first file is down (a minute at most)
            if next(out.rglob("*.dcm"), None) is not None or client.poll() is not None:
                break
            time.sleep(0.1)
        assert client.poll() is None, "the download ended before the stop"
        client.send_signal(signal.SIGSTOP)  # mid-flight, and it reads no more
    finally:
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=30)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
        if client is not None:
            client.kill()
            client.wait()
    assert status == 0, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert "Warning" not in stderr, stderr


def test_query_over_http3(
    synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key, http3=True)
    result = run_installed(
        "query", "--url", url, "--http", "3", "--ca-bundle", str(tls_ca.ca_pem), "--uids"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [synth_study.study_uid]


def test_http3_to_a_server_without_it_is_one_line_exit_3(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """A TLS server with no QUIC listener (its UDP port closed): one line saying what HTTP/3
    needs and that --http 2 goes over TCP, nothing downloaded."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    out = tmp_path / "out"
    status, summary, stderr = installed_download(
        url, synth_study.study_uid, out, "--http", "3", "--ca-bundle", str(tls_ca.ca_pem)
    )
    assert status == 3, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("dlstudy: error: ") and "no HTTP/3 answer" in line, line
    assert "--http 2 goes over TCP" in line
    assert not list(out.rglob("*.dcm"))
    assert summary["exit_status"] == 3


@pytest.mark.parametrize(
    ("scheme", "env", "said"),
    [
        ("http", {}, "--http 3 needs an https:// URL"),
        ("https", {"HTTPS_PROXY": "http://proxy-user:s3cret@127.0.0.1:9"}, "cannot go through"),
    ],
    ids=["plain-http", "proxy"],
)
def test_http3_where_it_cannot_go_is_a_usage_error(
    tmp_path: Path, scheme: str, env: dict[str, str], said: str
) -> None:
    """Before any request (exit 2, one line, no output folder): plain http:// has no TLS for
    QUIC, and a proxy carries TCP, not UDP; the proxy is named, its password masked."""
    out = tmp_path / "out"
    result = run_installed(
        "download", "1.2.3", "--url", f"{scheme}://127.0.0.1:9/dicomweb", "--http", "3",
        "-o", str(out), env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert said in line, line
    assert "s3cret" not in line
    assert not out.exists()


def test_serve_http3_without_tls_is_a_usage_error(synth_study: SynthStudy) -> None:
    result = run_installed("serve", str(synth_study.root), "--port", "0", "--http3")
    assert result.returncode == 2, result.stderr
    assert "--http3 runs over TLS" in result.stderr


def test_bench_measures_http3_beside_http2_and_says_where_it_is_missing(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """`bench --http 3` (installed): its cells answered over HTTP/3, in the chart too (a line
    of its own); against a server without it, its rows say so and the HTTP/2 ones are kept."""
    tls = {"tls_cert": tls_ca.cert, "tls_key": tls_ca.key}
    chart = tmp_path / "bench.svg"
    for http3, status in ((True, "ok"), (False, "unsupported (no HTTP/3)")):
        url = embedded_server(synth_study.root, **tls, http3=http3)
        result = run_installed(
            "bench", synth_study.study_uid, "--url", url, "--ca-bundle", str(tls_ca.ca_pem),
            "--http", "2", "--http", "3", "--strategy", "single-part", "-c", "4",
            "--repeat", "1", "--limit", "20", "--json", "--chart", str(chart),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        rows = {row["http"]: row for row in json.loads(result.stdout)["rows"]}
        assert rows["2"]["status"] == "ok"
        assert rows["3"]["status"] == status, rows["3"]
        if http3:
            assert rows["3"]["http_version"] == "HTTP/3"
            assert "single-part · HTTP/3" in chart.read_text()
