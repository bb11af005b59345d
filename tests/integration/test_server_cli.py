"""`serve` as a real process, driven by the real curl: QIDO, WADO, h2c prior knowledge, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from tests.cli_helpers import DLSTUDY, ctrl_c_as_at_a_terminal, run_installed
from tests.fixtures.embedded_server import split_multipart

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary"),
]

PYDICOM_FILES = Path(str(pydicom.data.get_testdata_file("CT_small.dcm"))).parent
SAMPLE = PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"  # JPEG baseline, a SOP UID no other file shares
# The commands through a bare Typer app, as the main app registers them.
LAUNCH = (
    "import typer; from dlstudy.cli.server_cmds import register;"
    " a = typer.Typer(); register(a); a()"
)


def start(
    *args: str,
    seen: list[str] | None = None,
    installed: bool = False,
    prefix: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[str], str]:
    """`serve ARGS` in a process (the installed console script if `installed`, run by
    `prefix`), once it prints its URL; the lines before it go to `seen`."""
    cmd = [*prefix, DLSTUDY if installed else sys.executable]
    cmd += [] if installed else ["-c", LAUNCH]
    cmd += ["serve", *args]
    # Signals as at a terminal: a run under `nohup` (or a CI job) would hand SIGHUP down ignored.
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_as_at_a_terminal
    )
    assert proc.stderr is not None
    seen = [] if seen is None else seen
    for _ in range(50):  # log lines may come first; the URL line ends the wait
        line = _line(proc.stderr.fileno(), 30)
        seen.append(line)
        match = re.search(r"(https?://\S+/dicomweb)", line)
        if match:
            return proc, match.group(1)
        if not line:
            break
    proc.kill()
    proc.wait()
    proc.stderr.close()
    pytest.fail(f"serve did not print its URL: {seen!r}")


def _line(fd: int, timeout: float) -> str:
    """One line of the pipe, read a byte at a time: a buffered readline could take the lines
    after it too, and select() would then wait for lines already read."""
    data = bytearray()
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        byte = os.read(fd, 1) if ready else b""
        if not byte:
            break
        data += byte
    return data.decode(errors="replace")


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    proc, url = start(str(PYDICOM_FILES), "--port", "0")
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, exit status 0
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        proc.stderr.close()


def curl(*args: str) -> bytes:
    done = subprocess.run(["curl", "-sS", "--fail", "--max-time", "20", *args], capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def sample_url(base: str) -> str:
    sop = pydicom.dcmread(SAMPLE, stop_before_pixels=True).SOPInstanceUID
    (result,) = json.loads(curl(f"{base}/instances?SOPInstanceUID={sop}"))
    url: str = result["00081190"]["Value"][0]
    return url


def test_curl_qido(served: str) -> None:
    studies = json.loads(curl("-H", "Accept: application/dicom+json", f"{served}/studies"))
    assert len(studies) > 10
    study = studies[0]["0020000D"]["Value"][0]
    series = json.loads(curl(f"{served}/studies/{study}/series"))
    assert series[0]["0020000D"]["Value"] == [study] or "0020000E" in series[0]


def test_curl_single_part_bytes_equal(served: str, tmp_path: Path) -> None:
    out = tmp_path / "sample.dcm"
    curl("-H", "Accept: application/dicom; transfer-syntax=*", "-o", str(out), sample_url(served))
    assert out.read_bytes() == SAMPLE.read_bytes()


def test_curl_h2c_prior_knowledge(served: str, tmp_path: Path) -> None:
    out = tmp_path / "sample.dcm"
    version = curl(
        "--http2-prior-knowledge",
        "-w",
        "%{http_version}",
        "-H",
        "Accept: application/dicom; transfer-syntax=*",
        "-o",
        str(out),
        sample_url(served),
    )
    assert version == b"2"
    assert out.read_bytes() == SAMPLE.read_bytes()


def test_curl_multipart_study(served: str, tmp_path: Path) -> None:
    url = sample_url(served).split("/series/")[0]
    headers = tmp_path / "headers.txt"
    body = curl(
        "-D",
        str(headers),
        "-H",
        'Accept: multipart/related; type="application/dicom"; transfer-syntax=*',
        url,
    )
    content_type = re.search(r"(?im)^content-type: (.*?)\r?$", headers.read_text())
    assert content_type
    parts = split_multipart(body, content_type.group(1))
    assert SAMPLE.read_bytes() in [part for _, part in parts]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--fault-rate", "2"], "'--fault-rate'"),
        (["--drop-rate", "-0.5"], "'--drop-rate'"),
        (["--port", "70000"], "'--port'"),
        (["--port", "-1"], "'--port'"),
        (["--latency", "-1"], "'--latency'"),
        (["--retry-after", "-1"], "'--retry-after'"),
        (["--fault-status", "200"], "'--fault-status'"),
        (["--fault-status", "600"], "'--fault-status'"),
        (["--page-cap", "0"], "'--max-page-size' / '--page-cap'"),
        (["--drop-after-bytes", "-1"], "'--drop-after-bytes'"),
    ],
)
def test_serve_rejects_bad_options_naming_each(tmp_path: Path, args: list[str], named: str) -> None:
    """One line naming the option that is wrong, and only it (`--port 70000` is not called
    negative, nor are --latency and --retry-after blamed with it)."""
    done = run_installed("serve", str(tmp_path), *args)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: Invalid value for {named}: "), line
    assert "negative" not in line or args[1].startswith("-")


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--latency", "inf", "must be a number of seconds 0 or more, got 'inf'"),
        ("--latency", "1e999", "must be a number of seconds 0 or more, got '1e999'"),
        ("--latency", "nan", "must be a number of seconds 0 or more, got 'nan'"),
        ("--latency", "-inf", "must be a number of seconds 0 or more, got '-inf'"),
        ("--fault-rate", "nan", "must be a fraction from 0 to 1, got 'nan'"),
        ("--drop-rate", "nan", "must be a fraction from 0 to 1, got 'nan'"),
        ("--drop-rate", "inf", "must be a fraction from 0 to 1, got 'inf'"),
    ],
)
def test_serve_rejects_a_number_that_is_no_number(
    tmp_path: Path, option: str, value: str, said: str
) -> None:
    """nan and inf are no seconds nor fractions: --latency inf served (every request then
    waited forever), and nan was called a negative number or one above 1."""
    done = run_installed("serve", str(tmp_path), "--port", "0", option, value, timeout=30)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: Invalid value for '{option}': {said}"), line


def test_serve_injects_any_error_status(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "a.dcm")
    proc, url = start(str(tmp_path), "--port", "0", "--fault-rate", "1", "--fault-status", "418")
    try:
        instance = curl(f"{url}/instances")
        wado = json.loads(instance)[0]["00081190"]["Value"][0]
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "20", "-o", os.devnull, "-D", "-", wado],
            capture_output=True,
            text=True,
        )
        assert done.stdout.startswith("HTTP/1.1 418"), done.stdout
        assert "retry-after: 1" in done.stdout.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        proc.stderr.close()


def test_serve_says_how_many_files_it_skipped(tmp_path: Path) -> None:
    """Files that are not served are counted on start-up: a study missing from the searches
    is then no mystery."""
    shutil.copy(SAMPLE, tmp_path / "good.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "cut.dcm").write_bytes(SAMPLE.read_bytes()[:300])  # cut inside its header
    seen: list[str] = []
    proc, url = start(str(tmp_path), "--port", "0", seen=seen, installed=True)
    try:
        assert len(json.loads(curl(f"{url}/studies"))) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        proc.stderr.close()
    assert seen[:-1] == [
        f"dlstudy: warning: skipped 2 of the 3 files under {tmp_path}: not DICOM instances, "
        "not regular files, links out of the folder, unreadable or duplicates "
        "(--verbose names each)\n"
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_serve_stops_quietly_on_sigterm_and_sighup(tmp_path: Path, signum: int) -> None:
    """A service stopped, or the terminal serve runs in closed: the same clean stop as
    Ctrl-C, exit 0 (SIGHUP killed it, status -1)."""
    shutil.copy(SAMPLE, tmp_path / "a.dcm")
    proc, url = start(str(tmp_path), "--port", "0", installed=True)
    try:
        assert len(json.loads(curl(f"{url}/studies"))) == 1
    finally:
        proc.send_signal(signum)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        proc.stderr.close()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert proc.stderr is not None
    proc.stderr.close()


def test_serve_skips_pipes_and_sockets_without_opening_them(tmp_path: Path) -> None:
    """A named pipe opened for reading waits for a writer forever: serve must not open it (nor
    a socket), and count both in its warning."""
    shutil.copy(SAMPLE, tmp_path / "good.dcm")
    os.mkfifo(tmp_path / "pipe.dcm")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "socket.dcm"))
        seen: list[str] = []
        proc, url = start(str(tmp_path), "--port", "0", "-v", seen=seen, installed=True)
        try:
            assert len(json.loads(curl(f"{url}/studies"))) == 1
        finally:
            stop(proc)
    assert f"INFO skipped {tmp_path / 'pipe.dcm'}: not a regular file\n" in seen
    assert f"INFO skipped {tmp_path / 'socket.dcm'}: not a regular file\n" in seen
    assert any(
        line.startswith(f"dlstudy: warning: skipped 2 of the 3 files under {tmp_path}:")
        for line in seen
    )


def test_serve_says_which_folders_and_files_it_could_not_read(tmp_path: Path) -> None:
    """A folder it may not list was passed over without a word (even with -v): its studies
    were missing from every search. One warning counts them and names the first, escaped."""
    shutil.copy(SAMPLE, tmp_path / "good.dcm")
    locked = tmp_path / "locked\x1b[31m"
    locked.mkdir()
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", locked / "ct.dcm")
    (tmp_path / "other").mkdir()
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", tmp_path / "other" / "mr.dcm")
    for blocked in (locked, tmp_path / "other" / "mr.dcm"):
        blocked.chmod(0)
    # Root ignores permissions: drop the capabilities that let it (util-linux's setpriv).
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner")
    seen: list[str] = []
    try:
        proc, url = start(
            str(tmp_path),
            "--port",
            "0",
            seen=seen,
            installed=True,
            prefix=prefix if os.geteuid() == 0 else (),
        )
        try:
            assert len(json.loads(curl(f"{url}/studies"))) == 1  # the rest is served
        finally:
            stop(proc)
    finally:
        locked.chmod(0o755)
    assert seen[:-1] == [
        f"dlstudy: warning: could not read 1 folder and 1 file under {tmp_path} (the first: "
        f"{tmp_path}/locked\\x1b[31m: Permission denied): the instances in them are not served\n",
        f"dlstudy: warning: skipped 1 of the 2 files under {tmp_path}: not DICOM instances, "
        "not regular files, links out of the folder, unreadable or duplicates "
        "(--verbose names each)\n",
    ]


def test_every_file_of_pydicoms_corpus_downloads_with_no_noise(tmp_path: Path) -> None:
    """pydicom's test files (big endian, deflated, implicit VR in an explicit file, bare
    datasets, files whose meta names another instance) through the installed CLI: all of
    them land, and stderr has dlstudy's own lines only (no warning from a library)."""
    proc, url = start(str(PYDICOM_FILES), "--port", "0")
    try:
        uids = run_installed("query", "--url", url, "--uids")
        assert uids.returncode == 0, uids.stderr
        got = run_installed(
            "download", *uids.stdout.split(), "--url", url, "-o", str(tmp_path), "--json"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        proc.stderr.close()
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["instances"]["failed"] == 0 and summary["instances"]["downloaded"] > 100
    assert len(list(tmp_path.rglob("*.dcm"))) == summary["instances"]["downloaded"]
    lines = got.stderr.splitlines()
    assert [line for line in lines if not line.startswith("dlstudy: ")] == [], got.stderr
    # What dlstudy noticed is said in its own shape: a file kept as the server sent it.
    assert any(
        line.startswith("dlstudy: warning: instance ") and line.endswith("(kept as sent)")
        for line in lines
    )


def test_ctrl_c_during_a_transfer_stops_quietly() -> None:
    """A client that reads slowly keeps a study's multipart response in flight past the
    graceful timeout: stopping cuts it (the client sees a cut transfer) without a traceback."""
    proc, url = start("--virtual", "1", "--study-size", "40000", "--port", "0", installed=True)
    try:
        (study,) = json.loads(curl(f"{url}/studies"))
        uid = study["0020000D"]["Value"][0]
        host, port = url.split("//")[1].split("/")[0].split(":")
        with socket.create_connection((host, int(port))) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(
                f"GET /dicomweb/studies/{uid} HTTP/1.1\r\nHost: {host}\r\n"
                'Accept: multipart/related; type="application/dicom"\r\n\r\n'.encode()
            )
            assert client.recv(4096).startswith(b"HTTP/1.1 200")  # then it reads no more
            time.sleep(1)  # the server's send buffer fills
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        rest = proc.stderr.read()
        proc.stderr.close()
    assert rest == "", rest


@pytest.mark.parametrize(
    ("signum", "said"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")]
)
def test_a_signal_while_indexing_ends_with_the_line_every_command_prints(
    tmp_path: Path, signum: int, said: str
) -> None:
    """Ctrl-C while `serve` indexed a folder ended mute with 130 (or said `dlstudy:
    interrupted` while the server loaded), SIGTERM killed it with no line at all; synth, demo
    and bench say `dlstudy: error: interrupted`. (Each file that is no DICOM has its -v lines:
    once they fill the pipe, unread, the index waits there, surely not done.)"""
    for i in range(1000):
        (tmp_path / f"{i}.dcm").write_bytes(b"not DICOM")
    process = subprocess.Popen(
        [DLSTUDY, "serve", str(tmp_path), "--port", "0", "-v"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    try:
        assert process.stderr is not None
        assert _line(process.stderr.fileno(), 60).startswith("INFO ")  # indexing
        process.send_signal(signum)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 128 + signum, rest
    assert rest.splitlines()[-1] == f"dlstudy: error: {said}"
    assert "http://" not in rest


def test_clients_that_leave_mid_response_are_no_warning() -> None:
    """A client closing a study's response early (bench --limit, a cancelled download) made
    asyncio warn `socket.send() raised exception.` from the fifth write into the dead socket,
    several lines a bench: serve says nothing of a client that left."""
    proc, url = start("--virtual", "1", "--study-size", "50", "--port", "0", installed=True)
    try:
        (study,) = json.loads(curl(f"{url}/studies"))
        uid = study["0020000D"]["Value"][0]
        host, port = url.split("//")[1].split("/")[0].split(":")
        for _ in range(2):  # (each said it some 150 times: more would fill the unread pipe)
            with socket.create_connection((host, int(port))) as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.sendall(
                    f"GET /dicomweb/studies/{uid} HTTP/1.1\r\nHost: {host}\r\n"
                    'Accept: multipart/related; type="application/dicom"\r\n\r\n'.encode()
                )
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
                # Closed with a reset (linger 0), as a client that stops reading does.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert len(json.loads(curl(f"{url}/studies"))) == 1  # still serving
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        rest = proc.stderr.read()
        proc.stderr.close()
    assert rest == "", rest


def test_of_two_files_with_one_sop_uid_the_whole_one_is_served(tmp_path: Path) -> None:
    """A copy cut short that comes first in the walk used to be served with its short length;
    the largest file is served now, and one warning names it and every other file: a warning
    for each pair met in the walk named as served a file that a later one replaced."""
    whole = SAMPLE.read_bytes()
    (tmp_path / "a-cut.dcm").write_bytes(whole[:-500])  # first in the walk
    (tmp_path / "b-cut.dcm").write_bytes(whole[:-200])  # larger than a, not served either
    (tmp_path / "c-whole.dcm").write_bytes(whole)
    (tmp_path / "d-copy.dcm").write_bytes(whole)  # the same size as the one served
    seen: list[str] = []
    proc, url = start(str(tmp_path), "--port", "0", seen=seen, installed=True)
    try:
        served = curl("-H", "Accept: application/dicom; transfer-syntax=*", sample_url(url))
    finally:
        stop(proc)
    assert served == whole
    sop = pydicom.dcmread(SAMPLE, stop_before_pixels=True).SOPInstanceUID
    assert seen[:-1] == [
        f"dlstudy: warning: SOP Instance UID {sop} is in 4 files of different sizes: serving "
        f"the largest {tmp_path / 'c-whole.dcm'} ({len(whole)} bytes), not "
        f"{tmp_path / 'a-cut.dcm'} ({len(whole) - 500} bytes), {tmp_path / 'b-cut.dcm'} "
        f"({len(whole) - 200} bytes), {tmp_path / 'd-copy.dcm'} ({len(whole)} bytes)\n",
        f"dlstudy: warning: skipped 3 of the 4 files under {tmp_path}: not DICOM instances, "
        "not regular files, links out of the folder, unreadable or duplicates "
        "(--verbose names each)\n",
    ]
