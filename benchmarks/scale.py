"""Archive scale: the dlstudy client against `dlstudy serve --virtual`, one huge study and many
small ones; wall time and peak RSS of each run.

    .venv/bin/python benchmarks/scale.py                                   # the full sizes
    .venv/bin/python benchmarks/scale.py --instances 100000 --studies 10000   # smaller

What runs. Each server is `dlstudy serve --virtual ...` in its own process on a free port of
127.0.0.1 (no files: every instance is made on request, a few KB each):

* one study of `--instances` instances (default 1,000,000; `--study-size`: one CT series):
  `download STUDY`, the same again (`rerun`: everything is on disk, nothing is fetched) and
  again with `--verify` (every file re-hashed against the manifest);
* `--studies` MIMIC-like studies (default 100,000; `--mix mimic`: 1-4 DX instances each):
  `download --from-file UIDS` (the UIDs from the archive's own library view), the same again
  (`rerun`), and `sync` with no filter (every study listed by QIDO, none new), from the server
  and from one serving the same archive with `--no-counts` (no instance counts in QIDO);
* the server alone with `--index-studies` studies (default 1,000,000, hospital mix): its peak
  RSS once it is ready to answer, the index's cost.

Each client is `python -m dlstudy ... --json` in a fresh process, reaped with os.wait4 (its own
ru_maxrss: no short spike is missed; see download_memory.py). MB = 10^6 bytes. A run is OK when
it exits 0 and its JSON summary counts what it should (all downloaded, or all already present).
After the downloads, a sample of files is compared with the archive's expected bytes.

Targets (the issue "Archive scale"): the 1M-instance study downloads, reruns and verifies in
at most 300 MB peak RSS, and reruns in at most 10 s; 100,000 studies download at 2,000
instances/s or more in at most 300 MB and rerun in at most 30 s; sync with nothing new takes at
most 10 s, with or without counts; the server's index of 1M studies fits in 300 MB. Run
smaller, a line is judged at the size run (the RSS and time targets are for the full size: see
the README's reading).

Prints a table and writes benchmarks/results/scale.json (machine, commit, every run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from download_memory import accepts, free_port, machine, run_client, status_kib  # noqa: E402

from dlstudy.server import VirtualArchive, VirtualSpec  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "scale.json"
HOST = "127.0.0.1"
MB = 1e6
SAMPLE = 200  # files compared byte for byte after a download


def dlstudy(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlstudy", *args]


class Server:
    """`dlstudy serve --virtual ...` in its own process; `peak_rss()` reads its VmHWM."""

    def __init__(self, args: list[str], log: Path, timeout: float) -> None:
        self.port = free_port()
        self.log = log.open("wb")
        cmd = dlstudy("serve", *args, "--port", str(self.port))
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        while time.monotonic() - started < timeout and self.proc.poll() is None:
            if accepts(self.port):
                self.startup_s = time.monotonic() - started
                self.url = f"http://{HOST}:{self.port}/dicomweb"
                return
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the server did not start; see {log}")

    def peak_rss(self) -> int:
        return status_kib(self.proc.pid, "VmHWM") * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def client(label: str, args: list[str], work: Path, timeout: float) -> dict[str, Any]:
    print(f"  {label} ...", end="", flush=True)
    run = run_client(dlstudy(*args, "--json"), work, timeout)
    run["label"] = label
    # A child's ru_maxrss starts at its parent's peak (Linux carries it over the exec): while
    # this process stays far smaller than the clients it runs, ru_maxrss is the client's own.
    harness = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run["harness_peak_rss_bytes"] = harness
    if run["ru_maxrss_bytes"] <= harness:
        run["peak_rss_bytes"] = run["sampled_rss_peak_bytes"]
        print(f"  (ru_maxrss is the harness's own {harness / MB:.0f} MB: sampled RSS used)")
    counts = run["summary"].get("instances", {})
    print(
        f" exit {run['exit_status']}, {run['wall_s']:.1f} s, "
        f"{run['peak_rss_bytes'] / MB:.0f} MB, {counts}",
        flush=True,
    )
    return run


def check_bytes(archive: VirtualArchive, studies: list[str], out: Path) -> bool:
    """A sample of the downloaded files against the archive's expected bytes."""
    rng = random.Random(0)
    picked = []
    for study in rng.sample(studies, min(len(studies), SAMPLE)):
        # Counted, not listed: a list of a million instances here would raise this process's
        # peak RSS, and every client started after it would report that peak (below).
        count = sum(1 for _ in archive.instances_of(study))
        at = rng.randrange(count)
        picked.append(next(itertools.islice(archive.instances_of(study), at, None)))
    return all(
        (out / st / se / f"{sop}.dcm").read_bytes() == archive.expected_bytes(st, se, sop)
        for st, se, sop in picked
    )


