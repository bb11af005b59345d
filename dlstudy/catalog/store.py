"""The catalog file: a DuckDB database of what a pull found, and of how far it got.

Tables (`dlstudy catalog query --sql` reads any of them):

    studies      one row per study: the study-level QIDO attributes, first_pull, last_pull
    series       one row per series (pulls with --level series)
    changes      what each later pull found: 'new' studies, 'instances_added' / 'instances_removed',
                 'deleted' (a --full pull did not find a catalogued study: it left `studies`)
    pulls        one row per pull: kind, started, finished (TIMESTAMPTZ, shown in UTC),
                 requests, studies, new, changed
    windows      the windows of each pull and their state: the pull's resume point
    harvest      rows of the pull under way, merged into `studies` when its last window is done
    meta         the pull's scope (its filters), the archive's address, whether the server
                 honours offset

A page's rows and its window's new state go in one transaction, so a pull killed at any moment
leaves a consistent file and the next one carries on from the windows not done. Rows are only
appended while a pull walks (appending is cheap; an upsert into a keyed table cost three times
the time and file size), and merged into `studies` in one transaction at the end.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..dicomweb.silent_cut import normal_date, normal_time
from ..errors import LockedError, StorageError, UsageError
from ..http.urls import split_base_url
from .windows import Window

if TYPE_CHECKING:
    import duckdb

    from ..dicomweb.search import StudyRecord

log = logging.getLogger(__name__)
# DuckDB's own cap; what the pull itself holds is a page or two.
MEMORY_LIMIT = "128MB"

STUDY_COLUMNS = (
    ("study_uid", "VARCHAR"),
    ("patient_id", "VARCHAR"),
    ("patient_name", "VARCHAR"),
    ("study_date", "VARCHAR"),
    ("study_time", "VARCHAR"),
    ("accession", "VARCHAR"),
    ("description", "VARCHAR"),
    ("modalities", "VARCHAR[]"),
    ("series", "INTEGER"),
    ("instances", "INTEGER"),
)
_COLUMNS_SQL = ", ".join(f"{name} {kind}" for name, kind in STUDY_COLUMNS)
_NAMES = ", ".join(name for name, _ in STUDY_COLUMNS)
_UNNEST = ", ".join(f"unnest(${i + 2})" for i in range(len(STUDY_COLUMNS)))

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS pulls (
    pull INTEGER, kind VARCHAR, started TIMESTAMPTZ, finished TIMESTAMPTZ, requests BIGINT,
    studies BIGINT, new BIGINT, changed BIGINT, unreachable BIGINT);
CREATE TABLE IF NOT EXISTS windows (
    pull INTEGER, key VARCHAR, mode VARCHAR, state VARCHAR, next_offset BIGINT,
    reported BIGINT);
CREATE TABLE IF NOT EXISTS harvest (pull INTEGER, {_COLUMNS_SQL});
CREATE TABLE IF NOT EXISTS studies ({_COLUMNS_SQL}, first_pull INTEGER, last_pull INTEGER);
CREATE TABLE IF NOT EXISTS changes (
    pull INTEGER, study_uid VARCHAR, change VARCHAR, instances_before INTEGER,
    instances_after INTEGER, study_date VARCHAR);
CREATE TABLE IF NOT EXISTS series (
    study_uid VARCHAR, series_uid VARCHAR, modality VARCHAR, series_number INTEGER,
    description VARCHAR, instances INTEGER);
CREATE TABLE IF NOT EXISTS series_listed (study_uid VARCHAR, instances INTEGER);
"""
# Tables every catalog has had from the start: a database with other tables under these names
# (or without them) is someone else's.
_CORE_TABLES = ("meta", "pulls", "studies")
# Columns an earlier dlstudy made of another type, still read as they are and converted by the
# next pull: the pull times were TIMESTAMP, the local time of the machine that pulled.
_EARLIER_TYPES = {("pulls", "started"): "TIMESTAMP", ("pulls", "finished"): "TIMESTAMP"}
_TIMESTAMPTZ = "TIMESTAMP WITH TIME ZONE"
# The columns an earlier dlstudy filled as the server sent them, the mark of the retired form.
_DATE_COLUMNS = (
    ("studies", "study_date", ".", normal_date),
    ("studies", "study_time", ":", normal_time),
    ("harvest", "study_date", ".", normal_date),
    ("harvest", "study_time", ":", normal_time),
    ("changes", "study_date", ".", normal_date),
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The reasons DuckDB quotes last when the system refused a write into the catalog: no room,
# whatever DuckDB was doing (a page's commit, the checkpoint at the pull's end).
_FULL = tuple(os.strerror(n) for n in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT))

