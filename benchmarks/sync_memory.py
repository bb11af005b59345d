"""Peak memory (RSS) of `dlstudy sync` and `sync --catalog` for nights of 5,000 to 200,000 studies.

    .venv/bin/python benchmarks/sync_memory.py                            # the defaults below
    .venv/bin/python benchmarks/sync_memory.py --studies 1000 10000 --new-studies 1000
    .venv/bin/python benchmarks/sync_memory.py --client-pythonpath /work/main   # another checkout

What runs. For each N, `dlstudy serve --virtual N --study-size 1 --page-cap 1000` (a generated
archive: N studies of one instance each, QIDO pages capped at 1,000 with `Warning: 299`) in its
own process on a free port of 127.0.0.1; then the installed console script runs as a fresh
process, `--json` into a file:

* complete (`--studies`, default 10,000 / 100,000 / 200,000): `sync --url URL -o OUT` where
  every study is complete already, the cron night of a large mirror. OUT is made here, not by a
  download (that would take most of an hour at 200,000): a manifest index listing each study's
  one instance and, at the path the default layout gives it, a sparse file of the size the
  index records, which is all sync checks (one indexed query and an lstat per study). Ok when
  it exits 0 and reports every study already complete.
* catalog (same N): `catalog pull` of the archive into a catalog (not measured), then `sync
  --catalog CAT -o OUT` over the same complete OUT: no search of the server at all.
* new (`--new-studies`, default 2,000 / 10,000): `sync` into an empty OUT, every study
  downloaded (one small instance each). Kept smaller: the download's three requests a study
  take far longer than sync's own work, and its own memory (the download's plan of N studies)
  is measured here too. Ok when it exits 0 and downloaded every instance.

`--client-pythonpath` puts another checkout's `dlstudy` package before this one (PYTHONPATH)
for the measured runs (the index and the catalog are made with this checkout), to measure the
client of another commit with the same server and script.

How it is measured. The client is reaped with `os.wait4(pid)`: its `ru_maxrss` is the
kernel's high-water mark of the process's resident memory (KiB), so no spike is missed. It
includes the interpreter and its libraries (the smallest N is about that baseline); sync
starts no worker process here (`--workers` stays 1 for these small studies). The growth
column is peak RSS per study between the smallest and the largest N of a case. MB = 10^6
bytes.

Prints a table and writes benchmarks/results/sync_memory.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog import Server, server_env  # noqa: E402
from download_memory import machine  # noqa: E402
from query_memory import client_env, report, run_client  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sync_memory.json"
DLSTUDY = str(Path(sys.executable).with_name("dlstudy"))
FILE_SIZE = 4096  # bytes each instance's file is recorded (and made sparse) at


def complete_output(studies: int, out: Path) -> None:
    """OUT with every study of the virtual archive complete: index and files (see above)."""
    from dlstudy.server import VirtualArchive, VirtualSpec
    from dlstudy.store.files import Store
    from dlstudy.store.manifest import Entry, Manifest

    archive = VirtualArchive(VirtualSpec(studies, study_size=1))
    store = Store(out, "{study}/{series}/{sop}.dcm")
    store.prepare()
    manifest = Manifest(store.root, store.state_dir)
    try:
        for study_uid in archive.study_uids():
            for study, series, sop in archive.instances_of(study_uid):
                relative = f"{study}/{series}/{sop}.dcm"
                path = out / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as f:
                    f.truncate(FILE_SIZE)
                manifest.record(Entry(study, series, sop, relative, FILE_SIZE, "blake3:0"))
            manifest.record_complete(study_uid, 1, store.layout)
    finally:
        manifest.close()


def run_json(cmd: list[str], out: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """run_client, and the --json summary it printed (None if it printed none)."""
    run = run_client(cmd, out, env, timeout)
    try:
        run["summary"] = json.loads(out.read_text())
    except ValueError:
        run["summary"] = None
    out.unlink()
    return run


def row(studies: int, case: str, run: dict[str, Any], ok: bool) -> dict[str, Any]:
    if not ok:
        print(f"  {case} at {studies}: {run['stderr'][-500:]}", file=sys.stderr)
    print(f"  {studies} studies, {case}: done", file=sys.stderr)
    return {
        "studies": studies,
        "case": case,
        "exit_status": run["code"],
        "peak_rss_mb": round(run["peak_kib"] * 1024 / 1e6, 1),
        "seconds": round(run["seconds"], 1),
        "ok": ok,
    }


def already_complete(run: dict[str, Any], studies: int) -> bool:
    summary = run["summary"] or {}
    return run["code"] == 0 and summary.get("sync", {}).get("already_complete") == studies


def measure_complete(
    studies: int, args: argparse.Namespace, env: dict[str, str], work: Path
) -> list[dict[str, Any]]:
    out, catalog, summary = work / f"out-{studies}", work / f"cat-{studies}.duckdb", work / "s.json"
    complete_output(studies, out)
    virtual = ["--virtual", str(studies), "--study-size", "1", "--page-cap", "1000"]
    server = Server(virtual, server_env(None), work / f"server-{studies}.log")
    rows = []
    try:
        if "complete" in args.cases:
            cmd = [DLSTUDY, "sync", "--url", server.url, "-o", str(out), "--json"]
            run = run_json(cmd, summary, env, args.timeout)
            rows.append(row(studies, "complete", run, already_complete(run, studies)))
        if "catalog" in args.cases:
            pull = [DLSTUDY, "catalog", "pull", "--url", server.url, "--db", str(catalog)]
            pulled = run_client(pull, summary, server_env(None), args.timeout)
            if pulled["code"] != 0:
                raise SystemExit(f"catalog pull failed: {pulled['stderr'][-500:]}")
            cmd = [DLSTUDY, "sync", "--catalog", str(catalog), "-o", str(out), "--json",
                   "--url", server.url]  # fmt: skip
            run = run_json(cmd, summary, env, args.timeout)
            rows.append(row(studies, "catalog", run, already_complete(run, studies)))
    finally:
        server.stop()
        shutil.rmtree(out)  # hundreds of thousands of files: not all at the end
        catalog.unlink(missing_ok=True)
    return rows


def measure_new(
    studies: int, args: argparse.Namespace, env: dict[str, str], work: Path
) -> dict[str, Any]:
    out = work / f"new-{studies}"
    virtual = ["--virtual", str(studies), "--study-size", "1", "--page-cap", "1000"]
    server = Server(virtual, server_env(None), work / f"server-new-{studies}.log")
    try:
        cmd = [DLSTUDY, "sync", "--url", server.url, "-o", str(out), "--json"]
        run = run_json(cmd, work / "s.json", env, args.timeout)
    finally:
        server.stop()
        shutil.rmtree(out, ignore_errors=True)
    summary = run["summary"] or {}
    ok = run["code"] == 0 and summary.get("instances", {}).get("downloaded") == studies
    return row(studies, "new", run, ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, nargs="*", default=[10_000, 100_000, 200_000])
    parser.add_argument("--new-studies", type=int, nargs="*", default=[2_000, 10_000])
    parser.add_argument("--cases", nargs="+", choices=["complete", "catalog", "new"],
                        default=["complete", "catalog", "new"])  # fmt: skip
    parser.add_argument("--client-pythonpath", default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = client_env(args.client_pythonpath)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dlstudy-sync-") as tmp:
        if "new" in args.cases:
            for n in sorted(set(args.new_studies)):
                rows.append(measure_new(n, args, env, Path(tmp)))
        if {"complete", "catalog"} & set(args.cases):
            for n in sorted(set(args.studies)):
                rows += measure_complete(n, args, env, Path(tmp))

    report(rows, "case", sorted({r["case"] for r in rows}), {
        "benchmark": "sync_memory",
        "machine": machine(),
        "client_pythonpath": args.client_pythonpath,
        "server": "dlstudy serve --virtual N --study-size 1 --page-cap 1000",
    }, args.results)  # fmt: skip


if __name__ == "__main__":
    main()