def one_big_study(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    n = args.instances
    spec = VirtualSpec(1, seed=args.seed, study_size=n)
    archive = VirtualArchive(spec)
    study = archive.study_uid(0)
    print(f"one study of {n:,} instances", flush=True)
    server = Server(
        ["--virtual", "1", "--study-size", str(n), "--seed", str(args.seed)],
        work / "server-big.log",
        args.timeout,
    )
    out = work / "big"
    common = ["download", study, "--url", server.url, "-o", str(out)]
    try:
        runs = [
            client("download", common, work, args.timeout),
            client("rerun", common, work, args.timeout),
            client("rerun --verify", [*common, "--verify"], work, args.timeout),
        ]
        server_rss = server.peak_rss()
    finally:
        server.stop()
    runs[0]["bytes_identical_sample"] = check_bytes(archive, [study], out)
    expected = [("downloaded", n), ("skipped", n), ("skipped", n)]
    for run, (field, count) in zip(runs, expected, strict=True):
        run["ok"] = run["exit_status"] == 0 and run["summary"]["instances"][field] == count
        run["case"] = f"1 study x {n:,} instances"
        run["instances"] = n
        run["server_peak_rss_bytes"] = server_rss
    shutil.rmtree(out, ignore_errors=True)
    return runs


def many_studies(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    spec = VirtualSpec(args.studies, seed=args.seed, mix="mimic")
    archive = VirtualArchive(spec)
    studies = list(archive.study_uids())
    total = sum(archive.study_size)
    uids = work / "uids.txt"
    uids.write_text("\n".join(studies) + "\n")
    print(f"{args.studies:,} MIMIC-like studies, {total:,} instances", flush=True)
    server = Server(
        ["--virtual", str(args.studies), "--mix", "mimic", "--seed", str(args.seed)],
        work / "server-many.log",
        args.timeout,
    )
    out = work / "many"
    common = ["download", "--from-file", str(uids), "--url", server.url, "-o", str(out)]
    try:
        runs = [
            client("download --from-file", common, work, args.timeout),
            client("rerun", common, work, args.timeout),
            client("sync, nothing new", ["sync", "--url", server.url, "-o", str(out)], work, 3600),
        ]
        server_rss = server.peak_rss()
    finally:
        server.stop()
    # The same archive from a server whose QIDO answers carry no instance counts.
    uncounted = Server(
        ["--virtual", str(args.studies), "--mix", "mimic", "--seed", str(args.seed), "--no-counts"],
        work / "server-many-no-counts.log",
        args.timeout,
    )
    try:
        sync = ["sync", "--url", uncounted.url, "-o", str(out)]
        runs.append(client("sync, nothing new, no counts", sync, work, 3600))
    finally:
        uncounted.stop()
    runs[0]["bytes_identical_sample"] = check_bytes(archive, studies, out)
    expected = [("downloaded", total)] + [("skipped", total)] * 3
    for run, (field, count) in zip(runs, expected, strict=True):
        counted = run["summary"].get("instances", {}).get(field)
        run["ok"] = run["exit_status"] == 0 and counted == count
        run["case"] = f"{args.studies:,} studies x 1-4 DX"
        run["instances"] = total
        run["server_peak_rss_bytes"] = server_rss
    runs[0]["instances_per_s"] = round(total / runs[0]["wall_s"], 1)
    shutil.rmtree(out, ignore_errors=True)
    return runs


def server_index(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    n = args.index_studies
    print(f"server index of {n:,} studies", flush=True)
    server = Server(["--virtual", str(n), "--seed", str(args.seed)], work / "server-index.log", 600)
    try:
        # One study search, so the answering path is loaded too.
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", f"{server.url}/studies?limit=10"], check=False
        )
        peak = server.peak_rss()
    finally:
        server.stop()
    print(f"  ready in {server.startup_s:.1f} s, peak RSS {peak / MB:.0f} MB", flush=True)
    return {
        "case": f"server index, {n:,} studies",
        "label": "serve --virtual",
        "startup_s": round(server.startup_s, 2),
        "peak_rss_bytes": peak,
        "ok": True,
    }


def verdicts(runs: list[dict[str, Any]], index: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each target line: what was measured, the target, and whether it was met."""
    lines = []

    def line(what: str, value: float, unit: str, target: float, at_most: bool) -> None:
        met = value <= target if at_most else value >= target
        sign = "<=" if at_most else ">="
        lines.append(
            {
                "what": what,
                "value": value,
                "unit": unit,
                "target": f"{sign} {target:g} {unit}",
                "met": met,
            }
        )

    for run in runs:
        name = f"{run['case']}: {run['label']}"
        if run["case"].startswith("1 study"):
            line(f"{name} peak RSS", round(run["peak_rss_bytes"] / MB), "MB", 300, True)
            if run["label"] == "rerun":
                line(f"{name} wall", run["wall_s"], "s", 10, True)
        else:
            if run["label"].startswith("download"):
                line(f"{name} rate", run["instances_per_s"], "instances/s", 2000, False)
                line(f"{name} peak RSS", round(run["peak_rss_bytes"] / MB), "MB", 300, True)
            elif run["label"] == "rerun":
                line(f"{name} wall", run["wall_s"], "s", 30, True)
            else:
                line(f"{name} wall", run["wall_s"], "s", 10, True)
    if index is not None:
        line(f"{index['case']} peak RSS", round(index["peak_rss_bytes"] / MB), "MB", 300, True)
    return lines


def print_table(runs: list[dict[str, Any]], index: dict[str, Any] | None) -> None:
    header = (
        f"{'case':<32} {'run':<30} {'wall s':>8} {'inst/s':>9} {'peak RSS MB':>12} "
        f"{'server MB':>10} {'ok':>4}"
    )
    print()
    print(header)
    print("-" * len(header))
    for run in runs:
        rate = run["instances"] / run["wall_s"] if run["wall_s"] else 0
        print(
            f"{run['case']:<32} {run['label']:<30} {run['wall_s']:>8.1f} {rate:>9.0f} "
            f"{run['peak_rss_bytes'] / MB:>12.0f} {run['server_peak_rss_bytes'] / MB:>10.0f} "
            f"{'yes' if run['ok'] else 'NO':>4}"
        )
    if index is not None:
        print(
            f"{index['case']:<32} {'ready':<30} {index['startup_s']:>8.1f} {'':>9} "
            f"{'':>12} {index['peak_rss_bytes'] / MB:>10.0f} {'yes':>4}"
        )


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--instances", type=int, default=1_000_000, help="the one big study")
    options.add_argument("--studies", type=int, default=100_000, help="MIMIC-like studies")
    options.add_argument("--index-studies", type=int, default=1_000_000, help="server index")
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--skip", action="append", default=[], choices=["big", "many", "index"])
    options.add_argument("--timeout", type=float, default=7200, help="seconds a run may take")
    options.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    options.add_argument("--work", type=Path, help="work folder (default: a temp folder)")
    args = options.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="dlstudy-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    index = None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        if "big" not in args.skip:
            runs += one_big_study(args, work)
        if "many" not in args.skip:
            runs += many_studies(args, work)
        if "index" not in args.skip:
            index = server_index(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(runs, index)
    lines = verdicts(runs, index)
    print()
    for item in lines:
        verdict = "met " if item["met"] else "MISS"
        print(f"{verdict} {item['what']}: {item['value']} ({item['target']})")
    report = {
        "benchmark": "scale",
        "started": started,
        "machine": machine(),
        "sizes": {
            "instances": args.instances,
            "studies": args.studies,
            "index_studies": args.index_studies,
        },
        "runs": [
            {k: v for k, v in run.items() if k != "stderr_tail" or not run["ok"]} for run in runs
        ],
        "index": index,
        "targets": lines,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    sys.exit(0 if all(run["ok"] for run in runs) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
