"""`dlstudy catalog pull|query|status|export`: a local catalog of an archive (DuckDB)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from ..errors import DlstudyError, ExitStatus
from ..http.urls import is_valid_uid
from ..report.printable import printable
from .catalog_options import WhereOpt, catalog_option, check_file
from .command import Group
from .common import (
    echo_summary,
    error_line,
    exit_on_interrupt,
    fail_usage,
    output_failed,
    setup_logging,
    stop_behind,
    summary_on_failure,
)
from .configured import ConfigCommand, ConfigOpt, ServerOpt
from .connection import DEFAULTS, envvar_for, option, settings_from
from .options import (
    CONNECTION,
    HTTP,
    SEARCH,
    AccessionOpt,
    PatientIdOpt,
    PatientNameOpt,
    StudyDateOpt,
    StudyModalityOpt,
    checked,
    with_options,
)
from .query_cmd import (
    CsvLines,
    CsvOpt,
    UidsOpt,
    invalid_uids_message,
    output_form,
    render,
    study_query,
    visible,
)

log = logging.getLogger("dlstudy.cli")

if TYPE_CHECKING:
    from ..catalog.summary import PullSummary
    from ..dicomweb.search import StudyQuery, StudyRecord
    from ..settings import Settings

# Every catalog command is a ConfigCommand: --db and --to may come from the config file, so
# they are checked once that is read (`required`), not by click.
DbOpt = Annotated[Path | None, catalog_option("--db", help="The catalog file (DuckDB).")]
PullRetriesOpt = Annotated[
    int,
    checked(
        option(
            "--retries",
            envvar="DLSTUDY_RETRIES",
            help="Retries per QIDO page on transient errors (0 or more).",
        ),
        least=0,
    ),
]
LevelOpt = Annotated[
    str, catalog_option("--level", help="study, or series: also every study's series.")
]
WalkOpt = Annotated[
    str,
    catalog_option(
        "--walk",
        help="auto: page a window by offset when the server honours it, else split it by "
        "date; split: always split.",
    ),
]
RecentOpt = Annotated[
    int,
    catalog_option(
        "--recent",
        help="Days listed again by every later pull (new instances): 0 to the days back to "
        "the year 1.",
    ),
]
FullOpt = Annotated[
    bool,
    catalog_option(
        "--full",
        help="List every window again; remove the studies the archive no longer has.",
    ),
]
ArchiveMovedOpt = Annotated[
    bool,
    catalog_option(
        "--archive-moved",
        help="The catalog's archive now answers at --url: record the new address (a pull from "
        "another server is refused without it).",
    ),
]
PageSizeOpt = Annotated[
    int, catalog_option("--page-size", help="QIDO limit asked for; a server may cap it lower.")
]
SqlOpt = Annotated[str | None, catalog_option("--sql", help="Any SQL over the catalog's tables.")]
ToOpt = Annotated[Path | None, catalog_option("--to", help="FILE.parquet or FILE.csv to write.")]
TableOpt = Annotated[
    str, catalog_option("--table", help="Table to export: studies, series, changes, pulls.")
]
StateOpt = Annotated[
    list[str] | None,
    catalog_option("--state", help="Only studies complete, partial or missing (repeatable)."),
]
StatusOutputOpt = Annotated[
    Path, catalog_option("-o", "--output", help="The output folder of the downloads.")
]
PullJsonOpt = Annotated[bool, catalog_option("--json", help="Print one JSON summary on stdout.")]
ListJsonOpt = Annotated[bool, catalog_option("--json", help="One JSON object per row (lines).")]
QuietOpt = Annotated[bool, catalog_option("--quiet", "-q", help="No summary line.")]

LEVELS = ("study", "series")
WALKS = ("auto", "split")


class MissingOption(typer.BadParameter):
    """A usage error shown as its message alone (BadParameter would add 'Invalid value')."""

    def format_message(self) -> str:
        return self.message


def required(ctx: typer.Context, value: Path | None, name: str) -> Path:
    """An option click leaves optional because the config file may give it: missing from
    all three, it is the usage error click would give, naming the three places."""
    if value is None:
        variable, key = envvar_for(name), name.lstrip("-").replace("-", "_")
        message = f"Missing option '{name}' (or {variable}, or {key} in the config file)."
        raise MissingOption(message, ctx=ctx)
    check_file(value, name)
    return value


def _fail(exc: DlstudyError) -> typer.Exit:
    error_line(str(exc))
    return typer.Exit(int(exc.exit_status))


def _print(write: Any) -> None:
    """Run `write()` on stdout; a reader that stops early (`| head`) is not an error, a full
    disk is one line (output_failed)."""
    try:
        write()
        sys.stdout.flush()
    except OSError as exc:
        output_failed(exc)


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _json_line(names: list[str], row: tuple[Any, ...]) -> str:
    """A row as one JSON object."""
    return json.dumps(dict(zip(names, map(_finite, row), strict=True)), default=_json_value)


def _finite(value: Any) -> Any:
    """NaN and infinities, which JSON has not, as null (in lists and structs too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _json_value(value: Any) -> Any:
    """A value of a type JSON lacks: DECIMAL as a number; DATE, TIMESTAMP, TIME, UUID as
    their text, as --csv shows them (INTERVAL and BLOB columns come as DuckDB's text:
    catalog/query.py run_sql)."""
    if isinstance(value, Decimal):
        return float(value)
    return str(_plain(value))


def render_rows(names: list[str], rows: Any, form: str, stream: IO[str]) -> int:
    """Rows of any SQL: JSON lines, CSV, tab-separated, first column only (uids), or a table."""
    count = 0
    if form == "table":
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(*names)
        for row in rows:  # the server's values, never markup or control characters
            table.add_row(*(Text(visible(None if v is None else str(_plain(v)), "")) for v in row))
            count += 1
        Console(file=stream).print(table)
        return count
    writer = CsvLines(stream, delimiter="\t" if form == "tsv" else ",")
    if form in ("csv", "tsv"):
        writer.writerow(names)
    for row in rows:
        count += 1
        if form == "json":
            stream.write(_json_line(names, row) + "\n")
        elif form == "uids":  # a line a value, as tab-separated cells are: no control character
            stream.write(f"{_visible(row[0])}\n")
        elif form == "tsv":
            writer.writerow([_visible(v) for v in row])
        else:
            writer.writerow(["" if v is None else _cell(v) for v in row])
    return count


def _visible(value: Any) -> str:
    """A value of the catalog in a tab-separated line: control characters shown as `?`."""
    return visible(None if value is None else _cell(value), "")


class UsableUids:
    """The catalogued study UIDs that download --from-file takes (it refuses a list holding a
    UID that is no UID, which a server may have listed): the others are counted, left out."""

    def __init__(self, uids: Iterator[str]) -> None:
        self.uids = uids
        self.invalid = 0
        self.first_invalid = ""

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        for uid in self.uids:
            if is_valid_uid(uid):
                return uid
            self.invalid += 1
            self.first_invalid = self.first_invalid or uid
        raise StopIteration

    def message(self) -> str:
        return invalid_uids_message(
            self.invalid, self.first_invalid, "the catalog holds", left_out=True
        )


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(_plain(value))


def _query(
    patient_id: str | None,
    patient_name: str | None,
    study_date: str | None,
    modality: list[str] | None,
    accession: str | None,
    filters: list[str] | None,
) -> StudyQuery:
    return study_query(
        {
            "patient_id": patient_id,
            "patient_name": patient_name,
            "study_date": study_date,
            "modality": modality,
            "accession": accession,
            "filter": filters,
        }
    )


catalog_app = typer.Typer(
    help="A local catalog of an archive: pull its QIDO once, select cohorts offline.",
    no_args_is_help=True,
    cls=Group,
)


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")


@catalog_app.command("pull", cls=ConfigCommand)
@with_options(SEARCH, HTTP, CONNECTION)
def pull_command(
    ctx: typer.Context,
    db: DbOpt = None,
    level: LevelOpt = "study",
    walk: WalkOpt = "auto",
    recent: RecentOpt = 7,
    full: FullOpt = False,
    archive_moved: ArchiveMovedOpt = False,
    page_size: PageSizeOpt = DEFAULTS.qido_page_size,
    json_output: PullJsonOpt = False,
    quiet: QuietOpt = False,
    retries: PullRetriesOpt = DEFAULTS.retries,
    **options: Any,
) -> None:
    """Harvest the archive's study-level QIDO attributes into the catalog; resumable.
    A later pull asks only for what can be new."""
    from ..catalog.summary import PullSummary
    from ..dicomweb.search import is_relative_date

    with summary_on_failure(json_output, PullSummary):
        setup_logging(options["verbose"], None)
        db = required(ctx, db, "--db")
        if level not in LEVELS:
            fail_usage(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
        if walk not in WALKS:
            fail_usage(f"--walk must be one of {', '.join(WALKS)}, got {walk!r}")
        if not 1 <= page_size <= 100_000:
            fail_usage(f"--page-size must be between 1 and 100000, got {page_size}")
        _check_recent(recent)
        if options["study_date"] and is_relative_date(options["study_date"]):
            fail_usage(
                f"catalog pull takes fixed dates, not --study-date {options['study_date']} (a "
                "catalog keeps one scope, and this one is another tomorrow): give a range such "
                "as 20200101-"
            )
        query = study_query(options)
        if len(query.modalities) > 1:
            fail_usage("catalog pull takes one --modality (a catalog is one selection)")
        settings = settings_from(ctx, ignore={"modality"})  # a search filter here
        settings = replace(settings, qido_page_size=page_size)
        plan = PullPlan(level, walk, recent, full, archive_moved)
        pulled = _pull(db, settings, query, plan, json_output=json_output, quiet=quiet)
    _print_pull(pulled, json_output=json_output, quiet=quiet)


def _check_recent(recent: int) -> None:
    """--recent reaches back at most to the first day a date has (0001-01-01): more was a
    traceback (OverflowError) from the date arithmetic."""
    most = dt.date.today().toordinal() - dt.date.min.toordinal()
    if not 0 <= recent <= most:
        fail_usage(
            f"--recent must be between 0 and {most} (the days back to the year 1), got {recent}"
        )


@dataclass(frozen=True)
class PullPlan:
    level: str
    walk: str
    recent: int
    full: bool
    archive_moved: bool


def _pull(
    db: Path,
    settings: Settings,
    query: StudyQuery,
    plan: PullPlan,
    *,
    json_output: bool,
    quiet: bool,
) -> PullSummary:
    """Run the pull. However it ends, --json prints one summary: a fatal error or an
    interruption with what the pull had recorded (the next pull resumes from it), its
    `error` and `exit_status`."""
    import anyio

    from ..catalog.harvest import Harvester, scope_of
    from ..catalog.store import Catalog, archive_address, writing
    from ..catalog.summary import PullSummary
    from ..flow.retry import RetryPolicy
    from ..flow.signals import stop_on_signals
    from ..http.auth import auth_from_settings
    from ..http.client import Transport

    async def run(catalog: Catalog) -> PullSummary:
        transport = Transport(settings, auth=await auth_from_settings(settings))
        try:
            policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
            harvester = Harvester(
                catalog,
                transport,
                query,
                page_size=settings.qido_page_size,
                policy=policy,
                walk=plan.walk,
                recent_days=plan.recent,
                full=plan.full,
                level=plan.level,
            )
            # A signal cancels the walk in order: the interruption carries its summary.
            return await stop_on_signals(harvester.run())
        finally:
            await transport.aclose()

    try:
        with exit_on_interrupt(
            json_output=json_output,
            quiet=quiet,
            kept="the next catalog pull resumes where this one stopped",
        ):
            try:
                with writing(db):
                    catalog = Catalog(db)
                    try:
                        catalog.check_archive(
                            archive_address(settings.url), moved=plan.archive_moved
                        )
                        catalog.check_scope(scope_of(query))
                        summary = anyio.run(run, catalog)
                        if plan.full and summary.resumed and summary.kind == "update":
                            # The interrupted update pull it finished walked only what could
                            # be new
                            summary = anyio.run(run, catalog)
                    finally:
                        catalog.close()
            except (KeyboardInterrupt, RuntimeError) as exc:  # before the walk began
                stop = exc if isinstance(exc, KeyboardInterrupt) else stop_behind(exc)
                if stop is None:
                    raise
                if getattr(stop, "summary", None) is None:  # a summary all the same
                    stop.summary = PullSummary()  # type: ignore[attr-defined]
                if stop is exc:
                    raise
                raise stop from None
    except DlstudyError as exc:
        failed = getattr(exc, "summary", None) or PullSummary()
        failed.error, failed.exit_status = str(exc), exc.exit_status
        if json_output:
            echo_summary(failed)  # the status is the error's
        raise _fail(exc) from exc
    return summary


def _print_pull(summary: PullSummary, *, json_output: bool, quiet: bool) -> None:
    if summary.incomplete:
        summary.exit_status = ExitStatus.SOME_FAILED
    unwritten = json_output and not echo_summary(summary)
    if not json_output and not quiet:
        typer.echo(printable(summary.one_line()), err=True)
        for note in summary.notes:
            typer.echo(f"catalog: {printable(note)}", err=True)
    if summary.unreachable != 0:
        error_line("the listing is incomplete: some studies could not be reached (see above)")
    elif summary.series_cut:
        error_line(
            "the listing is incomplete: the series of some studies could not be listed whole "
            "(see above); the next pull lists them again"
        )
    if summary.incomplete or unwritten:
        raise typer.Exit(int(ExitStatus.SOME_FAILED))


@catalog_app.command("query", cls=ConfigCommand)
def query_command(
    ctx: typer.Context,
    db: DbOpt = None,
    where: WhereOpt = None,
    sql: SqlOpt = None,
    patient_id: PatientIdOpt = None,
    patient_name: PatientNameOpt = None,
    study_date: StudyDateOpt = None,
    modality: StudyModalityOpt = None,
    accession: AccessionOpt = None,
    json_output: ListJsonOpt = False,
    csv_output: CsvOpt = False,
    uids: UidsOpt = False,
    config: ConfigOpt = None,
    server: ServerOpt = None,
) -> None:
    """Select studies from the catalog, offline: the filters of `query`, --where, or --sql."""
    from ..catalog.query import run_sql, select_studies, select_uids
    from ..catalog.store import check_pulled, connect

    setup_logging(False, None)  # the warning of a pull that did not finish
    db = required(ctx, db, "--db")
    form = output_form(ctx)
    query = _query(patient_id, patient_name, study_date, modality, accession, None)
    if sql is not None and (where is not None or query != type(query)()):
        fail_usage("--sql is a whole query: give it alone, without --where or filters")
    try:
        database = connect(db, read_only=True)
        try:
            if sql is not None:
                names, rows = run_sql(database, db, sql)
                count = 0

                def write_sql() -> None:
                    nonlocal count
                    count = render_rows(names, rows, form, sys.stdout)

                _print(write_sql)
                if form == "table":
                    typer.echo(f"{count} rows", err=True)
                return
            check_pulled(database, db)
            if form == "uids":
                found = UsableUids(select_uids(database, db, query, where))
                first = next(found, None)
                if first is not None:
                    rest = itertools.chain([first], found)
                    _print(lambda: sys.stdout.writelines(f"{u}\n" for u in rest))
                if found.invalid:
                    log.warning("%s", found.message())
                    raise typer.Exit(int(ExitStatus.SOME_FAILED))
                if first is not None:
                    return
                records: list[StudyRecord] = []
            elif form != "table":  # line forms: each study written as it is read
                studies = select_studies(database, db, query, where)
                head = next(studies, None)
                if head is not None:
                    _print(lambda: render(itertools.chain([head], studies), form, sys.stdout))
                    return
                records = []
            else:
                records = list(select_studies(database, db, query, where))
        finally:
            database.close()
    except DlstudyError as exc:
        raise _fail(exc) from exc
    if not records:
        error_line("no study of the catalog matched")
        raise typer.Exit(int(ExitStatus.NOTHING_MATCHED))
    _print(lambda: render(records, form, sys.stdout))
    if form == "table":
        typer.echo(f"{len(records)} {'study' if len(records) == 1 else 'studies'}", err=True)


@catalog_app.command("status", cls=ConfigCommand)
def status_command(
    ctx: typer.Context,
    db: DbOpt = None,
    output: StatusOutputOpt = DEFAULTS.output,
    where: WhereOpt = None,
    state: StateOpt = None,
    json_output: ListJsonOpt = False,
    csv_output: CsvOpt = False,
    uids: UidsOpt = False,
    config: ConfigOpt = None,
    server: ServerOpt = None,
) -> None:
    """Which catalogued studies are complete, partial or missing in OUT (from its manifest)."""
    from ..catalog.status import STATES, study_states, tally

    setup_logging(False, None)  # the warning of a pull that did not finish
    db = required(ctx, db, "--db")
    wanted = set(state or ())
    if bad := sorted(wanted - set(STATES)):
        fail_usage(f"--state must be one of {', '.join(STATES)}, got {bad[0]!r}")
    listing = bool(wanted) or json_output or csv_output or uids
    try:
        states = study_states(db, output, None, where)
        first = next(states, None)  # a catalog, folder or --where in error: before any output
        states = itertools.chain(() if first is None else (first,), states)
        if not listing:
            counts = tally(states)
        else:
            form = output_form(ctx)
            if form == "uids":  # for download --from-file, which refuses a UID that is no UID
                found = UsableUids(
                    s.record.study_uid for s in states if not wanted or s.state in wanted
                )
                _print(lambda: sys.stdout.writelines(f"{uid}\n" for uid in found))
                if found.invalid:
                    log.warning("%s", found.message())
                    raise typer.Exit(int(ExitStatus.SOME_FAILED))
                return
            names = ["study_uid", "state", "instances", "on_disk", "study_date", "patient_id"]
            rows = (
                (s.record.study_uid, s.state, s.record.instances, s.on_disk,
                 s.record.study_date, s.record.patient_id)
                for s in states
                if not wanted or s.state in wanted
            )  # fmt: skip
            _print(lambda: render_rows(names, rows, form, sys.stdout))
            return
    except DlstudyError as exc:
        raise _fail(exc) from exc
    lines = (
        f"{name:9} {counts[name]['studies']:>9} studies  {counts[name]['instances']:>11} "
        f"instances  ({counts[name]['on_disk']} on disk)\n"
        for name in STATES
    )
    _print(lambda: sys.stdout.writelines(lines))


@catalog_app.command("export", cls=ConfigCommand)
def export_command(
    ctx: typer.Context,
    db: DbOpt = None,
    to: ToOpt = None,
    table: TableOpt = "studies",
    where: WhereOpt = None,
    config: ConfigOpt = None,
    server: ServerOpt = None,
) -> None:
    """Write a table of the catalog to Parquet or CSV (by the file's suffix), for pandas/polars."""
    from ..catalog.query import export

    setup_logging(False, None)  # the warning of a pull that did not finish
    db, to = required(ctx, db, "--db"), required(ctx, to, "--to")
    try:
        rows = export(db, to, table, where)
    except DlstudyError as exc:
        raise _fail(exc) from exc
    typer.echo(f"catalog: {rows} rows of {table} written to {to}", err=True)
