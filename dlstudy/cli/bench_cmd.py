"""`dlstudy bench`: run the measurement matrix, print a table (or JSON), write a chart."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal, NoReturn, cast

import typer

from ..bench.report import (
    DEFAULT_CONCURRENCY,
    DEFAULT_REPEAT,
    HTTP_NAMES,
    HTTP_VERSIONS,
    MAX_REPEAT,
    STRATEGIES,
    BenchReport,
)
from ..errors import DlstudyError, ExitStatus, how_stopped
from ..flow.signals import stop_for_signal, stop_signals
from ..http.urls import is_valid_uid, redact_url
from ..report.printable import printable
from ..report.words import counted
from ..settings import HttpVersion
from .common import Failed, error_line, fail_usage, printed, setup_logging
from .configured import ConfigCommand
from .connection import settings_from
from .options import (
    CONNECTION,
    with_options,
)
from .strays import stray_words

if TYPE_CHECKING:
    from ..bench.report import CellResult, Row
    from ..bench.runner import CellDone

# The matrix options have no DLSTUDY_* variable and their own parameter names: a
# `concurrency = 16` meant for downloads (environment or config file) must not shrink the matrix.
StudyUidArg = Annotated[
    str,
    typer.Argument(help="Study Instance UID to fetch.", show_default=False, metavar="STUDY_UID"),
]
StrategyOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--strategy",
        help=f"Retrieval strategy (repeatable): {', '.join(STRATEGIES)}. Default: all.",
        show_default=False,
    ),
]
LevelsOpt = Annotated[
    list[int] | None,
    typer.Option(
        "--concurrency",
        "-c",
        help="Requests in flight (repeatable). Default: "
        + ", ".join(map(str, DEFAULT_CONCURRENCY))
        + ".",
        show_default=False,
    ),
]
HttpVersionsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--http",
        help="HTTP version (repeatable): 1.1, 2, 3. Default: 1.1 and 2.",
        show_default=False,
    ),
]
RepeatOpt = Annotated[
    int,
    typer.Option("--repeat", help=f"Runs of every cell (1-{MAX_REPEAT}); median, min, max."),
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", help="Only the first N instances of the study.", show_default=False),
]
BenchJsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ChartOpt = Annotated[
    Path | None,
    typer.Option(
        "--chart", help="Write a chart of the results: PATH.svg or PATH.png.", show_default=False
    ),
]
KeepOpt = Annotated[
    Path | None,
    typer.Option(
        "--keep",
        help="Write every instance to DIR/<sop>.dcm instead of discarding it.",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("bench", cls=ConfigCommand)
    @with_options(CONNECTION)
    def bench_command(
        ctx: typer.Context,
        study_uid: StudyUidArg,
        strategies: StrategyOpt = None,
        concurrency_levels: LevelsOpt = None,
        http_versions: HttpVersionsOpt = None,
        repeat: RepeatOpt = DEFAULT_REPEAT,
        limit: LimitOpt = None,
        json_output: BenchJsonOpt = False,
        chart: ChartOpt = None,
        keep: KeepOpt = None,
        **options: Any,
    ) -> None:
        """Measure a server: strategy x concurrency x HTTP version, repeated; table, JSON, chart."""
        from ..bench.chart import check_chart_path, write_chart
        from ..bench.runner import (  # not at the start-up of every other command
            BenchPlan,
            run_bench,
        )

        # The rest of an unquoted secret, as the study UID: refused, and never shown.
        not_shown = stray_words().uid_not_shown(study_uid, valid=is_valid_uid(study_uid))

        def nothing_measured() -> BenchReport:  # the object --json prints for an early error
            return BenchReport(
                url=redact_url(options["url"] or ""),
                study_uid=study_uid if not_shown is None else "***",
                strategies=tuple(strategies or STRATEGIES),
                concurrency=tuple(concurrency_levels or DEFAULT_CONCURRENCY),
                http=tuple(http_versions or HTTP_VERSIONS),
                repeat=repeat,
                limit=limit,
                keep=str(keep) if keep else None,
            )

        try:
            setup_logging(options["verbose"], None)
            if not_shown is not None:
                fail_usage(not_shown)
            settings = settings_from(ctx)
            for http in http_versions or ():
                if http not in HTTP_NAMES:
                    fail_usage(f"--http must be 1.1, 2 or 3, got {http!r}")
        except Failed as exc:
            if json_output:
                _print_report(nothing_measured(), True, exc.exit_code, error=exc.message)
            raise
        versions = cast(tuple[HttpVersion, ...], tuple(http_versions or HTTP_VERSIONS))
        plan = BenchPlan(
            study_uid=study_uid,
            strategies=tuple(strategies or STRATEGIES),
            concurrency=tuple(concurrency_levels or DEFAULT_CONCURRENCY),
            http=versions,
            repeat=repeat,
            limit=limit,
            keep=keep,
        )
        report: BenchReport | None = None
        try:
            with _stop_signals_interrupt():
                if chart is not None:
                    check_chart_path(chart)
                with _progress(enabled=not json_output) as on_cell:
                    report = run_bench(settings, plan, on_cell)
                if chart is not None:
                    write_chart(report, chart)
        except DlstudyError as exc:
            partial = getattr(exc, "report", None) or report or nothing_measured()
            # Once the matrix ran, only the chart fails here: it is not tried a second time.
            retry_chart = chart if report is None else None
            _end_early(partial, json_output, retry_chart, int(exc.exit_status), str(exc))
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP as Terminated
            partial = getattr(exc, "report", None) or report or nothing_measured()
            said, status = how_stopped(exc)
            _end_early(partial, json_output, chart, int(status), said)
        shown = _print_report(report, json_output, None, chart=chart)
        if chart is not None and not json_output:
            typer.echo(f"dlstudy: chart written to {chart}", err=True)
        code = int(report.exit_status)
        raise typer.Exit(code if shown else max(code, int(ExitStatus.SOME_FAILED)))


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated and HungUp (KeyboardInterrupts) outside the matrix
    too, so what was measured is printed whenever they come (inside, the runner stops in
    order)."""

    def on_signal(signum: int, frame: Any) -> None:
        raise stop_for_signal(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = [signum for signum in stop_signals() if signum != signal.SIGINT]
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _end_early(
    report: BenchReport, json_output: bool, chart: Path | None, status: int, said: str
) -> NoReturn:
    """What was measured before a fatal error or a signal: the table or the JSON object (with
    `error` and `exit_status`), the chart if one was asked for; then the error line."""
    from ..bench.chart import write_chart

    written = None
    if report.results and chart is not None:
        try:
            write_chart(report, chart)
            written = chart
        except DlstudyError as exc:
            error_line(str(exc))
    if report.error is None:
        report.error = said
    _print_report(report, json_output, status, chart=written)
    if written is not None and not json_output:
        typer.echo(f"dlstudy: chart written to {written}", err=True)
    error_line(said)
    raise typer.Exit(status)


def _print_report(
    report: BenchReport | None,
    json_output: bool,
    exit_status: int | None,
    *,
    chart: Path | None = None,
    error: str | None = None,
) -> bool:
    """The table or the JSON object on stdout; False when stdout refused it (`printed`)."""
    if report is None:
        return True
    if error is not None:
        report.error = error
    if json_output:
        data: dict[str, Any] = report.as_dict()
        data["chart"] = str(chart) if chart else None
        if exit_status is not None:
            data["exit_status"] = exit_status
        return printed(lambda: typer.echo(json.dumps(data, indent=2)))
    if report.results:
        return printed(lambda: render(report, sys.stdout, rich=sys.stdout.isatty()))
    return True


@contextmanager
def _progress(*, enabled: bool) -> Iterator[CellDone | None]:
    """Per-cell progress on stderr: a live bar on a terminal, one line per run otherwise."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():

        def line(result: CellResult, index: int, total: int) -> None:
            typer.echo(f"dlstudy: bench {index}/{total}: {_describe(result)}", err=True)

        yield line
        return
    from rich.console import Console  # rich only when bench runs, not at every start-up
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]bench"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def update(result: CellResult, index: int, total: int) -> None:
            bar.update(task, completed=index, total=total, description=_describe(result))

        yield update


def _describe(result: CellResult) -> str:
    cell = f"{result.strategy} c={result.concurrency} HTTP/{result.http} run {result.repeat + 1}"
    if result.unsupported:
        return f"{cell}: {printable(result.unsupported)}"
    if not result.measured:  # no "0.0 MB/s": nothing arrived to measure
        return f"{cell}: no instance arrived, {result.failures} failed"
    # A run with failures fetched less than the others: its speed is not in the row's median.
    failed = f", {result.failures} failed (not in the median)" if result.failures else ""
    return (
        f"{cell}: {_rate(result.mb_per_s)} MB/s, {counted(result.instances, 'instance')} "
        f"in {result.seconds:.2f} s{failed}"
    )


COLUMNS = (
    "strategy",
    "http",
    "conc",
    "runs",
    "MB/s",
    "min-max",
    "inst/s",
    "TTFB p50",
    "p90",
    "p99 ms",
    "QIDO p50 ms",
    "status",
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    """One decimal, or two significant digits below 1: small instances behind a slow server
    move 0.012 MB/s, which read `0.0` (nothing moved)."""
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.1f}"
    rounded = float(f"{value:.2g}")
    if rounded in (0, 1):
        return f"{rounded:.1f}"
    return f"{rounded:.{1 - math.floor(math.log10(rounded))}f}"


def _cells(row: Row) -> list[str]:
    mb, inst, ttfb = row.mb_per_s(), row.instances_per_s(), row.ttfb_ms()
    spread = "-" if mb["min"] is None else f"{_rate(mb['min'])}-{_rate(mb['max'])}"
    # The runs the median is over: fewer than --repeat when the bench was stopped, or when a
    # request of a run failed (it fetched less than the others: no sample of the speed).
    runs = "-" if row.unsupported else str(len(row.complete))
    return [
        row.strategy,
        row.http,
        str(row.concurrency),
        runs,
        _rate(mb["median"]),
        spread,
        _rate(inst["median"]),
        _ms(ttfb["p50"]),
        _ms(ttfb["p90"]),
        _ms(ttfb["p99"]),
        _ms(row.qido_ms()["p50"]),
        printable(row.status),  # a server's words in a failure
    ]


def _heading(report: BenchReport) -> str:
    measured = report.instances_measured
    total = report.instances_in_study
    count = f"{measured} of " if measured != total else ""
    count += f"{total} instances" if total is None else counted(total, "instance")
    runs = f"{report.repeat} run{'s' if report.repeat != 1 else ''} per cell"
    return f"dlstudy bench: {report.url}, study {report.study_uid}, {count}, {runs}"


def _footer(report: BenchReport) -> str:
    qido = report.qido_ms()
    return (
        f"QIDO: {report.qido_requests} requests, p50 {_ms(qido['p50'])} ms, "
        f"p90 {_ms(qido['p90'])} ms, p99 {_ms(qido['p99'])} ms; "
        f"MB/s and inst/s: median over the runs in which every request succeeded; "
        f"TTFB: request sent to response headers"
    ) + "".join(f"\nnote: {printable(note)}" for note in report.notes)


def render(report: BenchReport, stream: IO[str], *, rich: bool) -> None:
    """The results table: rich on a terminal, aligned plain text for pipes and logs."""
    rows = [_cells(row) for row in report.rows()]
    numeric = {"conc", "runs", "MB/s", "inst/s", "TTFB p50", "p90", "p99 ms", "QIDO p50 ms"}
    widths = [
        max(len(title), *(len(cells[i]) for cells in rows)) for i, title in enumerate(COLUMNS)
    ]
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=stream)
    # rich needs about three columns of padding per column; a narrower terminal gets plain lines.
    if rich and sum(widths) + 3 * len(widths) <= console.width:
        console.print(_heading(report), highlight=False, markup=False)
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1))
        for title, width in zip(COLUMNS, widths, strict=True):
            justify: Literal["left", "right"] = "right" if title in numeric else "left"
            table.add_column(title, justify=justify, no_wrap=True, min_width=width)
        for cells in rows:
            style = "dim" if cells[-1].startswith("unsupported") else None
            style = "red" if "failed" in cells[-1] else style
            table.add_row(*(Text(cell) for cell in cells), style=style)  # no markup
        console.print(table)
        console.print(_footer(report), style="dim", highlight=False, markup=False)
        return

    def line(cells: list[str]) -> str:
        padded = [
            cell.rjust(width) if title in numeric else cell.ljust(width)
            for cell, width, title in zip(cells, widths, COLUMNS, strict=True)
        ]
        return "  ".join(padded).rstrip()

    stream.write(_heading(report) + "\n\n")
    stream.write(line(list(COLUMNS)) + "\n")
    for cells in rows:
        stream.write(line(cells) + "\n")
    stream.write("\n" + _footer(report) + "\n")
