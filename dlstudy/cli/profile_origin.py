"""No credential from the config file goes to another origin than the config's own `url`.

A profile's token, user, password, token command and headers are meant for its server. A
`--url` (or `DLSTUDY_URL`) of another origin with that profile selected would hand them to
that other host; so they are withheld there, with one warning, as they are on a redirect to
another origin. Credentials given on the command line or in the environment still apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import config

log = logging.getLogger("dlstudy.cli")

# Config keys (option names) that carry credentials, and the Settings-bound parameter each is.
CREDENTIAL_KEYS = ("token", "token_command", "user", "password", "header")


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of `url`, the port filled in; None if it does not parse."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return scheme, (parts.hostname or "").lower(), port


def withheld_credentials(params: Mapping[str, Any]) -> list[str]:
    """The credential parameters among `params` (a command's ctx.params, config values
    merged in) that came from a config file whose `url` is of another origin than the
    `url` in force. A value equal to the file's is taken to be the file's: typer fills a
    parameter from the file only when neither the command line nor the environment set it."""
    given = params.get("config")
    path = config.find(Path(given) if given else None, os.environ)
    if path is None:
        return []
    values = config.load(path).values(params.get("server"), os.environ)
    own = values.get("url")
    if not isinstance(own, str) or not own:
        return []  # the file names no server: its credentials are for whatever --url says
    if origin(own) == origin(params.get("url") or ""):
        return []
    withheld = []
    for key in CREDENTIAL_KEYS:
        value = values.get(key)
        if value is None:
            continue
        if key == "header" and not isinstance(value, list):
            value = [value]
        if params.get(key) == value:
            withheld.append(key)
    return withheld


def drop_foreign_credentials(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` without the config file's credentials when `url` is of another origin than
    the file's (warned about once, naming the options, never their values)."""
    withheld = withheld_credentials(params)
    if not withheld:
        return dict(params)
    names = ", ".join(f"--{key.replace('_', '-')}" for key in withheld)
    log.warning(
        "the config file's %s %s not sent: --url is of another origin than the config's url",
        names,
        "is" if len(withheld) == 1 else "are",
    )
    return {key: (None if key in withheld else value) for key, value in params.items()}
