"""No credential from the config file goes to another origin than the config's own `url`.

A profile's token, user, password, token command and headers are meant for its server. A
`--url` (or `DLSTUDY_URL`) of another origin with that profile selected would hand them to
that other host; so they are withheld there, with one warning, as they are on a redirect to
another origin. When the run's profile names no url (nor `[defaults]`), `[defaults]`'
credentials go only to the origin of some profile's url, if the file names any. Credentials
given on the command line or in the environment still apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .configured import ConfigFilled

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


def withheld_credentials(params: Mapping[str, Any], filled: ConfigFilled | None) -> list[str]:
    """The credential parameters among `params` (a command's ctx.params, config values merged
    in) that the config file filled (`filled`, recorded by apply_config) when the file's `url`
    is of another origin than the `url` in force."""
    if filled is None:
        return []
    in_force = origin(params.get("url") or "")
    if filled.url:
        if origin(filled.url) == in_force:
            return []
        foreign = filled.params
    elif filled.profile_urls:
        # No url for the run's profile: [defaults]' credentials go to a server the file names.
        if in_force in {origin(url) for url in filled.profile_urls}:
            return []
        foreign = filled.params & filled.from_defaults
    else:
        return []  # the file names no server: its credentials go where --url says
    return [key for key in CREDENTIAL_KEYS if key in foreign and params.get(key)]


def drop_foreign_credentials(
    params: Mapping[str, Any], filled: ConfigFilled | None
) -> dict[str, Any]:
    """`params` without the config file's credentials when `url` is of another origin than
    the file's (warned about once, naming the options, never their values)."""
    withheld = withheld_credentials(params, filled)
    if not withheld:
        return dict(params)
    names = ", ".join(f"--{key.replace('_', '-')}" for key in withheld)
    log.warning(
        "the config file's %s %s not sent: --url is of another origin than the config's url",
        names,
        "is" if len(withheld) == 1 else "are",
    )
    return {key: (None if key in withheld else value) for key, value in params.items()}
