"""The TOML config file: defaults for every command and named server profiles.

    server = "pacs"                      # the profile used when --server is not given

    [defaults]                           # every command, every profile
    output = "/data/studies"

    [servers.pacs]
    url = "https://pacs.example.org/dicom-web"
    token_command = "pacs-token --print"  # or token_env = "PACS_TOKEN"
    ca_bundle = "/etc/ssl/hospital-ca.pem"
    concurrency = 32

Keys are the long option names (`ca-bundle` or `ca_bundle`; `json = true` for `--json`).
`token_env` / `password_env` name an environment variable holding the secret, so no secret
needs to be in the file or on the command line (an unset one is an UnsetSecret: an error only
if the secret is needed). Relative paths are relative to the file's
folder; `~` is expanded.

Precedence, highest first: command line, `DLSTUDY_*` environment variables, the chosen profile,
`[defaults]`, built-in defaults. The first two are the CLI's business; this module only reads
the file and merges its two layers (pure functions, no typer).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

CONFIG_ENV = "DLSTUDY_CONFIG"
FILE_NAME = "config.toml"
APP_DIR = "dlstudy"
MAX_BYTES = 1024 * 1024  # a config file is a few lines; more is some other file
# Keys that name a file or folder: `~` expanded, relative to the config file's folder.
PATH_KEYS = frozenset(
    {
        "output",
        "ca_bundle",
        "cert",
        "key",
        "log_file",
        "report",
        "from_file",
        "db",
        "catalog",
        "from_catalog",
        "to",
        "chart",
        "keep",
    }
)
# A path key whose value is no path: `from-file = "-"` reads standard input.
STDIN = "-"
# Keys that name the environment variable holding a secret, and the option they fill.
SECRET_ENV_KEYS = {"token_env": "token", "password_env": "password"}
_TOP_LEVEL = ("server", "defaults", "servers")


class ConfigError(UsageError):
    """The config file is missing, unreadable or wrong: a usage error (exit 2)."""


@dataclass(frozen=True)
class UnsetSecret:
    """The value of a `token_env` / `password_env` key whose variable is not set: an error
    (`problem`) only where that secret would be sent. The CLI withholds a profile's
    credentials from another origin, and a secret given for the run replaces the file's."""

    problem: str


@dataclass(frozen=True)
class Config:
    path: Path
    default_server: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values(
        self,
        server: str | None,
        env: Mapping[str, str],
        known: Collection[str] | None = None,
        exclusive: Collection[Collection[str]] = (),
    ) -> dict[str, Any]:
        """Option name (`ca_bundle`) -> value: `[defaults]` overlaid by the chosen profile.

        `known` is every option name the CLI has; any other key is reported (a typo would
        otherwise be silently ignored). `exclusive`: groups of flags of which one is chosen
        (`json`, `csv`, `uids`): one set in the profile replaces any set in `[defaults]`.
        """
        if known is not None:
            self.check_keys(known)
        name = server or self.default_server
        layers = [("[defaults]", self.defaults)]
        if name is not None:
            if name not in self.servers:
                available = ", ".join(sorted(self.servers)) or "none"
                raise ConfigError(
                    f"no server profile {name!r} in {self.path} (profiles: {available})"
                )
            layers.append((f"[servers.{name}]", self.servers[name]))
        merged: dict[str, Any] = {}
        for where, table in layers:
            chosen = {key.replace("-", "_") for key, value in table.items() if value is True}
            for group in exclusive:
                if chosen & set(group):
                    for key in set(group) - chosen:
                        merged.pop(key, None)
            for raw_key, value in table.items():
                key = raw_key.replace("-", "_")
                if key in SECRET_ENV_KEYS:
                    key, value = SECRET_ENV_KEYS[key], self._secret(where, raw_key, value, env)
                elif key in PATH_KEYS:
                    value = self._path(where, raw_key, value)
                merged[key] = value
        return merged

    def profile_keys(self, server: str | None) -> set[str]:
        """The option names the chosen profile sets (`token_env` as `token`): the rest of
        what `values` gives comes from `[defaults]`."""
        table = self.servers.get(server or self.default_server or "", {})
        keys = (raw_key.replace("-", "_") for raw_key in table)
        return {SECRET_ENV_KEYS.get(key, key) for key in keys}

    def profile_urls(self) -> list[str]:
        """Every profile's `url`: the servers the file names."""
        urls = (table.get("url") for table in self.servers.values())
        return [url for url in urls if isinstance(url, str)]

    def check_keys(self, known: Collection[str]) -> None:
        """Every key of every table is an option or a *_env key: catches typos in any profile."""
        tables = [("[defaults]", self.defaults)]
        tables += [(f"[servers.{name}]", table) for name, table in self.servers.items()]
        for where, table in tables:
            for raw_key in table:
                key = raw_key.replace("-", "_")
                if key not in known and key not in SECRET_ENV_KEYS:
                    raise ConfigError(f"unknown key {raw_key!r} in {where} of {self.path}")

    def _secret(
        self, where: str, key: str, value: Any, env: Mapping[str, str]
    ) -> str | UnsetSecret:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} in {where} of {self.path} must name an environment variable")
        secret = env.get(value)
        if not secret:
            return UnsetSecret(f"{key} in {where} of {self.path}: ${value} is not set")
        return secret

    def _path(self, where: str, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} in {where} of {self.path} must be a path")
        if value == STDIN:
            return value
        path = Path(expand_home(value))
        return str(path if path.is_absolute() else self.path.parent / path)


