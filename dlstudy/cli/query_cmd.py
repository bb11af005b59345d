"""`dlstudy query`: a study-level QIDO search, printed for people or for pipes."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from ..errors import DlstudyError, ExitStatus, UsageError
from ..http.urls import is_valid_uid
from ..report.words import counted
from .common import error_line, exit_on_interrupt, fail_usage, output_failed, setup_logging
from .configured import ConfigCommand
from .connection import option, settings_from
from .options import (
    CONNECTION,
    HTTP,
    SEARCH,
    with_options,
)
from .sharding import ShardOpt, shard_option

if TYPE_CHECKING:
    from ..dicomweb.search import StudyQuery, StudyRecord
    from ..dicomweb.shard import Shard

log = logging.getLogger("dlstudy.cli")

QueryJsonOpt = Annotated[bool, option("--json", help="One JSON object per study (JSON lines).")]
CsvOpt = Annotated[bool, option("--csv", help="CSV with a header row.")]
UidsOpt = Annotated[bool, option("--uids", help="Only the Study Instance UIDs, one a line.")]

# (key in StudyRecord.as_dict(), column title), in the order of --json's fields.
COLUMNS = (
    ("study_uid", "Study Instance UID"),
    ("patient_id", "Patient ID"),
    ("patient_name", "Patient name"),
    ("study_date", "Date"),
    ("study_time", "Time"),
    ("accession", "Accession"),
    ("description", "Description"),
    ("modalities", "Modalities"),
    ("series", "Series"),
    ("instances", "Instances"),
)
# On a terminal, in this order, as many as fit whole (--json and --csv have every column).
TABLE_COLUMNS = tuple(
    column
    for key in (
        "study_uid",
        "study_date",
        "patient_id",
        "modalities",
        "instances",
        "patient_name",
        "description",
    )
    for column in COLUMNS
    if column[0] == key
)
# Free text may be cut (with an ellipsis) to this many characters, never below the last.
_TEXT_COLUMNS = {"patient_name": (24, 10), "description": (32, 10)}
_GAP = 3  # between two columns: the cells' padding and the box's separator


def table_columns(rows: list[dict[str, Any]], width: int) -> list[tuple[str, str, int]]:
    """(key, title, width) of the columns shown at this terminal width: identifiers, dates
    and counts whole or not at all, free text cut to what is left."""
    chosen: list[tuple[str, str, int]] = []
    used = 0
    for key, title in TABLE_COLUMNS:
        room = width - used - (_GAP if chosen else 0)
        natural = max([len(title), *(len(visible(row[key], ", ")) for row in rows)])
        need = natural
        if key in _TEXT_COLUMNS:
            most, least = _TEXT_COLUMNS[key]
            need = min(natural, max(least, min(most, room)))
            natural = min(natural, most)
        if need <= room:
            shown = min(natural, room)
            chosen.append((key, title, shown))
            used = width - room + shown
    return chosen


# The output formats, by parameter: one at most, the one given at the highest level.
FORMAT_FLAGS = {
    "json_output": ("--json", "json"),
    "csv_output": ("--csv", "csv"),
    "uids": ("--uids", "uids"),
}
# Where a value came from, highest precedence first (a value at its built-in default that is
# set came from the config file: ConfigCommand fills those in).
_LEVELS = {"COMMANDLINE": "on the command line", "ENVIRONMENT": "in the environment"}


def output_form(ctx: typer.Context) -> str:
    """`json`, `csv` or `uids`, from the format flag set at the highest level (command line >
    environment > config file), so `--json` overrides `DLSTUDY_UIDS=1` or `uids = true`; two
    at the same level are a usage error. None set: a table on a terminal, else TSV."""
    levels: dict[str, list[str]] = {}
    for name in FORMAT_FLAGS:
        if ctx.params.get(name):
            source = ctx.get_parameter_source(name)
            where = _LEVELS.get(source.name if source is not None else "", "in the config file")
            levels.setdefault(where, []).append(name)
    for where in (*_LEVELS.values(), "in the config file"):
        chosen = levels.get(where, [])
        if len(chosen) > 1:
            given = " and ".join(FORMAT_FLAGS[name][0] for name in chosen)
            fail_usage(f"{given} given {where}: choose one of --json, --csv, --uids")
        if chosen:
            return FORMAT_FLAGS[chosen[0]][1]
    return "table" if sys.stdout.isatty() else "tsv"


def study_query(options: Mapping[str, Any]) -> StudyQuery:
    """The study search the SEARCH options of a command describe, checked as StudyQuery checks
    a library caller's (an empty value, a key given twice)."""
    from ..dicomweb.search import StudyQuery, parse_filter  # only when a command runs

    try:
        return StudyQuery(
            patient_id=options["patient_id"],
            patient_name=options["patient_name"],
            study_date=options["study_date"],
            accession=options["accession"],
            modalities=options["modality"] or (),
            filters=[parse_filter(text) for text in options["filter"] or ()],
        )
    except UsageError as exc:
        fail_usage(str(exc))