# Window states: todo (not asked yet), paging (walked by offset, next_offset is next),
# done, split (its halves are windows of their own), unchanged (its count matched),
# unreachable (more than a page in one second of one day, and the server ignores offset).
OPEN_STATES = ("todo", "paging")


@dataclass(frozen=True)
class Pull:
    number: int
    kind: str  # first | update | full


@dataclass(frozen=True)
class OpenWindow:
    window: Window
    mode: str  # walk: list it all | probe: skip it if its count did not change
    state: str
    next_offset: int


def connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """One connection per process; a catalog another process holds is exit 5, one line."""
    import duckdb  # only the catalog commands pay for it

    if read_only and not path.exists():
        raise UsageError(f"no catalog at {path}: run `dlstudy catalog pull --db {path}` first")
    if path.exists() and not path.is_file():  # (a named pipe: opening it would wait for ever)
        what = "a folder" if path.is_dir() else "not a regular file"
        raise UsageError(f"catalog {path} is {what}: give the DuckDB file of `catalog pull --db`")
    if _is_sqlite(path):  # (DuckDB would fetch its SQLite extension from the internet)
        raise UsageError(
            f"{path} is not a dlstudy catalog: it is a SQLite database (an output folder's "
            ".dlstudy/manifest.sqlite?); a catalog is the DuckDB file of `catalog pull --db`"
        )
    try:
        db = duckdb.connect(
            str(path),
            read_only=read_only,
            # Nothing from the network but the archive's answers: DuckDB would otherwise
            # fetch and load an extension a file seems to need (over plain http).
            config={
                "memory_limit": MEMORY_LIMIT, "threads": 2,
                "autoinstall_known_extensions": False, "autoload_known_extensions": False,
            },
        )  # fmt: skip
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise LockedError(
                f"catalog {path} is in use by another process", path=str(path)
            ) from exc
        raise UsageError(f"cannot open catalog {path}: {_first_line(exc)}") from exc
    except duckdb.Error as exc:
        raise damaged(path, exc) or UsageError(
            f"{path} is not a dlstudy catalog: {_first_line(exc)}"
        ) from exc
    if read_only:  # read as a catalog: someone else's database is named as such, not by SQL
        try:
            if not _tables(db):
                raise UsageError(
                    f"{path} holds no catalog: run `dlstudy catalog pull --db {path}` first"
                )
            _check_is_catalog(db, path)
            _show_utc(db)
        except BaseException:
            db.close()
            raise
    return db


