"""Config-file defaults for every command: `--config`, `--server` and `ConfigCommand`.

Typer resolves the command line and `DLSTUDY_*` variables; `ConfigCommand` then fills every
option still at its built-in default from the config file (the `--server` profile over
`[defaults]`), before the command runs. So the precedence is: command line > environment >
profile > `[defaults]` > built-in default, and the command body sees the merged values.
"""

from __future__ import annotations

import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from .. import config
from ..errors import DlstudyError
from .command import Command
from .common import fail_usage
from .env_lists import expand_home_in_environment, resplit_environment

# Values that must not be echoed in an error message.
SECRET_KEYS = frozenset({"token", "password", "header", "token_command"})
# Output formats: one at most; a profile's choice replaces one in [defaults] (query_cmd).
EXCLUSIVE_FLAGS = frozenset({"json", "csv", "uids"})
# Options that share a long name with other commands' and mean something else: bench's
# --concurrency and --http are its matrix, so `concurrency = 16` or `http = "1.1"`, meant for
# downloads, must not shrink it (those two are given on bench's command line only).
NOT_FROM_CONFIG = {"bench": frozenset({"concurrency", "http"})}

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=config.CONFIG_ENV,
        metavar="FILE",
        rich_help_panel="Configuration",
        help=(
            "TOML config file (default: $XDG_CONFIG_HOME/dlstudy/config.toml, else "
            "~/.config/dlstudy/config.toml, if it exists)."
        ),
        show_default=False,
    ),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="DLSTUDY_SERVER",
        metavar="NAME",
        rich_help_panel="Configuration",
        help="Named server profile: a servers.NAME table of the config file.",
        show_default=False,
    ),
]


FROM_CONFIG = "dlstudy.config_filled"  # the key of ConfigFilled in ctx.meta


@dataclass(frozen=True)
class ConfigFilled:
    """What the config file gave a command: its `url` (None if it names none), the
    parameters it filled (neither the command line nor the environment set them), those of
    them `[defaults]` gave, and the urls of all profiles (where `[defaults]`' credentials may
    go when the run's `url` is not the file's)."""

    url: str | None
    params: set[str]
    from_defaults: set[str] = field(default_factory=set)
    profile_urls: list[str] = field(default_factory=list)


class ConfigCommand(Command):
    """A command whose options at their built-in default are taken from the config file (and
    whose repeatable options with spaces are split from the environment as env_lists says)."""

    def invoke(self, ctx: Any) -> Any:
        resplit_environment(ctx)  # DLSTUDY_FILTER='StudyDescription=CT CHEST'
        expand_home_in_environment(ctx)  # DLSTUDY_OUTPUT='~/mirror'
        try:
            apply_config(ctx, self)
        except DlstudyError as exc:
            fail_usage(str(exc))
        return super().invoke(ctx)


def apply_config(ctx: Any, command: TyperCommand) -> None:
    raw = ctx.params.get("config")  # a str or a Path, depending on the typer version
    explicit = Path(raw) if raw else None
    server: str | None = ctx.params.get("server")
    env = dict(os.environ)
    path = config.find(explicit, env)
    if path is None:
        if server is not None:
            looked = config.default_path(env, Path.home())
            raise config.ConfigError(
                f"--server {server}: no config file ({looked} does not exist; "
                f"use --config or {config.CONFIG_ENV})"
            )
        return
    loaded = config.load(path)
    values = loaded.values(server, env, known=_known_options(ctx), exclusive=[EXCLUSIVE_FLAGS])
    from_profile = loaded.profile_keys(server)
    params = options_by_key(command)
    annotations = _option_types(command)
    for key in NOT_FROM_CONFIG.get(command.name or "", ()):
        params.pop(key, None)
    filled: set[str] = set()
    from_defaults: set[str] = set()
    own_url = values.get("url")
    ctx.meta[FROM_CONFIG] = ConfigFilled(
        own_url if isinstance(own_url, str) else None, filled, from_defaults, loaded.profile_urls()
    )
    for key, value in values.items():
        param = params.get(key)
        if param is None or param.name in ("config", "server"):
            continue  # an option of another command
        name = param.name
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            continue  # the command line or the environment said otherwise
        filled.add(name)
        if key not in from_profile:
            from_defaults.add(name)
        if isinstance(value, config.UnsetSecret):
            ctx.params[name] = value  # checked below, once the url in force is known
            continue
        if (wrong := _type_problem(value, annotations.get(name))) is not None:
            raise config.ConfigError(f"{key} in {path} must be {wrong}")
        if getattr(param, "multiple", False) and not isinstance(value, list):
            value = [value]
        try:
            ctx.params[name] = param.process_value(ctx, value)
        except (typer.BadParameter, ValueError, TypeError) as exc:
            shown = "" if key in SECRET_KEYS else f" = {value!r}"
            message = getattr(exc, "message", None) or str(exc)
            raise config.ConfigError(f"{key}{shown} in {path}: {message}") from exc
    _check_unset_secrets(ctx, filled)


