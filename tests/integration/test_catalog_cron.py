"""`dlstudy catalog` run night after night from cron: pulls killed and resumed, scopes that must
stay the same, --where and --sql given by hand. Through the installed CLI against the embedded
server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dlstudy.server import VirtualSpec
from dlstudy.server.options import ServerOptions
from dlstudy.server.run import running_server
from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import DLSTUDY, STOP_SIGNALS, run_installed, stop_installed
from ..fixtures.embedded_server import SeenRequests, StartServer
from ..tools import mounted

pytestmark = pytest.mark.integration


def pull(url: str, db: Path, *extra: str) -> dict[str, Any]:
    result = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *extra)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def catalog_rows(db: Path, sql: str) -> list[Any]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_a_pull_killed_while_listing_series_still_counts_its_new_studies(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """Killed after its studies were merged (while it lists their series), the resumed pull has
    nothing left to merge: it reported and recorded 0 new studies of 300 new ones."""
    url = embedded_server(None, virtual=VirtualSpec(300), latency=0.02)
    db = tmp_path / "c.duckdb"
    process = subprocess.Popen(
        [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db), "--level", "series"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(path.endswith("/series") for path, _ in seen_requests.requests):
        assert process.poll() is None and time.monotonic() < deadline, "no series listed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert catalog_rows(db, "SELECT finished FROM pulls") == [(None,)]

    summary = pull(url, db, "--level", "series")

    assert (summary["pull"], summary["resumed"], summary["studies"]) == (1, True, 300)
    assert summary["new"] == 300
    assert catalog_rows(db, "SELECT new, changed FROM pulls") == [(300, 0)]
    assert catalog_rows(db, "SELECT count(DISTINCT study_uid) FROM series") == [(300,)]


@pytest.mark.parametrize("relative", ["7d", "today", "Yesterday"])
def test_pull_refuses_a_study_date_that_moves_every_day(
    embedded_server: StartServer, tmp_path: Path, relative: str
) -> None:
    """The scope was stored as that day's dates: the next night's pull, with the same command,
    was refused as 'pulled with other filters' (exit 2)."""
    url = embedded_server(None, virtual=VirtualSpec(20))
    db = tmp_path / "c.duckdb"
    result = run_installed(
        "catalog", "pull", "--url", url, "--db", str(db), "--study-date", relative
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("dlstudy: error: catalog pull takes fixed dates") and relative in line
    assert not db.exists()
    fixed = run_installed(
        "catalog", "pull", "--url", url, "--db", str(db), "--study-date", "20000101-"
    )
    assert fixed.returncode == 0, fixed.stderr


def test_where_that_escapes_its_parentheses_is_refused(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """`--where` was pasted into `... AND (WHERE)`: `1=1) OR (1=1` closed the parenthesis and
    selected every study, whatever the filters said (exit 0)."""
    url = embedded_server(None, virtual=VirtualSpec(60))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    ct = run_installed("catalog", "query", "--db", str(db), "--modality", "CT", "--uids")
    assert ct.returncode == 0, ct.stderr
    assert 0 < len(ct.stdout.split()) < 60

    for args in (
        ("catalog", "query", "--db", str(db), "--modality", "CT", "--uids"),
        ("download", "--from-catalog", str(db), "--url", url, "-o", str(tmp_path / "out")),
        ("sync", "--catalog", str(db), "--modality", "CT", "--url", url, "-o", str(tmp_path / "o")),
    ):
        result = run_installed(*args, "--where", "1=1) OR (1=1")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.splitlines()[-1].startswith(
            "dlstudy: error: --where must be one SQL condition"
        )
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))

    commented = run_installed(
        "catalog", "query", "--db", str(db), "--modality", "CT", "--where", "1=1 -- all", "--uids"
    )
    assert commented.returncode == 0, commented.stderr
    assert commented.stdout == ct.stdout


@pytest.mark.parametrize("sql", ["", "  ", "-- only a comment"])
def test_sql_without_a_statement_is_one_line(
    embedded_server: StartServer, tmp_path: Path, sql: str
) -> None:
    """DuckDB answers a text without a statement with nothing at all: it was a traceback."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    result = run_installed("catalog", "query", "--db", str(db), "--sql", sql, "--json")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "dlstudy: error: --sql holds no statement: give a query, e.g. SELECT * FROM pulls"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("sql", "word"),
    [("COPY (SELECT study_uid FROM studies) TO '{keep}' (FORMAT csv)", "COPY"),
     ("EXPORT DATABASE '{folder}'", "EXPORT"), ("INSTALL httpfs", "INSTALL"),
     ("SELECT 1; COPY studies TO '{keep}'", "COPY"), ("SET threads = 1", "SET"),
     ("-- a note\nCOPY studies TO '{keep}'", "COPY"), ("/* c */ COPY studies TO '{keep}'", "COPY"),
     ("SELECT * FROM read_csv('{keep}')", None)],
)  # fmt: skip
def test_sql_that_would_write_a_file_or_reach_past_the_catalog_is_refused(
    embedded_server: StartServer, tmp_path: Path, sql: str, word: str | None
) -> None:
    """The catalog is opened read-only, yet DuckDB wrote files for `--sql` (COPY over a file
    of the user's, EXPORT DATABASE), read any file, and INSTALL went to extensions.duckdb.org
    (the docs say a statement that writes is refused, exit 2)."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    keep, folder = tmp_path / "keep.txt", tmp_path / "exported"
    keep.write_text("precious\n")
    text = sql.format(keep=keep, folder=folder)
    result = run_installed("catalog", "query", "--db", str(db), "--sql", text, "--csv")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    if word is not None:
        assert line == (
            f"dlstudy: error: --sql only reads the catalog: {word} is refused "
            "(`dlstudy catalog export` writes a table to a file)"
        )
    else:  # a SELECT, run with DuckDB's file access off
        assert line.startswith("dlstudy: error: catalog query failed: Permission Error")
    assert result.stdout == ""
    assert keep.read_text() == "precious\n" and not folder.exists()
    shown = run_installed("catalog", "query", "--db", str(db), "--sql", "SHOW TABLES", "--csv")
    assert "studies" in shown.stdout.split(), shown.stderr  # reading goes on as before


def test_status_counts_complete_what_sync_found_complete_without_counts(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A server that reports no instance counts: sync --catalog finds every study complete
    (its run recorded them so), and `catalog status` called them all partial, night after
    night, so `--state missing --state partial --uids` listed the whole catalog."""
    source = tmp_path / "source"
    spec = SynthSpec(studies=3, series=1, instances=2, size=1024, seed=5)
    generate(source, spec)
    url = embedded_server(source, no_counts=True)
    db, out = tmp_path / "c.duckdb", tmp_path / "out"
    pull(url, db)
    synced = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert synced.returncode == 0, synced.stderr
    again = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json")
    assert json.loads(again.stdout)["sync"]["already_complete"] == 3

    status = run_installed("catalog", "status", "--db", str(db), "-o", str(out), "--json")
    assert status.returncode == 0, status.stderr
    states = [json.loads(line) for line in status.stdout.splitlines()]
    assert [(s["state"], s["on_disk"]) for s in states] == [("complete", 2)] * 3
    left = run_installed(
        "catalog", "status", "--db", str(db), "-o", str(out),
        "--state", "missing", "--state", "partial", "--uids",
    )  # fmt: skip
    assert left.returncode == 0 and left.stdout == ""