def _show_utc(db: duckdb.DuckDBPyConnection) -> None:
    """TIMESTAMPTZ values (the pull times) read, printed and exported in UTC, whatever the
    machine's time zone: the same catalog shows the same times everywhere."""
    db.execute("SET TimeZone = 'UTC'")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A catalog that cannot be written (a full disk, a file size limit, an I/O error) stops
    the pull in one line, exit 1, and not in a traceback: what was committed is kept, and the
    next pull resumes from it (DuckDB replays its log). What the pull's exception carries
    (`.summary`) goes with it."""
    import duckdb

    try:
        yield
    except duckdb.Error as exc:
        said = _first_line(exc)
        if why := next((why for why in _FULL if said.endswith(why)), None):
            said = f"cannot write it: {why} (make room: the next pull carries on)"
        stop = StorageError(f"catalog {path}: {said}", path=str(path))
        stop.summary = getattr(exc, "summary", None)
        raise stop from exc


def damaged(path: Path, exc: BaseException) -> UsageError | None:
    """The error of a catalog cut short (copied onto a full disk, restored in part): DuckDB
    opens it and fails at the first block it lacks. None for any other error."""
    said = str(exc).lower()
    if "could not read" not in said and "corrupt database file" not in said:
        return None
    return UsageError(
        f"catalog {path} is damaged: {_first_line(exc)}: restore it from a copy, or pull into "
        "a new --db"
    )


def _is_sqlite(path: Path) -> bool:
    """Whether the file at `path` is a SQLite database (its header says so)."""
    try:
        with path.open("rb") as file:
            return file.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False  # (DuckDB says what is wrong with it)


def _read_through(db: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Every block of the catalog read before a pull writes into it: a damaged file is
    refused as it is, rather than written into and then failing as if the next pull would
    resume (reading a catalog of 200,000 studies takes a tenth of a second)."""
    import duckdb

    try:
        for table in _tables(db):
            db.execute(f'SELECT min(hash(COLUMNS(*))) FROM "{table}"').fetchall()
    except duckdb.Error as exc:
        raise damaged(path, exc) or UsageError(f"catalog {path}: {_first_line(exc)}") from exc


def check_pulled(db: duckdb.DuckDBPyConnection, path: Path) -> None:
    """A catalog whose first pull has not finished holds no study yet (a pull's studies are
    merged at its end): selecting studies from it is an error, not an empty cohort (a sync
    --catalog that did nothing and exited 0 after the pull had failed)."""
    row = db.execute("SELECT count(*) FROM pulls WHERE finished IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise UsageError(
            f"catalog {path} holds no study yet: its first pull has not finished "
            f"(`dlstudy catalog pull --db {path}` resumes it)"
        )
    _warn_unfinished(db, path)