def _check_unset_secrets(ctx: Any, filled: set[str]) -> None:
    """A `*_env` variable that is not set is an error only for a secret that would be sent:
    not for one withheld because --url is of another origin than the file's url."""
    from .profile_origin import withheld_credentials  # it imports this module

    unset = [n for n in ctx.params if n in filled and isinstance(ctx.params[n], config.UnsetSecret)]
    if unset:
        withheld = withheld_credentials(ctx.params, ctx.meta[FROM_CONFIG])
        for name in unset:
            if name not in withheld:
                raise config.ConfigError(ctx.params[name].problem)


def options_by_key(command: Any) -> dict[str, Any]:
    """A command's options by the config key that sets them: each long option name, `-` as
    `_` (`--json` -> `json`, `--page-size` -> `page_size`), whatever the parameter is called
    inside (`json_output`)."""
    return {
        name.lstrip("-").replace("-", "_"): param
        for param in command.params
        if param.param_type_name == "option"
        for name in param.opts
        if name.startswith("--")
    }


def _known_options(ctx: Any) -> set[str]:
    """The config key of every option of every command and subcommand (`catalog pull`): a key
    only another command uses is not a typo. A run builds only the command it names (see
    app.main), so the whole CLI is built here, when a config file is there to check."""
    from . import app as cli_app  # the CLI module imports this one

    whole = typer.main.get_command(cli_app.app)
    commands = list(getattr(whole, "commands", {}).values()) or [ctx.command]
    keys: set[str] = set()
    while commands:
        command = commands.pop()
        commands += getattr(command, "commands", {}).values()  # a group: `catalog`
        keys |= options_by_key(command).keys()
    return keys - {"config", "server"}


# What a TOML value of an option of each type may be, and its name in an error. Strings are
# accepted for numbers and flags (click converts and checks them: `concurrency = "16"`);
# anything else is not (click would make `["x"]` the string "['x']").
_ACCEPTED: dict[type, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    Path: ((str,), "a string"),
    int: ((int, str), "an integer"),
    float: ((int, float, str), "a number"),
    bool: ((bool, str), "true or false"),
}
_TOML_KINDS = ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"),
               (list, "a list"), (dict, "a table"))  # fmt: skip


def _option_types(command: TyperCommand) -> dict[str, Any]:
    """Parameter name -> its annotation, from the command function's signature."""
    if command.callback is None:
        return {}
    signature = inspect.signature(command.callback, eval_str=True)
    return {name: parameter.annotation for name, parameter in signature.parameters.items()}


def _type_problem(value: Any, annotation: Any) -> str | None:
    """What `value` should have been for an option declared `annotation`, and what it is
    (none of the value itself: it may be a secret); None if it fits."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    kinds = [kind for kind in typing.get_args(annotation) or (annotation,) if kind is not None]
    kinds = [kind for kind in kinds if kind is not type(None)]
    if len(kinds) != 1:
        return None  # no annotation dlstudy uses: leave it to click
    kind = kinds[0]
    repeatable = typing.get_origin(kind) is list
    if repeatable:
        kind = typing.get_args(kind)[0]
    if kind not in _ACCEPTED:
        return None
    accepted, name = _ACCEPTED[kind]
    items = value if repeatable and isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, accepted) or (isinstance(item, bool) and kind is not bool):
            shown = _toml_kind(item)
            if item is not value:
                shown = f"a list holding {shown}"
            wanted = f"{name} or a list of them" if repeatable else name
            return f"{wanted}, not {shown}"
    return None


def _toml_kind(value: Any) -> str:
    return next((name for kind, name in _TOML_KINDS if isinstance(value, kind)), "a date or time")
