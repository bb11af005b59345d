"""`dlstudy sync`: search, then download every matching study not yet complete (for cron)."""

from __future__ import annotations

from typing import Any

import typer

from ..errors import DlstudyError
from ..http.urls import redact_url
from ..report.summary import Summary
from .catalog_options import SyncCatalogOpt, WhereOpt, check_where
from .common import (
    RESUMABLE,
    choose_progress,
    exit_on_interrupt,
    finish,
    refuse_one_file_twice,
    setup_logging,
    summary_on_failure,
    use_log_format,
)
from .configured import ConfigCommand
from .connection import settings_from
from .options import (
    CONNECTION,
    HTTP,
    SEARCH,
    TRANSFER,
    ReportOpt,
    with_options,
)
from .query_cmd import study_query
from .sharding import ShardOpt, shard_option


def register(app: typer.Typer) -> None:
    @app.command("sync", cls=ConfigCommand)
    @with_options(SEARCH, TRANSFER, HTTP, CONNECTION)
    def sync_command(
        ctx: typer.Context,
        catalog: SyncCatalogOpt = None,
        where: WhereOpt = None,
        report: ReportOpt = None,
        shard: ShardOpt = None,
        **options: Any,
    ) -> None:
        """Search, then download every matching study not yet complete in OUT (made for cron)."""
        # not at the start-up of every other command
        from ..jobs.sync import SyncSummary, log_run_summary, sync

        def failed() -> SyncSummary:  # the summary of a run that ends before it starts
            return SyncSummary(url=redact_url(options["url"]), output=str(options["output"]))

        with summary_on_failure(options["json_output"], failed, logged=log_run_summary):
            refuse_one_file_twice(
                {"--catalog": catalog, "--report": report, "--log-file": options["log_file"]}
            )
            setup_logging(options["verbose"], options["log_file"], quiet=options["quiet"])
            use_log_format(options["log_format"], ends_with_run_summary=True)
            json_output, quiet = options["json_output"], options["quiet"]
            summary: Summary | None = None
            error: DlstudyError | None = None
            with exit_on_interrupt(
                json_output=json_output, quiet=quiet, kept=RESUMABLE, before_run=failed
            ):
                query = study_query(options)
                check_where(ctx, where, catalog, "--catalog")
                chosen_shard = shard_option(shard)
                settings = settings_from(ctx, ignore={"modality"})  # a search filter here
                progress = choose_progress(quiet=quiet, json_output=json_output)
                try:
                    summary = sync(
                        settings,
                        query,
                        shard=chosen_shard,
                        progress=progress,
                        catalog=(catalog, where) if catalog is not None else None,
                    )
                except DlstudyError as exc:
                    summary, error = getattr(exc, "summary", None), exc
            finish(summary, error, json_output=json_output, quiet=quiet)
