"""dlstudy against curl --parallel and dicomweb-client, same data, same nginx, one run.

    bash benchmarks/run.sh            # full run (~25 min on 2 cores + data build), 5 repeats
    bash benchmarks/run.sh --quick    # small datasets, 1 repeat (~1-3 min): a smoke test
    benchmarks/.venv/bin/python benchmarks/compare.py --help

What runs
  * Data: `dlstudy synth` presets `ct` (1,000 x 512 KiB), `many` (2,000 x 16 KiB), `wsi` (one
    1.5 GiB instance), built once under --data-dir with the static DICOMweb answers beside them
    (benchmarks/static_tree.py: QIDO JSON files, prebuilt multipart/related bodies).
  * Server: Debian's nginx as deployed (8 KiB HTTP/2 frames, nothing tuned for a client),
    configured and started here (prefix, config, pid and logs in a temp folder), serving that
    tree over HTTP/1.1, h2c (prior knowledge) and TLS with h2 by ALPN (a throwaway CA from the
    openssl CLI, given to every client); one more TLS port with 1 MiB frames gives a second row.
    Its CPU seconds are measured for every run.
  * RTT: 0 ms is loopback; 20 ms goes through benchmarks/delayline.py, a TCP proxy that forwards
    every chunk at arrival + 10 ms in each direction without limiting throughput.
  * Clients, each a fresh process, writing every instance to a file (under /dev/shm by default:
    on a shared disk the journal made identical runs vary tenfold):
      curl --parallel        Debian's curl, --parallel-max C and 64, a -K list of url/output pairs
                             (the URL list comes from the manifest: curl does no QIDO).
      dlstudy                `python -m dlstudy download STUDY --url ... --http 1.1|2 --json` with
                             its own defaults (+ --dlstudy-args); also --workers 1, --mode
                             instance (many) and --http 1.1 over TLS.
      dicomweb-client study  `retrieve_study()`, then `save_as()` per dataset.
      dicomweb-client inst.  `search_for_instances()` + `retrieve_instance()`, sequential.
      dicomweb-client x16    the same from C threads (an extra; the library has no concurrency).
  * Matrix: ct and many x {HTTP/1.1, h2c, TLS h2} x {0, 20 ms} for curl and dlstudy; dicomweb-client
    only at 0 ms, on HTTP/1.1 and TLS (requests speaks HTTP/1.1 only, so over TLS it gets
    HTTP/1.1 by ALPN); wsi only at 0 ms over HTTP/1.1 and TLS h2, curl and dlstudy; no curl over
    h2c (Debian's curl 7.88 fails there; a probe run shows it). What is left out and why is
    printed and saved.

How it is measured
  Every client runs under GNU time and is reaped with os.wait4: wall time from just before the
  start to the reap (interpreter start-up included, for every client alike), CPU = ru_utime +
  ru_stime, peak RSS = the client's own ru_maxrss (see measure() for why GNU time), or for a
  client with worker processes the peak of their summed PSS (TreeRss). Server and
  proxy CPU are deltas of /proc/PID/stat; "others' CPU" is what the rest of the machine used
  meanwhile (/proc/stat), a noise indicator: before each run the script waits (bounded) for the
  machine to be quiet. After each run the output is compared with the source: SHA-256 of every
  file (and, for a file that differs, SOP Instance UID + pixel data, reported as re-encoded);
  then it is deleted. Repeats run interleaved (client A, B, C, A, B, C, ...); tables show
  medians. MB = 10^6 bytes; MB/s and instances/s use the instances' bytes and the wall time.

Writes benchmarks/results/compare.json (every run, medians, target ratios, machine) and
benchmarks/results/compare.md (the tables), and on a full run updates the results section of
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import static_tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
README = HERE / "README.md"
HOST = "127.0.0.1"
TRANSPORTS = ("h1", "h2c", "tls", "tls-tuned")
TRANSPORT_LABEL = {
    "h1": "HTTP/1.1",
    "h2c": "h2c",
    "tls": "TLS h2",
    "tls-tuned": "TLS h2, 1 MiB frames",
}
CLIENTS = (
    "curl",
    "curl64",
    "floor",
    "engine",
    "dlstudy",
    "dlstudy-w1",
    "dlstudy-instance",
    "dlstudy-h1",
    "dwc-study",
    "dwc-instance",
    "dwc-threads",
)
CLIENT_LABEL = {
    "curl": "curl --parallel-max 16",
    "curl64": "curl --parallel-max 64",
    "floor": "bare asyncio client (floor, HTTP/1.1)",
    "engine": "dlstudy's engine alone (libcurl, no checks)",
    "dlstudy": "dlstudy (defaults)",
    "dlstudy-w1": "dlstudy --workers 1",
    "dlstudy-instance": "dlstudy --mode instance",
    "dlstudy-h1": "dlstudy --http 1.1",
    "dwc-study": "dicomweb-client retrieve_study",
    "dwc-instance": "dicomweb-client retrieve_instance",
    "dwc-threads": "dicomweb-client retrieve_instance x16 threads",
}
DWC_MODE = {"dwc-study": "study", "dwc-instance": "instance", "dwc-threads": "threads"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
TIME = "/usr/bin/time"  # GNU time (Debian package `time`), see measure()


def log(message: str) -> None:
    print(message, flush=True)


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One (dataset, transport, RTT) with the clients that run on it, interleaved."""

    dataset: str
    transport: str
    rtt_ms: int
    clients: tuple[str, ...]


