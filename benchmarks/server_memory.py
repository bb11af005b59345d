"""Peak memory of `dlstudy synth --preset wsi` and of `dlstudy serve` while curl downloads it.

Both run as subprocesses; their peak RSS comes from wait4()'s rusage (ru_maxrss) of exactly that
process. The server is downloaded with curl single-part (HTTP/1.1 and h2c) and multipart, each
body hashed or counted as it streams, so nothing large lands on disk but the generated file.

    python benchmarks/server_memory.py                 # the 1.5 GiB preset
    python benchmarks/server_memory.py --size-gib 0.2  # a quick run

Prints a table and writes benchmarks/results/server_memory.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TILE = 256 * 256 * 3  # one 256x256 RGB frame, as the wsi preset writes
LAUNCH = (
    "import typer; from dlstudy.cli.server_cmds import register;"
    " a = typer.Typer(); register(a); a()"
)
RESULTS = Path(__file__).parent / "results" / "server_memory.json"


def run_measured(args: list[str], **kwargs: Any) -> tuple[int, float, float]:
    """Run to completion; (exit status, peak RSS in MiB, seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, **kwargs)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, usage.ru_maxrss / 1024, time.monotonic() - started


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def start_server(folder: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-c", LAUNCH, "serve", str(folder), "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 5)
        line = proc.stderr.readline() if ready else ""
        match = re.search(r"(https?://\S+/dicomweb)", line)
        if match:
            return proc, match.group(1)
        if ready and not line:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def curl_stream(url: str, accept: str, *extra: str) -> dict[str, Any]:
    """Download with curl to a pipe; bytes, sha256, seconds, HTTP version."""
    cmd = ["curl", "-sS", "--fail", "-H", f"Accept: {accept}", "-w", "%{stderr}%{http_version}"]
    proc = subprocess.Popen([*cmd, *extra, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    digest, size, started = hashlib.sha256(), 0, time.monotonic()
    while chunk := proc.stdout.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    seconds = time.monotonic() - started
    version = proc.stderr.read().decode().strip()
    proc.stdout.close()
    proc.stderr.close()
    if proc.wait() != 0:
        raise SystemExit(f"curl failed on {url}: {version}")
    return {
        "bytes": size,
        "sha256": digest.hexdigest(),
        "seconds": round(seconds, 2),
        "MB/s": round(size / seconds / 1e6),
        "http": version,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.5, help="instance size (GiB)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the study")
    args = parser.parse_args()
    frames = max(1, round(args.size_gib * 2**30 / TILE))
    size = frames * TILE + 2048

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="dlstudy-bench-") as tmp:
        folder = Path(tmp) / "wsi"
        synth = [sys.executable, "-c", LAUNCH, "synth", str(folder), "--preset", "wsi"]
        synth += ["--size", str(size), "--frames", str(frames)]
        status, synth_peak, synth_seconds = run_measured(synth, stdout=subprocess.DEVNULL)
        if status != 0:
            raise SystemExit("synth failed")
        (source,) = folder.rglob("*.dcm")
        file_size, expected = source.stat().st_size, file_sha256(source)

        proc, base = start_server(folder)
        idle = rss_mib(proc.pid)
        listing = subprocess.run(["curl", "-sS", f"{base}/instances"], capture_output=True)
        instance_url = json.loads(listing.stdout)[0]["00081190"]["Value"][0]
        study_url = instance_url.split("/series/")[0]
        single = "application/dicom; transfer-syntax=*"
        multi = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        downloads = {
            "single-part HTTP/1.1": curl_stream(instance_url, single),
            "single-part h2c": curl_stream(instance_url, single, "--http2-prior-knowledge"),
            "multipart study HTTP/1.1": curl_stream(study_url, multi),
            "multipart study h2c": curl_stream(study_url, multi, "--http2-prior-knowledge"),
        }
        proc.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        assert proc.stderr is not None
        proc.stderr.close()
        server_peak = usage.ru_maxrss / 1024

    for name, result in downloads.items():
        if name.startswith("single"):
            result["bytes_equal"] = result["sha256"] == expected and result["bytes"] == file_size
        else:
            result["bytes_equal"] = None  # multipart framing: only the size is checked
            assert result["bytes"] > file_size
    report = {
        "instance_bytes": file_size,
        "frames": frames,
        "synth": {"peak_rss_mib": round(synth_peak, 1), "seconds": round(synth_seconds, 2)},
        "server": {"idle_rss_mib": round(idle, 1), "peak_rss_mib": round(server_peak, 1)},
        "downloads": downloads,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    print(f"instance: {file_size / 2**30:.2f} GiB, {frames} frames")
    print(f"{'process':34} {'peak RSS MiB':>12} {'seconds':>8}")
    print(f"{'synth --preset wsi':34} {synth_peak:12.1f} {synth_seconds:8.2f}")
    print(f"{'serve (idle after indexing)':34} {idle:12.1f}")
    print(f"{'serve (peak over all downloads)':34} {server_peak:12.1f}")
    print(f"\n{'download (curl)':34} {'MB/s':>8} {'seconds':>8} {'http':>5} {'bytes equal':>12}")
    for name, r in downloads.items():
        print(f"{name:34} {r['MB/s']:8} {r['seconds']:8} {r['http']:>5} {r['bytes_equal']!s:>12}")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