def _cell(value: Any, separator: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return separator.join(value)
    return str(value)


# Control characters (C0, DEL, C1) in what the server sent: on a terminal ESC sequences would
# retitle or recolour it (and a cut one break the table), in a TSV line or `--uids` output
# CR/LF would start a bogus row or UID; bidi overrides (U+202E) reorder the rest of a row on
# the screen, line and paragraph separators (U+2028) break it for some readers. Those show '?'
# for each (a tab is a space); CSV and JSON keep them, quoted or escaped.
_BIDI_AND_SEPARATORS = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROLS = str.maketrans(
    {c: "?" for c in [*range(0x20), *range(0x7F, 0xA0), *_BIDI_AND_SEPARATORS, 0x2028, 0x2029]}
    | {0x09: " "}
)


def visible(value: Any, separator: str) -> str:
    """A cell of the table or of a TSV line: `_cell` without control characters."""
    return _cell(value, separator).translate(_CONTROLS)


class CsvLines:
    """CSV rows ending in "\n". Python's csv quotes a cell holding the line end it writes, but
    not a lone "\r", at which every reader (csv, pandas, `--from-file`) ends the row: a row with
    one (a description `CT\rCHEST`) has every cell quoted."""

    def __init__(self, stream: IO[str], delimiter: str = ",") -> None:
        self._plain = csv.writer(stream, lineterminator="\n", delimiter=delimiter)
        self._quoted = csv.writer(
            stream, lineterminator="\n", delimiter=delimiter, quoting=csv.QUOTE_ALL
        )

    def writerow(self, row: Sequence[Any]) -> None:
        carriage = any(isinstance(cell, str) and "\r" in cell for cell in row)
        (self._quoted if carriage else self._plain).writerow(row)


class LineWriter:
    """The line forms (`tsv`, `json` lines, `csv`, `uids`): a header, then a line a study,
    each written as it comes."""

    def __init__(self, form: str, stream: IO[str]) -> None:
        self.form = form
        self.stream = stream
        self._csv = CsvLines(stream)

    def header(self) -> None:
        if self.form == "csv":
            self._csv.writerow([key for key, _ in COLUMNS])
        elif self.form == "tsv":  # a pipe without a format flag: like `gh`, tab-separated lines
            self.stream.write("\t".join(key for key, _ in COLUMNS) + "\n")

    def row(self, record: StudyRecord) -> None:
        row = record.as_dict()
        if self.form == "uids":
            self.stream.write(f"{visible(row['study_uid'], '')}\n")
        elif self.form == "json":
            self.stream.write(json.dumps(row) + "\n")
        elif self.form == "csv":
            self._csv.writerow([_cell(row[key], "\\") for key, _ in COLUMNS])
        else:
            self.stream.write("\t".join(visible(row[key], "\\") for key, _ in COLUMNS) + "\n")


def render(records: Iterable[StudyRecord], form: str, stream: IO[str]) -> None:
    """Write `records` as `table` (rich), `tsv`, `json` (lines), `csv` or `uids`; the line
    forms write each record as it comes (an iterator is read once, not kept)."""
    if form == "table":
        render_table([record.as_dict() for record in records], stream)
        return
    lines = LineWriter(form, stream)
    lines.header()
    for record in records:
        lines.row(record)


def render_table(rows: list[dict[str, Any]], stream: IO[str]) -> None:
    from rich import box  # rich only for the table: start-up of every other command
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # the server's text as it is, never read as rich markup

    console = Console(file=stream)
    columns = table_columns(rows, console.width)
    if len(columns) < _TABLE_AT_LEAST:
        _two_line_records(rows, console.width, stream)
        return
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1))
    for _, title, width in columns:
        table.add_column(title, no_wrap=True, overflow="ellipsis", width=width)
    for row in rows:
        table.add_row(*(Text(visible(row[key], ", ")) for key, _, _ in columns))
    console.print(table)


class StudyPrinter:
    """`query`'s output as the pages come: each line form writes the studies of a page as
    they arrive, then the page out once it is read, so memory stays flat however many match.
    The table alone is printed at the end: its column widths need every row (it is for a
    person at a terminal; programs and big listings use a line form)."""

    def __init__(self, form: str, stream: IO[str], shard: Shard | None) -> None:
        self.stream = stream
        self.shard = shard
        self.page = io.StringIO()  # the lines of the page being read
        self.lines = None if form == "table" else LineWriter(form, self.page)
        self.table: list[dict[str, Any]] = []
        self.matched = 0  # studies the server listed (the header comes with the first)
        self.printed = 0  # of those, the ones of this shard
        # Studies of this shard under a UID that is no UID (download --from-file refuses the
        # whole list for one), and the first of them: --uids leaves them out.
        self.invalid = 0
        self.first_invalid = ""
        self.uids_only = form == "uids"

    def add(self, record: StudyRecord) -> None:
        if not self.matched and self.lines is not None:
            self.lines.header()
        self.matched += 1
        if self.shard is not None and not self.shard.owns(record.study_uid):
            return
        if not is_valid_uid(record.study_uid):
            self.first_invalid = self.first_invalid or record.study_uid
            self.invalid += 1
            if self.uids_only:
                return
        self.printed += 1
        if self.lines is None:
            self.table.append(record.as_dict())
        else:
            self.lines.row(record)

    async def page_read(self) -> None:
        """Write the page out. In a thread: a reader that pauses (`query | less`) holds up
        this write and the next page, not the event loop, so the page asked for meanwhile
        still arrives within its time (else it was cut off as stalled, and asked again)."""
        from anyio import to_thread

        text = self._taken()
        if text:
            await to_thread.run_sync(self._write, text)

    def finish(self) -> None:
        self._write(self._taken())
        if self.lines is None and self.matched:
            render_table(self.table, self.stream)
        self.stream.flush()

    def _taken(self) -> str:
        text = self.page.getvalue()
        self.page.seek(0)
        self.page.truncate()
        return text

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


