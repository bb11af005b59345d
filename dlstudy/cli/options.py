"""Every option shared by the commands, declared once: its names, help, metavar, panel and
environment variable (connection.option); commands take their defaults from Settings
(connection.DEFAULTS), and their values become Settings by name (connection.settings_from).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..http.urls import is_valid_uid
from ..settings import MAX_CONCURRENCY, MAX_WORKERS, modality_problem
from .configured import ConfigOpt, ServerOpt
from .connection import DEFAULTS, option


def _number(value: Any) -> float:
    """`value` as a float; nan if it is none (a word, true/false from a config file)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def seconds(*, above_zero: bool) -> Callable[[Any], float]:
    """A parser of a number of seconds, from the command line, DLSTUDY_* or the config file:
    finite, and above 0 (`above_zero`) or at least 0. A timeout of 0 or -5 would fail every
    request at once and retry it; nan or inf would never time out (typer's min= lets both
    through: no comparison with nan is true)."""
    least = "above 0" if above_zero else "0 or more"

    def parse(value: Any) -> float:
        number = _number(value)
        if not ((number > 0 if above_zero else number >= 0) and math.isfinite(number)):
            raise typer.BadParameter(
                f"must be a number of seconds {least}, got {str(value)[:40]!r}"
            )
        return number

    return parse


def fraction(value: Any) -> float:
    """A parser of a fraction, 0 to 1 (serve's fault and drop rates); nan is none."""
    number = _number(value)
    if not 0 <= number <= 1:
        raise typer.BadParameter(f"must be a fraction from 0 to 1, got {str(value)[:40]!r}")
    return number


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?(?:/s)?", re.IGNORECASE)
_RATE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def byte_rate(value: Any) -> int:
    """A parser of bytes per second: `50M`, `500k`, `1.5G`, `2000000` (K, M and G are 1024-based,
    as in curl's --limit-rate; `MB`, `MiB` and a `/s` read the same), 0 for no cap."""
    match = _RATE.fullmatch(str(value).strip()) if not isinstance(value, bool) else None
    if match is None:
        raise typer.BadParameter(
            f"must be bytes per second, such as 50M or 500K (K, M, G: 1024-based), or 0 for "
            f"no cap; got {str(value)[:40]!r}"
        )
    return int(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])


def transfer_syntax(value: Any) -> str:
    """`*` or a UID, as given: anything else (a name, a stray space, nothing) would be sent in
    the Accept header of every retrieval and fail each of them, or ask for something else."""
    if value != "*" and not (isinstance(value, str) and is_valid_uid(value)):
        raise typer.BadParameter(
            "must be * or a transfer syntax UID (digits and dots, at most 64 characters), "
            f"got {str(value)[:80]!r}"
        )
    return str(value)


def series_modality(value: Any) -> str:
    """A download --modality value: one that could match no series is refused (an empty one
    as download() refuses a library caller's, in jobs/download.py check_settings)."""
    if isinstance(value, str) and (problem := modality_problem(value)) is not None:
        raise typer.BadParameter(problem)
    return str(value)


def checked(
    info: Any,
    *,
    least: int | None = None,
    most: int | None = None,
    parser: Callable[[Any], Any] | None = None,
) -> Any:
    """An option (connection.option) whose value must be `least`..`most`, or pass `parser`:
    typer checks it wherever it came from (the config file's values go through it too)."""
    info.min, info.max = least, most
    if parser is not None:
        info.parser = parser
    return info


