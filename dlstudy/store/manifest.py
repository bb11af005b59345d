"""Resume state beside the data: OUT/.dlstudy/manifest.sqlite, an index of what is on disk.

Three tables. `entries`: one row per committed file (study, series, SOP UID, path relative to
OUT, size, labelled digest, the --transfer-syntax asked when it was fetched; store/entry.py).
`complete_studies`: one row per study a run found complete (its listing whole, every listed
instance committed or present), with the instance count, the layout its files were written
under and when. `adopted`: the SOP UIDs of entries whose digest was taken of a file found on
disk (a lost index, a lost batch), not of the bytes the server sent: `--verify` has nothing to
check those against, and fetches them again. An older dlstudy ignores the table; an entry it
rewrites keeps its mark (one fetch too many). A lookup is one indexed query: memory is SQLite's
page cache, whatever the number of entries.

Versions. An index of version 1 (before entries kept their transfer syntax) gains the column
when opened to write, its entries taken as fetched as stored (`*`, the default ask): no file is
fetched again for the upgrade. Read-only, its entries read as `*` too. An older dlstudy refuses
an index of a later version (which it would fill with entries that do not say how they were
asked for), naming it.

Durability. WAL journal, synchronous=NORMAL: a committed transaction survives the process being
killed. Rows are committed in batches (every COMMIT_ROWS rows or COMMIT_SECONDS, and at close),
so writing thousands of entries a second costs little; a SIGKILL loses at most the last batch,
whose files are on disk under their final names, and the next run's plan (engine/schedule.py)
adopts each of them after a header check and the completeness walk.

Older versions kept OUT/.dlstudy/manifest.jsonl. A writable open imports it (one transaction:
all of it or nothing) and renames it to manifest.jsonl.imported, kept for reference only. An
older dlstudy run afterwards starts a new manifest.jsonl, imported in turn by the next run.

The output folder may be hostile (store/safe_files.py): the database is created or opened first
through a descriptor that refuses links and pipes, its journal files must be absent or regular
files, and once connected the database must still be the very file checked. A database that
cannot be read is a one-line error naming it (exit 2); a write that fails (full disk) one naming
it too (exit 1).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DlstudyError, OutputError, StorageError
from .entry import DIGEST, Digest, Entry, digest_of
from .legacy_manifest import IMPORTED_SUFFIX, LEGACY_NAME, read_entries
from .safe_files import NotRegularFile, kind_of, open_regular_fd

__all__ = ["DIGEST", "Completion", "Digest", "Entry", "Manifest", "digest_of"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.sqlite"
JOURNALS = ("-wal", "-shm", "-journal")  # files SQLite keeps beside the database
COMMIT_ROWS = 500
COMMIT_SECONDS = 1.0
SCHEMA_VERSION = 2  # 2: entries.syntax
_CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_COLUMNS = "study, series, sop, path, size, digest, syntax"  # Entry's fields, in order

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS entries (
    sop TEXT PRIMARY KEY, study TEXT NOT NULL, series TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, digest TEXT NOT NULL,
    syntax TEXT NOT NULL DEFAULT '*'
);
CREATE INDEX IF NOT EXISTS entries_of_study ON entries (study);
CREATE TABLE IF NOT EXISTS complete_studies (
    study TEXT PRIMARY KEY, instances INTEGER NOT NULL, layout TEXT NOT NULL,
    completed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS adopted (sop TEXT PRIMARY KEY);
PRAGMA user_version = {SCHEMA_VERSION};
"""


