"""The catalog: `dlstudy catalog pull` against a virtual archive, a later pull, queries, sync.

    .venv/bin/python benchmarks/catalog.py                          # 1,000,000 studies, cap 1,000
    .venv/bin/python benchmarks/catalog.py --studies 100000         # smaller
    .venv/bin/python benchmarks/catalog.py --server-pythonpath /work/wt18   # serve --virtual of
                                                                    # a checkout that has it

What runs. The server is `dlstudy serve --virtual N --page-cap K` (a generated archive: N
studies, dates spread over 2012-2025, pages capped at K results with `Warning: 299`) in its own
process on a free port of 127.0.0.1. `--server-pythonpath` runs it from another checkout (the
virtual archive was built on another branch); without `serve --virtual` at all, the benchmark
falls back to the embedded server over synthetic studies written to disk (`--studies` then
defaults to 2,000: say so when reporting) and the table says which server ran.

1. first pull: `catalog pull` into an empty catalog; wall time, peak RSS (the client's own, by
   wait4), requests, catalog file size; every study present (the catalog against the archive's
   own list of study UIDs, both ways);
2. the archive grows by `--added` studies (the server restarts with N + added; the virtual
   archive's first N studies stay the same) and a second pull runs: it must find exactly those
   (its `new` count, and the `changes` table against the archive's list), at a cost of at most
   5% of the first (wall time; requests shown too);
3. `--where` over study-level fields: the matching UIDs of each condition fetched from the
   catalog into Python on an open connection (median of 5; judged against the target), on a
   fresh one (the file opened too), and once through the CLI (`catalog query --where ...
   --uids`, process start-up and printing included);
4. `sync --catalog` with nothing missing: `--sync-studies` studies of the catalog that match
   `--sync-where` (default: small ones, `instances <= 4`) are downloaded (`download
   --from-catalog --where`), then `sync --catalog --where` the same selection is timed: nothing
   to fetch, no search of the server. (Its cost grows with the instances on disk, which sync
   checks in the manifest and by stat: 2,000 hospital studies of 618,373 instances took 12.6 s,
   most of it sync's own check, not the catalog.)

Prints a table and writes benchmarks/results/catalog.json (machine, commit, every number).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from download_memory import accepts, free_port, machine, run_client  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "catalog.json"
MB = 1e6
WHERE = (
    "study_date BETWEEN '20190101' AND '20191231'",
    "list_contains(modalities, 'CT') AND instances > 100",
    "description ILIKE '%chest%' AND study_date >= '20200101'",
    "patient_id = 'PAT0001234'",
    "series >= 5 AND study_date LIKE '2015%'",
)
TARGETS = {
    "first_pull_rate": 5000.0,  # studies/s
    "first_pull_rss_mb": 300.0,
    "catalog_mb": 100.0,
    "second_pull_share": 0.05,
    "where_ms": 200.0,
    "sync_s": 10.0,
}


def dlstudy(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlstudy", *args]


def server_env(pythonpath: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def has_virtual(env: dict[str, str]) -> bool:
    result = subprocess.run(
        dlstudy("serve", "--help"), env=env, capture_output=True, text=True, check=False,
        cwd=tempfile.gettempdir(),  # not this checkout: `-m` puts the cwd before PYTHONPATH
    )  # fmt: skip
    return "--virtual" in result.stdout


class Server:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log.open("wb")
        cmd = dlstudy("serve", *args, "--port", str(self.port))
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=log.parent
        )
        self.url = f"http://127.0.0.1:{self.port}/dicomweb"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.poll() is None:
            if accepts(self.port):
                return
            time.sleep(0.2)
        raise SystemExit(f"the server did not start; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def virtual_uids(count: int, env: dict[str, str], target: Path) -> Path:
    """The virtual archive's study UIDs, one a line (from its own library view)."""
    code = (
        "import sys\nfrom dlstudy.server import VirtualArchive, VirtualSpec\n"
        f"archive = VirtualArchive(VirtualSpec({count}))\n"
        f"with open({str(target)!r}, 'w') as f:\n"
        "    f.writelines(uid + '\\n' for uid in archive.study_uids())\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=target.parent)
    return target


def synth_uids(folder: Path, studies: int, seed: int, target: Path) -> Path:
    """Fallback: synthetic studies on disk for the embedded server; their UIDs to `target`."""
    from dlstudy.server.synth import SynthSpec, generate

    spec = SynthSpec(studies=studies, series=1, instances=1, size=512, seed=seed,
                     study_dates=("20120101", "20251231"))  # fmt: skip
    uids = sorted({i.study_uid for i in generate(folder, spec)})
    with target.open("a") as f:
        f.writelines(uid + "\n" for uid in uids)
    return target


def compare(db: Path, uids_file: Path, sql: str) -> tuple[int, int]:
    """(UIDs of the file the query lacks, UIDs the query has that the file lacks)."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        con.execute(
            f"CREATE TEMP TABLE expected AS SELECT column0 AS uid FROM "
            f"read_csv('{uids_file}', header = false, columns = {{'column0': 'VARCHAR'}})"
        )
        con.execute(f"CREATE TEMP TABLE got AS {sql}")
        missing = con.execute("SELECT count(*) FROM expected ANTI JOIN got USING (uid)").fetchone()
        extra = con.execute("SELECT count(*) FROM got ANTI JOIN expected USING (uid)").fetchone()
    return int(missing[0]) if missing else -1, int(extra[0]) if extra else -1


def time_where(db: Path, where: str) -> dict[str, float | int]:
    """The matching UIDs into Python: on an open connection (median of 5: a notebook's or a
    script's case) and on a fresh one (opening the file included)."""
    import duckdb

    sql = f"SELECT study_uid FROM studies WHERE {where}"
    started = time.perf_counter()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = len(con.execute(sql).fetchall())
        cold = time.perf_counter() - started
        warm = []
        for _ in range(5):
            started = time.perf_counter()
            rows = len(con.execute(sql).fetchall())
            warm.append(time.perf_counter() - started)
    return {"ms": round(statistics.median(warm) * 1000, 1), "cold_ms": round(cold * 1000, 1),
            "rows": rows}  # fmt: skip


def cli_wall(cmd: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (time.perf_counter() - started) * 1000, result.returncode


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=None)
    parser.add_argument("--added", type=int, default=1000)
    parser.add_argument("--page-cap", type=int, default=1000)
    parser.add_argument("--sync-studies", type=int, default=2000)
    parser.add_argument("--sync-where", default="instances <= 4")
    parser.add_argument("--server-pythonpath", default=None)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    env = server_env(args.server_pythonpath)
    virtual = has_virtual(env)
    studies = args.studies or (1_000_000 if virtual else 2000)
    work = Path(tempfile.mkdtemp(prefix="dlstudy-catalog-bench-"))
    db = work / "catalog.duckdb"
    report: dict[str, Any] = {
        "machine": machine(),
        "commit": commit(),
        "server": "serve --virtual" if virtual else "embedded server over synth studies",
        "server_pythonpath": args.server_pythonpath,
        "studies": studies,
        "added": args.added,
        "page_cap": args.page_cap,
        "targets": TARGETS,
    }
    cap = ["--page-cap" if virtual else "--max-page-size", str(args.page_cap)]
    source = work / "source"
    try:
        # 1. first pull
        if virtual:
            first_uids = virtual_uids(studies, env, work / "first.txt")
            server = Server(["--virtual", str(studies), *cap], env, work / "server1.log")
        else:
            first_uids = synth_uids(source, studies, 1, work / "first.txt")
            server = Server([str(source), *cap], env, work / "server1.log")
        pull = dlstudy("catalog", "pull", "--url", server.url, "--db", str(db), "--json")
        first = run_client(pull, work, args.timeout)
        server.stop()
        missing, extra = compare(db, first_uids, "SELECT study_uid AS uid FROM studies")
        size = sum(p.stat().st_size for p in work.glob("catalog.duckdb*"))
        report["first_pull"] = {**first, "missing": missing, "extra": extra, "catalog_bytes": size}
        print(f"first pull: {first['wall_s']} s, {first['summary'].get('requests')} requests")

        # 2. the archive grows; a second pull
        if virtual:
            all_uids = virtual_uids(studies + args.added, env, work / "all.txt")
            added = work / "added.txt"
            known = set(first_uids.read_text().split())
            added.write_text(
                "".join(u + "\n" for u in all_uids.read_text().split() if u not in known)
            )
            server = Server(
                ["--virtual", str(studies + args.added), *cap], env, work / "server2.log"
            )
        else:
            added = synth_uids(source, args.added, 2, work / "added.txt")
            server = Server([str(source), *cap], env, work / "server2.log")
        pull = dlstudy("catalog", "pull", "--url", server.url, "--db", str(db), "--json")
        second = run_client(pull, work, args.timeout)
        new_missing, new_extra = compare(
            db, added, "SELECT study_uid AS uid FROM changes WHERE change = 'new'"
        )
        report["second_pull"] = {**second, "missing": new_missing, "extra": new_extra}
        print(f"second pull: {second['wall_s']} s, {second['summary'].get('requests')} requests")

        # 3. --where
        report["where"] = []
        for where in WHERE:
            timed = time_where(db, where)
            wall, code = cli_wall(
                dlstudy("catalog", "query", "--db", str(db), "--where", where, "--uids")
            )
            report["where"].append(
                {"where": where, **timed, "cli_ms": round(wall, 1), "cli_exit": code}
            )

        # 4. sync --catalog with nothing missing
        subset = (
            f"study_uid IN (SELECT study_uid FROM studies WHERE {args.sync_where} "
            f"ORDER BY study_uid LIMIT {args.sync_studies})"
        )
        out = work / "out"
        fill = run_client(
            dlstudy("download", "--from-catalog", str(db), "--where", subset, "--url",
                    server.url, "-o", str(out), "--json", "--quiet"),
            work, args.timeout,
        )  # fmt: skip
        sync = run_client(
            dlstudy("sync", "--catalog", str(db), "--where", subset, "--url", server.url,
                    "-o", str(out), "--json", "--quiet"),
            work, args.timeout,
        )  # fmt: skip
        server.stop()
        report["sync"] = {"fill": fill, "nothing_missing": sync}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def print_table(report: dict[str, Any]) -> None:
    first, second = report["first_pull"], report["second_pull"]
    n = report["studies"]
    rate = n / first["wall_s"] if first["wall_s"] else 0.0
    rss = first["peak_rss_bytes"] / MB
    size = first["catalog_bytes"] / MB
    share = second["wall_s"] / first["wall_s"] if first["wall_s"] else 0.0
    found = second["summary"].get("new")
    where_ms = max(w["ms"] for w in report["where"])
    sync = report["sync"]["nothing_missing"]
    sync_ok = (
        sync["exit_status"] == 0 and sync["summary"].get("instances", {}).get("downloaded") == 0
    )
    t = report["targets"]
    rows = [
        ("server", report["server"], "", ""),
        ("first pull", f"{n:,} studies in {first['wall_s']:.1f} s = {rate:,.0f}/s "
         f"({first['summary'].get('requests')} requests)",
         f">= {t['first_pull_rate']:,.0f}/s", verdict(rate >= t["first_pull_rate"])),
        ("  peak RSS", f"{rss:.0f} MB", f"<= {t['first_pull_rss_mb']:.0f} MB",
         verdict(rss <= t["first_pull_rss_mb"])),
        ("  catalog file", f"{size:.1f} MB", f"<= {t['catalog_mb']:.0f} MB",
         verdict(size <= t["catalog_mb"])),
        ("  every study", f"{first['missing']} missing, {first['extra']} extra", "0, 0",
         verdict(first["missing"] == 0 and first["extra"] == 0 and first["exit_status"] == 0)),
        ("second pull", f"+{report['added']:,}: {found} new ({second['missing']} missed, "
         f"{second['extra']} wrong), {second['wall_s']:.2f} s, "
         f"{second['summary'].get('requests')} requests", "exactly the added",
         verdict(second["missing"] == 0 and second["extra"] == 0 and found == report["added"])),
        ("  cost", f"{share:.1%} of the first pull's time", f"<= {t['second_pull_share']:.0%}",
         verdict(share <= t["second_pull_share"])),
        ("--where", f"slowest {where_ms:.1f} ms (UIDs into Python, open connection; "
         f"opening the file too: {max(w['cold_ms'] for w in report['where']):.0f} ms; "
         f"CLI --uids with start-up: {max(w['cli_ms'] for w in report['where']):.0f} ms)",
         f"<= {t['where_ms']:.0f} ms", verdict(where_ms <= t["where_ms"])),
        ("sync --catalog", f"nothing missing: {sync['wall_s']:.2f} s "
         f"({report['sync']['fill']['summary'].get('studies')} studies on disk)",
         f"<= {t['sync_s']:.0f} s", verdict(sync_ok and sync["wall_s"] <= t["sync_s"])),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
