"""Options shared by the commands: the environment-variable rule and Settings building."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import typer

from ..http.credentials import auth_conflict, credentials_problem
from ..http.proxy import chosen_proxy_problem
from ..http.tls_files import tls_files_problem
from ..http.urls import base_url_problem
from ..settings import Settings
from .common import ALWAYS_SHOWN, fail_usage
from .configured import FROM_CONFIG
from .profile_origin import drop_foreign_credentials

log = logging.getLogger(__name__)

HTTP_CHOICES = ("auto", "1.1", "2", "3")
MODE_CHOICES = ("auto", "instance", "series", "study")
# Repeatable options whose values contain spaces: click splits environment values on
# whitespace, so these are set on the command line or in the config file only. (--filter's
# values may hold spaces too: its variable is split again by env_lists.)
NO_ENVVAR = frozenset({"--header"})
# The library's defaults, for option defaults: every command agrees with `download()`.
DEFAULTS = Settings(url="")


def envvar_for(long_name: str) -> str | None:
    """`--retry-budget` -> `DLSTUDY_RETRY_BUDGET`: every option has one (see NO_ENVVAR)."""
    if long_name in NO_ENVVAR:
        return None
    return "DLSTUDY_" + long_name.lstrip("-").upper().replace("-", "_")


# --help groups the options by what they are about.
CONNECTION, AUTH, SELECTION, BEHAVIOUR, OUTPUT, CONFIGURATION = (
    "Connection",
    "Authentication",
    "What to fetch",
    "Behaviour",
    "Output",
    "Configuration",
)
PANELS = {
    **dict.fromkeys(
        ("--url", "--http", "--proxy", "--timeout", "--ca-bundle", "--cert", "--key",
         "--insecure"),
        CONNECTION,
    ),
    **dict.fromkeys(("--token", "--token-command", "--user", "--password", "--header"), AUTH),
    **dict.fromkeys(
        ("--from-file", "--series", "--modality", "--shard", "--patient-id", "--patient-name",
         "--study-date", "--accession", "--filter"),
        SELECTION,
    ),
    **dict.fromkeys(
        ("--concurrency", "--workers", "--max-rate", "--mode", "--transfer-syntax", "--retries",
         "--retry-budget", "--verify", "--recheck", "--wait"),
        BEHAVIOUR,
    ),
    **dict.fromkeys(
        ("--output", "--layout", "--json", "--csv", "--uids", "--quiet", "--log-file",
         "--log-format", "--verbose", "--report"),
        OUTPUT,
    ),
    **dict.fromkeys(("--config", "--server"), CONFIGURATION),
}  # fmt: skip
# What --help shows an option's value as.
METAVARS = {
    "--url": "URL", "--proxy": "URL", "--output": "DIR", "--from-file": "FILE|-",
    "--series": "UID", "--modality": "MOD", "--concurrency": "N", "--workers": "N",
    "--http": "auto|1.1|2|3", "--mode": "auto|instance|series|study", "--transfer-syntax": "UID|*",
    "--layout": "TEMPLATE", "--token": "TOKEN", "--token-command": "COMMAND", "--user": "NAME",
    "--password": "PASSWORD", "--header": "'NAME: VALUE'", "--ca-bundle": "FILE",
    "--cert": "FILE", "--key": "FILE", "--retries": "N", "--retry-budget": "SECONDS",
    "--timeout": "SECONDS", "--log-file": "FILE", "--log-format": "text|json",
    "--patient-id": "ID", "--patient-name": "NAME", "--study-date": "DATE",
    "--accession": "NUMBER", "--filter": "KEY=VALUE", "--config": "FILE", "--server": "NAME",
    "--shard": "K/N|auto", "--report": "FILE", "--max-rate": "RATE",
}  # fmt: skip
# Values the shell completes.
CHOICES = {
    "--http": HTTP_CHOICES,
    "--mode": MODE_CHOICES,
    "--log-format": ("text", "json"),
}


def option(*names: str, help: str, secret: bool = False, envvar: str | None = None) -> Any:
    long_name = next(name for name in names if name.startswith("--"))
    choices = CHOICES.get(long_name)
    return typer.Option(
        *names,
        help=help,
        envvar=envvar or envvar_for(long_name),
        show_default=not secret,
        metavar=METAVARS.get(long_name),
        rich_help_panel=PANELS.get(long_name),
        autocompletion=(lambda: list(choices)) if choices else None,
    )


# Every command that needs a URL says where one can be given, in the same words.
URL_REQUIRED = "--url (or DLSTUDY_URL, or url in a config profile) is required"


def build_settings(
    *, url: str, http: str, mode: str = "auto", insecure: bool, **fields: Any
) -> Settings:
    """Check what typer cannot (choices, pairs, the URL being set) and build the Settings."""
    if not url:
        fail_usage(URL_REQUIRED)
    if (problem := base_url_problem(url)) is not None:
        fail_usage(problem)
    problem = credentials_problem(
        fields.get("token"), fields.get("user"), fields.get("password"), fields.get("headers", ())
    ) or auth_conflict(
        token=fields.get("token"),
        token_command=fields.get("token_command"),
        user=fields.get("user"),
        password=fields.get("password"),
        url_has_user="@" in urlsplit(url.strip()).netloc,
    )
    if problem is not None:
        fail_usage(problem)
    if http not in HTTP_CHOICES:
        fail_usage(f"--http must be one of {', '.join(HTTP_CHOICES)}, got {http!r}")
    if mode not in MODE_CHOICES:
        fail_usage(f"--mode must be one of {', '.join(MODE_CHOICES)}, got {mode!r}")
    if fields.get("key") is not None and fields.get("cert") is None:
        fail_usage("--key needs --cert")
    tls_files = (fields.get("ca_bundle"), fields.get("cert"), fields.get("key"))
    if (problem := tls_files_problem(*tls_files)) is not None:
        fail_usage(problem)
    if (problem := chosen_proxy_problem(fields.get("proxy"), url)) is not None:
        fail_usage(problem)
    if insecure:  # (stderr and --log-file, as the run's other warnings)
        log.warning("--insecure: the server's TLS certificate is NOT verified", extra=ALWAYS_SHOWN)
    return Settings(url=url, http=http, mode=mode, insecure=insecure, **fields)  # type: ignore[arg-type]


# Command-line parameters that are Settings fields under another name.
RENAMED = {"modality": "modalities", "wait": "wait_for_lock", "header": "headers"}
_FIELDS = frozenset(field.name for field in fields(Settings))


def settings_from(ctx: typer.Context, *, ignore: Collection[str] = ()) -> Settings:
    """The Settings of a command from its parsed parameters (`ctx.params`, the config file's
    values merged in): each option that is a Settings field goes to it by name (RENAMED
    otherwise), so a command names its options once, in its signature. `ignore`: options of
    the same name that mean something else there (sync's --modality filters the search)."""
    params = drop_foreign_credentials(ctx.params, ctx.meta.get(FROM_CONFIG))
    values: dict[str, Any] = {}
    for name, value in params.items():
        target = RENAMED.get(name, name)
        if name in ignore or target not in _FIELDS or value is None:
            continue
        values[target] = value
    if "headers" in values:
        values["headers"] = parse_headers(values["headers"])
    for name in ("series", "modalities"):
        if name in values:
            values[name] = tuple(values[name])
    values.setdefault("url", "")
    values.setdefault("http", DEFAULTS.http)
    values.setdefault("insecure", False)
    return build_settings(**values)


def parse_headers(values: list[str]) -> tuple[tuple[str, str], ...]:
    headers = []
    for number, value in enumerate(values, 1):
        name, sep, content = value.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            # Nothing of it is shown: without its colon, no one can tell its name from a
            # secret value ("X-Api-Key abc123").
            fail_usage(
                f"--header must look like 'Name: value'; --header number {number} does not "
                "(not shown: it may hold a secret)"
            )
        headers.append((name.strip(), content.strip()))
    return tuple(headers)
