"""Cohort lists as people hand them over: what `download --from-file` reads.

Three formats, told apart by the file's extension or, without one (stdin), by its first line:

- a TCIA manifest (`.tcia`, or a first line `key=value`): a header of `key=value` lines, then
  `ListOfSeriesToDownload=` and one SeriesInstanceUID a line. The header's keys are NBIA Data
  Retriever settings (its servlet URL, retries, annotations) and are all ignored: `--url` names
  the server and `--retries` the retries. `#` lines anywhere in the header are comments (readers
  of the format skip what comes before the marker; after it, every line is a UID).
- a CSV with a header row (`.csv`, or a first line naming a column below): read by its columns
  `StudyInstanceUID`, `SeriesInstanceUID`, `SOPInstanceUID` (any case, spaces ignored: `Study
  Instance UID`; comma, tab or semicolon separated, or as a first line `sep=;` says, as Excel
  writes it; other columns ignored); each row names a study, a series or an instance, as deep
  as its cells go. Empty cells are levels the row does not name. Without those columns,
  dlstudy's own CSVs are read by theirs (NAMED_COLUMNS).
- anything else: a plain list, one UID a line, blank lines and `#` comments ignored; whether a
  UID is a study, a series or an instance is found out by asking the server.

Malformed input is a UsageError naming the line, raised while reading, before any network work.
A line naming the same UIDs as an earlier one is a repeat: given a Repeats, the reader drops it
as it reads, noting only its line number and the line it repeats (the run gives it a --report
row); a list of 500,000 repeated rows then holds its distinct items, not 500,000.
Bytes that are not UTF-8 are kept escaped (surrogateescape) and fail only in a cell dlstudy
reads: Excel's "CSV (semicolon)" is cp1252, and a name with an umlaut in another column is fine.
Reading streams line by line; only the items are kept (each once, given a Repeats).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Literal, TypeVar

from ..errors import UsageError
from ..http.urls import is_valid_uid

Level = Literal["study", "series", "instance", "unknown"]

TCIA_MARKER = "listofseriestodownload"
COLUMNS = {"studyinstanceuid": "study", "seriesinstanceuid": "series", "sopinstanceuid": "sop"}
# dlstudy's own CSV columns, read back when no column has a DICOM keyword (`query --csv >
# cohort.csv`, then `download --from-file cohort.csv`): query's and the catalog's (whose
# `series` is a count), else --report's.
NAMED_COLUMNS = (
    COLUMNS,
    {"study_uid": "study", "series_uid": "series", "sop_uid": "sop"},
    {"study": "study", "series": "series", "sop": "sop"},
)
log = logging.getLogger(__name__)

DELIMITERS = (",", "\t", ";")
_HEADER_LINE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*=")
# Excel's first line naming a CSV's delimiter (`sep=;`), before the header row.
_SEP_LINE = re.compile(r"^sep=(.)$", re.IGNORECASE)
_ESCAPED = "surrogateescape"  # a byte that is not UTF-8 -> U+DC80..U+DCFF
_UTF16_BOMS = ("\udcff\udcfe", "\udcfe\udcff")  # as _ESCAPED decodes them
_BLANK = " \t\r\n\x00"


def _is_escaped(char: str) -> bool:
    return "\udc80" <= char <= "\udcff"


def _is_utf16(line: str) -> bool:
    """A line of UTF-16 text, as _ESCAPED decodes it: a BOM, or (`iconv -t utf-16le` writes
    none) a NUL at every other position, after (LE) or before (BE) each character of
    the Latin text a list holds; its `\n` ends the line and LE's NUL after it starts the next."""
    if line.startswith(_UTF16_BOMS):
        return True
    text = line.removesuffix("\n")
    halves = (text[0::2], text[1::2])
    return bool(text.strip("\x00")) and any(h and h.count("\x00") == len(h) for h in halves)


class CohortError(UsageError):
    """A cohort list that cannot be read: names the file and the line."""


