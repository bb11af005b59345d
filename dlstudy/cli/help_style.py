"""How `--help` shows a command's parameters, where typer's own choice reads badly."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


class _PlainFlags:
    """A flag takes no value, so its type column stays empty: typer 0.29 shows `<bool>` there
    for every flag (`--json`, `--help`), as if it took one. (Its metavar is a public
    attribute, used only to render help: the parser never reads a flag's.)"""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_PlainFlags, TyperCommand):
    """Every dlstudy command's class (directly, or through configured.ConfigCommand)."""


class Group(_PlainFlags, TyperGroup):
    """`dlstudy` and `dlstudy catalog`."""