def make_plan(args: argparse.Namespace) -> tuple[list[Group], list[str]]:
    groups: list[Group] = []
    for ds in args.datasets:
        for rtt in sorted({0, args.rtt_ms}):
            for tr in TRANSPORTS:
                if ds == "wsi" and (rtt or tr == "h2c"):
                    continue
                if tr == "tls-tuned" and (ds != "ct" or rtt):
                    continue  # one comparison row: what 1 MiB frames change
                clients = ["dlstudy", "dlstudy-w1"]
                if tr != "h2c":
                    clients[:0] = ["curl", "curl64"]
                if ds == "many":
                    clients.append("dlstudy-instance")
                if tr == "tls":
                    clients.append("dlstudy-h1")
                if rtt == 0 and tr in ("h1", "tls"):
                    clients.insert(2, "floor")
                if rtt == 0 and tr != "tls-tuned":
                    clients.insert(clients.index("dlstudy"), "engine")
                if ds != "wsi" and rtt == 0 and tr in ("h1", "tls"):
                    clients += ["dwc-study", "dwc-instance", "dwc-threads"]
                chosen = tuple(c for c in clients if c in args.clients)
                if chosen and tr in args.transports:
                    groups.append(Group(ds, tr, rtt, chosen))
    notes = [
        f"dicomweb-client runs at 0 ms only: sequential per-instance retrieval pays one RTT per "
        f"instance (1,000-2,000 x {args.rtt_ms} ms), which adds nothing but minutes.",
        "dicomweb-client has no h2c row: requests speaks HTTP/1.1 only; its TLS rows, "
        "'TLS (h1.1)', are HTTP/1.1 over TLS (ALPN) on the same nginx port, as are the rows of "
        "`dlstudy --http 1.1` and of the floor client over TLS.",
        "The floor row (benchmarks/floor_client.py) is a bare asyncio HTTP/1.1 client that only "
        "writes bodies to files: no QIDO, hashing, DICOM check, temp file, retries or progress. "
        "It is the scale for what Python itself costs on this machine.",
        "The engine row (benchmarks/engine_client.py) is dlstudy's own HTTP engine alone "
        "(libcurl's multi interface on the asyncio loop, the same sink dlstudy pours bodies "
        "into) with dlstudy's default concurrency, in one process, each body written to its "
        "file: no QIDO, typer, hashing, DICOM check, temp file, retries or progress. Between "
        "it and curl is libcurl driven from Python; between it and dlstudy's rows is dlstudy's "
        "own work per instance.",
        "wsi runs at 0 ms over HTTP/1.1 and TLS h2 only (one instance: RTT adds one round trip; "
        "h2c shows nothing TLS h2 does not), and without dicomweb-client (retrieve_study holds the "
        "1.5 GiB instance in memory several times over).",
        "curl gets the instance URLs from the manifest (no QIDO); dlstudy and dicomweb-client "
        "query QIDO first (2-3 small requests).",
        "No curl row over h2c: Debian 12's curl 7.88 with --parallel --http2-prior-knowledge "
        "fails every transfer it multiplexes onto an h2c connection ('Error in the HTTP2 framing "
        "layer'); the probe below shows it on this run.",
    ]
    return groups, notes


# -- processes -------------------------------------------------------------------------------------


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


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, of which irq + softirq) CPU seconds of all CPUs since boot, from /proc/stat.

    Interrupt and softirq time (loopback TCP is processed there) is not charged to any process,
    so it is reported on its own ("kernel net"), not as somebody else's work.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (irq + softirq) / CLK_TCK


def machine_busy_seconds() -> float:
    return machine_cpu_seconds()[0]


def background_cpus(seconds: float = 0.5) -> float:
    """CPUs busy over `seconds` while none of ours runs (servers idle): other people's work."""
    before = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / seconds


