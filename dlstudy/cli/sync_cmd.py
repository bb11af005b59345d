"""`dlstudy sync`: search, then download every matching study not yet complete (for cron)."""

from __future__ import annotations

import typer

from ..errors import DlstudyError
from ..summary import Summary
from .catalog_options import SyncCatalogOpt, WhereOpt, check_where
from .common import choose_progress, exit_on_interrupt, finish, setup_logging
from .configured import ConfigCommand, ConfigOpt, ServerOpt
from .connection import DEFAULTS, build_settings
from .download_cmd import (
    CaBundleOpt,
    CertOpt,
    ConcurrencyOpt,
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
    ProxyOpt,
    QuietOpt,
    RetriesOpt,
    RetryBudgetOpt,
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
    parse_headers,
    use_log_format,
)
from .query_cmd import (
    AccessionOpt,
    FilterOpt,
    PatientIdOpt,
    PatientNameOpt,
    StudyDateOpt,
    StudyModalityOpt,
    study_query,
)
from .sharding import ShardOpt, shard_option


def register(app: typer.Typer) -> None:
    @app.command("sync", cls=ConfigCommand)
    def sync_command(
        url: UrlOpt = "",
        output: OutputOpt = DEFAULTS.output,
        patient_id: PatientIdOpt = None,
        patient_name: PatientNameOpt = None,
        study_date: StudyDateOpt = None,
        modality: StudyModalityOpt = None,
        accession: AccessionOpt = None,
        filter: FilterOpt = None,
        catalog: SyncCatalogOpt = None,
        where: WhereOpt = None,
        shard: ShardOpt = None,
        concurrency: ConcurrencyOpt = DEFAULTS.concurrency,
        workers: WorkersOpt = DEFAULTS.workers,
        http: HttpOpt = "auto",
        mode: ModeOpt = "auto",
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
        from ..sync import sync  # not at the start-up of every other command

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
        check_where(where, catalog, "--catalog")
        chosen_shard = shard_option(shard)
        settings = build_settings(
            url=url,
            http=http,
            mode=mode,
            insecure=insecure,
            output=output,
            concurrency=concurrency,
            workers=workers,
            transfer_syntax=transfer_syntax,
            layout=layout,
            token=token,
            token_command=token_command,
            user=user,
            password=password,
            headers=parse_headers(header or []),
            ca_bundle=ca_bundle,
            cert=cert,
            key=key,
            proxy=proxy,
            retries=retries,
            retry_budget=retry_budget,
            timeout=timeout,
            verify=verify,
            wait_for_lock=wait,
        )
        progress = choose_progress(quiet=quiet, json_output=json_output)
        summary: Summary | None = None
        try:
            with exit_on_interrupt(json_output=json_output):
                summary = sync(
                    settings,
                    query,
                    shard=chosen_shard,
                    progress=progress,
                    catalog=(catalog, where) if catalog is not None else None,
                )
        except DlstudyError as exc:
            finish(getattr(exc, "summary", None), exc, json_output=json_output, quiet=quiet)
        finish(summary, None, json_output=json_output, quiet=quiet)
