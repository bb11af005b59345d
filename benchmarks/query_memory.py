"""Peak memory (RSS) of `dlstudy query` for study listings of 10,000 to 100,000 studies.

    .venv/bin/python benchmarks/query_memory.py                          # 10,000 and 100,000
    .venv/bin/python benchmarks/query_memory.py --studies 1000 10000     # a quick look
    .venv/bin/python benchmarks/query_memory.py --client-pythonpath /work/main   # another checkout

What runs. For each `--studies` N, `dlstudy serve --virtual N --page-cap K` (a generated
archive: N studies, QIDO pages capped at K results with `Warning: 299`) in its own process on
a free port of 127.0.0.1; then the installed console script `dlstudy query --url URL` runs as
a fresh process once per output form (`--uids`, `--json`, `--csv`, and the tab-separated
lines of a pipe), its output into a file. `--client-pythonpath` puts another checkout's
`dlstudy` package before this one (PYTHONPATH), to measure the client of another commit with
the same server and script.

How it is measured. The client is reaped with `os.wait4(pid)`: its `ru_maxrss` is the
kernel's high-water mark of the process's resident memory (KiB), so no spike is missed. It
includes the interpreter and its libraries (the smallest N is about that baseline). A run is
ok when it exits 0 and printed one line per study (and the header, for CSV and TSV). The last
column is the growth of peak RSS per study between the smallest and the largest N. MB = 10^6
bytes.

Prints a table and writes benchmarks/results/query_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalog import Server, server_env  # noqa: E402
from download_memory import machine  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "query_memory.json"
DLSTUDY = str(Path(sys.executable).with_name("dlstudy"))
# Output form: (its flags, header lines before the studies).
FORMS = {"uids": (["--uids"], 0), "json": (["--json"], 0), "csv": (["--csv"], 1), "tsv": ([], 1)}


def run_client(cmd: list[str], out: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Exit status, peak RSS (KiB) and seconds of one client, its stdout into `out`."""
    started = time.monotonic()
    with out.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.PIPE, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                raise SystemExit(f"client ran past --timeout {timeout} s: {cmd}")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return {"code": proc.returncode, "peak_kib": usage.ru_maxrss,
            "seconds": time.monotonic() - started, "stderr": stderr}  # fmt: skip


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def measure(
    studies: int, args: argparse.Namespace, env: dict[str, str], work: Path
) -> list[dict[str, Any]]:
    virtual = ["--virtual", str(studies), "--page-cap", str(args.page_cap)]
    server = Server(virtual, server_env(None), work / f"server-{studies}.log")
    rows = []
    try:
        for form in args.forms:
            flags, header = FORMS[form]
            out = work / f"{form}-{studies}.out"
            cmd = [DLSTUDY, "query", "--url", server.url, *flags]
            run = run_client(cmd, out, env, args.timeout)
            lines = count_lines(out)
            out.unlink()
            rows.append({
                "studies": studies,
                "form": form,
                "exit_status": run["code"],
                "lines": lines,
                "peak_rss_mb": round(run["peak_kib"] * 1024 / 1e6, 1),
                "seconds": round(run["seconds"], 1),
                "ok": run["code"] == 0 and lines == studies + header,
            })  # fmt: skip
            if not rows[-1]["ok"]:
                print(f"  {form} at {studies}: {run['stderr'][-500:]}", file=sys.stderr)
            print(f"  {studies} studies, {form}: done", file=sys.stderr)
    finally:
        server.stop()
    return rows


def growth(rows: list[dict[str, Any]], column: str, value: str) -> float | None:
    """Bytes of peak RSS per study, from the smallest N to the largest, of the rows whose
    `column` is `value`."""
    picked = sorted((r for r in rows if r[column] == value), key=lambda r: r["studies"])
    if len(picked) < 2:
        return None
    low, high = picked[0], picked[-1]
    grown = (high["peak_rss_mb"] - low["peak_rss_mb"]) * 1e6
    return round(grown / (high["studies"] - low["studies"]))


def client_env(pythonpath: str | None) -> dict[str, str]:
    """The measured client's environment: none of the developer's DLSTUDY_ settings, and
    another checkout's package first if `pythonpath` names one."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DLSTUDY_")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def report(rows: list[dict[str, Any]], column: str, values: list[str], results: dict[str, Any],
           path: Path) -> None:  # fmt: skip
    """Print the table and the growth per study of each of `values` of `column`; write
    `results` with the rows and the growth to `path`; exit 1 if a run was not ok."""
    header = ("studies", column, "peak RSS MB", "s", "ok")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in rows:
        print(f"{r['studies']:,} | {r[column]} | {r['peak_rss_mb']} | {r['seconds']} | "
              f"{'PASS' if r['ok'] else 'FAIL'}")  # fmt: skip
    per_study = {value: growth(rows, column, value) for value in values}
    print("peak RSS growth, bytes per study: "
          + ", ".join(f"{value} {grown}" for value, grown in per_study.items()))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {**results, "results": rows, "growth_bytes_per_study": per_study}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    if not all(r["ok"] for r in rows):
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS))
    parser.add_argument("--page-cap", type=int, default=1000)
    parser.add_argument("--client-pythonpath", default=None)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = client_env(args.client_pythonpath)

    with tempfile.TemporaryDirectory(prefix="dlstudy-query-") as tmp:
        rows = [row for n in sorted(set(args.studies)) for row in measure(n, args, env, Path(tmp))]

    report(rows, "form", args.forms, {
        "benchmark": "query_memory",
        "machine": machine(),
        "client_pythonpath": args.client_pythonpath,
        "server": f"dlstudy serve --virtual N --page-cap {args.page_cap}",
    }, args.results)  # fmt: skip


if __name__ == "__main__":
    main()
