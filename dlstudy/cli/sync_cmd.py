"""`dlstudy sync`: search, then download every matching study not yet complete (for cron)."""

from __future__ import annotations

import typer

from ..errors import DlstudyError
from ..report.summary import Summary
from .common import choose_progress, exit_on_interrupt, finish, setup_logging, use_log_format
from .configured import ConfigCommand, ConfigOpt, ServerOpt
from .connection import DEFAULTS, settings_from
from .options import (
    AccessionOpt,
    CaBundleOpt,
    CertOpt,
    ConcurrencyOpt,
    FilterOpt,
    HeaderOpt,
    HttpOpt,
    InsecureOpt,
    JsonOpt,
    KeyOpt,
    LayoutOpt,
    LogFileOpt,
    LogFormatOpt,
    ModeOpt,
    OutputOpt,
    PasswordOpt,
    PatientIdOpt,
    PatientNameOpt,
    ProxyOpt,
    QuietOpt,
    RetriesOpt,
    RetryBudgetOpt,
    StudyDateOpt,
    StudyModalityOpt,
    TimeoutOpt,
    TokenCommandOpt,
    TokenOpt,
    TransferSyntaxOpt,
    UrlOpt,
    UserOpt,
    VerboseOpt,
    VerifyOpt,
    WaitOpt,
    WorkersOpt,
)
from .query_cmd import study_query
from .sharding import ShardOpt, shard_option


def register(app: typer.Typer) -> None:
    @app.command("sync", cls=ConfigCommand)
    def sync_command(
        ctx: typer.Context,
        url: UrlOpt = "",
        output: OutputOpt = DEFAULTS.output,
        patient_id: PatientIdOpt = None,
        patient_name: PatientNameOpt = None,
        study_date: StudyDateOpt = None,
        modality: StudyModalityOpt = None,
        accession: AccessionOpt = None,
        filter: FilterOpt = None,
        shard: ShardOpt = None,
        concurrency: ConcurrencyOpt = DEFAULTS.concurrency,
        workers: WorkersOpt = DEFAULTS.workers,
        http: HttpOpt = DEFAULTS.http,
        mode: ModeOpt = DEFAULTS.mode,
        transfer_syntax: TransferSyntaxOpt = DEFAULTS.transfer_syntax,
        layout: LayoutOpt = DEFAULTS.layout,
        token: TokenOpt = None,
        token_command: TokenCommandOpt = None,
        user: UserOpt = None,
        password: PasswordOpt = None,
        header: HeaderOpt = None,
        ca_bundle: CaBundleOpt = None,
        cert: CertOpt = None,
        key: KeyOpt = None,
        insecure: InsecureOpt = False,
        proxy: ProxyOpt = None,
        retries: RetriesOpt = DEFAULTS.retries,
        retry_budget: RetryBudgetOpt = DEFAULTS.retry_budget,
        timeout: TimeoutOpt = DEFAULTS.timeout,
        verify: VerifyOpt = False,
        wait: WaitOpt = False,
        json_output: JsonOpt = False,
        quiet: QuietOpt = False,
        log_file: LogFileOpt = None,
        log_format: LogFormatOpt = "text",
        verbose: VerboseOpt = False,
        config: ConfigOpt = None,
        server: ServerOpt = None,
    ) -> None:
        """Search, then download every matching study not yet complete in OUT (made for cron)."""
        from ..jobs.sync import sync  # not at the start-up of every other command

        setup_logging(verbose, log_file)
        use_log_format(log_format)
        query = study_query(
            patient_id=patient_id,
            patient_name=patient_name,
            study_date=study_date,
            modality=modality,
            accession=accession,
            filters=filter,
        )
        chosen_shard = shard_option(shard)
        settings = settings_from(ctx.params, ignore={"modality"})  # a search filter here
        progress = choose_progress(quiet=quiet, json_output=json_output)
        summary: Summary | None = None
        try:
            with exit_on_interrupt(json_output=json_output):
                summary = sync(settings, query, shard=chosen_shard, progress=progress)
        except DlstudyError as exc:
            finish(getattr(exc, "summary", None), exc, json_output=json_output, quiet=quiet)
        finish(summary, None, json_output=json_output, quiet=quiet)
