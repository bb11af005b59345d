"""`--report FILE`: what a run did, one row per instance, for the pipeline that runs next.

Columns: status (`downloaded`, `present` = already on disk and verified, `failed`, `repeat` =
a list's line naming what an earlier line named, or a STUDY_UID argument given again, fetched
once: its row names both), study,
series, sop, path (absolute), size, digest (labelled as in the manifest: `blake3:<hex>`), reason
(why it failed). A listed item the server does not have is one `failed` row with the UIDs the
list gave (a plain list's UID found at no level: as `study`) and no path.

CSV (`.csv`, with a header row) or JSON lines (`.jsonl`, one object a row, absent values null),
by the file's extension. Rows are streamed into a hidden temp file beside FILE as results come
in (memory stays flat however long the list) and renamed to FILE when the run ends with a result
(exit 0, 1 or 4); any other end (usage error, server unusable, interruption, crash) leaves no
FILE. A FILE from an earlier run is removed when the run starts, so what is under the name
always describes the last run that finished.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from ..errors import NothingMatchedError, OutputError, StorageError, UsageError
from ..store.orphans import remove_orphans
from .printable import printable

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
COLUMNS = ("status", "study", "series", "sop", "path", "size", "digest", "reason")
DOWNLOADED, PRESENT, FAILED, REPEAT = "downloaded", "present", "failed", "repeat"


def report_format(path: Path) -> str:
    """`csv` or `jsonl` from the extension; a UsageError for anything else."""
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise UsageError(
            f"--report {str(path)!r}: the name must end in .csv or .jsonl (it sets the format)"
        )
    return found


class ReportWriter:
    """Rows into a temp file beside `path`; `commit()` renames it to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = report_format(path)
        # The writer's pid in the name: a later run removes what a killed one left.
        self.temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self.rows = 0
        self._failure: str | None = None  # why writing it failed
        remove_orphans(path.parent, _temp_names(path))
        try:
            self._file: IO[str] | None = self.temp.open("x", encoding="utf-8", newline="")
            path.unlink(missing_ok=True)
        except OSError as exc:
            _remove(self.temp)
            raise OutputError(
                f"cannot write --report {str(path)!r}: {exc.strerror or exc}", path=str(path)
            ) from exc
        self._csv = csv.writer(self._file, lineterminator="\n")
        if self.format == "csv":
            self._csv.writerow(COLUMNS)

    def row(
        self,
        status: str,
        study: str | None,
        series: str | None,
        sop: str | None,
        *,
        path: Path | None = None,
        size: int | None = None,
        digest: str | None = None,
        reason: str | None = None,
    ) -> None:
        if self._failure is not None:  # the run is stopping: what lands meanwhile is still
            return  # recorded in the manifest and the summary, which this must not interrupt
        assert self._file is not None, "the report is closed"
        shown = os.path.abspath(path) if path is not None else None
        values: tuple[Any, ...] = (status, study, series, sop, shown, size, digest, reason)
        try:  # a full disk shows up when the buffer is written out, at any row
            if self.format == "csv":  # (JSON escapes control characters itself)
                self._csv.writerow([_cell(v) for v in values])
            else:
                self._file.write(json.dumps(dict(zip(COLUMNS, values, strict=True))) + "\n")
        except OSError as exc:
            raise self._failed(exc) from exc
        self.rows += 1

    def commit(self) -> None:
        """Flush to disk and put the report under its name."""
        if self._failure is not None:  # however the run went on, it has no report
            raise StorageError(self._failure, path=str(self.path))
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.temp, self.path)
        except OSError as exc:
            raise self._failed(exc) from exc

    def discard(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with suppress(OSError):  # the buffer's rest cannot be written: it is going anyway
                file.close()
        _remove(self.temp)

    def _failed(self, exc: OSError) -> StorageError:
        """The report could not be written once the run was under way (a full disk): the run
        stops, as for an instance's file, and no part of the report is left."""
        self.discard()
        self._failure = f"cannot write --report {str(self.path)!r}: {exc.strerror or exc}"
        return StorageError(self._failure, path=str(self.path))


def _cell(value: Any) -> Any:
    """A CSV cell: text a server sent (a reason phrase, a UID) with its control characters
    escaped, so that `cat report.csv` cannot recolour or retitle the terminal."""
    if value is None:
        return ""
    return printable(value) if isinstance(value, str) else value


def _remove(temp: Path) -> None:
    """Remove a temp file that may not exist, on a file system that may refuse even that
    (read-only: EROFS, where nothing was written either)."""
    with suppress(OSError):
        temp.unlink(missing_ok=True)


def _temp_names(path: Path) -> re.Pattern[str]:
    """The names of `path`'s temp files (ReportWriter's), the writer's pid first."""
    return re.compile(rf"\.{re.escape(path.name)}\.([0-9]+)-[0-9a-f]{{8}}\.tmp")


@contextmanager
def run_report(path: Path) -> Iterator[ReportWriter]:
    """The --report of one run: put under its name when the run ends, also when nothing
    matched (which listed items the server does not have is what it says); removed when the
    run fails otherwise."""
    report = ReportWriter(path)
    try:
        yield report
    except NothingMatchedError:
        report.commit()
        raise
    except BaseException:
        report.discard()
        raise
    report.commit()
