"""Peak memory (RSS) of the dlstudy client, and its QIDO requests, for long cohort lists.

    .venv/bin/python benchmarks/cohort_memory.py                       # 200 .. 40,000 rows
    .venv/bin/python benchmarks/cohort_memory.py --rows 200 2000       # a quick look
    .venv/bin/python benchmarks/cohort_memory.py --repeated --rows 500000   # repeated rows

What runs. `dlstudy.server.synth` writes an archive of 4 studies x 50 series x 1 small instance (200
series), served by the embedded server in this process (a thread), with an ASGI wrapper that
counts requests by path. For each `--rows` N it writes a CSV with a `SeriesInstanceUID` column
(no study column): the archive's 200 series spread among N - 200 series the server does not
have, as a curator's list written against another archive would be; with `--repeated`, the
archive's 200 series again and again, in turn (a list joined from many overlapping ones). Then
`dlstudy download --from-file LIST --report landed.csv --quiet` runs as a fresh process (the
installed console script) into an empty folder; it exits 1 (the unknown series fail, one
report row each; with `--repeated` 0, a `repeat` row for each repeated line) and the 200 found
series' instances are on disk.

How it is measured. The client is started with Popen and reaped with `os.wait4(pid)`: its
`ru_maxrss` is the kernel's high-water mark of the process's resident memory (KiB), so no
spike is missed. It includes the interpreter and its libraries; the first row (N = 200: only
the found series) is that baseline plus one small download. Requests are counted at the
server: lookups (`/series?SeriesInstanceUID=`), listings (`.../series/{uid}/instances`),
everything else; hypercorn is told to keep connections open (its default closes one after
1,000 requests, and the requests in flight on it are sent again: retries, not lookups).
MB = 10^6 bytes.

Prints a table and writes benchmarks/results/cohort_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_memory import run_client  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cohort_memory.json"
RESULTS_REPEATED = RESULTS.with_name("cohort_memory_repeated.json")
DLSTUDY = str(Path(sys.executable).with_name("dlstudy"))


class CountingApp:
    """Counts each request to the wrapped ASGI app by its kind."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.endswith("/series") and b"SeriesInstanceUID=" in scope["query_string"]:
                self.counts["lookups"] += 1
            elif path.endswith("/instances") and "/series/" in path:
                self.counts["listings"] += 1
            elif "/instances/" in path:
                self.counts["instances"] += 1
            else:
                self.counts["other"] += 1
        await self.app(scope, receive, send)


def write_list(path: Path, real: list[str], rows: int, *, repeated: bool = False) -> None:
    if repeated:
        with path.open("w", encoding="utf-8") as fp:
            fp.write("SeriesInstanceUID,qc\n")
            fp.writelines(f"{real[n % len(real)]},ok\n" for n in range(rows))
        return
    unknown = rows - len(real)
    step = max(1, unknown // max(1, len(real)))
    pending = list(real)
    with path.open("w", encoding="utf-8") as fp:
        fp.write("SeriesInstanceUID,qc\n")
        for n in range(unknown):
            fp.write(f"2.25.{10**12 + n},ok\n")
            if n % step == 0 and pending:
                fp.write(f"{pending.pop()},ok\n")
        fp.writelines(f"{uid},ok\n" for uid in pending)


def measure(url: str, counts: Callable[[], Counter[str]], rows: int, real: list[str],
            work: Path, timeout: float, repeated: bool) -> dict[str, Any]:  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix=f"rows-{rows}-", dir=work))
    listing, report, out = folder / "list.csv", folder / "landed.csv", folder / "out"
    write_list(listing, real, rows, repeated=repeated)
    before = Counter(counts())
    cmd = [DLSTUDY, "download", "--url", url, "-o", str(out), "--from-file", str(listing),
           "--report", str(report), "--quiet"]  # fmt: skip
    run = run_client(cmd, Path(os.devnull), dict(os.environ), timeout)
    code, peak_kib, seconds = run["code"], run["peak_kib"], run["seconds"]
    after = counts()
    lines = report.read_text(encoding="utf-8").splitlines()[1:]
    downloaded = sum(1 for line in lines if line.startswith("downloaded,"))
    expected_code = 0 if rows == len(real) or repeated else 1
    ok = code == expected_code and len(lines) == rows and downloaded == len(real)
    return {
        "rows": rows,
        "exit_status": code,
        "report_rows": len(lines),
        "downloaded": downloaded,
        "peak_rss_mb": round(peak_kib * 1024 / 1e6, 1),
        "seconds": round(seconds, 1),
        "lookups": after["lookups"] - before["lookups"],
        "listings": after["listings"] - before["listings"],
        "other_qido": after["other"] - before["other"],
        "ok": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200, 2_000, 10_000, 40_000])
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--repeated", action="store_true",
                        help="rows beyond the 200 found series repeat them")  # fmt: skip
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()

    import dlstudy.server.run as server_run
    from dlstudy.server import ServerOptions, running_server
    from dlstudy.server.synth import SynthSpec, generate

    apps: list[CountingApp] = []
    make_app = server_run.create_app

    def counting(options: Any) -> CountingApp:
        apps.append(CountingApp(make_app(options)))
        return apps[-1]

    server_run.create_app = counting  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="dlstudy-cohort-") as tmp:
        work = Path(tmp)
        archive = generate(work / "archive", SynthSpec(studies=4, series=50, instances=1,
                                                       size=1024, seed=21))  # fmt: skip
        real = [i.series_uid for i in archive]
        options = ServerOptions(root=work / "archive", max_requests_per_connection=10**6)
        with running_server(options) as url:
            results = []
            for rows in sorted(set(args.rows)):
                if rows < len(real):
                    raise SystemExit(f"--rows must be at least {len(real)}")
                results.append(measure(url, lambda: apps[0].counts, rows, real, work,
                                       args.timeout, args.repeated))  # fmt: skip
                print(f"  {rows} rows done", file=sys.stderr)

    header = ("rows", "peak RSS MB", "s", "lookups", "listings", "other QIDO", "ok")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in results:
        print(f"{r['rows']:,} | {r['peak_rss_mb']} | {r['seconds']} | {r['lookups']:,} | "
              f"{r['listings']} | {r['other_qido']} | {'PASS' if r['ok'] else 'FAIL'}")  # fmt: skip
    results_file = args.results or (RESULTS_REPEATED if args.repeated else RESULTS)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps({
        "benchmark": "cohort_memory",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "archive": "4 studies x 50 series x 1 instance of ~1 KiB (200 series)",
        "list": "the 200 series, repeated" if args.repeated else "200 series among unknown ones",
        "results": results,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {results_file}", file=sys.stderr)
    if not all(r["ok"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