def _warn_unfinished(db: duckdb.DuckDBPyConnection, path: Path) -> None:
    """A later pull that was stopped or killed has merged nothing yet: the studies are those
    of the last finished pull, which a nightly cron user would take for the archive's own."""
    row = db.execute(
        "SELECT pull, kind, strftime(started AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M'), "
        "(SELECT max(pull) FROM pulls WHERE finished IS NOT NULL) "
        "FROM pulls WHERE finished IS NULL ORDER BY pull DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return
    pull, kind, started, last = row
    log.warning(
        "catalog %s: pull %s (%s, started %s UTC) did not finish: these are the studies of "
        "pull %s; the next `dlstudy catalog pull --db %s` resumes it",
        path, pull, kind, started, last, path,
    )  # fmt: skip


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _tables(db: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    """Each table (and view) of the database: its columns and their types, in order."""
    rows = db.execute(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() "
        "ORDER BY table_schema, table_name, ordinal_position"
    ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, kind in rows:
        name = table if schema == "main" else f"{schema}.{table}"
        tables.setdefault(str(name), []).append((str(column), str(kind)))
    return tables


def _catalog_tables() -> dict[str, list[tuple[str, str]]]:
    import duckdb

    with duckdb.connect(":memory:") as scratch:
        scratch.execute(SCHEMA)
        return _tables(scratch)


def _check_is_catalog(db: duckdb.DuckDBPyConnection, path: Path, advice: str = "") -> None:
    """A database that holds anything is a catalog only if it has the catalog's tables, each
    (like any other catalog table it has) with the catalog's columns: pulling into someone
    else's database would add tables to it, or fail halfway on a table of the same name."""
    found = {
        name: [(c, _TIMESTAMPTZ if _EARLIER_TYPES.get((name, c)) == k else k) for c, k in columns]
        for name, columns in _tables(db).items()
    }
    if not found:
        return
    expected = _catalog_tables()
    if all(found.get(name) == expected[name] for name in _CORE_TABLES) and all(
        columns == expected[name] for name, columns in found.items() if name in expected
    ):
        return
    if newer := _newer_columns(found, expected):
        raise UsageError(
            f"catalog {path} was written by a newer dlstudy ({newer}): upgrade dlstudy to read "
            "it, or pull into a new --db"
        )
    shown = ", ".join(sorted(found)[:5]) + (", ..." if len(found) > 5 else "")
    raise UsageError(
        f"{path} is a DuckDB database but not a dlstudy catalog (it holds {shown}){advice}"
    )


def _newer_columns(
    found: dict[str, list[tuple[str, str]]], expected: dict[str, list[tuple[str, str]]]
) -> str:
    """What a later dlstudy added, when the catalog has every column this one knows, as this
    one made them, and more after them ("" when it is no such catalog)."""
    if any(name not in found for name in _CORE_TABLES):
        return ""
    added = []
    for name, columns in found.items():
        known = expected.get(name)
        if known is None:
            continue
        if columns[: len(known)] != known:
            return ""
        added += [f"{name}.{column}" for column, _ in columns[len(known) :]]
    return "its columns " + ", ".join(added) if added else ""


def archive_address(url: str) -> str:
    """What identifies the archive a catalog was pulled from: the --url's scheme, host, port
    and path, without credentials or query (neither is secret-free nor part of the address)."""
    base, _, _ = split_base_url(url)
    parts = urlsplit(base.partition("?")[0])
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(scheme):
        host += f":{parts.port}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def check_archive_of(db: duckdb.DuckDBPyConnection, path: Path, url: str | None) -> None:
    """The catalog's studies are fetched from `url` (sync --catalog, download --from-catalog):
    from another archive than its pulls', each failed as not found, or came from that one
    without a word had it the same UIDs. Refused, as a pull from another archive is."""
    stored = _meta(db, "archive")
    # (an address no pull has heard from since it was recorded, mistyped with --archive-moved,
    # says nothing of where the studies came from)
    if not url or stored is None or not _heard_from_archive(db):
        return
    address = archive_address(url)
    if stored != address:
        raise UsageError(
            f"catalog {path} lists the archive at {stored}, not {address}: give that --url, or "
            "pull this archive into another --db (--archive-moved if the archive moved)"
        )


def _meta(db: duckdb.DuckDBPyConnection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else str(row[0])


def _heard_from_archive(db: duckdb.DuckDBPyConnection) -> bool:
    """Whether a pull has recorded a request since the archive's address was recorded."""
    bound_at = _meta(db, "archive_bound_at")
    return _requests(db) > (int(bound_at) if bound_at is not None else 0)


def _requests(db: duckdb.DuckDBPyConnection) -> int:
    row = db.execute("SELECT coalesce(sum(requests), 0) FROM pulls").fetchone()
    return int(row[0]) if row else 0


class Catalog:
    """The catalog file, open for a pull (read-write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size == 0:  # DuckDB cannot open an empty file
            path.unlink()
        self.db = connect(path)
        try:
            _check_is_catalog(self.db, path, ": give --db a new file")
            _read_through(self.db, path)
            self.db.execute("BEGIN")  # all tables or none: a half-made catalog is no catalog
            self.db.execute(SCHEMA)
            self._pull_times_with_zone()
            self._dates_normalised()
            self.db.execute("COMMIT")
            _show_utc(self.db)
        except BaseException:
            self.db.close()
            raise

    def _pull_times_with_zone(self) -> None:
        """Pull times an earlier dlstudy stored as TIMESTAMP become TIMESTAMPTZ. They were
        the local time of the machine that pulled: read so here, in this machine's time zone
        (DuckDB's default), before the connection shows UTC."""
        tables = _tables(self.db)
        for (table, column), earlier in _EARLIER_TYPES.items():
            if dict(tables.get(table, [])).get(column) == earlier:
                self.db.execute(f"ALTER TABLE {table} ALTER {column} SET DATA TYPE TIMESTAMPTZ")

    def _dates_normalised(self) -> None:
        """Dates and times an earlier dlstudy stored as sent in the retired forms
        (`2020.01.01`, `12:30:00`) become the form the filters and windows compare."""
        for table, column, mark, normal in _DATE_COLUMNS:
            raw = self.db.execute(
                f"SELECT DISTINCT {column} FROM {table} WHERE contains({column}, ?)", [mark]
            ).fetchall()
            pairs = [(value, normal(value)) for (value,) in raw if normal(value) != value]
            if pairs:
                self.db.execute(
                    f"UPDATE {table} SET {column} = m.normal FROM (SELECT unnest($1) AS raw, "
                    f"unnest($2) AS normal) m WHERE {table}.{column} = m.raw",
                    [list(values) for values in zip(*pairs, strict=True)],
                )

    def close(self) -> None:
        self.db.close()

    # --- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        return _meta(self.db, key)

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM meta WHERE key = ?", [key])
        self.db.execute("INSERT INTO meta VALUES (?, ?)", [key, value])
        self.db.execute("COMMIT")

    def check_scope(self, scope: dict[str, Any]) -> None:
        """A catalog holds one scope (the filters of its first pull): a later pull with other
        filters would make its counts and changes meaningless."""
        text = json.dumps(scope, sort_keys=True)
        stored = self.get_meta("scope")
        if stored is None:
            self.set_meta("scope", text)
        elif stored != text:
            raise UsageError(
                f"catalog {self.path} was pulled with other filters ({_describe(stored)}); "
                "use another --db for another selection"
            )

    def check_archive(self, address: str, *, moved: bool) -> None:
        """A catalog lists one archive, recorded at its first pull: studies of another server
        would show up as 'new' and mix two archives. `moved`: the archive is the same, at a new
        address. Until a request of a pull is recorded, nothing came from the recorded address
        and another one replaces it (a first pull refused for a mistyped --url is retried, and
        so is one that moved the catalog to a mistyped address)."""
        stored = self.get_meta("archive")
        if stored == address:
            return
        if stored is None or moved:
            self._bind_archive(address)
            return
        if not _heard_from_archive(self.db):  # what was learnt of that address goes with it
            self.db.execute("DELETE FROM meta WHERE key = 'offset_ok'")
            self._bind_archive(address)
            return
        raise UsageError(
            f"catalog {self.path} lists the archive at {stored}, not {address}: use another "
            "--db for another archive, or --archive-moved if it is the same archive at a new "
            "address"
        )

    def _bind_archive(self, address: str) -> None:
        """Record `address` as the archive's, and how many requests the pulls had made then:
        one that moved it to a mistyped address and failed before any answer binds nothing."""
        self.set_meta("archive", address)
        self.set_meta("archive_bound_at", str(_requests(self.db)))

    # --- pulls and windows -----------------------------------------------------------------

    def unfinished_pull(self) -> Pull | None:
        row = self.db.execute(
            "SELECT pull, kind FROM pulls WHERE finished IS NULL ORDER BY pull DESC LIMIT 1"
        ).fetchone()
        return None if row is None else Pull(int(row[0]), str(row[1]))

    def finished_pulls(self) -> int:
        row = self.db.execute("SELECT count(*) FROM pulls WHERE finished IS NOT NULL").fetchone()
        return int(row[0]) if row else 0

    def start_pull(self, kind: str, windows: Sequence[tuple[Window, str]]) -> Pull:
        row = self.db.execute("SELECT coalesce(max(pull), 0) + 1 FROM pulls").fetchone()
        number = int(row[0]) if row else 1
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO pulls VALUES (?, ?, now(), NULL, 0, NULL, NULL, NULL, NULL)",
            [number, kind],
        )
        for window, mode in windows:
            self._add_window(number, window, mode)
        self.db.execute("COMMIT")
        return Pull(number, kind)

    def _add_window(self, pull: int, window: Window, mode: str) -> None:
        self.db.execute(
            "INSERT INTO windows VALUES (?, ?, ?, 'todo', 0, NULL)", [pull, window.key, mode]
        )

    def open_windows(self, pull: int) -> list[OpenWindow]:
        rows = self.db.execute(
            "SELECT key, mode, state, next_offset FROM windows "
            "WHERE pull = ? AND state IN ('todo', 'paging') ORDER BY key",
            [pull],
        ).fetchall()
        return [OpenWindow(Window.from_key(k), m, s, int(o)) for k, m, s, o in rows]

    def record(
        self,
        pull: int,
        window: Window,
        records: Iterable[StudyRecord],
        *,
        state: str,
        next_offset: int = 0,
        reported: int | None = None,
        children: Sequence[tuple[Window, str]] = (),
        requests: int = 0,
    ) -> None:
        """One page's rows and where its window stands now, in one transaction."""
        columns = _columns(records)
        self.db.execute("BEGIN")
        if columns[0]:
            self.db.execute(f"INSERT INTO harvest SELECT $1, {_UNNEST}", [pull, *columns])
        self.db.execute(
            "UPDATE windows SET state = ?, next_offset = ?, reported = coalesce(?, reported) "
            "WHERE pull = ? AND key = ?",
            [state, next_offset, reported, pull, window.key],
        )
        for child, mode in children:
            self._add_window(pull, child, mode)
        self.db.execute("UPDATE pulls SET requests = requests + ? WHERE pull = ?", [requests, pull])
        self.db.execute("COMMIT")

    def window_state(self, pull: int, key: str) -> tuple[str | None, int | None]:
        row = self.db.execute(
            "SELECT state, reported FROM windows WHERE pull = ? AND key = ?", [pull, key]
        ).fetchone()
        if row is None:
            return None, None
        return str(row[0]), None if row[1] is None else int(row[1])

    def undated(self) -> bool:
        """Whether any catalogued study has no calendar StudyDate (no date window finds it)."""
        row = self.db.execute(
            "SELECT count(*) FROM studies WHERE try_strptime(study_date, '%Y%m%d') IS NULL"
        ).fetchone()
        return bool(row and row[0])

    def split_days(self, pull: int) -> list[tuple[Window, int | None]]:
        """The single days (no time range) the pull split by time of day, with the count the
        server gave of each (None: none)."""
        rows = self.db.execute(
            "SELECT key, reported FROM windows WHERE pull = ? AND state = 'split'", [pull]
        ).fetchall()
        windows = [(Window.from_key(k), None if r is None else int(r)) for k, r in rows]
        return [(w, r) for w, r in windows if w.dated and w.lo == w.hi and w.t_lo is None]

    def untimed_in(self, window: Window) -> int:
        """Catalogued studies of `window` without a StudyTime (no time window finds them)."""
        where, params = window_sql(window)
        row = self.db.execute(
            f"SELECT count(*) FROM studies WHERE {where} AND coalesce(trim(study_time), '') = ''",
            params,
        ).fetchone()
        return int(row[0]) if row else 0

    def count_in(self, window: Window) -> int:
        """Studies of earlier pulls in this window."""
        where, params = window_sql(window)
        row = self.db.execute(f"SELECT count(*) FROM studies WHERE {where}", params).fetchone()
        return int(row[0]) if row else 0

    def known(self, uids: Sequence[str]) -> set[str]:
        rows = self.db.execute(
            "SELECT study_uid FROM studies WHERE study_uid IN (SELECT unnest(?))", [list(uids)]
        ).fetchall()
        return {str(r[0]) for r in rows}

    def unreachable(self, pull: int) -> int | None:
        """Studies the server counted in windows that could not be listed (None: not counted)."""
        rows = self.db.execute(
            "SELECT reported FROM windows WHERE pull = ? AND state = 'unreachable'", [pull]
        ).fetchall()
        if not rows:
            return 0
        if any(r[0] is None for r in rows):
            return None
        return sum(int(r[0]) for r in rows)

    def merge(self, pull: Pull) -> None:
        """Move the pull's harvest into `studies` (and its changes into `changes`), in one
        transaction."""
        db = self.db
        db.execute("BEGIN")
        db.execute(
            f"CREATE OR REPLACE TEMP TABLE merging AS SELECT {_NAMES} FROM harvest "
            "WHERE pull = ? QUALIFY row_number() OVER (PARTITION BY study_uid) = 1",
            [pull.number],
        )
        if pull.kind != "first":
            db.execute(
                "INSERT INTO changes SELECT ?, m.study_uid, CASE WHEN s.study_uid IS NULL "
                "THEN 'new' WHEN m.instances > s.instances THEN 'instances_added' "
                "ELSE 'instances_removed' END, s.instances, m.instances, m.study_date "
                "FROM merging m LEFT JOIN studies s USING (study_uid) WHERE s.study_uid IS NULL "
                "OR (m.instances IS NOT NULL AND m.instances IS DISTINCT FROM s.instances)",
                [pull.number],
            )
        if db.execute("SELECT count(*) FROM studies").fetchone() != (0,):
            db.execute(
                "CREATE OR REPLACE TEMP TABLE merged AS SELECT m.*, "
                "coalesce(s.first_pull, $1) AS first_pull, $1 AS last_pull "
                "FROM merging m LEFT JOIN studies s USING (study_uid)",
                [pull.number],
            )
            db.execute("DELETE FROM studies WHERE study_uid IN (SELECT study_uid FROM merging)")
            db.execute("INSERT INTO studies SELECT * FROM merged")
            db.execute("DROP TABLE merged")
        else:
            db.execute("INSERT INTO studies SELECT *, $1, $1 FROM merging", [pull.number])
        db.execute("DROP TABLE merging")
        db.execute("DELETE FROM harvest WHERE pull = ?", [pull.number])
        db.execute("COMMIT")

    def remove_unseen(self, pull: Pull, root: Window) -> None:
        """After a full walk that listed every window: the catalogued studies it did not find
        are gone from the archive. Each is recorded as a 'deleted' change, then removed with
        its series. When the walk split the scope by date only studies with a calendar date
        were asked for, so the others stay. (Run again after a resume, it finds none left.)"""
        state, _ = self.window_state(pull.number, root.key)
        gone = "last_pull < $1"
        if state == "split":
            gone += " AND try_strptime(study_date, '%Y%m%d') IS NOT NULL"
        unseen = f"SELECT study_uid FROM studies WHERE {gone}"
        db = self.db
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO changes SELECT $1, study_uid, 'deleted', instances, NULL, study_date "
            f"FROM studies WHERE {gone}",
            [pull.number],
        )
        for table in ("series", "series_listed"):
            db.execute(f"DELETE FROM {table} WHERE study_uid IN ({unseen})", [pull.number])
        db.execute(f"DELETE FROM studies WHERE {gone}", [pull.number])
        db.execute("COMMIT")

    def found(self, pull: int) -> tuple[int, int, int]:
        """(new studies, studies whose instance count changed, studies gone) of a pull, from
        what its merge wrote: a pull resumed after its merge (during --level series) has
        nothing left to merge, and still found them."""
        row = self.db.execute(
            "SELECT (SELECT count(*) FROM studies WHERE first_pull = $1), "
            "(SELECT count(*) FROM changes WHERE pull = $1 "
            "AND change NOT IN ('new', 'deleted')), "
            "(SELECT count(*) FROM changes WHERE pull = $1 AND change = 'deleted')",
            [pull],
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

    def finish_pull(self, pull: Pull, *, new: int, changed: int, unreachable: int | None) -> None:
        row = self.db.execute("SELECT count(*) FROM studies").fetchone()
        self.db.execute(
            "UPDATE pulls SET finished = now(), studies = ?, new = ?, changed = ?, "
            "unreachable = ? WHERE pull = ?",
            [int(row[0]) if row else 0, new, changed, unreachable, pull.number],
        )
        self.db.execute("CHECKPOINT")

    def requests(self, pull: int) -> int:
        row = self.db.execute("SELECT requests FROM pulls WHERE pull = ?", [pull]).fetchone()
        return int(row[0]) if row else 0

    # --- series ----------------------------------------------------------------------------

    def studies_without_series(
        self, batch: int, passed: Sequence[str] = ()
    ) -> list[tuple[str, int | None]]:
        """Studies whose series were never listed, or listed for another instance count, with
        their series counts; but those `passed` over (their listing could not be whole)."""
        rows = self.db.execute(
            "SELECT s.study_uid, s.series FROM studies s "
            "LEFT JOIN series_listed l USING (study_uid) "
            "WHERE (l.study_uid IS NULL OR l.instances IS DISTINCT FROM s.instances) "
            "AND s.study_uid NOT IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY s.study_uid LIMIT ?",
            [list(passed), batch],
        ).fetchall()
        return [(str(uid), series) for uid, series in rows]

    def record_series(
        self, listed: Sequence[tuple[str, list[tuple[Any, ...]]]], requests: int, pull: int
    ) -> None:
        """Each study's series rows replace what was there, and mark the study listed."""
        uids = [uid for uid, _ in listed]
        rows = [row for _, series in listed for row in series]
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM series WHERE study_uid IN (SELECT unnest(?))", [uids])
        self.db.execute("DELETE FROM series_listed WHERE study_uid IN (SELECT unnest(?))", [uids])
        if rows:
            columns = [list(c) for c in zip(*rows, strict=True)]
            self.db.execute(
                "INSERT INTO series SELECT unnest($1), unnest($2), unnest($3), unnest($4), "
                "unnest($5), unnest($6)",
                columns,
            )
        self.db.execute(
            "INSERT INTO series_listed SELECT s.study_uid, s.instances FROM studies s "
            "WHERE s.study_uid IN (SELECT unnest(?))",
            [uids],
        )
        self.db.execute("UPDATE pulls SET requests = requests + ? WHERE pull = ?", [requests, pull])
        self.db.execute("COMMIT")


def window_sql(window: Window) -> tuple[str, list[Any]]:
    """A WHERE clause over `studies` selecting the studies of `window`."""
    if not window.dated:
        return "true", []
    low, _, high = window.key.split(" ")[0].partition("-")
    clauses, params = date_range_sql(low, high)
    if window.t_lo is not None and window.t_hi is not None:
        times = window.key.split(" ")[1].split("-")
        clauses.append("substr(coalesce(study_time, ''), 1, 6) BETWEEN ? AND ?")
        params += times
    return " AND ".join(clauses), params


def date_range_sql(low: str, high: str) -> tuple[list[str], list[Any]]:
    """Clauses selecting the studies of a StudyDate from `low` to `high` (YYYYMMDD; '' is an
    open end), and their parameters. A value that is no date (`2020`, `UNKNOWN`) is in no
    range: compared as text, it fell inside an open one."""
    clauses, params = ["study_date SIMILAR TO '[0-9]{8}'"], []
    if low:
        clauses.append("study_date >= ?")
        params.append(low)
    if high:
        clauses.append("study_date <= ?")
        params.append(high)
    return clauses, params


def _columns(records: Iterable[StudyRecord]) -> list[list[Any]]:
    rows = [
        (
            r.study_uid,
            r.patient_id,
            r.patient_name,
            normal_date(r.study_date) if r.study_date else r.study_date,
            normal_time(r.study_time) if r.study_time else r.study_time,
            r.accession,
            r.description,
            list(r.modalities),
            r.series,
            r.instances,
        )
        for r in records
    ]
    if not rows:
        return [[] for _ in STUDY_COLUMNS]
    return [list(column) for column in zip(*rows, strict=True)]


def _describe(scope_text: str) -> str:
    scope = json.loads(scope_text)
    shown = [f"{k}={v}" for k, v in scope.items() if v not in (None, [], "")]
    return ", ".join(shown) or "no filter"


def iter_rows(cursor: duckdb.DuckDBPyConnection, batch: int = 10_000) -> Iterator[tuple[Any, ...]]:
    """A query's rows, fetched `batch` at a time: never a whole archive in Python."""
    while rows := cursor.fetchmany(batch):
        yield from rows
