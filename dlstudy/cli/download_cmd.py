"""`dlstudy download`: the main job."""

from __future__ import annotations

from typing import Annotated

import typer

from ..dicomweb.cohort import CohortItem, read_cohort
from ..errors import DlstudyError
from ..jobs.download import download
from ..report.landed import report_format
from ..report.summary import Summary
from .common import (
    choose_progress,
    exit_on_interrupt,
    fail_usage,
    finish,
    setup_logging,
    use_log_format,
)
from .configured import ConfigCommand, ConfigOpt, ServerOpt
from .connection import DEFAULTS, settings_from
from .options import (
    CaBundleOpt,
    CertOpt,
    ConcurrencyOpt,
    FromFileOpt,
    HeaderOpt,
    HttpOpt,
    InsecureOpt,
    JsonOpt,
    KeyOpt,
    LayoutOpt,
    LogFileOpt,
    LogFormatOpt,
    ModalityOpt,
    ModeOpt,
    OutputOpt,
    PasswordOpt,
    ProxyOpt,
    QuietOpt,
    ReportOpt,
    RetriesOpt,
    RetryBudgetOpt,
    SeriesOpt,
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
from .sharding import (
    ShardOpt,
    finish_empty_shard,
    select_shard_items,
    shard_option,
)


def read_from_file(source: str) -> list[CohortItem]:
    """The items of a cohort list (dicomweb/cohort.py); a malformed one exits 2 naming the line."""
    try:
        return read_cohort(source, label=f"--from-file {source}")
    except DlstudyError as exc:
        fail_usage(str(exc))


StudyUids = Annotated[
    list[str] | None,
    typer.Argument(
        help="Study Instance UIDs to download.", show_default=False, metavar="STUDY_UID..."
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("download", cls=ConfigCommand)
    def download_command(
        ctx: typer.Context,
        study_uids: StudyUids = None,
        url: UrlOpt = "",
        output: OutputOpt = DEFAULTS.output,
        from_file: FromFileOpt = None,
        series: SeriesOpt = None,
        modality: ModalityOpt = None,
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
        report: ReportOpt = None,
        log_format: LogFormatOpt = "text",
        verbose: VerboseOpt = False,
        shard: ShardOpt = None,
        config: ConfigOpt = None,
        server: ServerOpt = None,
    ) -> None:
        """Download whole studies: every instance, byte-exact, to OUT/<study>/<series>/<sop>.dcm.
        With --from-file, the studies, series or instances a cohort list names."""
        setup_logging(verbose, log_file)
        use_log_format(log_format)
        wanted: list[str | CohortItem] = list(study_uids or [])
        if from_file is not None:
            wanted += read_from_file(from_file)
        if not wanted:
            fail_usage("give at least one STUDY_UID or --from-file")
        if not url:
            fail_usage("--url (or DLSTUDY_URL) is required")
        if report is not None:
            try:
                report_format(report)
            except DlstudyError as exc:
                fail_usage(str(exc))
        chosen_shard = shard_option(shard)
        given = len(wanted)
        wanted = select_shard_items(wanted, chosen_shard)
        if not wanted and chosen_shard is not None:
            finish_empty_shard(
                chosen_shard,
                given,
                url=url,
                output=output,
                json_output=json_output,
                quiet=quiet,
                what="studies" if from_file is None else "listed items",
            )
        settings = settings_from(ctx.params)
        progress = choose_progress(quiet=quiet, json_output=json_output)
        summary: Summary | None = None
        try:
            with exit_on_interrupt(json_output=json_output):
                summary = download(wanted, settings=settings, progress=progress)
        except DlstudyError as exc:
            finish(getattr(exc, "summary", None), exc, json_output=json_output, quiet=quiet)
        finish(summary, None, json_output=json_output, quiet=quiet)