class QuietWait:
    """Before each run, wait (bounded) until the machine is quiet: it may be shared."""

    def __init__(self, per_run: float, total: float, threshold: float = 0.25) -> None:
        self.per_run, self.left, self.threshold = per_run, total, threshold

    def __call__(self) -> tuple[float, float]:
        """(seconds waited, CPUs others used just before the run)."""
        started = time.monotonic()
        limit = min(self.per_run, self.left)
        while True:
            load = background_cpus()
            waited = time.monotonic() - started
            if load < self.threshold or waited >= limit:
                self.left = max(0.0, self.left - waited)
                return round(waited, 1), round(load, 2)


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def stop_process(proc: subprocess.Popen[bytes], first_signal: int, name: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(first_signal)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in 15 s: killing it")
        proc.kill()
        proc.wait(timeout=15)


class Nginx:
    """nginx -p PREFIX -c CONF -g 'daemon off;' as our child; stop() in a finally."""

    def __init__(self, prefix: Path, conf: Path, ports: dict[str, int]) -> None:
        test = subprocess.run(
            ["nginx", "-t", "-p", str(prefix), "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if test.returncode != 0:
            raise SystemExit(f"nginx -t failed:\n{test.stderr}")
        self.log = (prefix / "logs" / "nginx.out").open("wb")
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not all(accepts(p) for p in ports.values()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"nginx did not start; see {prefix / 'logs'}")
            time.sleep(0.05)
        self.pids = [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self) -> None:
        stop_process(self.proc, 3, "nginx")  # SIGQUIT: graceful shutdown
        self.log.close()


class DelayLine:
    """benchmarks/delayline.py in its own process; stop() in a finally."""

    def __init__(self, pairs: dict[int, int], delay_ms: float, log_path: Path) -> None:
        self.log = log_path.open("wb")
        cmd = [sys.executable, str(HERE / "delayline.py"), "--delay-ms", str(delay_ms)]
        cmd += [f"{listen}:{target}" for listen, target in pairs.items()]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            # (the run's folder, log included, is removed on the way out: its words go along)
            said = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            words = " / ".join(said) or "no output"
            raise SystemExit(f"the delay-line proxy did not start: {words}")
        self.pids = [self.proc.pid]

    def stop(self) -> None:
        stop_process(self.proc, 15, "delay-line proxy")
        self.log.close()


@dataclass
class Measured:
    exit_code: int
    wall: float
    cpu: float
    rss_mb: float  # peak RSS; for a client with worker processes, its tree's peak PSS sum
    rss_sum_mb: float  # the tree's peak VmRSS sum (shared pages once per process): upper bound
    timed_out: bool
    server_cpu: float
    proxy_cpu: float
    other_cpu: float
    irq_cpu: float
    processes: int


def status_kib(pid: int, field: str, source: str = "status") -> int:
    """A "Field:  N kB" line of /proc/PID/status (or another /proc/PID file)."""
    try:
        text = Path(f"/proc/{pid}/{source}").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared by n processes count 1/n in each."""
    return status_kib(pid, "Pss", "smaps_rollup")


class TreeRss(threading.Thread):
    """Samples (every 50 ms) the summed memory of every process under `root`, root excluded.

    ru_maxrss is the peak of one process (for a parent, the largest of it and its children);
    a client that runs worker processes (dlstudy --workers N) needs the sum, which only
    sampling sees. Forked workers share most of their pages with the parent (copy on write),
    which a VmRSS sum counts once per process (`peak_kib`, an upper bound); the PSS sum counts
    each page once (`peak_pss_kib`), and is what the table reports for such clients.
    """

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self.max_processes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            pids, queue = [], children_of(self.root)
            while queue and len(pids) < 1000:
                pid = queue.pop()
                pids.append(pid)
                queue.extend(children_of(pid))
            self.max_processes = max(self.max_processes, len(pids))
            self.peak_kib = max(self.peak_kib, sum(status_kib(pid, "VmRSS") for pid in pids))
            if len(pids) > 1:  # the client and its workers (time's own process is not sampled)
                self.peak_pss_kib = max(self.peak_pss_kib, sum(pss_kib(pid) for pid in pids))

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def measure(
    cmd: list[str],
    env: dict[str, str],
    stdout: Path,
    stderr: Path,
    timeout: float,
    server_pids: list[int],
    proxy_pids: list[int],
) -> Measured:
    """Run `cmd` to completion (killed after `timeout`), reaped by os.wait4 for its rusage.

    The client runs under GNU time (`/usr/bin/time`), for one reason: ru_maxrss. At exec the
    kernel keeps, as the new program's peak RSS, the peak of the process image it replaces, i.e.
    of the fork of whoever started it; a fork of this Python holding the manifests would put a
    floor of ~70 MB under every client (curl measured 68 MB that way, 4 MB under time). GNU time
    is a small C program, so its fork adds ~1-2 MB at most, and it reports its child's own
    ru_maxrss (%M). CPU comes from our wait4 on time (its children's usage included, microsecond
    resolution; time's own is ~0) and wall from our clock.
    """
    server0, proxy0 = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
    busy0, irq0 = machine_cpu_seconds()
    lock = threading.Lock()
    state = {"done": False, "killed": False}
    rusage_file = stdout.with_suffix(".time")
    rusage_file.unlink(missing_ok=True)
    timed = [TIME, "-o", str(rusage_file), "-f", "%M", *cmd]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=out, stderr=err, env=env, start_new_session=True)

        def kill() -> None:
            with lock:
                if not state["done"]:
                    state["killed"] = True
                    os.killpg(proc.pid, 9)  # time and the client (its own session)

        timer = threading.Timer(timeout, kill)
        timer.start()
        sampler = TreeRss(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            with lock:
                state["done"] = True
            timer.cancel()
            sampler.stop()
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    try:  # "Command exited with non-zero status N" may come first; %M is the last line
        rss_kib = int(rusage_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        rss_kib = usage.ru_maxrss  # an upper bound (see above)
    rss_sum_kib = rss_kib
    if sampler.max_processes > 1:  # ru_maxrss is per process: a multi-process client's sum
        rss_sum_kib = max(rss_kib, sampler.peak_kib)
        rss_kib = max(rss_kib, sampler.peak_pss_kib)
    busy1, irq1 = machine_cpu_seconds()
    busy, irq = busy1 - busy0, irq1 - irq0
    server_cpu = cpu_seconds(server_pids) - server0
    proxy_cpu = cpu_seconds(proxy_pids) - proxy0
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(
        exit_code=proc.returncode,
        wall=wall,
        cpu=cpu,
        rss_mb=rss_kib * 1024 / 1e6,
        rss_sum_mb=rss_sum_kib * 1024 / 1e6,
        timed_out=state["killed"],
        server_cpu=server_cpu,
        proxy_cpu=proxy_cpu,
        # Anything else busy on the machine meanwhile (other users, kernel threads): noise.
        other_cpu=max(0.0, busy - irq - cpu - server_cpu - proxy_cpu),
        irq_cpu=irq,
        processes=sampler.max_processes,
    )


# -- checking what a client wrote ----------------------------------------------------------------


def check_output(out: Path, manifest: dict[str, Any], allow_reencoded: bool) -> dict[str, Any]:
    """Compare every expected file with the source: bytes, else (dicomweb-client) pixels."""
    identical = reencoded = missing = differ = 0
    expected = set()
    for inst in manifest["instances"]:
        expected.add(inst["rel"])
        path = out / inst["rel"]
        if not path.is_file():
            missing += 1
        elif path.stat().st_size == inst["size"] and (
            static_tree.sha256_file(path) == inst["sha256"]
        ):
            identical += 1
        elif allow_reencoded and same_pixels(path, inst):
            reencoded += 1
        else:
            differ += 1
    extra = sum(
        1
        for p in out.rglob("*.dcm")
        if not any(part.startswith(".") for part in p.relative_to(out).parts)
        and p.relative_to(out).as_posix() not in expected
    )
    if missing or differ or extra:
        verdict = f"NO ({missing} missing, {differ} differ, {extra} extra)"
    elif reencoded:
        verdict = f"re-encoded, same pixels ({reencoded})"
    else:
        verdict = "yes"
    return {
        "verdict": verdict,
        "identical": identical,
        "reencoded": reencoded,
        "missing": missing,
        "differ": differ,
        "extra": extra,
    }


def same_pixels(path: Path, inst: dict[str, Any]) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        src = pydicom.dcmread(Path(inst["src_root"]) / inst["rel"])
    except Exception:
        return False
    return bool(
        str(ds.SOPInstanceUID) == inst["sop"] and ds.get("PixelData") == src.get("PixelData")
    )


# -- clients -------------------------------------------------------------------------------------


@dataclass
class Setup:
    args: argparse.Namespace
    data_root: Path
    work: Path
    ca: Path
    nginx_ports: dict[str, int]
    proxy_ports: dict[str, int]
    manifests: dict[str, dict[str, Any]]
    env: dict[str, str]
    out_dir: Path
    server_pids: list[int] = field(default_factory=list)
    proxy_pids: list[int] = field(default_factory=list)
    quiet: QuietWait = field(default_factory=lambda: QuietWait(0, 0))

    def base_url(self, dataset: str, transport: str, rtt_ms: int) -> str:
        port = (self.proxy_ports if rtt_ms else self.nginx_ports)[transport]
        scheme = "https" if transport.startswith("tls") else "http"
        return f"{scheme}://{HOST}:{port}/{dataset}/dicomweb"


def client_command(setup: Setup, group: Group, client: str, out: Path) -> list[str]:
    manifest = setup.manifests[group.dataset]
    url = setup.base_url(group.dataset, group.transport, group.rtt_ms)
    c = str(setup.args.concurrency)
    python = sys.executable
    if client.startswith("curl"):
        config = setup.work / "curl.cfg"
        lines = []
        for inst in manifest["instances"]:
            study, series, sop = inst["study"], inst["series"], inst["sop"]
            lines.append(f'url = "{url}/studies/{study}/series/{series}/instances/{sop}"')
            lines.append(f'output = "{out / inst["rel"]}"')
        config.write_text("\n".join(lines) + "\n")
        flags = {
            "h1": ["--http1.1"],
            "h2c": ["--http2-prior-knowledge"],
            "tls": ["--http2", "--cacert", str(setup.ca)],
            "tls-tuned": ["--http2", "--cacert", str(setup.ca)],
        }[group.transport]
        return [
            "curl",
            "--parallel",
            "--parallel-max",
            "64" if client == "curl64" else c,
            "--silent",
            "--show-error",
            "--no-progress-meter",
            "--fail",
            "--globoff",
            "--create-dirs",
            "--write-out",
            "%{http_code} %{http_version} %{num_connects}\\n",
            *flags,
            "-K",
            str(config),
        ]
    tls = ["--ca-bundle", str(setup.ca)] if group.transport.startswith("tls") else []
    if client == "engine":
        http = "1.1" if group.transport == "h1" else "2"
        return [
            *[python, str(HERE / "engine_client.py"), "--url", url, "--http", http, *tls],
            *["--manifest", str(setup.data_root / group.dataset / "manifest.json")],
            *["--out", str(out)],
        ]
    if client == "floor":
        return [
            *[python, str(HERE / "floor_client.py"), "--url", url, "-c", c, *tls],
            *["--manifest", str(setup.data_root / group.dataset / "manifest.json")],
            *["--out", str(out)],
        ]
    if client.startswith("dlstudy"):
        # dlstudy's own defaults (concurrency, processes): only the protocol is chosen, so
        # each row is the transport it names.
        http = "1.1" if group.transport == "h1" or client == "dlstudy-h1" else "2"
        extra = {"dlstudy-w1": ["--workers", "1"], "dlstudy-instance": ["--mode", "instance"]}
        return [
            *[python, "-m", "dlstudy", "download", *manifest["studies"], "--url", url],
            *["-o", str(out), "--json", "--http", http, *tls],
            *extra.get(client, []),
            *setup.args.dlstudy_args.split(),
        ]
    (study,) = manifest["studies"]
    return [
        setup.args.dwc_python,
        str(HERE / "dicomweb_client_run.py"),
        "--url",
        url,
        "--study",
        study,
        "--out",
        str(out),
        "--mode",
        DWC_MODE[client],
        "--threads",
        c,
        *tls,
    ]


def client_report(client: str, stdout: Path, stderr: Path, group: Group) -> dict[str, Any]:
    """What the client said about itself: dlstudy's JSON, curl's per-transfer write-out."""
    text = stdout.read_text(errors="replace")
    err = stderr.read_text(errors="replace").strip()
    info: dict[str, Any] = {}
    if err:
        info["stderr_tail"] = err[-2000:]
    if client.startswith("curl"):
        codes: dict[str, int] = {}
        versions: set[str] = set()
        connects = 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3:
                codes[parts[0]] = codes.get(parts[0], 0) + 1
                versions.add(parts[1])
                connects += int(parts[2]) if parts[2].isdigit() else 0
        info.update(status_codes=codes, http_versions=sorted(versions), connections=connects)
    elif client.startswith("dlstudy"):
        try:
            summary = json.loads(text)
        except ValueError:
            info["json_error"] = text[-500:]
            return info
        info.update(
            {
                k: summary.get(k)
                for k in ("http_version", "seconds", "mb_per_s", "instances", "processes")
            }
        )
        info["retrieval_form"] = (summary.get("retrieval") or {}).get("form")
        info["strategy"] = summary.get("strategy")
        info["error"] = summary.get("error")
        info["failures"] = (summary.get("failures") or [])[:5]
        want = "HTTP/1.1" if group.transport == "h1" or client == "dlstudy-h1" else "HTTP/2"
        if summary.get("http_version") != want:
            info["unexpected_http_version"] = f"wanted {want}, got {summary.get('http_version')}"
    else:
        try:
            info.update(json.loads(text.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            pass
        if client == "engine":
            want = "HTTP/1.1" if group.transport == "h1" else "HTTP/2"
            if info.get("http_version") != want:
                info["unexpected_http_version"] = f"wanted {want}, got {info.get('http_version')}"
    return info


# -- the run -------------------------------------------------------------------------------------


def run_one(
    setup: Setup, group: Group, client: str, repeat: int, probe: bool = False
) -> dict[str, Any]:
    manifest = setup.manifests[group.dataset]
    out = setup.out_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    waited, background = setup.quiet()
    stdout, stderr = setup.work / "client.out", setup.work / "client.err"
    cmd = client_command(setup, group, client, out)
    m = measure(
        cmd,
        setup.env,
        stdout,
        stderr,
        setup.args.timeout,
        setup.server_pids,
        setup.proxy_pids,
    )
    check = check_output(out, manifest, allow_reencoded=client.startswith("dwc"))
    info = client_report(client, stdout, stderr, group)
    shutil.rmtree(out)
    gb = manifest["bytes"] / 1e9
    n = len(manifest["instances"])
    row = {
        "dataset": group.dataset,
        "transport": group.transport,
        "rtt_ms": group.rtt_ms,
        "client": client,
        "repeat": repeat,
        "exit_code": m.exit_code,
        "timed_out": m.timed_out,
        "wall_s": round(m.wall, 4),
        "mb_per_s": round(manifest["bytes"] / 1e6 / m.wall, 2),
        "instances_per_s": round(n / m.wall, 2),
        "cpu_s": round(m.cpu, 3),
        "cpu_s_per_gb": round(m.cpu / gb, 3),
        "peak_rss_mb": round(m.rss_mb, 1),
        "peak_rss_sum_mb": round(m.rss_sum_mb, 1),
        "client_processes": m.processes,
        "server_cpu_s": round(m.server_cpu, 3),
        "proxy_cpu_s": round(m.proxy_cpu, 3),
        "other_cpu_s": round(m.other_cpu, 3),
        "irq_softirq_cpu_s": round(m.irq_cpu, 3),
        "quiet_wait_s": waited,
        "background_cpus_before": background,
        "self_reported_s": info.get("seconds"),
        "output": check,
        "client_info": info,
    }
    ok = m.exit_code == 0 and not check["verdict"].startswith("NO")
    row["ok"] = ok
    status = "ok" if ok else f"FAILED exit {m.exit_code}"
    if probe:
        status += " (probe)"
    log(
        f"  {group.dataset:5} {TRANSPORT_LABEL[group.transport]:8} {group.rtt_ms:3} ms  "
        f"{CLIENT_LABEL[client]:46} #{repeat}  {m.wall:7.2f} s  {row['mb_per_s']:8.1f} MB/s  "
        f"{m.rss_mb:6.1f} MB  {check['verdict']}  {status}"
    )
    if m.other_cpu > max(0.1, 0.2 * m.wall):
        log(f"    note: {m.other_cpu:.2f} CPU s used by other processes during this run")
    if not ok and not probe:
        log("    command: " + " ".join(cmd[:12]) + (" ..." if len(cmd) > 12 else ""))
        log("    " + (info.get("stderr_tail") or "")[-600:].replace("\n", "\n    "))
    return row


def startup_note(
    setup: Setup, name: str, cmd: list[str], how: str, closed_port: bool = False
) -> str:
    """The fixed part of every run of a client (interpreter start-up and imports, at least).
    `closed_port`: `cmd` is the client's own download command, run against a port where
    nothing listens, so it stops at its first request (a client that retries connection
    errors for seconds, as dicomweb-client does, is timed by its imports instead)."""
    if closed_port:
        cmd = [*cmd, "--url", f"http://{HOST}:{free_port()}/dicomweb"]
    runs = []
    for _ in range(3):
        runs.append(
            measure(
                cmd,
                setup.env,
                setup.work / "startup.out",
                setup.work / "startup.err",
                60,
                [],
                [],
            )
        )
    if closed_port and any(m.exit_code == 0 for m in runs):
        raise SystemExit(f"the start-up probe of {name} succeeded against a closed port")
    wall = statistics.median(m.wall for m in runs)
    cpu = statistics.median(m.cpu for m in runs)
    rss = statistics.median(m.rss_mb for m in runs)
    note = (
        f"Start-up: {how} takes {wall:.2f} s wall, {cpu:.2f} CPU s, {rss:.0f} MB peak RSS "
        f"(median of 3); every {name} wall time above includes it."
    )
    log(note)
    return note


def h2c_probe_note(probe: dict[str, Any]) -> str:
    info = probe["client_info"]
    errors = sorted(
        {line.strip() for line in info.get("stderr_tail", "").splitlines() if "curl:" in line}
    )
    return (
        f"Probe: curl --parallel --http2-prior-knowledge on {probe['dataset']}: exit "
        f"{probe['exit_code']}, HTTP status counts {info.get('status_codes')} (000 = failed), "
        f"{info.get('connections')} connection(s); errors: {'; '.join(errors) or 'none'}."
    )


def median_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["dataset"], r["transport"], r["rtt_ms"], r["client"]), []).append(r)
    rows = []
    for (ds, tr, rtt, client), rs in cells.items():
        verdicts = sorted({r["output"]["verdict"] for r in rs})
        fails = sum(not r["ok"] for r in rs)
        extra: dict[str, Any] = {}
        if client.startswith("curl"):
            extra["connections"] = statistics.median(
                r["client_info"].get("connections", 0) for r in rs
            )
            versions = {v for r in rs for v in r["client_info"].get("http_versions", [])}
            extra["http_versions"] = sorted(versions)
        own = [r["self_reported_s"] for r in rs if isinstance(r["self_reported_s"], int | float)]
        extra["self_reported_s"] = round(statistics.median(own), 3) if own else None
        if client.startswith("dlstudy"):
            strategies = [st for r in rs for st in (r["client_info"].get("strategy") or [])]
            extra["dlstudy_modes"] = sorted({str(st.get("mode")) for st in strategies})
            extra["dlstudy_why"] = strategies[0].get("why") if strategies else None
            extra["http_versions"] = sorted({str(r["client_info"].get("http_version")) for r in rs})
        rows.append(
            {
                "dataset": ds,
                "transport": tr,
                "rtt_ms": rtt,
                "client": client,
                "runs": len(rs),
                "failed_runs": fails,
                **{
                    key: round(statistics.median(r[key] for r in rs), 3)
                    for key in (
                        "wall_s",
                        "mb_per_s",
                        "instances_per_s",
                        "cpu_s_per_gb",
                        "peak_rss_mb",
                        "server_cpu_s",
                        "proxy_cpu_s",
                        "other_cpu_s",
                        "irq_softirq_cpu_s",
                    )
                },
                "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "identical": verdicts[0] if len(verdicts) == 1 else " / ".join(verdicts),
                **extra,
            }
        )
    return rows


def find(rows: list[dict[str, Any]], ds: str, tr: str, rtt: int, client: str) -> Any:
    for r in rows:
        if (r["dataset"], r["transport"], r["rtt_ms"], r["client"]) == (ds, tr, rtt, client):
            return r if r["failed_runs"] < r["runs"] else None
    return None


def targets(rows: list[dict[str, Any]], rtt_ms: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def ratio(name: str, a: Any, b: Any, key: str, need: float) -> None:
        if a is None or b is None:
            out.append({"target": name, "value": None, "need": need, "result": "n/a"})
            return
        value = a[key] / b[key] if b[key] else float("inf")
        out.append(
            {
                "target": name,
                "value": round(value, 3),
                "need": need,
                "result": "PASS" if value >= need else "FAIL",
            }
        )

    against_curl = [(0, "dlstudy", 0.9), (0, "dlstudy-w1", 0.8)]
    if rtt_ms:
        against_curl.append((rtt_ms, "dlstudy", 1.2))  # dlstudy chooses its concurrency
    for rtt, client, need in against_curl:
        ratio(
            f"ct TLS h2 {rtt} ms: {CLIENT_LABEL[client]} / {CLIENT_LABEL['curl']} (MB/s)",
            find(rows, "ct", "tls", rtt, client),
            find(rows, "ct", "tls", rtt, "curl"),
            "mb_per_s",
            need,
        )
    for tr in ("tls", "h1"):
        ratio(
            f"many {TRANSPORT_LABEL[tr]} 0 ms: dlstudy --mode instance / curl --parallel-max 16 "
            "(instances/s)",
            find(rows, "many", tr, 0, "dlstudy-instance"),
            find(rows, "many", tr, 0, "curl"),
            "instances_per_s",
            0.8,
        )
    for ds in ("ct", "many"):
        for tr in ("h1", "tls"):
            for dwc in ("dwc-study", "dwc-instance"):
                ratio(
                    f"{ds} {'HTTP/1.1' if tr == 'h1' else 'TLS'} 0 ms: dlstudy (defaults) / "
                    f"{CLIENT_LABEL[dwc]} (MB/s)",
                    find(rows, ds, tr, 0, "dlstudy"),
                    find(rows, ds, tr, 0, dwc),
                    "mb_per_s",
                    5.0,
                )
    for ds in ("ct", "wsi"):
        peaks = [
            r["max_peak_rss_mb"]
            for r in rows
            if r["dataset"] == ds and r["client"].startswith("dlstudy")
        ]
        worst = max(peaks) if peaks else None
        out.append(
            {
                "target": f"{ds}: dlstudy peak RSS, worst run (MB, at most)",
                "value": worst,
                "need": 100,
                "result": "n/a" if worst is None else ("PASS" if worst <= 100 else "FAIL"),
            }
        )
    return out


# -- reporting -----------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | transport | RTT ms | client | wall s | MB/s | inst/s | CPU s/GB "
        "| peak RSS MB | server CPU s | others' CPU s | self-reported s | identical |"
    )
    lines = [head, "|" + "---|" * 13]
    order = {c: i for i, c in enumerate(CLIENTS)}
    for r in sorted(
        rows,
        key=lambda r: (
            list(static_tree.DATASETS).index(r["dataset"]),
            r["rtt_ms"],
            TRANSPORTS.index(r["transport"]),
            order[r["client"]],
        ),
    ):
        transport = TRANSPORT_LABEL[r["transport"]]
        if r["transport"] == "tls" and r["client"] in (
            "dwc-study",
            "dwc-instance",
            "dwc-threads",
            "dlstudy-h1",
            "floor",
        ):
            transport = "TLS (h1.1)"
        failed = f" ({r['failed_runs']}/{r['runs']} failed)" if r["failed_runs"] else ""
        own = "" if r["self_reported_s"] is None else f"{r['self_reported_s']:.2f}"
        label = CLIENT_LABEL[r["client"]]
        if r.get("dlstudy_modes"):
            label += f" ({'/'.join(r['dlstudy_modes'])})"
        lines.append(
            f"| {r['dataset']} | {transport} | {r['rtt_ms']} | {label} "
            f"| {r['wall_s']:.2f} | {r['mb_per_s']:.0f} | {r['instances_per_s']:.0f} "
            f"| {r['cpu_s_per_gb']:.2f} | {r['peak_rss_mb']:.0f} | {r['server_cpu_s']:.2f} "
            f"| {r['other_cpu_s']:.2f} | {own} | {r['identical']}{failed} |"
        )
    return "\n".join(lines)


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | value | need | result |", "|---|---|---|---|"]
    for t in rows:
        cmp = "≤" if "RSS" in t["target"] else "≥"
        lines.append(f"| {t['target']} | {t['value']} | {cmp} {t['need']} | {t['result']} |")
    return "\n".join(lines)


def command_version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc})"
    lines = (p.stdout or p.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine(dwc_python: str) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    versions = {}
    for dist in ("dlstudy", "httpx", "httpcore", "h2", "anyio"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    for dist in ("dicomweb-client", "requests"):  # in their own environment
        found = command_version(
            [dwc_python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"]
        )
        versions[dist] = found if found and found[0].isdigit() else None
    git = ["git", "--no-optional-locks", "-C", str(REPO)]  # read-only: no index refresh
    dirty = command_version([*git, "status", "--porcelain", "--", "dlstudy"])
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(int(mem.group(1)) / 1e6, 1) if mem else None,
        "kernel": platform.release(),
        "os": command_version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "nginx": command_version(["nginx", "-v"]),
        "curl": command_version(["curl", "--version"]),
        "openssl": command_version(["openssl", "version"]),
        "python": platform.python_version(),
        "packages": versions,
        "dlstudy_commit": command_version([*git, "rev-parse", "HEAD"]),
        "dlstudy_worktree_dirty": bool(dirty and not dirty.startswith("unavailable")),
        "loadavg_at_start": os.getloadavg(),
        "dlstudy_source_digest_at_start": source_digest(),
    }


def source_digest() -> str:
    """SHA-256 over dlstudy/**/*.py: tells whether the code changed while the benchmark ran."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "dlstudy").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def update_readme(markdown: str) -> None:
    begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
    if not README.exists():
        return
    text = README.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        README.write_text(f"{head}{begin}\n{markdown}\n{end}{tail}")


# -- main ----------------------------------------------------------------------------------------


def filesystem(path: Path) -> str:
    """The file system type of `path` (from /proc/mounts, longest matching mount point)."""
    best, kind = "", "unknown"
    resolved = path.resolve().as_posix()
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
            best
        ):
            best, kind = mount, fields[2]
    return kind


def choose_out_root(asked: Path | None, data_dir: Path, largest: int) -> Path:
    """Where clients write: --out-dir, else /dev/shm when it has room, else the data dir."""
    if asked is not None:
        asked.mkdir(parents=True, exist_ok=True)
        return asked
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        if shutil.disk_usage(shm).free > 2 * largest + (1 << 30):
            root = shm / "dlstudy-compare-out"
            root.mkdir(exist_ok=True)
            return root
    return data_dir


def client_env(config_home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("DLSTUDY_")
    }
    env["XDG_CONFIG_HOME"] = str(config_home)  # no user config file for dlstudy
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--quick", action="store_true", help="small datasets, 1 repeat")
    own_venv = HERE / ".venv-dwc" / "bin" / "python"
    parser.add_argument(
        "--dwc-python",
        default=str(own_venv) if own_venv.exists() else sys.executable,
        help="the Python that has dicomweb-client: its own environment, so neither client "
        "loads the other's dependencies (default: benchmarks/.venv-dwc, made by run.sh)",
    )
    parser.add_argument("--repeats", type=int, help="runs per cell (default 5; --quick 1)")
    parser.add_argument("--datasets", default="ct,many,wsi", help="comma list")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma list")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="comma list")
    parser.add_argument("--rtt-ms", type=int, default=20, help="the non-zero RTT (ms)")
    parser.add_argument(
        "-c", "--concurrency", type=int, default=16, help="curl, floor, dicomweb-client threads"
    )
    parser.add_argument("--workers", default="auto", help="nginx worker_processes")
    parser.add_argument(
        "--dlstudy-args",
        default="",
        help="extra arguments for every dlstudy download, e.g. '--workers 2' or '--mode instance'",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dlstudy-compare",
        help="datasets (kept between runs) and client output (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="where clients write (default: /dev/shm when it has room: a shared disk's journal "
        "made the same curl run vary 0.17-1.7 s here; else --data-dir)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per client run")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20,
        help="before each run, wait up to this many seconds for other processes to go below "
        "0.25 CPUs (the machine may be shared; default %(default)s)",
    )
    parser.add_argument(
        "--quiet-wait-total", type=float, default=600, help="cap on all that waiting (s)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="JSON output (default benchmarks/results/compare.json; --quick: compare-quick.json)",
    )
    args = parser.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.transports = [t for t in args.transports.split(",") if t]
    args.clients = [c for c in args.clients.split(",") if c]
    for name, allowed in (
        ("datasets", static_tree.DATASETS),
        ("transports", TRANSPORTS),
        ("clients", CLIENTS),
    ):
        bad = [v for v in getattr(args, name) if v not in allowed]
        if bad:
            parser.error(f"unknown {name}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    if args.results is None:
        args.results = RESULTS_DIR / ("compare-quick.json" if args.quick else "compare.json")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if not 1 <= args.repeats <= 50:
        parser.error("--repeats must be 1-50")
    return args


def main() -> int:
    args = parse_args()
    for tool in ("nginx", "curl", "openssl", TIME):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: run benchmarks/run.sh (it installs it)")
    started = time.monotonic()
    groups, notes = make_plan(args)
    info = machine(args.dwc_python)
    log(f"machine: {info['cpu_model']}, {info['cpus']} CPUs, kernel {info['kernel']}")
    log(f"{info['nginx']}; {info['curl']}")
    dirty = info["dlstudy_worktree_dirty"]
    log(f"dlstudy {info['dlstudy_commit'][:12]} (uncommitted changes in dlstudy/: {dirty})")

    specs = static_tree.QUICK_DATASETS if args.quick else static_tree.DATASETS
    data_root = args.data_dir / ("data-quick" if args.quick else "data")
    manifests = {}
    for ds in args.datasets:
        manifests[ds] = static_tree.build_dataset(
            data_root, ds, specs[ds], multipart=ds != "wsi", log=log
        )
        for inst in manifests[ds]["instances"]:
            inst["src_root"] = str(data_root / ds / "src")
        if len(manifests[ds]["studies"]) != 1:
            raise SystemExit(f"dataset {ds}: expected one study")

    largest = max(m["bytes"] for m in manifests.values())
    out_root = choose_out_root(args.out_dir, args.data_dir, largest)
    info["client_output"] = f"{out_root} ({filesystem(out_root)})"
    log(f"client output under {info['client_output']}")
    runs: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.data_dir))
    out_dir = Path(tempfile.mkdtemp(prefix="out-", dir=out_root))
    nginx: Nginx | None = None
    proxy: DelayLine | None = None
    try:
        ca, cert, key = static_tree.make_certificates(work / "tls")
        nginx_ports = {t: free_port() for t in TRANSPORTS}
        proxy_ports = {t: free_port() for t in TRANSPORTS}
        conf = static_tree.nginx_conf(
            work / "nginx", data_root, nginx_ports, cert, key, args.workers
        )
        nginx = Nginx(work / "nginx", conf, nginx_ports)
        log(f"nginx {nginx_ports} (workers: {args.workers}, pids {nginx.pids})")
        if any(g.rtt_ms for g in groups):
            pairs = {proxy_ports[t]: nginx_ports[t] for t in TRANSPORTS}
            proxy = DelayLine(pairs, args.rtt_ms / 2, work / "delayline.log")
            log(f"delay line {proxy_ports}: {args.rtt_ms / 2} ms each way")
        (work / "config").mkdir()
        setup = Setup(
            args=args,
            data_root=data_root,
            work=work,
            ca=ca,
            nginx_ports=nginx_ports,
            proxy_ports=proxy_ports,
            manifests=manifests,
            env=client_env(work / "config"),
            out_dir=out_dir,
            server_pids=nginx.pids,
            proxy_pids=proxy.pids if proxy else [],
            quiet=QuietWait(args.quiet_wait, args.quiet_wait_total),
        )
        log("warm-up (page cache, nginx's open-file cache; not measured):")
        for ds in args.datasets:
            for tr in ("h1", "tls"):
                run_one(setup, Group(ds, tr, 0, ("curl",)), "curl", 0)
        if "dlstudy" in args.clients:
            # "1.2.3": no request gets as far as asking for it
            out = str(work / "startup-out")
            dlstudy = [sys.executable, "-m", "dlstudy", "download", "1.2.3", "-o", out]
            how = (
                "`dlstudy download` against a closed port (the interpreter, every import a "
                "download needs, the command's set-up, one refused connection)"
            )
            notes.append(startup_note(setup, "dlstudy", dlstudy, how, closed_port=True))
        if any(c.startswith("dwc") for c in args.clients):
            imports = "import requests, dicomweb_client.api"  # what its runner imports
            dwc = [setup.args.dwc_python, "-c", imports]
            how = f"`python -c '{imports}'`"
            notes.append(startup_note(setup, "dicomweb-client", dwc, how))
        if "h2c" in args.transports and "curl" in args.clients:
            h2c = Group(args.datasets[0], "h2c", 0, ("curl",))
            probe = run_one(setup, h2c, "curl", 0, probe=True)
            notes.append(h2c_probe_note(probe))
            log(notes[-1])
        log(f"{len(groups)} groups x {args.repeats} repeats")
        for group in groups:
            for repeat in range(1, args.repeats + 1):
                for client in group.clients:
                    runs.append(run_one(setup, group, client, repeat))
    finally:
        if proxy is not None:
            proxy.stop()
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)

    rows = median_rows(runs)
    goals = targets(rows, args.rtt_ms)
    info["loadavg_at_end"] = os.getloadavg()
    info["dlstudy_source_digest_at_end"] = source_digest()
    changed = info["dlstudy_source_digest_at_end"] != info["dlstudy_source_digest_at_start"]
    info["dlstudy_changed_during_run"] = changed
    if changed:
        notes.append("dlstudy's source changed while this ran: its rows mix versions.")
    elapsed = time.monotonic() - started
    md_rows, md_goals = table(rows), targets_table(goals)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"{'Quick run (small data, 1 repeat: not for conclusions)' if args.quick else 'Run'} "
        f"of {when}, {args.repeats} repeat(s), medians; -c {args.concurrency}; "
        f"nginx workers {args.workers}; {elapsed / 60:.1f} min.\n"
        f"Machine: {info['cpu_model']}, {info['cpus']} CPUs, {info['memory_gb']} GB, "
        f"kernel {info['kernel']}, {info['os']}; {info['nginx']}; "
        f"{' '.join(info['curl'].split()[:2])}; {info['openssl']}; Python {info['python']}, "
        f"httpx {info['packages']['httpx']}, dicomweb-client {info['packages']['dicomweb-client']}"
        f"; dlstudy {info['dlstudy_commit'][:12]}"
        f"{' + uncommitted changes' if info['dlstudy_worktree_dirty'] else ''}."
    )
    markdown = "\n\n".join([summary, md_rows, md_goals, "\n".join(f"- {n}" for n in notes)])
    print("\n" + markdown, flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "when": when,
        "quick": args.quick,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "datasets": {
            ds: {
                "synth_args": m["synth_args"],
                "instances": len(m["instances"]),
                "bytes": m["bytes"],
            }
            for ds, m in manifests.items()
        },
        "notes": notes,
        "medians": rows,
        "targets": goals,
        "runs": runs,
        "elapsed_s": round(elapsed, 1),
    }
    args.results.write_text(json.dumps(payload, indent=1) + "\n")
    md_path = args.results.with_suffix(".md")
    md_path.write_text(markdown + "\n")
    full = (
        args.datasets == list(static_tree.DATASETS)
        and args.transports == list(TRANSPORTS)
        and args.clients == list(CLIENTS)
        and not args.dlstudy_args
    )
    if full and not args.quick:
        update_readme(markdown)  # only a whole run stands for the project
    log(f"\nwrote {args.results} and {md_path}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