UrlOpt = Annotated[
    str,
    option(
        "--url",
        envvar="DLSTUDY_URL",
        help="DICOMweb root URL, e.g. https://pacs/dicom-web. Required: here, in DLSTUDY_URL "
        "or in a config profile.",
    ),
]
OutputOpt = Annotated[
    Path, option("-o", "--output", envvar="DLSTUDY_OUTPUT", help="Output folder.")
]
FromFileOpt = Annotated[
    str | None,
    option(
        "--from-file",
        help="Read what to fetch from a file (- = stdin): UIDs one a line (studies, series or "
        "instances), a TCIA .tcia manifest, or a CSV with StudyInstanceUID / "
        "SeriesInstanceUID / SOPInstanceUID columns.",
    ),
]
ReportOpt = Annotated[
    Path | None,
    option(
        "--report",
        help="Write one row per instance (status, UIDs, path, size, digest, reason) to FILE: "
        ".csv or .jsonl.",
    ),
]
SeriesOpt = Annotated[list[str] | None, option("--series", help="Only this series (repeatable).")]
ModalityOpt = Annotated[
    list[str] | None,
    checked(
        option("--modality", help="Only series of this modality (repeatable)."),
        parser=series_modality,
    ),
]
WorkersOpt = Annotated[
    int,
    checked(
        option(
            "--workers",
            envvar="DLSTUDY_WORKERS",
            help=f"Processes sharing the per-instance pool (0-{MAX_WORKERS}); 0: decided by "
            "the run: one, or up to one per CPU (at most 4) when the server answers fast and one "
            "process is CPU-bound, so it varies ('processes' in --json says how many ran).",
        ),
        least=0,
        most=MAX_WORKERS,
    ),
]
ConcurrencyOpt = Annotated[
    int,
    checked(
        option(
            "--concurrency",
            "-c",
            envvar="DLSTUDY_CONCURRENCY",
            help=f"Instances in flight at once (0-{MAX_CONCURRENCY}); 0: 64 over HTTP/2, 16 "
            "over HTTP/1.1.",
        ),
        least=0,
        most=MAX_CONCURRENCY,
    ),
]
MaxRateOpt = Annotated[
    int,
    checked(
        option(
            "--max-rate",
            envvar="DLSTUDY_MAX_RATE",
            help="Cap on the bytes per second of the whole run, e.g. 50M (K, M, G: 1024-based); "
            "0: none.",
        ),
        parser=byte_rate,
    ),
]
HttpOpt = Annotated[
    str, option("--http", envvar="DLSTUDY_HTTP", help="HTTP version: auto, 1.1, 2, 3.")
]
ModeOpt = Annotated[
    str,
    option(
        "--mode",
        envvar="DLSTUDY_MODE",
        help="Retrieval: auto, instance, series, study.",
    ),
]
TransferSyntaxOpt = Annotated[
    str,
    checked(
        option("--transfer-syntax", help="Transfer syntax to ask for; * = as stored."),
        parser=transfer_syntax,
    ),
]
LayoutOpt = Annotated[
    str, option("--layout", help="Output path template with {study} {series} {sop} {modality}.")
]
TokenOpt = Annotated[
    str | None, option("--token", envvar="DLSTUDY_TOKEN", help="Bearer token.", secret=True)
]
TokenCommandOpt = Annotated[
    str | None,
    option(
        "--token-command",
        envvar="DLSTUDY_TOKEN_COMMAND",
        help="Shell command printing a bearer token; re-run when a 401 says it expired.",
    ),
]
UserOpt = Annotated[str | None, option("--user", envvar="DLSTUDY_USER", help="Basic auth user.")]
PasswordOpt = Annotated[
    str | None,
    option("--password", envvar="DLSTUDY_PASSWORD", help="Basic auth password.", secret=True),
]
HeaderOpt = Annotated[
    list[str] | None, option("--header", help="Extra request header 'Name: value' (repeatable).")
]
CaBundleOpt = Annotated[
    Path | None,
    option("--ca-bundle", envvar="DLSTUDY_CA_BUNDLE", help="CA certificates (PEM) to trust."),
]
CertOpt = Annotated[Path | None, option("--cert", help="Client certificate (PEM) for mutual TLS.")]
KeyOpt = Annotated[Path | None, option("--key", help="Private key of --cert, if not inside it.")]
InsecureOpt = Annotated[
    bool,
    option(
        "--insecure",
        help="Do not verify the server's TLS certificate (warns); an https:// proxy's still is.",
    ),
]
ProxyOpt = Annotated[
    str | None,
    option(
        "--proxy",
        help="Proxy URL (http://, https://, socks5://, socks5h://); default: HTTPS_PROXY, "
        "HTTP_PROXY, ALL_PROXY, with NO_PROXY; '' for none.",
    ),
]
RetriesOpt = Annotated[
    int,
    checked(
        option(
            "--retries",
            envvar="DLSTUDY_RETRIES",
            help="Retries per instance on transient errors (0 or more).",
        ),
        least=0,
    ),
]
RetryBudgetOpt = Annotated[
    float,
    checked(
        option(
            "--retry-budget",
            envvar="DLSTUDY_RETRY_BUDGET",
            help="Seconds one instance may spend being retried before it is reported failed.",
        ),
        parser=seconds(above_zero=False),
    ),
]
VerifyOpt = Annotated[
    bool,
    option(
        "--verify",
        help="Re-hash files already on disk against the manifest (and list every study from "
        "the server again, as --recheck).",
    ),
]
RecheckOpt = Annotated[
    bool,
    option(
        "--recheck",
        help="List studies from the server even when the manifest records them complete "
        "(otherwise a complete study costs no request: new instances are not looked for).",
    ),
]
WaitOpt = Annotated[
    bool, option("--wait", help="Wait for another run using the output folder to finish.")
]
TimeoutOpt = Annotated[
    float,
    checked(
        option(
            "--timeout",
            envvar="DLSTUDY_TIMEOUT",
            help=(
                "Seconds (above 0) to connect, and of silence while reading, before a "
                "request fails; an instance's transfer must bring 64 KiB in each."
            ),
        ),
        parser=seconds(above_zero=True),
    ),
]
JsonOpt = Annotated[bool, option("--json", help="Print one JSON summary object on stdout.")]
QuietOpt = Annotated[
    bool,
    option("--quiet", "-q", help="Only errors on stderr: no progress, summary line or warnings."),
]
LogFileOpt = Annotated[
    Path | None, option("--log-file", help="Append a log of the run to this file.")
]
VerboseOpt = Annotated[bool, option("--verbose", "-v", help="Log details to stderr.")]
LogFormatOpt = Annotated[
    str,
    option("--log-format", help="Log records as text lines or JSON objects (text, json)."),
]