def test_status_of_a_read_only_copy_of_the_output(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """OUT on a read-only file system (an archived copy, a read-only mount): status failed,
    `cannot read '.../manifest.sqlite': unable to open database file` (SQLite reads an index
    in WAL mode through a shared-memory file it makes beside it), exit 2."""
    source = tmp_path / "source"
    generate(source, SynthSpec(studies=2, series=1, instances=2, size=1024, seed=6))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db)
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as disk:
        out = disk / "out"
        synced = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out))
        assert synced.returncode == 0, synced.stderr
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        status = run_installed("catalog", "status", "--db", str(db), "-o", str(out), "--json")
        assert status.returncode == 0, status.stderr
        states = [json.loads(line) for line in status.stdout.splitlines()]
        assert [(s["state"], s["on_disk"]) for s in states] == [("complete", 2)] * 2


def test_a_where_in_the_config_defaults_waits_for_a_catalog(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """`where` kept in `[defaults]` for `catalog query` and `status` stopped every download
    and sync without a catalog: `--where selects from a catalog: give --from-catalog too`,
    naming no config file, exit 2. It applies when a catalog is given."""
    source = tmp_path / "source"
    generate(source, SynthSpec(studies=2, series=1, instances=2, size=1024, seed=7))
    url = embedded_server(source)
    db = tmp_path / "c.duckdb"
    pull(url, db)
    config = tmp_path / "config.toml"
    config.write_text('[defaults]\nwhere = "instances > 2"\n')
    ((study,), _) = catalog_rows(db, "SELECT study_uid FROM studies ORDER BY 1")
    given = ("--url", url, "--config", str(config), "--json")
    download = run_installed("download", study, "-o", str(tmp_path / "one"), *given)
    assert download.returncode == 0, download.stderr
    assert json.loads(download.stdout)["instances"]["downloaded"] == 2
    synced = run_installed("sync", "-o", str(tmp_path / "all"), *given)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["sync"]["matched"] == 2
    chosen = run_installed("sync", "--catalog", str(db), "-o", str(tmp_path / "none"), *given)
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["sync"]["matched"] == 0  # no study has more than 2


def _start_pull(url: str, db: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db), "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_requests(seen: SeenRequests, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(seen.requests) < count:
        assert process.poll() is None and time.monotonic() < deadline, "no pages asked"
        time.sleep(0.02)


def _kill_an_update_pull(url: str, db: Path, seen: SeenRequests) -> None:
    """A first pull into `db`, then an update pull that relists every day (a long walk),
    killed with SIGKILL once it has asked a few pages."""
    pull(url, db, "--recent", "0")
    asked = len(seen.requests)
    process = subprocess.Popen(
        [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db), "--recent", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_requests(seen, asked + 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _failed_summary(stdout: str, stderr: str, status: int) -> dict[str, Any]:
    """The --json object of a pull that ended with `status`: its error is stderr's line."""
    summary: dict[str, Any] = json.loads(stdout)
    assert summary["exit_status"] == status
    assert f"dlstudy: error: {summary['error']}" in stderr.splitlines()
    return summary


def test_a_pull_whose_server_goes_down_prints_its_json_summary(
    seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """The archive stops answering mid-pull: --json printed nothing (a cron job parsing it got
    empty stdout); now the summary of what the pull recorded, its error and exit status."""
    db = tmp_path / "c.duckdb"
    options = ServerOptions(virtual=VirtualSpec(400), max_page_size=10, latency=0.05)
    with running_server(options) as url:
        process = _start_pull(url, db, "--timeout", "2", "--retries", "0")
        _wait_for_requests(seen_requests, 4, process)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    summary = _failed_summary(stdout, stderr, 3)
    assert (summary["pull"], summary["kind"], summary["resumed"]) == (1, "first", False)
    recorded = catalog_rows(db, "SELECT requests FROM pulls")
    assert summary["requests"] == recorded[0][0] >= 1


def test_a_pull_refused_by_the_archive_prints_its_json_summary(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A 401 part way (the token expired, no --token-command): exit 3 and the summary."""
    url = embedded_server(
        None, virtual=VirtualSpec(400), max_page_size=10, token="t0ken", token_expires_after=5
    )
    db = tmp_path / "c.duckdb"
    result = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json",
                           "--token", "t0ken")  # fmt: skip
    assert result.returncode == 3, result.stderr
    summary = _failed_summary(result.stdout, result.stderr, 3)
    assert summary["pull"] == 1 and summary["requests"] >= 1
    assert "t0ken" not in result.stdout + result.stderr


def test_a_pull_that_fails_before_it_begins_prints_its_json_summary(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Another scope (exit 2), a bad --level (exit 2): the summary, no pull in it."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    for extra in (["--patient-id", "P1"], ["--level", "patient"]):
        result = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json", *extra)
        assert result.returncode == 2, result.stderr
        summary = _failed_summary(result.stdout, result.stderr, 2)
        assert (summary["pull"], summary["requests"]) == (None, 0)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_pull_prints_its_json_summary(
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    tmp_path: Path,
    signum: int,
    status: int,
) -> None:
    url = embedded_server(None, virtual=VirtualSpec(400), max_page_size=10, latency=0.05)
    db = tmp_path / "c.duckdb"
    process = _start_pull(url, db)
    _wait_for_requests(seen_requests, 3, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    summary = json.loads(stdout)
    assert summary["exit_status"] == status
    assert summary["error"] == ("terminated" if status == 143 else "interrupted")
    assert summary["pull"] == 1 and summary["requests"] >= 1
    assert summary["requests"] == catalog_rows(db, "SELECT requests FROM pulls")[0][0]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_pull_says_the_next_pull_resumes(
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    tmp_path: Path,
    signum: int,
    status: int,
) -> None:
    """It said 'completed instances are kept', as a download does, in a cron log of pulls."""
    url = embedded_server(None, virtual=VirtualSpec(400), max_page_size=10, latency=0.05)
    db = tmp_path / "c.duckdb"
    process = subprocess.Popen(
        [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(seen_requests.requests) < 3:
        assert process.poll() is None and time.monotonic() < deadline, "no pages asked"
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status
    assert stderr.splitlines()[-1].endswith(
        "; the next catalog pull resumes where this one stopped"
    ), stderr
    assert pull(url, db)["resumed"] is True


@pytest.mark.parametrize("name", ["studies.csv", "studies.parquet"])
def test_export_onto_a_folder_is_one_line(
    embedded_server: StartServer, tmp_path: Path, name: str
) -> None:
    """`--to` naming an existing folder: it was an IsADirectoryError traceback (exit 1)."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    (tmp_path / name).mkdir()
    result = run_installed("catalog", "export", "--db", str(db), "--to", str(tmp_path / name))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"dlstudy: error: --to: cannot write {tmp_path / name}: Is a directory"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.duckdb", name]


def test_sql_json_is_json_for_every_column_type(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """How long each pull took (an INTERVAL), a DECIMAL, a TIME, a UUID: each was a TypeError
    traceback after the rows before it; NaN was written as `NaN`, which is no JSON."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    sql = (
        "SELECT pull, finished - started AS took, started, 1.5 AS half, [2.5] AS halves, "
        "TIME '12:00:01' AS noon, '00000000-0000-0000-0000-000000000001'::UUID AS id, "
        "'nan'::DOUBLE AS nan, ['inf'::DOUBLE] AS inf FROM pulls"
    )
    result = run_installed("catalog", "query", "--db", str(db), "--sql", sql, "--json")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    row = json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is no JSON"))
    assert row["pull"] == 1 and row["took"].startswith("00:00:")  # DuckDB's text of it
    assert row["started"][:4].isdigit() and "T" in row["started"]
    assert (row["half"], row["halves"], row["noon"]) == (1.5, [2.5], "12:00:01")
    assert row["id"] == "00000000-0000-0000-0000-000000000001"
    assert (row["nan"], row["inf"]) == (None, [None])


def test_sql_shows_intervals_and_blobs_in_duckdbs_text(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """docs/catalog.md promises INTERVAL and BLOB as their text: a month came out as 30 days
    (Python's timedelta, `30 days, 2:00:00`) and a BLOB as Python's bytes (`b'abc'`), in
    --json, --csv and the tab-separated lines alike. Each is DuckDB's text now (a byte that is
    not printable as `\\xNN`), under the name the query gave it; other types are as they were,
    and a query of several statements or ending in a comment runs as written."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    sql = r"""SELECT 1; SELECT INTERVAL '1 month 2 hours' AS i, 'ab\x0A'::BLOB AS "b""lob", 7 AS n,
        NULL::BLOB AS none FROM pulls -- one row"""

    def query(*form: str) -> list[str]:
        result = run_installed("catalog", "query", "--db", str(db), "--sql", sql, *form)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    (line,) = query("--json")
    assert json.loads(line) == {"i": "1 month 02:00:00", 'b"lob': r"ab\x0A", "n": 7, "none": None}
    assert query("--csv") == ['i,"b""lob",n,none', r"1 month 02:00:00,ab\x0A,7,"]
    assert query() == ['i\t"b""lob"\tn\tnone', "1 month 02:00:00\tab\\x0A\t7\t"]


def test_full_after_an_interrupted_update_pull_still_walks_everything(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """The weekly `--full` run after a night whose update pull was killed resumed that update
    pull and stopped there: no full pull that week."""
    url = embedded_server(None, virtual=VirtualSpec(300), max_page_size=10, latency=0.03)
    db = tmp_path / "c.duckdb"
    _kill_an_update_pull(url, db, seen_requests)

    summary = pull(url, db, "--full")

    assert (summary["kind"], summary["resumed"], summary["studies"]) == ("full", False, 300)
    assert catalog_rows(
        db, "SELECT pull, kind FROM pulls WHERE finished IS NOT NULL ORDER BY pull"
    ) == [
        (1, "first"),
        (2, "update"),
        (3, "full"),
    ]


@pytest.mark.parametrize("where", ["", "  "])
def test_an_empty_where_selects_nothing_and_says_so(
    embedded_server: StartServer, tmp_path: Path, where: str
) -> None:
    """`sync --catalog --where "$COND"` with COND unset synced every study of the catalog, as an
    empty filter would have matched everything (empty filters are usage errors)."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db, out = tmp_path / "c.duckdb", tmp_path / "out"
    pull(url, db)
    for args in (
        ("sync", "--catalog", str(db), "--url", url, "-o", str(out)),
        ("download", "--from-catalog", str(db), "--url", url, "-o", str(out)),
        ("catalog", "query", "--db", str(db), "--uids"),
        ("catalog", "status", "--db", str(db), "-o", str(out)),
        ("catalog", "export", "--db", str(db), "--to", str(tmp_path / "x.csv")),
    ):
        result = run_installed(*args, "--where", where)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines()[-1] == (
            "dlstudy: error: --where is empty: give a condition, or leave the option out"
        )
    assert not any(out.rglob("*.dcm")) and not (tmp_path / "x.csv").exists()


def test_status_of_an_output_that_is_a_file_is_an_error_before_any_row(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """`-o` naming a file (a typo) said every study was missing, exit 0; and a --csv listing
    wrote its header before the error of a bad --where."""
    db, typo = tmp_path / "c.duckdb", tmp_path / "c.csv"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    typo.write_text("not an output folder\n")
    for extra in ((), ("--csv",), ("--uids",)):
        result = run_installed("catalog", "status", "--db", str(db), "-o", str(typo), *extra)
        assert result.returncode == 2, result.stdout
        assert result.stderr.splitlines() == [
            f"dlstudy: error: output folder {str(typo)!r} exists and is not a folder"
        ]
        assert result.stdout == ""
    bad = run_installed(
        "catalog", "status", "--db", str(db), "-o", str(tmp_path / "out"),
        "--where", "no_such_column = 1", "--csv",
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("dlstudy: error: catalog query failed:")


def test_a_server_that_cuts_pages_silently_is_catalogued_whole(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Pages cut at 100 without a Warning (Orthanc's LimitFindResults): the first page was
    taken for the whole archive, 100 of 500 studies, with exit 0 ("every study is in")."""
    url = embedded_server(None, virtual=VirtualSpec(500), max_page_size=100, silent_cap=True)
    db = tmp_path / "c.duckdb"
    first = run_installed("catalog", "pull", "--url", url, "--db", str(db), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["studies"] == 500
    assert "cuts pages at 100 results without saying so" in first.stderr
    listed = run_installed("query", "--url", url, "--uids")
    assert catalog_rows(db, "SELECT count(*) FROM studies") == [(500,)]
    assert {r[0] for r in catalog_rows(db, "SELECT study_uid FROM studies")} == set(
        listed.stdout.split()
    )
    update = pull(url, db)
    assert (update["kind"], update["studies"], update["new"]) == ("update", 500, 0)
    told = pull(url, db, "--page-size", "100")
    assert told["studies"] == 500


def test_a_pull_from_a_silent_cap_killed_while_paging_resumes_to_every_study(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """The resumed pull pages on from where the killed one was: it must know the cap without
    the first page that showed it, or it takes the next page of 100 for the last."""
    url = embedded_server(
        None, virtual=VirtualSpec(1000), max_page_size=100, silent_cap=True, latency=0.1
    )
    db = tmp_path / "c.duckdb"
    process = subprocess.Popen(
        [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(seen_requests.requests) < 4:
        assert process.poll() is None and time.monotonic() < deadline, "the pull ended"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert catalog_rows(db, "SELECT state FROM windows") == [("paging",)]

    summary = pull(url, db)

    assert (summary["resumed"], summary["studies"]) == (True, 1000)


def _peak_rss_mb(*args: str) -> float:
    """Peak RSS of the installed CLI run with `args` (its own process tree, measured by a
    parent that runs nothing else), in MB."""
    script = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "assert done.returncode == 0, done.returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, DLSTUDY, *args], capture_output=True, text=True, check=True
    )
    return int(result.stdout) / 1024


def test_query_of_a_large_catalog_streams_its_line_forms(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """--json and --csv held every study as a record before printing the first (1.2 GB for a
    million studies); they now cost what the same query costs through --sql, which streams."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(120_000)), db)
    sql = "SELECT * FROM studies ORDER BY study_date NULLS LAST, study_uid"
    streamed = _peak_rss_mb("catalog", "query", "--db", str(db), "--sql", sql, "--csv")
    for form in ("--json", "--csv"):
        peak = _peak_rss_mb("catalog", "query", "--db", str(db), form)
        assert peak < streamed + 40, (form, peak, streamed)


NEW_YORK = {"TZ": "America/New_York"}  # five hours behind UTC in winter, four in summer


def _pull_times(db: Path) -> list[dict[str, Any]]:
    result = run_installed(
        "catalog", "query", "--db", str(db), "--json",
        "--sql", "SELECT pull, started, finished, typeof(started) AS kind FROM pulls ORDER BY 1",
        env=NEW_YORK,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def test_pull_times_are_utc_and_say_so(embedded_server: StartServer, tmp_path: Path) -> None:
    """pulls.started / finished were TIMESTAMP in the local time of the machine that pulled:
    a catalog pulled in New York and read in London was five hours off, with nothing to say
    so. Now TIMESTAMPTZ, shown in UTC; a catalog an earlier version made (its TIMESTAMPs in
    local time) is still read, and its next pull converts them."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db = tmp_path / "c.duckdb"
    before = dt.datetime.now(dt.UTC)
    first = run_installed("catalog", "pull", "--url", url, "--db", str(db), env=NEW_YORK)
    assert first.returncode == 0, first.stderr
    after = dt.datetime.now(dt.UTC)
    (row,) = _pull_times(db)
    assert row["kind"] == "TIMESTAMP WITH TIME ZONE"
    assert row["started"].endswith("+00:00") and row["finished"].endswith("+00:00")
    assert before <= _utc(row["started"]) <= _utc(row["finished"]) <= after

    # The catalog as the earlier version left it: the times local (New York), without zone.
    with duckdb.connect(str(db)) as con:
        con.execute("SET TimeZone = 'America/New_York'")
        for column in ("started", "finished"):
            con.execute(f"ALTER TABLE pulls ALTER {column} SET DATA TYPE TIMESTAMP")
    (old,) = _pull_times(db)  # read as it is
    assert old["kind"] == "TIMESTAMP" and old["started"] != row["started"]
    second = run_installed("catalog", "pull", "--url", url, "--db", str(db), env=NEW_YORK)
    assert second.returncode == 0, second.stderr
    converted, latest = _pull_times(db)
    assert converted == row
    assert latest["kind"] == "TIMESTAMP WITH TIME ZONE" and _utc(latest["started"]) >= after


def _limit_file_size() -> None:  # the kernel refuses writes past 150 KB with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


def test_a_catalog_that_cannot_be_written_stops_the_pull_in_one_line(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """The catalog's disk full (here a file size limit) part way: it was a DuckDB traceback,
    exit 1 and nothing on stdout with --json. One line, the summary; the next pull with room
    resumes and catalogues every study."""
    url = embedded_server(None, virtual=VirtualSpec(300), max_page_size=10)
    db = tmp_path / "c.duckdb"
    result = subprocess.run(
        [DLSTUDY, "catalog", "pull", "--url", url, "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: catalog {db}: ") and "File too large" in line
    summary = _failed_summary(result.stdout, result.stderr, 1)
    assert summary["pull"] == 1
    assert pull(url, db)["studies"] == 300


def test_a_pull_whose_checkpoint_finds_the_disk_full_says_what_it_did(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """The disk full at the pull's very end (DuckDB's checkpoint, once the pull is recorded
    finished): --json said 0 studies and 0 requests of a pull the file holds whole, and the
    error was DuckDB's `FATAL Error: Failed to create checkpoint ...`. The counts are the
    pull's; the line is dlstudy's, naming the full disk; exit 1."""
    url = embedded_server(None, virtual=VirtualSpec(3000))
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1200k", "tmpfs") as disk:
        db = disk / "c.duckdb"
        command = ["catalog", "pull", "--url", url, "--db", str(db), "--page-size", "100"]
        result = run_installed(*command, "--json")
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"dlstudy: error: catalog {db}: cannot write it: No space left on device (make "
            "room: the next pull carries on)\n"
        )
        summary = _failed_summary(result.stdout, result.stderr, 1)
        room = tmp_path / "room"
        room.mkdir()
        for file in disk.iterdir():  # (its log with it: DuckDB replays it)
            (room / file.name).write_bytes(file.read_bytes())
    (recorded,) = catalog_rows(room / "c.duckdb", "SELECT studies, new, requests FROM pulls")
    assert (summary["studies"], summary["new"], summary["requests"]) == recorded
    assert recorded[:2] == (3000, 3000)


def test_a_catalog_whose_first_pull_failed_is_no_cohort(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """The first pull failed (the server down): the catalog holds no study yet. `sync
    --catalog` synced nothing and exited 0 (a quiet night), `catalog status` said 0 missing;
    each now says the first pull has not finished, exit 2. Its pulls can still be read."""
    source = tmp_path / "source"
    generate(source, SynthSpec(studies=2, series=1, instances=1, size=512, seed=9))
    url = embedded_server(source)
    db, out = tmp_path / "c.duckdb", tmp_path / "out"
    failed = run_installed("catalog", "pull", "--url", "http://127.0.0.1:9/dicomweb",
                           "--db", str(db))  # fmt: skip
    assert failed.returncode == 3, failed.stderr
    said = f"dlstudy: error: catalog {db} holds no study yet: its first pull has not finished"
    for command in (
        ["sync", "--catalog", str(db), "--url", url, "-o", str(out), "--json"],
        ["download", "--from-catalog", str(db), "--url", url, "-o", str(out), "--json"],
        ["catalog", "status", "--db", str(db), "-o", str(out)],
        ["catalog", "query", "--db", str(db), "--uids"],
        ["catalog", "export", "--db", str(db), "--to", str(tmp_path / "s.csv")],
    ):
        result = run_installed(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.startswith(said), result.stderr
        if "--json" in command:
            assert json.loads(result.stdout)["exit_status"] == 2
    pulls = run_installed("catalog", "query", "--db", str(db), "--sql", "SELECT * FROM pulls")
    assert pulls.returncode == 0, pulls.stderr
    assert pull(url, db)["studies"] == 2
    synced = run_installed("sync", "--catalog", str(db), "--url", url, "-o", str(out))
    assert synced.returncode == 0, synced.stderr


def test_output_onto_a_full_disk_is_one_line(embedded_server: StartServer, tmp_path: Path) -> None:
    """`catalog status > FILE`, `catalog query --csv > FILE`, `query --csv > FILE` on a full
    disk (/dev/full): an OSError traceback, exit 1. One line now, exit 1."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    for command in (
        ["catalog", "status", "--db", str(db), "-o", str(tmp_path / "out")],
        ["catalog", "status", "--db", str(db), "-o", str(tmp_path / "out"), "--json"],
        ["catalog", "query", "--db", str(db), "--csv"],
        ["catalog", "query", "--db", str(db), "--sql", "SELECT * FROM pulls", "--json"],
        ["query", "--url", url, "--csv"],
    ):
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [DLSTUDY, *command], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
            )
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr == "dlstudy: error: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("name", ["studies.csv", "studies.parquet"])
def test_export_onto_a_full_disk_is_a_failure_not_a_usage_error(
    embedded_server: StartServer, tmp_path: Path, name: str
) -> None:
    """A file size limit (a full disk) under --to: it was exit 2, a usage error quoting
    DuckDB's I/O message. Exit 1 naming the file and why; no temp file left."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(300)), db)
    target = tmp_path / "out" / name
    target.parent.mkdir()

    def limit() -> None:  # the kernel refuses writes past 2 KB with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))

    result = subprocess.run(
        [DLSTUDY, "catalog", "export", "--db", str(db), "--to", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"dlstudy: error: --to: cannot write {target}: File too large\n"
    assert list(target.parent.iterdir()) == []


def test_export_removes_the_temp_file_a_killed_export_left(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """An export killed while it writes (a cron job's timeout) leaves `.FILE.PID.part`, which
    every later export left there: one more a night. The next export removes it, and leaves
    the temp file of an export still running."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = tmp_path / f".studies.csv.{gone.pid}.part"
    running = tmp_path / f".studies.csv.{os.getpid()}.part"
    other = tmp_path / f".other.csv.{gone.pid}.part"
    for path in (orphan, running, other):
        path.write_text("pull,kind\n1,fi")
    target = tmp_path / "studies.csv"
    result = run_installed("catalog", "export", "--db", str(db), "--to", str(target))
    assert result.returncode == 0, result.stderr
    assert not orphan.exists() and running.exists() and other.exists()
    assert len(target.read_text().splitlines()) == 6


def test_an_empty_catalog_file_option_names_the_option(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """`--catalog "$CATALOG"` with the variable unset: Path made it `.`, and the line was
    DuckDB's `cannot open catalog .: IO Error: Could not read from file "/cwd": Is a
    directory`. One line naming the option now, as an empty --where says."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db, out = tmp_path / "c.duckdb", str(tmp_path / "out")
    pull(url, db)
    for args, name in (
        (("sync", "--catalog", "", "--url", url, "-o", out), "--catalog"),
        (("download", "--from-catalog", "", "--url", url, "-o", out), "--from-catalog"),
        (("catalog", "pull", "--db", "", "--url", url), "--db"),
        (("catalog", "query", "--db", ""), "--db"),
        (("catalog", "status", "--db", "", "-o", out), "--db"),
        (("catalog", "export", "--db", str(db), "--to", ""), "--to"),
    ):
        result = run_installed(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == f"dlstudy: error: {name} is empty: give a file\n", args


@pytest.mark.parametrize("kind", ["pipe", "folder"])
def test_a_catalog_that_is_no_regular_file_is_one_line(
    embedded_server: StartServer, tmp_path: Path, kind: str
) -> None:
    """A named pipe as the catalog: opening it to read its header waited for a writer for
    ever, and `sync --catalog` took no SIGTERM then (a cron timeout could not stop it)."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db, out = tmp_path / "c.duckdb", str(tmp_path / "out")
    if kind == "pipe":
        os.mkfifo(db)
    else:
        db.mkdir()
    what = "not a regular file" if kind == "pipe" else "a folder"
    for args in (
        ("sync", "--catalog", str(db), "--url", url, "-o", out),
        ("download", "--from-catalog", str(db), "--url", url, "-o", out),
        ("catalog", "pull", "--db", str(db), "--url", url),
        ("catalog", "query", "--db", str(db)),
        ("catalog", "status", "--db", str(db), "-o", out),
    ):
        result = run_installed(*args, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == (
            f"dlstudy: error: catalog {db} is {what}: give the DuckDB file of `catalog pull --db`\n"
        ), args


def test_a_killed_update_pull_is_named_by_what_reads_the_catalog(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """After a nightly update pull was killed, `catalog status` showed the studies of the pull
    before it as if they were the archive's, with no word that the last pull did not finish."""
    url = embedded_server(None, virtual=VirtualSpec(300), max_page_size=10, latency=0.03)
    db = tmp_path / "c.duckdb"
    _kill_an_update_pull(url, db, seen_requests)
    warning = f"dlstudy: warning: catalog {db}: pull 2 (update, started "  # then the time
    none = ("--where", "study_date = 'none'", "--url", url, "-o", str(tmp_path / "out"))
    readers = [
        (0, ("catalog", "status", "--db", str(db), "-o", str(tmp_path / "out"))),
        (0, ("catalog", "query", "--db", str(db), "--uids")),
        (0, ("catalog", "export", "--db", str(db), "--to", str(tmp_path / "s.csv"))),
        (0, ("sync", "--catalog", str(db), *none)),
        (4, ("download", "--from-catalog", str(db), *none)),
    ]
    for status, args in readers:
        result = run_installed(*args)
        assert result.returncode == status, result.stderr
        lines = [line for line in result.stderr.splitlines() if "warning" in line]
        assert len(lines) == 1 and lines[0].startswith(warning), result.stderr
        assert "did not finish: these are the studies of pull 1" in lines[0]
        assert f"the next `dlstudy catalog pull --db {db}` resumes it" in lines[0]

    summary = pull(url, db, "--recent", "100000")

    assert (summary["pull"], summary["resumed"], summary["studies"]) == (2, True, 300)
    assert catalog_rows(db, "SELECT count(*) FROM changes") == [(0,)]
    after = run_installed("catalog", "status", "--db", str(db), "-o", str(tmp_path / "out"))
    assert after.returncode == 0 and "warning" not in after.stderr


def test_a_catalog_cut_short_is_refused_before_anything_is_written(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A catalog copied onto a full disk opened, and the pull wrote into it before it read a
    block it lacked: exit 1, as if the next pull would resume, the damaged file changed, a .wal
    beside it; export blamed its --to (exit 1)."""
    url = embedded_server(None, virtual=VirtualSpec(300))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    whole = db.read_bytes()
    db.write_bytes(whole[: len(whole) // 2])
    given = db.name  # each command names the catalog as given (the reads named it absolute)
    commands = [
        ("catalog", "pull", "--url", url, "--db", given),
        ("catalog", "status", "--db", given, "-o", "out"),
        ("catalog", "query", "--db", given, "--uids"),
        ("catalog", "query", "--db", given, "--sql", "SELECT * FROM studies"),
        ("catalog", "export", "--db", given, "--to", "s.csv"),
        ("sync", "--catalog", given, "--url", url, "-o", "out"),
        ("download", "--from-catalog", given, "--url", url, "-o", "out"),
    ]
    for args in commands:
        result = run_installed(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"dlstudy: error: catalog {given} is damaged: "), line
        assert " is damaged: IO Error: Could not read enough bytes" in line, line
        assert line.endswith(": restore it from a copy, or pull into a new --db"), line
    assert db.read_bytes() == whole[: len(whole) // 2]
    assert not (tmp_path / "c.duckdb.wal").exists() and not (tmp_path / "s.csv").exists()


def test_a_catalog_with_a_block_damaged_or_a_sqlite_file_is_named_so(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A block of the catalog overwritten: `not a dlstudy catalog: Corrupt database file`,
    with nothing on what to do. OUT's manifest.sqlite given as --db: DuckDB went to fetch its
    SQLite extension from extensions.duckdb.org (over plain http), and said it could not."""
    url = embedded_server(None, virtual=VirtualSpec(30))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    with db.open("r+b") as file:
        file.seek(4096)
        file.write(b"\x55" * 64)
    manifest = tmp_path / "manifest.sqlite"
    sqlite3.connect(manifest).execute("CREATE TABLE entries (sop TEXT)").connection.close()
    for given, said in [
        (db, f"catalog {db} is damaged: Corrupt database file"),
        (manifest, f"{manifest} is not a dlstudy catalog: it is a SQLite database (an output"),
    ]:
        out = str(tmp_path / "o")
        for args in (("catalog", "status", "--db", str(given)),
                     ("sync", "--catalog", str(given), "--url", url, "-o", out)):  # fmt: skip
            result = run_installed(*args)
            assert result.returncode == 2, result.stderr
            (line,) = result.stderr.splitlines()
            assert line.startswith(f"dlstudy: error: {said}"), line


def test_a_catalog_of_a_newer_dlstudy_is_named_so_and_left_alone(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """A catalog a later dlstudy added a column to was called `a DuckDB database but not a
    dlstudy catalog`: a user who shares one between machines would think it was lost."""
    url = embedded_server(None, virtual=VirtualSpec(30))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    with duckdb.connect(str(db)) as con:
        con.execute("ALTER TABLE studies ADD COLUMN institution VARCHAR")
        con.execute("CREATE TABLE schema_version (version INTEGER)")
    before = db.read_bytes()
    for args in (
        ("catalog", "pull", "--url", url, "--db", str(db)),
        ("catalog", "status", "--db", str(db), "-o", str(tmp_path / "out")),
        ("catalog", "query", "--db", str(db), "--uids"),
    ):
        result = run_installed(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.splitlines() == [
            f"dlstudy: error: catalog {db} was written by a newer dlstudy (its columns "
            "studies.institution): upgrade dlstudy to read it, or pull into a new --db"
        ], (args, result.stderr)
    assert db.read_bytes() == before


# A query that runs far longer than any test waits: DuckDB checks for signals as it goes.
ENDLESS_SQL = "SELECT sum(hash(i)) FROM range(1000000000000) t(i)"


def test_ctrl_c_while_duckdb_runs_a_query_is_an_interrupt(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """DuckDB replaces the KeyboardInterrupt of a Ctrl-C that comes while it runs a query with
    `RuntimeError: Query interrupted`: that was a traceback and exit 1."""
    db = tmp_path / "c.duckdb"
    pull(embedded_server(None, virtual=VirtualSpec(5)), db)
    # After 1.5 s the query is running (or the CLI still starting: an interrupt too).
    returncode, stderr = stop_installed(
        "catalog", "query", "--db", str(db), "--sql", ENDLESS_SQL, signum=signal.SIGINT, after=1.5
    )
    assert returncode == 130, stderr
    assert stderr.splitlines() == ["dlstudy: interrupted"]


@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS)
def test_a_signal_stops_sync_while_the_catalog_selects_its_studies(
    embedded_server: StartServer, tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """sync --catalog runs its selection in a worker thread, which no signal reaches: Ctrl-C,
    and a cron timeout's SIGTERM, waited for the query to end, however long it took."""
    url = embedded_server(None, virtual=VirtualSpec(5))
    db, out = tmp_path / "c.duckdb", tmp_path / "out"
    pull(url, db)
    # After 2 s the selection is running (or the CLI still starting: a stop too).
    returncode, stderr = stop_installed(
        "sync", "--url", url, "--catalog", str(db), "-o", str(out),
        "--where", f"({ENDLESS_SQL}) > 0", signum=signum, after=2,
    )  # fmt: skip
    assert returncode == status, stderr
    assert stderr.splitlines()[-1].startswith(f"dlstudy: error: {said}"), stderr
    assert not out.exists()  # stopped before the output folder was made


def test_recent_past_the_year_1_is_a_usage_error(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """`--recent 800000` (or DLSTUDY_RECENT=1000000000) on a later pull: an OverflowError
    traceback, exit 1. A usage error naming the bound, exit 2; the bound itself lists every
    day from 0001-01-01 (a StudyDate of eight digits)."""
    url = embedded_server(None, virtual=VirtualSpec(20))
    db = tmp_path / "c.duckdb"
    pull(url, db)
    most = dt.date.today().toordinal() - 1
    said = f"dlstudy: error: --recent must be between 0 and {most} (the days back to the year 1)"
    for args, env in (
        (["--recent", "800000"], None),
        ([], {"DLSTUDY_RECENT": "1000000000"}),
        (["--recent", str(most + 1)], None),
    ):
        command = ["catalog", "pull", "--url", url, "--db", str(db), *args]
        result = run_installed(*command, env=env)
        assert result.returncode == 2, (args, env, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith(said), line
    assert pull(url, db, "--recent", str(most))["studies"] == 20
    keys = catalog_rows(db, "SELECT key FROM windows WHERE pull = 2 AND mode = 'walk'")
    assert keys == [("00010101-",)]


def test_the_nights_pull_runs_while_sync_downloads_the_catalogs_studies(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """sync --catalog held the catalog open until its download ended: the night's `catalog
    pull` into it exited 5 (in use by another process). It is closed once its selection is
    read, as download --from-catalog closes it: the pull runs while the sync downloads."""
    url = embedded_server(None, virtual=VirtualSpec(30, study_size=1), latency=0.2)
    db, out = tmp_path / "c.duckdb", tmp_path / "out"
    pull(url, db)
    pulled: list[dict[str, Any]] = []

    def pull_once_files_arrive() -> bool:
        if not pulled and any(out.rglob("*.dcm")):
            pulled.append(pull(url, db))
        return bool(pulled)

    status, stderr = stop_installed(
        "sync", "--catalog", str(db), "--url", url, "-o", str(out), "-q", "-c", "1",
        signum=signal.SIGTERM, ready=pull_once_files_arrive,
    )  # fmt: skip
    assert status == 143, stderr  # the sync was still downloading when the pull ended
    assert (pulled[0]["kind"], pulled[0]["studies"]) == ("update", 30)
