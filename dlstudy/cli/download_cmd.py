"""`dlstudy download`: the main job."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import typer

from ..dicomweb.cohort import CohortItem, Repeats, read_cohort, unique_arguments
from ..errors import DlstudyError
from ..http.urls import redact_url
from ..jobs.download import download
from ..report.landed import report_format
from ..report.summary import Summary
from .catalog_options import FromCatalogOpt, WhereOpt, catalog_uids, check_where
from .common import (
    RESUMABLE,
    choose_progress,
    exit_on_interrupt,
    fail_usage,
    finish,
    refuse_one_file_twice,
    setup_logging,
    summary_on_failure,
    use_log_format,
)
from .configured import ConfigCommand
from .connection import URL_REQUIRED, settings_from
from .options import (
    CONNECTION,
    HTTP,
    TRANSFER,
    FromFileOpt,
    ModalityOpt,
    ReportOpt,
    SeriesOpt,
    with_options,
)
from .sharding import (
    ShardKeeper,
    ShardOpt,
    finish_empty_shard,
    select_shard_items,
    shard_option,
)


def read_from_file(
    source: str, repeats: Repeats, keeper: ShardKeeper | None = None
) -> list[CohortItem]:
    """The items of a cohort list (dicomweb/cohort.py), each once (repeats noted in `repeats`,
    dropped as they are read; so are other shards' items, given a `keeper`); a malformed one
    exits 2 naming the line."""
    if not source:  # `--from-file "$LIST"` with the variable unset
        fail_usage("--from-file is empty (an unset variable?): give a file, or - for stdin")
    try:
        return read_cohort(source, label=f"--from-file {source}", repeats=repeats, keep=keeper)
    except DlstudyError as exc:
        fail_usage(str(exc))


StudyUids = Annotated[
    list[str] | None,
    typer.Argument(
        help="Study Instance UIDs to download.", show_default=False, metavar="STUDY_UID"
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("download", cls=ConfigCommand)
    @with_options(TRANSFER, HTTP, CONNECTION)
    def download_command(
        ctx: typer.Context,
        study_uids: StudyUids = None,
        from_file: FromFileOpt = None,
        from_catalog: FromCatalogOpt = None,
        where: WhereOpt = None,
        series: SeriesOpt = None,
        modality: ModalityOpt = None,
        report: ReportOpt = None,
        shard: ShardOpt = None,
        **options: Any,
    ) -> None:
        """Download whole studies: every instance, byte-exact, to OUT/<study>/<series>/<sop>.dcm.
        With --from-file, the studies, series or instances a cohort list names."""

        def failed() -> Summary:  # the summary of a run that ends before it starts
            return Summary(url=redact_url(options["url"]), output=str(options["output"]))

        with summary_on_failure(options["json_output"], failed):
            refuse_one_file_twice({
                "--from-file": from_file, "--from-catalog": from_catalog, "--report": report,
                "--log-file": options["log_file"],
            })  # fmt: skip
            setup_logging(options["verbose"], options["log_file"], quiet=options["quiet"])
            use_log_format(options["log_format"])
            url, json_output, quiet = options["url"], options["json_output"], options["quiet"]
            summary: Summary | None = None
            error: DlstudyError | None = None
            # From here on a signal ends the command as an interrupt, the list still being
            # read included (`make-list | dlstudy download --from-file -`).
            with exit_on_interrupt(
                json_output=json_output, quiet=quiet, kept=RESUMABLE, before_run=failed
            ):
                repeats = Repeats()
                wanted: list[str | CohortItem] = [*unique_arguments(study_uids or [], repeats)]
                chosen_shard = shard_option(shard)
                keeper = ShardKeeper(chosen_shard) if chosen_shard is not None else None
                if from_file is not None:
                    wanted += read_from_file(from_file, repeats, keeper)
                check_where(ctx, where, from_catalog, "--from-catalog")
                if from_catalog is not None:
                    wanted += catalog_uids(from_catalog, where, url)
                dropped = keeper.dropped if keeper is not None else 0
                if not wanted and not dropped and from_file is not None:  # only comments
                    fail_usage(f"--from-file {from_file} names no study, series or instance")
                if not wanted and not dropped:
                    fail_usage("give at least one STUDY_UID, --from-file or --from-catalog")
                if not url:
                    fail_usage(URL_REQUIRED)
                if report is not None:
                    try:
                        report_format(report)
                    except DlstudyError as exc:
                        fail_usage(str(exc))
                given = len(wanted) + dropped
                wanted = select_shard_items(wanted, chosen_shard, repeats)
                if not wanted and chosen_shard is not None:
                    finish_empty_shard(
                        chosen_shard,
                        given,
                        url=url,
                        output=options["output"],
                        json_output=json_output,
                        quiet=quiet,
                        report=report,
                        what="studies" if from_file is None else "listed items",
                    )
                settings = settings_from(ctx)
                if chosen_shard is not None:  # lines naming no study are routed once looked up
                    settings = replace(settings, in_shard=(chosen_shard.number, chosen_shard.count))
                progress = choose_progress(quiet=quiet, json_output=json_output)
                try:
                    summary = download(
                        wanted, settings=settings, progress=progress, repeats=repeats
                    )
                except DlstudyError as exc:
                    summary, error = getattr(exc, "summary", None), exc
            finish(summary, error, json_output=json_output, quiet=quiet)
