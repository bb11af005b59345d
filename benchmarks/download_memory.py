"""Peak memory (RSS) of the dlstudy *client* while it downloads one big instance.

    /work/venv/bin/python benchmarks/download_memory.py                  # 1.5 GiB, ~5 minutes
    /work/venv/bin/python benchmarks/download_memory.py --size-gib 0.1 --repeats 1   # smoke test

What runs. `dlstudy synth --preset wsi` writes one multi-frame instance (1.5 GiB by default;
`--size-gib` scales its size and frame count). Two embedded servers serve it on 127.0.0.1, each
in its own process on a port picked here and polled until it accepts connections: `--profile
standard` (single-part answers) and `--profile orthanc` (single-part answered 400, so dlstudy
falls back to multipart). Then, `--repeats` times, interleaved, for HTTP/1.1 and h2c (`--http
1.1` / `--http 2`):

* single-part         standard server, `--mode auto`
* multipart instance  orthanc server, `--mode auto` (negotiates 400 -> multipart/related)
* multipart study     orthanc server, `--mode study` (one streamed multipart response)

each as `python -m dlstudy download STUDY --url URL -o OUT --json` in a fresh process. After each
run the file is checked byte for byte against the source (SHA-256 read in 1 MiB chunks on both
sides, never the whole file in memory) and the output folder is deleted.

How peak RSS is measured. Each client is started with Popen and reaped with `os.wait4(pid)`,
which returns the rusage of exactly that child (plus any children *it* reaped; dlstudy starts
none): `ru_maxrss` is its high-water mark of resident memory in KiB, kept by the kernel, so no
short spike is missed. (`getrusage(RUSAGE_CHILDREN)` would not do: it is the maximum over every
child reaped so far, so one big run would hide all later ones.) The waiting loop uses
WNOHANG so the run is bounded by `--timeout`, and samples /proc/PID/status (VmRSS) every 50 ms
to say *when* the peak happened. Recent kernels update the high-water mark lazily, so a sample
can exceed ru_maxrss by a few hundred KB: the larger of the two is reported. RSS counts the
interpreter and its imported libraries too; a "rerun" row (same command with the file already
present, nothing fetched) shows that baseline. MB = 10^6 bytes; PASS means every repeat stayed
under `--limit-mb` (150), exited 0 and wrote an identical file.

Prints a table and writes benchmarks/results/download_memory.json (with CPU model, cores,
Python version).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "download_memory.json"
GIB = 1 << 30
WSI_GIB = 1.5  # the preset's pixel data: 8192 frames of 256x256 RGB
WSI_FRAMES = 8192
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Case:
    name: str
    profile: str
    mode: str
    http: str


CASES = [
    Case(name, profile, mode, http)
    for name, profile, mode in [
        ("single-part", "standard", "auto"),
        ("multipart instance", "orthanc", "auto"),
        ("multipart study", "orthanc", "study"),
    ]
    for http in ("1.1", "2")
]


def dlstudy(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlstudy", *args]


# -- the source instance -----------------------------------------------------------------------


def synth(folder: Path, size_gib: float, timeout: float) -> Path:
    """Generate the wsi preset (resized if asked) into `folder`; return the one .dcm file."""
    existing = sorted(folder.rglob("*.dcm")) if folder.exists() else []
    if len(existing) == 1:
        print(f"reusing {existing[0]}", flush=True)
        return existing[0]
    args = ["synth", str(folder), "--preset", "wsi"]
    if size_gib != WSI_GIB:
        frames = max(1, round(WSI_FRAMES * size_gib / WSI_GIB))
        args += ["--size", str(int(size_gib * GIB) + 2048), "--frames", str(frames)]
    subprocess.run(dlstudy(*args), check=True, timeout=timeout, stdout=subprocess.DEVNULL)
    files = sorted(folder.rglob("*.dcm"))
    if len(files) != 1:
        raise SystemExit(f"expected one instance from synth, found {len(files)}")
    return files[0]


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads in chunks


# -- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


class Server:
    """`dlstudy serve` in its own process, on a port chosen here; stopped by `stop()`."""

    def __init__(self, folder: Path, profile: str, log: Path, timeout: float) -> None:
        self.profile = profile
        for _ in range(3):  # the port may be taken between free_port() and the bind
            self.port = free_port()
            self.log = log.open("wb")
            cmd = dlstudy("serve", str(folder), "--port", str(self.port), "--profile", profile)
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if accepts(self.port):
                    text = log.read_text(errors="replace")
                    match = re.search(rf"(https?://\S+:{self.port}\S*/dicomweb)", text)
                    self.url = match.group(1) if match else f"http://{HOST}:{self.port}/dicomweb"
                    return
                time.sleep(0.1)
            self.stop()
        raise SystemExit(f"the {profile} server did not start; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


# -- one measured client -------------------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def run_client(cmd: list[str], folder: Path, timeout: float) -> dict[str, Any]:
    """Run one client to completion (bounded); its exit status, ru_maxrss, timing, JSON."""
    out_path, err_path = folder / "client.stdout", folder / "client.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        deadline = started + timeout
        timed_out = False
        sampled_kib, sampled_at = 0, 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            rss = status_kib(proc.pid, "VmRSS")
            if rss > sampled_kib:
                sampled_kib, sampled_at = rss, time.monotonic() - started
            time.sleep(0.05)
        wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    try:
        summary = json.loads(out_path.read_text())
    except ValueError:
        summary = {}
    return {
        "exit_status": proc.returncode,
        "timed_out": timed_out,
        "peak_rss_bytes": max(usage.ru_maxrss, sampled_kib) * 1024,
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,
        "sampled_rss_peak_bytes": sampled_kib * 1024,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "sampled_rss_peak_at_s": round(sampled_at, 2),
        "wall_s": round(wall, 3),
        "summary": summary,
        "stderr_tail": err_path.read_text(errors="replace")[-2000:],
    }


def measure(
    case: Case, url: str, study: str, work: Path, source: Path, digest: str, timeout: float
) -> dict[str, Any]:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = dlstudy(
        "download", study, "--url", url, "-o", str(out), "--json",
        "--http", case.http, "--mode", case.mode,
    )  # fmt: skip
    run = run_client(cmd, work, timeout)
    files = [p for p in out.rglob("*.dcm") if ".dlstudy" not in p.relative_to(out).parts]
    relative = source.relative_to(source.parents[2])  # <study>/<series>/<sop>.dcm
    target = out / relative
    run["files"] = len(files)
    run["identical"] = (
        len(files) == 1
        and target.is_file()
        and target.stat().st_size == source.stat().st_size
        and sha256(target) == digest
    )
    return run


def rerun_baseline(
    case: Case, url: str, study: str, work: Path, source: Path, digest: str, timeout: float
) -> dict[str, Any]:
    """The same client with the file already present: interpreter, imports, QIDO, no body."""
    first = measure(case, url, study, work, source, digest, timeout)
    out = work / "out"
    cmd = dlstudy(
        "download", study, "--url", url, "-o", str(out), "--json",
        "--http", case.http, "--mode", case.mode,
    )  # fmt: skip
    run = run_client(cmd, work, timeout)
    run["identical"] = first["identical"]
    shutil.rmtree(out, ignore_errors=True)
    return run


# -- report --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    memory = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        memory = status_like("/proc/meminfo", "MemTotal")
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "git_head": commit or None,
    }


def status_like(path: str, field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(path).read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def row(
    label: str, http: str, runs: list[dict[str, Any]], size: int, limit: float
) -> dict[str, Any]:
    peak = max(r["peak_rss_bytes"] for r in runs)
    ok = all(
        r["exit_status"] == 0 and r["identical"] and r["peak_rss_bytes"] < limit * 1e6 for r in runs
    )
    summaries = [r["summary"] for r in runs]
    seconds = statistics.median(
        s.get("seconds") or r["wall_s"] for s, r in zip(summaries, runs, strict=True)
    )
    last = summaries[-1]
    retrieval = last.get("retrieval") or {}
    form = retrieval.get("form")
    if last.get("mode") in ("series", "study") and not retrieval.get("settled"):
        form = f"{last['mode']} multipart"  # no per-instance request was needed
    fell_back = any(
        "fetching one by one" in r["stderr_tail"] or "bulk retrieval stopped" in r["stderr_tail"]
        for r in runs
    )
    if fell_back:
        form = f"{form} (bulk fell back)"
    return {
        "case": label,
        "http": http,
        "http_version": summaries[-1].get("http_version"),
        "form": form,
        "peak_rss_mb": round(peak / 1e6, 1),
        "peak_rss_mb_runs": [round(r["peak_rss_bytes"] / 1e6, 1) for r in runs],
        "seconds": round(seconds, 2),
        "client_cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 2),
        "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
        "mb_per_s": round(size / 1e6 / seconds, 1) if seconds else None,
        "identical": all(r["identical"] for r in runs),
        "exit_status": [r["exit_status"] for r in runs],
        "result": "PASS" if ok else "FAIL",
        "runs": runs,
    }


def print_table(rows: list[dict[str, Any]], size: int, limit: float) -> None:
    print(
        f"\nClient peak RSS downloading one {size / GIB:.2f} GiB instance "
        "(max over repeats; times = medians; CPU s = client user+sys; "
        f"limit {limit:.0f} MB)"
    )
    header = (
        f"{'case':<22}{'http':<6}{'answered as':<26}{'peak RSS MB':>12}{'s':>8}{'MB/s':>8}"
        f"{'CPU s':>8}{'identical':>11}{'result':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        answered = f"{r['http_version'] or '?'} {r['form'] or ''}".strip()
        mb_per_s = f"{r['mb_per_s']:.0f}" if r["mb_per_s"] else "-"
        print(
            f"{r['case']:<22}{r['http']:<6}{answered:<26}{r['peak_rss_mb']:>12.1f}"
            f"{r['seconds']:>8.2f}{mb_per_s:>8}{r['client_cpu_s_median']:>8.2f}"
            f"{'yes' if r['identical'] else 'NO':>11}{r['result']:>8}"
        )


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--size-gib", type=float, default=WSI_GIB, help="instance size")
    options.add_argument("--repeats", type=int, default=3, help="runs per case")
    options.add_argument("--limit-mb", type=float, default=150.0, help="peak RSS limit (10^6 B)")
    options.add_argument("--timeout", type=float, default=900.0, help="seconds per process")
    options.add_argument("--workdir", type=Path, help="keep source/output here (reused)")
    options.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = options.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="dlstudy-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Server] = {}
    try:
        print(f"generating the source in {work / 'source'} ...", flush=True)
        source = synth(work / "source", args.size_gib, args.timeout)
        size = source.stat().st_size
        digest = sha256(source)
        study = source.parents[1].name
        for profile in sorted({case.profile for case in CASES}):
            servers[profile] = Server(
                work / "source", profile, work / f"server-{profile}.log", timeout=120
            )
            print(f"{profile} server at {servers[profile].url}", flush=True)

        runs: dict[Case, list[dict[str, Any]]] = {case: [] for case in CASES}
        for repeat in range(args.repeats):
            for case in CASES:
                server = servers[case.profile]
                run = measure(case, server.url, study, work, source, digest, args.timeout)
                runs[case].append(run)
                print(
                    f"  [{repeat + 1}/{args.repeats}] {case.name:<20} http {case.http:<4}"
                    f" peak {run['peak_rss_bytes'] / 1e6:7.1f} MB  {run['wall_s']:7.2f} s"
                    f"  exit {run['exit_status']}  identical {run['identical']}",
                    flush=True,
                )
        first = CASES[0]
        baseline = rerun_baseline(
            first, servers[first.profile].url, study, work, source, digest, args.timeout
        )
    finally:
        for server in servers.values():
            server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [row(c.name, c.http, runs[c], size, args.limit_mb) for c in CASES]
    base = row("rerun (all present)", first.http, [baseline], size, args.limit_mb)
    base["mb_per_s"] = None
    print_table([*rows, base], size, args.limit_mb)

    report = {
        "benchmark": "download_memory",
        "instance_bytes": size,
        "repeats": args.repeats,
        "limit_mb": args.limit_mb,
        "method": (
            "each client is `python -m dlstudy download ... --json` in a fresh process, reaped "
            "with os.wait4(pid); peak RSS = that child's ru_maxrss; MB = 10^6 bytes; "
            "seconds = dlstudy's own timer from --json (median over repeats)"
        ),
        "machine": machine(),
        "passed": all(r["result"] == "PASS" for r in rows),
        "cases": rows,
        "baseline": base,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temp = args.output.with_name(args.output.name + ".tmp")
    temp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temp, args.output)
    print(f"\nwrote {args.output}")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
