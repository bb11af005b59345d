"""`dlstudy download`: the main job."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..download import download
from ..errors import DlstudyError
from ..settings import DEFAULT_LAYOUT
from ..summary import Summary
from .catalog_options import FromCatalogOpt, WhereOpt, catalog_uids, check_where
from .common import choose_progress, exit_on_interrupt, fail_usage, finish, setup_logging
from .configured import ConfigCommand, ConfigOpt, ServerOpt
from .connection import DEFAULTS, build_settings, option
from .sharding import ShardOpt, finish_empty_shard, select_shard, shard_option


def read_uid_file(source: str) -> list[str]:
    """One study UID a line; blank lines and `#` comments ignored."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        fail_usage(f"cannot read --from-file {source!r}: {exc.strerror or exc}")
    uids = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            uids.append((number, line))
    from ..urls import is_valid_uid

    bad = [(n, uid) for n, uid in uids if not is_valid_uid(uid)]
    if bad:
        number, uid = bad[0]
        fail_usage(f"--from-file {source}: line {number}: invalid study UID {uid[:80]!r}")
    return [uid for _, uid in uids]


def parse_headers(values: list[str]) -> tuple[tuple[str, str], ...]:
    headers = []
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            # Show the name only: the value is often a secret.
            fail_usage(
                f"--header must look like 'Name: value', got one named {name.strip()[:40]!r}"
            )
        headers.append((name.strip(), content.strip()))
    return tuple(headers)


def _opt(*names: str, help: str, envvar: str | None = None, secret: bool = False) -> Any:
    # Every option gets DLSTUDY_<LONG_NAME> unless named otherwise (connection.envvar_for).
    return option(*names, help=help, envvar=envvar, secret=secret)


StudyUids = Annotated[
    list[str] | None,
    typer.Argument(
        help="Study Instance UIDs to download.", show_default=False, metavar="STUDY_UID..."
    ),
]
UrlOpt = Annotated[
    str,
    _opt(
        "--url",
        envvar="DLSTUDY_URL",
        help="DICOMweb root URL, e.g. https://pacs/dicom-web. Required: here, in DLSTUDY_URL "
        "or in a config profile.",
    ),
]
OutputOpt = Annotated[Path, _opt("-o", "--output", envvar="DLSTUDY_OUTPUT", help="Output folder.")]
FromFileOpt = Annotated[
    str | None, _opt("--from-file", help="Read study UIDs from a file (one a line); - = stdin.")
]
SeriesOpt = Annotated[list[str] | None, _opt("--series", help="Only this series (repeatable).")]
ModalityOpt = Annotated[
    list[str] | None, _opt("--modality", help="Only series of this modality (repeatable).")
]
WorkersOpt = Annotated[
    int,
    _opt(
        "--workers",
        envvar="DLSTUDY_WORKERS",
        help="Processes sharing the per-instance pool; 0: one per CPU core, at most 4.",
    ),
]
ConcurrencyOpt = Annotated[
    int,
    _opt(
        "--concurrency",
        "-c",
        envvar="DLSTUDY_CONCURRENCY",
        help="Instances in flight at once; 0: 64 over HTTP/2, 16 over HTTP/1.1.",
    ),
]
HttpOpt = Annotated[str, _opt("--http", envvar="DLSTUDY_HTTP", help="HTTP version: auto, 1.1, 2.")]
ModeOpt = Annotated[
    str,
    _opt(
        "--mode",
        envvar="DLSTUDY_MODE",
        help="Retrieval: auto, instance, series, study.",
    ),
]
TransferSyntaxOpt = Annotated[
    str,
    _opt("--transfer-syntax", help="Transfer syntax to ask for; * = as stored."),
]
LayoutOpt = Annotated[
    str, _opt("--layout", help="Output path template with {study} {series} {sop} {modality}.")
]
TokenOpt = Annotated[
    str | None, _opt("--token", envvar="DLSTUDY_TOKEN", help="Bearer token.", secret=True)
]
TokenCommandOpt = Annotated[
    str | None,
    _opt(
        "--token-command",
        envvar="DLSTUDY_TOKEN_COMMAND",
        help="Shell command printing a bearer token; re-run when a 401 says it expired.",
    ),
]
UserOpt = Annotated[str | None, _opt("--user", envvar="DLSTUDY_USER", help="Basic auth user.")]
PasswordOpt = Annotated[
    str | None,
    _opt("--password", envvar="DLSTUDY_PASSWORD", help="Basic auth password.", secret=True),
]
HeaderOpt = Annotated[
    list[str] | None, _opt("--header", help="Extra request header 'Name: value' (repeatable).")
]
CaBundleOpt = Annotated[
    Path | None,
    _opt("--ca-bundle", envvar="DLSTUDY_CA_BUNDLE", help="CA certificates (PEM) to trust."),
]
CertOpt = Annotated[Path | None, _opt("--cert", help="Client certificate (PEM) for mutual TLS.")]
KeyOpt = Annotated[Path | None, _opt("--key", help="Private key of --cert, if not inside it.")]
InsecureOpt = Annotated[
    bool, _opt("--insecure", help="Do not verify the server's TLS certificate (warns).")
]
ProxyOpt = Annotated[
    str | None,
    _opt(
        "--proxy",
        help="Proxy URL (http://, https://, socks5://, socks5h://); default: HTTPS_PROXY, "
        "HTTP_PROXY, ALL_PROXY, with NO_PROXY.",
    ),
]
RetriesOpt = Annotated[
    int,
    _opt("--retries", envvar="DLSTUDY_RETRIES", help="Retries per instance on transient errors."),
]
RetryBudgetOpt = Annotated[
    float,
    _opt(
        "--retry-budget",
        envvar="DLSTUDY_RETRY_BUDGET",
        help="Seconds one instance may spend being retried before it is reported failed.",
    ),
]
VerifyOpt = Annotated[
    bool, _opt("--verify", help="Re-hash files already on disk against the manifest.")
]
WaitOpt = Annotated[
    bool, _opt("--wait", help="Wait for another run using the output folder to finish.")
]
TimeoutOpt = Annotated[
    float,
    _opt("--timeout", envvar="DLSTUDY_TIMEOUT", help="Seconds of silence before a request fails."),
]
JsonOpt = Annotated[bool, _opt("--json", help="Print one JSON summary object on stdout.")]
QuietOpt = Annotated[bool, _opt("--quiet", "-q", help="No progress display, no summary line.")]
LogFileOpt = Annotated[
    Path | None, _opt("--log-file", help="Append a log of the run to this file.")
]
VerboseOpt = Annotated[bool, _opt("--verbose", "-v", help="Log details to stderr.")]