# Below this many columns (UID, date, patient, modalities, instances), a table says too little:
# each study gets two lines instead, its UID whole on the first.
_TABLE_AT_LEAST = 5


def _two_line_records(rows: list[dict[str, Any]], width: int, stream: IO[str]) -> None:
    for row in rows:
        count = row["instances"]
        fields = [
            visible(row["study_date"], ""),
            visible(row["patient_id"], ""),
            visible(row["patient_name"], ""),
            visible(row["modalities"], ", "),
            "" if count is None else counted(count, "instance"),
            visible(row["description"], ""),
        ]
        detail = "    " + "  ".join(field for field in fields if field)
        if len(detail) > width:
            detail = detail[: max(width - 1, 0)] + "…"
        stream.write(f"{visible(row['study_uid'], '')}\n{detail}\n")


def _invalid_message(printer: StudyPrinter) -> str:
    return invalid_uids_message(
        printer.invalid, printer.first_invalid, "the server sent", left_out=printer.uids_only
    )


def invalid_uids_message(count: int, first: str, source: str, *, left_out: bool) -> str:
    """The warning about `count` studies listed under UIDs that are no UIDs, `first` of them."""
    shown = repr(first[:80])
    studies = f"a study under a UID that is no UID, {shown}"
    if count > 1:
        studies = f"{count} studies under UIDs that are no UIDs, the first {shown}"
    said = f"{source} {studies} (a UID is digits and dots, at most 64 characters)"
    if left_out:
        return f"{said}: left out, as download --from-file refuses a list holding one"
    return f"{said}: download --from-file refuses a list holding one"


def _keyless_message(count: int) -> str:
    results = "a result" if count == 1 else f"{count} results"
    return f"the server sent {results} without a Study Instance UID (0020000D): not listed"


def register(app: typer.Typer) -> None:
    @app.command("query", cls=ConfigCommand)
    @with_options(SEARCH, HTTP, CONNECTION)
    def query_command(
        ctx: typer.Context,
        json_output: QueryJsonOpt = False,
        csv_output: CsvOpt = False,
        uids: UidsOpt = False,
        shard: ShardOpt = None,
        **options: Any,
    ) -> None:
        """Search the server for studies (QIDO-RS), every page; print a table, JSON, CSV or UIDs."""
        from ..dicomweb.search import stream  # not at the start-up of every other command

        setup_logging(options["verbose"], None)
        form = output_form(ctx)
        query = study_query(options)
        printer = StudyPrinter(form, sys.stdout, shard_option(shard))
        settings = settings_from(ctx, ignore={"modality"})  # a search filter here
        keyless = 0

        def count_keyless() -> None:
            nonlocal keyless
            keyless += 1

        failure: DlstudyError | None = None
        try:
            try:
                with exit_on_interrupt():
                    stream(settings, query, printer.add, count_keyless, printer.page_read)
            except DlstudyError as exc:  # after what did arrive, which is printed
                failure = exc
            printer.finish()
        except OSError as exc:  # `| head` has had enough (exit 0), or `> FILE` filled the disk
            output_failed(exc)
        if printer.invalid:
            log.warning("%s", _invalid_message(printer))
        if failure is not None:
            error_line(str(failure))
            raise typer.Exit(int(failure.exit_status)) from failure
        if keyless and not printer.matched:
            error_line(_keyless_message(keyless))
            raise typer.Exit(int(ExitStatus.SOME_FAILED))
        if not printer.matched:
            error_line("no study matched the search")
            raise typer.Exit(int(ExitStatus.NOTHING_MATCHED))
        if form == "table":
            count = printer.printed
            typer.echo(f"{count} {'study' if count == 1 else 'studies'}", err=True)
        if keyless:  # what the server sent that no one could download: the listing is not whole
            error_line(_keyless_message(keyless))
            raise typer.Exit(int(ExitStatus.SOME_FAILED))
        if printer.invalid and printer.uids_only:  # studies left out: the list is not whole
            raise typer.Exit(int(ExitStatus.SOME_FAILED))
