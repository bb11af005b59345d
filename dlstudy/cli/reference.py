"""docs/cli.md, generated from the commands themselves.

    python -m dlstudy.cli.reference > docs/cli.md

A test fails when the file in docs/ differs from what this prints, so the reference never
drifts from the options the commands declare.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer.main
from rich.text import Text

from .app import build_app

HEADER = """# Command-line reference

Every command and option, generated from the commands by `python -m dlstudy.cli.reference`
(do not edit by hand; `tests/integration/test_cli_conventions.py` fails when this file is
stale). The README has the tour; this page has everything. An option given nowhere takes its
environment variable, then the config file's value (`--config`), then the default.
"""


def markdown() -> str:
    group = typer.main.get_command(build_app())
    parts = [HEADER, _command("", group, options_only=True)]
    commands: dict[str, Any] = getattr(group, "commands", {})
    for name, command in commands.items():
        parts.append(_command(name, command))
        for sub, subcommand in getattr(command, "commands", {}).items():  # `catalog pull`, ...
            parts.append(_command(f"{name} {sub}", subcommand))
    return "\n".join(parts)


def _command(name: str, command: Any, *, options_only: bool = False) -> str:
    """A command's section; `options_only`: the group's own (`dlstudy --version`)."""
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    title = " ".join(["dlstudy", name]) if name else "dlstudy"
    # The usage line as --help prints it ([X] optional, {X} required, X... repeatable).
    pieces = command.collect_usage_pieces(typer.Context(command, info_name=title))
    usage = " ".join([title, *pieces])
    about = inspect.cleandoc(plain(command.help))
    if options_only:
        about = "The options `dlstudy` takes before (or instead of) a command."
    lines = [f"## `{title}`", "", f"`{usage}`", "", about, ""]
    for argument in arguments:
        lines.append(f"- `{_metavar(argument)}`: {plain(argument.help)}")
    if arguments:
        lines.append("")
    panels: dict[str, list[Any]] = {}
    for option in command.params:
        if option.param_type_name == "option" and not getattr(option, "hidden", False):
            panel = getattr(option, "rich_help_panel", None) or "Options"
            panels.setdefault(panel, []).append(option)
    for panel, options in panels.items():
        lines += [f"**{panel}**", "", "| option | environment | default | meaning |"]
        lines.append("|---|---|---|---|")
        lines += [_option_row(option) for option in options]
        lines.append("")
    return "\n".join(lines)


def plain(help_text: str | None) -> str:
    """A help text as `--help` shows it: help texts are rich markup (`\\[` is a bracket)."""
    return Text.from_markup(help_text or "").plain


def _metavar(param: Any) -> str:
    name = str(param.metavar or param.name.upper())
    return f"{name}..." if param.nargs == -1 else name


def _option_row(option: Any) -> str:
    names = ", ".join(f"`{name}`" for name in [*option.opts, *option.secondary_opts])
    if not option.is_flag and option.metavar:
        names += f" `{option.metavar}`"
    env = f"`{option.envvar}`" if option.envvar else ""
    cells = (names, env, _default(option), plain(option.help))
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _default(option: Any) -> str:
    value = option.default
    if value is None or value == "" or value is False or value == () or value == []:
        return ""
    if option.is_flag and value is True:
        return "on"
    if isinstance(value, Path):
        value = str(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    print(markdown(), end="")