@dataclass(frozen=True, slots=True)
class CohortItem:
    """One line (or row) of a cohort list: the UIDs it names, as deep as it goes.

    `any_uid` is a plain list's UID, of a level only the server knows; `where` says where the
    item came from ("--from-file uids.txt: line 4"), for messages; empty for UIDs given as
    arguments. `listed_by` names what listed the UIDs as a server sent them ("the catalog"),
    not the caller: an invalid one then fails this item alone, not the whole run. `line`: its
    line number in the list (0: not from a list), which a repeat of it names.
    """

    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    any_uid: str | None = None
    where: str = ""
    listed_by: str | None = None
    line: int = field(default=0, compare=False)

    @property
    def level(self) -> Level:
        if self.any_uid is not None:
            return "unknown"
        if self.sop_uid is not None:
            return "instance"
        return "series" if self.series_uid is not None else "study"

    @property
    def uid(self) -> str:
        """The deepest UID the item names."""
        uid = self.any_uid or self.sop_uid or self.series_uid or self.study_uid
        assert uid is not None, "an item names at least one UID"
        return uid

    @property
    def key(self) -> tuple[str | None, ...]:
        """Items with the same key fetch the same instances (`where` aside)."""
        return (self.study_uid, self.series_uid, self.sop_uid, self.any_uid)

    @property
    def shard_key(self) -> str:
        """What `--shard` splits by: the study when the item names it, else its first UID."""
        uid = self.study_uid or self.series_uid or self.sop_uid or self.any_uid
        assert uid is not None
        return uid

    def describe(self) -> str:
        """`series 1.2.3`, `UID 1.2.3`: what the item asks for, in a message."""
        names = {"unknown": "UID", "study": "study", "series": "series", "instance": "instance"}
        return f"{names[self.level]} {self.uid}"

    @property
    def invalid_uid(self) -> str | None:
        """The first UID given that is not a valid UID, if any."""
        given = (self.study_uid, self.series_uid, self.sop_uid, self.any_uid)
        return next((uid for uid in given if uid is not None and not is_valid_uid(uid)), None)

    def check(self) -> None:
        """A UsageError unless every UID given is a valid UID (items built by a caller)."""
        given = [self.study_uid, self.series_uid, self.sop_uid, self.any_uid]
        if all(uid is None for uid in given):
            raise UsageError(f"{self.where or 'cohort item'}: names no UID")
        if (uid := self.invalid_uid) is not None:
            raise UsageError(f"{self.where or 'cohort item'}: invalid UID {_shown(uid)}")


def _shown(uid: object) -> str:
    """A UID given that is none, as a message shows it: text quoted, cut at 80 characters;
    another type (a library caller's int or bytes) named as such."""
    return repr(uid[:80]) if isinstance(uid, str) else f"of type {type(uid).__name__}"