def expand_home(value: str) -> str:
    """A path with its leading `~` or `~user` expanded (a config file's, or a `DLSTUDY_*`
    variable's: cron does not expand `~` in a crontab's variables); any other value as is."""
    return str(Path(value).expanduser()) if value.startswith("~") else value


def default_path(env: Mapping[str, str], home: Path, platform: str = sys.platform) -> Path:
    """The per-user config file: `$XDG_CONFIG_HOME` or `~/.config` (`%APPDATA%` on Windows)."""
    if platform.startswith("win") and env.get("APPDATA"):
        return Path(env["APPDATA"]) / APP_DIR / FILE_NAME
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return base / APP_DIR / FILE_NAME


def find(explicit: Path | None, env: Mapping[str, str], home: Path | None = None) -> Path | None:
    """`--config`, else `$DLSTUDY_CONFIG` (both must exist), else the per-user file if any."""
    named = explicit or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if named is not None:
        named = named.expanduser()
        # A pipe is a file too: `--config <(vault read ...)` keeps secrets off the disk.
        if not _asked(named, Path.exists):
            raise ConfigError(f"config file {str(named)!r} does not exist")
        if _asked(named, Path.is_dir):
            raise ConfigError(f"config file {str(named)!r} is a folder, not a file")
        return named
    candidate = default_path(env, home if home is not None else Path.home())
    try:
        return candidate if candidate.is_file() else None
    except OSError as exc:  # (as _asked; a HOME of another user's, under runuser or su)
        raise ConfigError(
            f"cannot look for the per-user config file {str(candidate)!r}: "
            f"{exc.strerror or exc}; give --config, or set XDG_CONFIG_HOME or HOME to a "
            "folder this user can read"
        ) from exc


def _asked(path: Path, question: Callable[[Path], bool]) -> bool:
    """`question(path)`; a folder on the way that cannot be searched (another user's, mode
    000) or a path too long is a config error, not a traceback: a file the user keeps
    settings in may be there, and running without them could reach the wrong server."""
    try:
        return question(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc


def load(path: Path) -> Config:
    """Read and check the structure of a config file (values are checked by the CLI)."""
    import tomllib  # its regexes compile at import: only when there is a file

    try:
        with path.open("rb") as fp:
            raw = fp.read(MAX_BYTES + 1)  # (a device such as /dev/zero never ends)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8-sig")  # with or without the BOM Windows editors write
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}): save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    for key in data:
        if key not in _TOP_LEVEL:
            hint = " (options go under [defaults] or [servers.NAME])"
            raise ConfigError(f"unknown key {key!r} at the top of {path}{hint}")
    server = data.get("server")
    if server is not None and not isinstance(server, str):
        raise ConfigError(f"'server' in {path} must be the name of a profile")
    defaults = _table(data.get("defaults", {}), "[defaults]", path)
    servers_table = _table(data.get("servers", {}), "[servers]", path)
    servers = {name: _table(t, f"[servers.{name}]", path) for name, t in servers_table.items()}
    for name, table in servers.items():
        for key, value in table.items():
            if isinstance(value, dict):
                raise ConfigError(f"[servers.{name}.{key}] in {path}: profiles do not nest")
    for key, value in defaults.items():
        if isinstance(value, dict):
            raise ConfigError(f"[defaults.{key}] in {path}: defaults do not nest")
    if server is not None and server not in servers:
        raise ConfigError(f"server = {server!r} in {path} names no [servers.{server}] profile")
    return Config(path, server, defaults, servers)


def _table(value: Any, where: str, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} in {path} must be a table")
    return dict(value)