# The search filters of query and sync (and of catalog pulls).
PatientIdOpt = Annotated[
    str | None, option("--patient-id", help="PatientID to match; * and ? are wildcards.")
]
PatientNameOpt = Annotated[
    str | None, option("--patient-name", help="PatientName to match, e.g. 'DOE^J*'.")
]
StudyDateOpt = Annotated[
    str | None,
    option(
        "--study-date",
        help="YYYYMMDD or YYYY-MM-DD, a range YYYYMMDD-YYYYMMDD or YYYY-MM-DD/YYYY-MM-DD "
        "(open ends allowed), today, yesterday, or Nd (the last N days).",
    ),
]
StudyModalityOpt = Annotated[
    list[str] | None,
    option("--modality", help="Studies with a series of this modality (repeatable: any)."),
]
AccessionOpt = Annotated[str | None, option("--accession", help="AccessionNumber to match.")]
FilterOpt = Annotated[
    list[str] | None,
    option("--filter", help="KEY=VALUE on any attribute, KEY a DICOM keyword or tag (repeatable)."),
]


# --- groups of options, added to a command's signature by `with_options` ----------------------

Group = tuple[tuple[str, Any, Any], ...]  # (parameter name, annotated type, default)

CONNECTION: Group = (
    ("url", UrlOpt, ""),
    ("ca_bundle", CaBundleOpt, None),
    ("cert", CertOpt, None),
    ("key", KeyOpt, None),
    ("insecure", InsecureOpt, False),
    ("proxy", ProxyOpt, None),
    ("timeout", TimeoutOpt, DEFAULTS.timeout),
    ("token", TokenOpt, None),
    ("token_command", TokenCommandOpt, None),
    ("user", UserOpt, None),
    ("password", PasswordOpt, None),
    ("header", HeaderOpt, None),
    ("config", ConfigOpt, None),
    ("server", ServerOpt, None),
    ("verbose", VerboseOpt, False),
)
HTTP: Group = (("http", HttpOpt, DEFAULTS.http),)
TRANSFER: Group = (
    ("output", OutputOpt, DEFAULTS.output),
    ("concurrency", ConcurrencyOpt, DEFAULTS.concurrency),
    ("workers", WorkersOpt, DEFAULTS.workers),
    ("max_rate", MaxRateOpt, DEFAULTS.max_rate),
    ("mode", ModeOpt, DEFAULTS.mode),
    ("transfer_syntax", TransferSyntaxOpt, DEFAULTS.transfer_syntax),
    ("layout", LayoutOpt, DEFAULTS.layout),
    ("retries", RetriesOpt, DEFAULTS.retries),
    ("retry_budget", RetryBudgetOpt, DEFAULTS.retry_budget),
    ("verify", VerifyOpt, DEFAULTS.verify),
    ("recheck", RecheckOpt, DEFAULTS.recheck),
    ("wait", WaitOpt, DEFAULTS.wait_for_lock),
    ("json_output", JsonOpt, False),
    ("quiet", QuietOpt, False),
    ("log_file", LogFileOpt, None),
    ("log_format", LogFormatOpt, "text"),
)
SEARCH: Group = (
    ("patient_id", PatientIdOpt, None),
    ("patient_name", PatientNameOpt, None),
    ("study_date", StudyDateOpt, None),
    ("modality", StudyModalityOpt, None),
    ("accession", AccessionOpt, None),
    ("filter", FilterOpt, None),
)

Command = TypeVar("Command", bound=Callable[..., Any])


def with_options(*groups: Group) -> Callable[[Command], Command]:
    """Add the groups' options to a command, after its own: typer reads a command's options
    from its signature, and the command gets their values in its `**options`. So each shared
    option is spelled here once, not in every command that takes it."""

    def add(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)  # own options as typer sees them
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=value)
            for group in groups
            for name, kind, value in group
        ]
        command.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return command

    return add