class Repeats:
    """The lines of a list that name the same UIDs as an earlier line, each with the line it
    repeats: fetched once, reported each. Two numbers a line, not an item (a list of 500,000
    repeated rows). `label` names the list in messages."""

    def __init__(self) -> None:
        self.label = ""
        self._lines = array("q")
        self._firsts = array("q")
        # STUDY_UID arguments given again: (position, the first one's, the UID), in order.
        self.arguments: list[tuple[int, int, str]] = []

    def add(self, line: int, first: int) -> None:
        self._lines.append(line)
        self._firsts.append(first)

    def __len__(self) -> int:
        return len(self._lines)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(line, the earlier line it repeats), in list order."""
        return zip(self._lines, self._firsts, strict=True)


Keep = Callable[["CohortItem"], bool]


def read_cohort(
    source: str | Path,
    *,
    label: str | None = None,
    repeats: Repeats | None = None,
    keep: Keep | None = None,
) -> list[CohortItem]:
    """The items of the cohort list at `source` ("-": stdin), in file order, repeats kept;
    with `repeats`, each once: a repeat is dropped as it is read and noted there.

    `label` names the source in messages (default: the path). `keep`: only the items it
    returns true for are kept, as they are read (a shard's part of a long list); every line is
    still read and checked.
    """
    name = str(source)
    label = label or name
    try:
        if name == "-":
            return _parse_stdin(label, repeats, keep)
        with Path(name).open(encoding="utf-8-sig", errors=_ESCAPED, newline="") as fp:
            return parse_cohort(fp, label=label, name=name, repeats=repeats, keep=keep)
    except OSError as exc:
        raise CohortError(f"cannot read {label}: {exc.strerror or exc}") from exc


def _parse_stdin(label: str, repeats: Repeats | None, keep: Keep | None) -> list[CohortItem]:
    """stdin decoded as a file is (a BOM dropped), whatever the locale."""
    if sys.stdin is None:  # the process was started with stdin closed (`<&-`)
        raise CohortError(f"cannot read {label}: standard input is closed")
    binary = getattr(sys.stdin, "buffer", None)
    if binary is None:  # a text stream a library caller put in its place
        return parse_cohort(sys.stdin, label=label, name="-", repeats=repeats, keep=keep)
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors=_ESCAPED, newline="")
    try:
        return parse_cohort(text, label=label, name="-", repeats=repeats, keep=keep)
    finally:
        text.detach()  # sys.stdin keeps its buffer


def parse_cohort(
    lines: Iterable[str],
    *,
    label: str,
    name: str = "",
    repeats: Repeats | None = None,
    keep: Keep | None = None,
) -> list[CohortItem]:
    """Parse a cohort list given as lines; the format by `name`'s extension or the content.
    Repeats kept; with `repeats`, dropped as they are read and noted there. With `keep`, only
    the items it returns true for (see read_cohort)."""
    items: Iterable[CohortItem] = _items(lines, label, name)
    if keep is not None:
        items = filter(keep, items)
    if repeats is None:
        return list(items)
    repeats.label = label
    return unique_wanted(items, repeats)


def _items(lines: Iterable[str], label: str, name: str) -> Iterator[CohortItem]:
    lines = iter(lines)
    head: list[str] = []
    for line in lines:  # the first meaningful line decides the format
        head.append(line)
        # (a NUL alone: the rest of a UTF-16 line break; _is_utf16 tells by the next line)
        if line.strip(_BLANK) and not line.lstrip().startswith("#"):
            break
    raw_first = head[-1].lstrip("\ufeff") if head else ""
    if _is_utf16(raw_first):
        raise CohortError(f'{label}: UTF-16 text (Excel\'s "Unicode Text"): save it as UTF-8')
    first = raw_first.strip()
    everything = chain(head, lines)
    suffix = Path(name).suffix.lower() if name != "-" else ""
    # (a key=value line too, not TCIA's; unstripped: `sep=<tab>`)
    excel_csv = _SEP_LINE.match(raw_first.rstrip("\r\n")) is not None
    if suffix == ".tcia" or (suffix != ".csv" and not excel_csv and _HEADER_LINE.match(first)):
        return _tcia(everything, label)
    if suffix == ".csv" or excel_csv or _delimiter(first) is not None:
        return _csv(everything, label)
    return _plain(everything, label)


def _where(label: str, number: int) -> str:
    return f"{label}: line {number}"


def _unquoted(value: str) -> str:
    """A UID as sheets and scripts wrap it: `"1.2.3"`, `'1.2.3'`, Excel's `="1.2.3"` (a
    formula that keeps a long number text). Quotes are never part of a UID."""
    value = value.strip()
    if value.startswith('="') and value.endswith('"'):
        value = value[1:]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return value


def _checked(uid: str, label: str, number: int, what: str) -> str:
    if any(_is_escaped(char) for char in uid):
        raise CohortError(f"{_where(label, number)}: not UTF-8 text where a {what} should be")
    if not is_valid_uid(uid):
        shown = uid[:80]
        raise CohortError(
            f"{_where(label, number)}: invalid {what} {shown!r}: a UID is digits and dots, "
            "at most 64 characters"
        )
    return uid


def _plain(lines: Iterable[str], label: str) -> Iterator[CohortItem]:
    for number, line in enumerate(lines, start=1):
        uid = _unquoted(line.split("#", 1)[0].lstrip("\ufeff"))
        if uid:
            yield CohortItem(
                any_uid=_checked(uid, label, number, "UID"),
                where=_where(label, number),
                line=number,
            )


def _tcia(lines: Iterable[str], label: str) -> Iterator[CohortItem]:
    in_list = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        if not in_list:
            if line.startswith("#"):
                continue  # a comment in the header
            key, sep, value = line.partition("=")
            if not sep:
                raise CohortError(
                    f"{_where(label, number)}: expected key=value in the TCIA manifest's header "
                    f"before ListOfSeriesToDownload=, got {line[:80]!r}"
                )
            if key.strip().lower() == TCIA_MARKER:
                in_list = True
                line = value.strip()  # (a UID on the marker's own line: taken too)
                if not line:
                    continue
            else:
                continue  # a header key: see the module docstring
        uid = _checked(_unquoted(line), label, number, "SeriesInstanceUID")
        yield CohortItem(series_uid=uid, where=_where(label, number), line=number)
    if not in_list:
        raise CohortError(f"{label}: no ListOfSeriesToDownload= line: not a TCIA manifest")


def _column(cell: str) -> str:
    """A header cell as NAMED_COLUMNS has it: `Study Instance UID` is `studyinstanceuid`."""
    return "".join(cell.replace("\ufeff", "").split()).lower()  # (a BOM: files joined by `cat`)


def _delimiter(
    header: str, delimiters: tuple[str, ...] = DELIMITERS
) -> tuple[str, dict[str, str]] | None:
    """The delimiter that splits `header` into cells naming a UID column, and the names it
    reads (the DICOM keywords, else dlstudy's own); None if no column names a UID."""
    for names in NAMED_COLUMNS:
        for delimiter in delimiters:
            cells = next(csv.reader([header], delimiter=delimiter), [])
            if any(_column(cell) in names for cell in cells):
                return delimiter, names
    return None


def _csv(lines: Iterable[str], label: str) -> Iterator[CohortItem]:
    lines = iter(lines)
    number = 0
    header = ""
    delimiters: tuple[str, ...] = DELIMITERS
    for line in lines:
        number += 1
        header = line.lstrip("\ufeff")
        if (declared := _SEP_LINE.match(header.rstrip("\r\n"))) is not None:
            delimiters = (declared.group(1),)
            header = ""
        elif header.strip():
            break
    if not header.strip():
        raise CohortError(f"{label} is empty: a CSV needs a header row and rows of UIDs")
    found = _delimiter(header, delimiters)
    if found is None:
        raise CohortError(
            f"{_where(label, number)}: a CSV needs a header row with a StudyInstanceUID, "
            "SeriesInstanceUID or SOPInstanceUID column (or dlstudy's study_uid, study, "
            "series, sop)"
        )
    delimiter, names = found
    cells = next(csv.reader([header], delimiter=delimiter))
    where_is: dict[str, int] = {}
    for index, cell in enumerate(cells):
        level = names.get(_column(cell))
        if level is not None and level in where_is:  # (two sheets pasted side by side)
            raise CohortError(
                f"{_where(label, number)}: columns {cells[where_is[level]]!r} and {cell!r} both "
                f"name the {_COLUMN_NAMES[level]}: keep one, or list the other column's UIDs "
                "in rows of their own"
            )
        if level is not None:
            where_is[level] = index
    header_row = [_column(cell) for cell in cells]
    unnamed: list[int] = []  # rows with cells filled, none of them a UID dlstudy reads
    spanning: list[int] = []  # rows whose quoted cells run over lines
    # Strict: a quote never closed is an error, not the rest of the file read as one cell.
    # `dlstudy query`'s own lines into a pipe (tab-separated, `study_uid` first) quote nothing:
    # a description `"CT" chest` is text there, not a quoted cell.
    own_lines = delimiter == "\t" and header_row[:1] == ["study_uid"]
    if own_lines:
        reader = csv.reader(lines, delimiter=delimiter, strict=True, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        row_number = number + reader.line_num + 1  # where the row begins
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise CohortError(f"{_where(label, row_number)}: {_csv_problem(exc)}") from None
        if number + reader.line_num > row_number:
            spanning.append(row_number)
        if [_column(cell) for cell in row] == header_row:
            continue  # the header again: CSVs joined with `cat`
        if _SEP_LINE.match(delimiter.join(row).lstrip("\ufeff")):
            continue  # and Excel's `sep=;` line before it
        values = {
            level: _unquoted(row[index]) if index < len(row) else ""
            for level, index in where_is.items()
        }
        if not any(values.values()):
            if any(cell.strip() for cell in row):
                unnamed.append(row_number)
            continue  # a blank row, or one naming nothing dlstudy reads
        given = {
            level: _checked(value, label, row_number, _COLUMN_NAMES[level])
            for level, value in values.items()
            if value
        }
        yield CohortItem(
            study_uid=given.get("study"),
            series_uid=given.get("series"),
            sop_uid=given.get("sop"),
            where=_where(label, row_number),
            line=row_number,
        )
    if spanning:  # valid CSV (a cell with a line break), or a stray quote closed by another
        log.warning(
            "%s: %d row%s with a quoted cell running over lines (line %s): check that no "
            "rows were joined into it",
            label,
            len(spanning),
            "" if len(spanning) == 1 else "s",
            ", ".join(map(str, spanning[:5])) + (", ..." if len(spanning) > 5 else ""),
        )
    if unnamed:  # said, not silently dropped: a sheet may have lost its UIDs there
        log.warning(
            "%s: %d row%s with no UID skipped (line %s)",
            label,
            len(unnamed),
            "" if len(unnamed) == 1 else "s",
            ", ".join(map(str, unnamed[:5])) + (", ..." if len(unnamed) > 5 else ""),
        )


def _csv_problem(exc: csv.Error) -> str:
    """What Python's csv module found wrong with a row, in words for the list's author."""
    said = str(exc)
    if "unexpected end of data" in said:
        return (
            'a quote (") opened in this row is never closed: the rest of the file would be '
            "read as one cell"
        )
    if "field larger than field limit" in said:
        return "a cell longer than 128 KiB (a quote never closed?)"
    if "expected after" in said:
        return (
            f"a quoted cell goes on after its closing quote ({said}): write a quote inside "
            'one doubled ("")'
        )
    return said


_COLUMN_NAMES = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "sop": "SOPInstanceUID",
}


def unique_arguments(study_uids: Iterable[str], repeats: Repeats) -> list[str]:
    """Study UIDs given as arguments, in order, each once: one given again is noted in
    `repeats`, for a `repeat` row as a repeated line of a list has."""
    first: dict[str, int] = {}
    kept: list[str] = []
    for position, uid in enumerate(study_uids, 1):
        if uid in first:
            repeats.arguments.append((position, first[uid], uid))
        else:
            first[uid] = position
            kept.append(uid)
    return kept


Wanted = str | CohortItem  # a study UID, or an item of a cohort list
W = TypeVar("W", bound=Wanted)


def unique_wanted(wanted: Iterable[W] | str, repeats: Repeats | None = None) -> list[W]:
    """In order, each once: a repeated UID or an item naming the same UIDs as an earlier one
    (on another line) is dropped, and noted in `repeats` when both come from lines of a list.
    One UID as a string is that one study, not its characters."""
    if isinstance(wanted, str):
        wanted = [wanted]  # type: ignore[list-item]
    elif isinstance(wanted, bytes | bytearray) or not isinstance(wanted, Iterable):
        raise UsageError(
            f"study_uids must be a UID or a list of UIDs (text), not {type(wanted).__name__}"
        )
    first_line: dict[object, int] = {}  # an item's key -> its line (0: not from a list)
    kept: list[W] = []
    for one in wanted:
        item = one if isinstance(one, CohortItem) else None
        key = one if item is None else item.key
        first = first_line.get(key)
        if first is None:
            first_line[key] = item.line if item is not None else 0
            kept.append(one)
        elif repeats is not None and first and item is not None and item.line:
            repeats.add(item.line, first)
            if not repeats.label:  # (items a library caller read: named as their lines are)
                repeats.label = item.where.rpartition(": line ")[0]
    return kept