LOG_FORMATS = ("text", "json")

LogFormatOpt = Annotated[
    str,
    option("--log-format", help="Log records as text lines or JSON objects (text, json)."),
]


def use_log_format(log_format: str) -> None:
    """Switch the CLI's log handlers (set up by setup_logging) to JSON objects."""
    if log_format not in LOG_FORMATS:
        fail_usage(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    if log_format == "json":
        from ..events import JsonFormatter

        for handler in logging.getLogger("dlstudy").handlers:
            if getattr(handler, "dlstudy_cli", False):
                handler.setFormatter(JsonFormatter())


def register(app: typer.Typer) -> None:
    @app.command("download", cls=ConfigCommand)
    def download_command(
        study_uids: StudyUids = None,
        url: UrlOpt = "",
        output: OutputOpt = Path("studies"),
        from_file: FromFileOpt = None,
        from_catalog: FromCatalogOpt = None,
        where: WhereOpt = None,
        series: SeriesOpt = None,
        modality: ModalityOpt = None,
        concurrency: ConcurrencyOpt = DEFAULTS.concurrency,
        workers: WorkersOpt = 0,
        http: HttpOpt = "auto",
        mode: ModeOpt = "auto",
        transfer_syntax: TransferSyntaxOpt = "*",
        layout: LayoutOpt = DEFAULT_LAYOUT,
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
        retries: RetriesOpt = 6,
        retry_budget: RetryBudgetOpt = 600.0,
        timeout: TimeoutOpt = 30.0,
        verify: VerifyOpt = False,
        wait: WaitOpt = False,
        json_output: JsonOpt = False,
        quiet: QuietOpt = False,
        log_file: LogFileOpt = None,
        log_format: LogFormatOpt = "text",
        verbose: VerboseOpt = False,
        shard: ShardOpt = None,
        config: ConfigOpt = None,
        server: ServerOpt = None,
    ) -> None:
        """Download whole studies: every instance, byte-exact, to OUT/<study>/<series>/<sop>.dcm."""
        setup_logging(verbose, log_file)
        use_log_format(log_format)
        uids = list(study_uids or [])
        if from_file is not None:
            uids += read_uid_file(from_file)
        check_where(where, from_catalog, "--from-catalog")
        if from_catalog is not None:
            uids += catalog_uids(from_catalog, where)
        if not uids:
            fail_usage("give at least one STUDY_UID or --from-file")
        if not url:
            fail_usage("--url (or DLSTUDY_URL) is required")
        chosen_shard = shard_option(shard)
        given = len(uids)
        uids = select_shard(uids, chosen_shard)
        if not uids and chosen_shard is not None:
            finish_empty_shard(
                chosen_shard, given, url=url, output=output, json_output=json_output, quiet=quiet
            )
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
            series=tuple(series or ()),
            modalities=tuple(modality or ()),
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
                summary = download(uids, settings=settings, progress=progress)
        except DlstudyError as exc:
            finish(getattr(exc, "summary", None), exc, json_output=json_output, quiet=quiet)
        finish(summary, None, json_output=json_output, quiet=quiet)