def _created_in_part(db: sqlite3.Connection) -> bool:
    """Whether `db` is an index a run was killed while creating: some of its tables missing
    and no entry in it (SQLite reads a 0-byte file, or one whose creation a hot journal
    undoes, as an empty database). Read as empty: the next run that writes creates the rest."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables >= {"entries", "complete_studies"} or not tables <= {"entries", "complete_studies"}:
        return False
    return "entries" not in tables or db.execute("SELECT 1 FROM entries").fetchone() is None


@dataclass(frozen=True)
class Completion:
    """A study a run found complete."""

    study: str
    instances: int
    layout: str  # the --layout its files were written under
    completed: float  # time.time() of that run's end


class Manifest:
    """The index of OUT/.dlstudy, open for this run (`read_only`: nothing is changed, though
    SQLite may make its journal files beside the index; without a database, an older
    manifest.jsonl is read into memory instead)."""

    def __init__(self, root: Path, state_dir: Path, *, read_only: bool = False) -> None:
        self.root = root
        self.path = state_dir / MANIFEST_NAME
        self.legacy = state_dir / LEGACY_NAME
        self.read_only = read_only
        self._pending = 0  # rows written since the last commit
        self._last_commit = time.monotonic()
        self._db: sqlite3.Connection | None = None
        self._adopted_any = False  # whether `adopted` may hold a row (never read-only)
        self._syntax = "syntax"  # what reads entries.syntax ("'*'" in a version 1 index)
        if read_only:
            self._db = self._open_read_only()
        else:
            self._db = self._open()
            try:
                self._import_legacy()
                self._adopted_any = self._query_one("SELECT 1 FROM adopted LIMIT 1") is not None
            except BaseException:
                db, self._db = self._db, None  # no connection outlives a Manifest not made
                db.close()
                raise

    # --- opening ----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        path = self.path
        try:
            for journal in JOURNALS:
                _refuse_unless_regular(Path(f"{path}{journal}"))
            fd = open_regular_fd(path, os.O_RDWR | os.O_CREAT)
            checked = os.fstat(fd)
            os.close(fd)  # before SQLite locks the file: closing any descriptor drops its locks
        except OSError as exc:
            where = str(exc.filename or path)
            raise OutputError(f"cannot use {where!r}: {exc.strerror or exc}", path=where) from exc
        db = self._connect(str(path), uri=False)
        try:
            db.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            self._check_version(db)
            if _lacks_syntax(db):
                db.execute("ALTER TABLE entries ADD COLUMN syntax TEXT NOT NULL DEFAULT '*'")
            db.executescript(_SCHEMA)
            now = os.lstat(path)
        except sqlite3.Error as exc:
            db.close()
            raise self._error(exc) from exc
        except OSError as exc:
            db.close()
            where = str(path)
            raise OutputError(f"cannot use {where!r}: {exc.strerror or exc}", path=where) from exc
        except BaseException:
            db.close()
            raise
        if not os.path.samestat(checked, now):
            db.close()
            where = str(path)
            raise OutputError(f"cannot use {where!r}: it was replaced while opened", path=where)
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        if not os.path.lexists(self.path):
            return self._open_in_memory()
        try:
            for suffix in ("", *JOURNALS):
                _refuse_unless_regular(Path(f"{self.path}{suffix}"))
        except OSError as exc:
            where = str(exc.filename or self.path)
            raise OutputError(f"cannot use {where!r}: {exc.strerror or exc}", path=where) from exc
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        if not os.path.lexists(f"{self.path}-wal") and not os.access(self.path.parent, os.W_OK):
            # Reading an index in WAL mode takes its shared-memory file, made beside it: not
            # in a read-only copy of OUT (an archive, a read-only mount). With no write-ahead
            # log there, no run has it open, and none can begin: it is read as it lies.
            uri += "&immutable=1"
        db = self._connect(uri, uri=True)
        try:
            self._check_version(db)
            if _created_in_part(db):
                db.close()
                return self._open_in_memory()
            db.execute("SELECT count(*) FROM complete_studies WHERE 0").fetchone()
            if _lacks_syntax(db):
                self._syntax = "'*'"
        except sqlite3.Error as exc:
            db.close()
            raise self._error(exc) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _open_in_memory(self) -> sqlite3.Connection:
        """An empty index (an older manifest.jsonl read into it), as if none were on disk."""
        db = self._connect(":memory:", uri=False)
        try:
            db.executescript(_SCHEMA)
            self._import_legacy(db, rename=False)
        except BaseException:
            db.close()
            raise
        return db

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            db.execute("PRAGMA busy_timeout = 10000")  # a run committing its batch
            db.execute("PRAGMA cache_size = -16000")  # 16 MB
        except sqlite3.Error as exc:
            db.close()
            raise self._error(exc) from exc
        return db

    def _check_version(self, db: sqlite3.Connection) -> None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise OutputError(
                f"{str(self.path)!r} was written by a newer dlstudy (index version {version}): "
                "upgrade dlstudy to use this output folder",
                path=str(self.path),
            )

    def _import_legacy(self, db: sqlite3.Connection | None = None, *, rename: bool = True) -> None:
        """Import an older manifest.jsonl, later lines winning, in one transaction."""
        db = db or self._connection
        if not os.path.lexists(self.legacy):
            return
        insert = f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        try:
            db.execute("BEGIN")
            try:
                db.executemany(insert, (_row(entry) for entry in read_entries(self.legacy)))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except OSError as exc:
            where = str(self.legacy)
            raise OutputError(f"cannot read {where!r}: {exc.strerror or exc}", path=where) from exc
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        if not rename:
            return
        try:
            os.replace(self.legacy, f"{self.legacy}{IMPORTED_SUFFIX}")
        except OSError as exc:  # imported again next time: the same rows, no harm
            log.warning("cannot rename %s aside: %s", self.legacy, exc.strerror or exc)
        else:
            log.info("imported %s into %s", self.legacy, self.path)

    # --- reading ----------------------------------------------------------------------------

    @property
    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError(f"{str(self.path)!r} is closed", path=str(self.path))
        return self._db

    @property
    def _columns(self) -> str:
        return _COLUMNS.replace("syntax", self._syntax)

    def get(self, sop: str) -> Entry | None:
        try:
            row = self._connection.execute(
                f"SELECT {self._columns} FROM entries WHERE sop = ?", (sop,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return None if row is None else Entry(*row)

    def is_adopted(self, sop: str) -> bool:
        """Whether the entry of `sop` was adopted: its digest is of the file found on disk."""
        if not self._adopted_any:
            return False
        return self._query_one("SELECT 1 FROM adopted WHERE sop = ?", (sop,)) is not None

    def _query_one(self, query: str, params: tuple[str, ...] = ()) -> tuple[object, ...] | None:
        try:
            row: tuple[object, ...] | None = self._connection.execute(query, params).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return row

    def check(self) -> None:
        """Read the whole index once (SQLite's quick_check): damage anywhere in it stops the
        run now, as the first lookup that meets it would later (OutputError)."""
        try:
            rows = self._connection.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        if rows != [("ok",)]:
            found = " ".join(str(rows[0][0]).split()) if rows else "no answer"
            raise self._error(sqlite3.DatabaseError(f"database disk image is malformed: {found}"))

    def knows_study(self, study: str) -> bool:
        """Whether any entry is of `study`."""
        try:
            row = self._connection.execute(
                "SELECT 1 FROM entries WHERE study = ? LIMIT 1", (study,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return row is not None

    def asked_otherwise(self, study: str, syntax: str) -> bool:
        """Whether an entry of `study` was fetched asking for another transfer syntax than
        `syntax` (`*` or a UID, as --transfer-syntax gives it)."""
        query = f"SELECT 1 FROM entries WHERE study = ? AND {self._syntax} != ? LIMIT 1"
        return self._query_one(query, (study, syntax)) is not None

    def count_of(self, study: str) -> int:
        """How many entries are of `study`."""
        try:
            (count,) = self._connection.execute(
                "SELECT count(*) FROM entries WHERE study = ?", (study,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return int(count)

    def entries_of(self, study: str) -> Iterator[Entry]:
        """The entries of one study, streamed."""
        yield from self._rows(f"SELECT {self._columns} FROM entries WHERE study = ?", (study,))

    def files_of(self, study: str) -> Iterator[tuple[str, int, str]]:
        """The path (relative to OUT), size and series of each of one study's entries,
        streamed."""
        try:
            cursor = self._connection.execute(
                "SELECT path, size, series FROM entries WHERE study = ?", (study,)
            )
            while rows := cursor.fetchmany(1000):
                yield from rows
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def __iter__(self) -> Iterator[Entry]:
        """Every entry, streamed."""
        yield from self._rows(f"SELECT {self._columns} FROM entries", ())

    def _rows(self, query: str, params: tuple[str, ...]) -> Iterator[Entry]:
        try:
            cursor = self._connection.execute(query, params)
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    yield Entry(*row)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def is_empty(self) -> bool:
        """Whether no entry is recorded (a first run into OUT): nothing to look up per file."""
        return self._query_one("SELECT 1 FROM entries LIMIT 1") is None

    def __len__(self) -> int:
        try:
            (count,) = self._connection.execute("SELECT count(*) FROM entries").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return int(count)

    def completion(self, study: str) -> Completion | None:
        """The study's completion record, if a run found it complete."""
        try:
            row = self._connection.execute(
                "SELECT study, instances, layout, completed FROM complete_studies WHERE study = ?",
                (study,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        return None if row is None else Completion(*row)

    # --- writing ----------------------------------------------------------------------------

    def record(self, entry: Entry, *, adopted: bool = False) -> None:
        """Record a committed file; `adopted`: its digest is of a file found on disk, not of
        the bytes the server sent."""
        self._write(
            f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            _row(entry),
        )
        if adopted:
            self._write("INSERT OR IGNORE INTO adopted VALUES (?)", (entry.sop,))
            self._adopted_any = True
        elif self._adopted_any:  # (none in a folder only dlstudy filled: no statement)
            self._write("DELETE FROM adopted WHERE sop = ?", (entry.sop,))

    def record_complete(self, study: str, instances: int, layout: str) -> None:
        """Record that every one of the study's `instances` is committed under `layout`."""
        self._write(
            "INSERT OR REPLACE INTO complete_studies VALUES (?, ?, ?, ?)",
            (study, instances, layout, time.time()),
        )

    def _write(self, statement: str, params: tuple[str | int | float, ...]) -> None:
        db = self._connection
        try:
            if not db.in_transaction:
                db.execute("BEGIN")
            db.execute(statement, params)
        except sqlite3.Error as exc:
            self._roll_back()
            raise self._error(exc) from exc
        self._pending += 1
        if self._pending >= COMMIT_ROWS or time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        """Make the rows written so far survive a crash."""
        db = self._connection
        try:
            if db.in_transaction:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._roll_back()  # those files are adopted by the next run's plan
            raise self._error(exc) from exc
        self._pending = 0
        self._last_commit = time.monotonic()

    def _roll_back(self) -> None:
        db = self._db
        if db is not None and db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("cannot roll back a failed write to %s", self.path)

    def close(self) -> None:
        """Commit, fold the journal into the database, close (StorageError if that fails: what
        was committed is still in the journal, and is read back next time)."""
        if self._db is None:
            return
        try:
            if not self.read_only:
                self.commit()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            db, self._db = self._db, None
            db.close()

    # --- errors -----------------------------------------------------------------------------

    def _error(self, exc: sqlite3.Error) -> DlstudyError:
        where = str(self.path)
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _CORRUPT or "malformed" in str(exc) or "no such" in str(exc):
            return OutputError(
                f"{where!r} is damaged ({exc}): move it aside and run again (files already "
                "downloaded are then checked and adopted, not fetched again)",
                path=where,
            )
        if self.read_only:
            return OutputError(f"cannot read {where!r}: {exc}", path=where)
        return StorageError(f"cannot write {where!r}: {self._write_cause() or exc}", path=where)

    def _write_cause(self) -> str | None:
        """What SQLite's "disk I/O error" most likely was: a file size limit reached, or no
        space left (SQLite does not pass errno on)."""
        try:
            limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
            files = [p for p in (self.path, Path(f"{self.path}-wal")) if p.exists()]
            sizes = [p.stat().st_size for p in files]
            if limit != resource.RLIM_INFINITY and max(sizes, default=0) + 65536 >= limit:
                return os.strerror(errno.EFBIG)
            space = os.statvfs(self.path.parent)
            if space.f_bavail * space.f_frsize < 1 << 20:
                return os.strerror(errno.ENOSPC)
        except OSError:
            pass
        return None


def _row(e: Entry) -> tuple[str, str, str, str, int, str, str]:
    return (e.study, e.series, e.sop, e.path, e.size, e.digest, e.syntax)


def _lacks_syntax(db: sqlite3.Connection) -> bool:
    """Whether `entries` is of an index of version 1: without the syntax column."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
    return bool(columns) and "syntax" not in columns


def _refuse_unless_regular(path: Path) -> None:
    """NotRegularFile unless nothing is at `path` or a regular file is."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise NotRegularFile(0, f"is {kind_of(mode)}", str(path))
