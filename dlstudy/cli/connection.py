"""Options shared by the commands: the environment-variable rule and Settings building."""

from __future__ import annotations

from typing import Any

import typer

from ..http.proxy import proxy_url_problem
from ..settings import Settings
from .common import fail_usage

HTTP_CHOICES = ("auto", "1.1", "2")
MODE_CHOICES = ("auto", "instance", "series", "study")
# Repeatable options whose values contain spaces: click splits environment values on
# whitespace, so these are set on the command line or in the config file only.
NO_ENVVAR = frozenset({"--header"})
# The library's defaults, for option defaults: every command agrees with `download()`.
DEFAULTS = Settings(url="")


def envvar_for(long_name: str) -> str | None:
    """`--retry-budget` -> `DLSTUDY_RETRY_BUDGET`: every option has one (see NO_ENVVAR)."""
    if long_name in NO_ENVVAR:
        return None
    return "DLSTUDY_" + long_name.lstrip("-").upper().replace("-", "_")


def option(*names: str, help: str, secret: bool = False, envvar: str | None = None) -> Any:
    long_name = next(name for name in names if name.startswith("--"))
    return typer.Option(
        *names, help=help, envvar=envvar or envvar_for(long_name), show_default=not secret
    )


def build_settings(
    *, url: str, http: str, mode: str = "auto", insecure: bool, **fields: Any
) -> Settings:
    """Check what typer cannot (choices, pairs, the URL being set) and build the Settings."""
    if not url:
        fail_usage("--url (or DLSTUDY_URL, or url in a config profile) is required")
    if http not in HTTP_CHOICES:
        fail_usage(f"--http must be one of {', '.join(HTTP_CHOICES)}, got {http!r}")
    if mode not in MODE_CHOICES:
        fail_usage(f"--mode must be one of {', '.join(MODE_CHOICES)}, got {mode!r}")
    if fields.get("key") is not None and fields.get("cert") is None:
        fail_usage("--key needs --cert")
    proxy = fields.get("proxy")
    if proxy is not None and (problem := proxy_url_problem(proxy)) is not None:
        fail_usage(f"--proxy: {problem}")
    if insecure:
        typer.echo(
            "dlstudy: warning: --insecure: the server's TLS certificate is NOT verified", err=True
        )
    return Settings(url=url, http=http, mode=mode, insecure=insecure, **fields)  # type: ignore[arg-type]
