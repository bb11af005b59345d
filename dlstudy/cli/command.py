"""The classes dlstudy's commands and groups are made of: how `--help` shows a command where
typer's own choice reads badly, and what a command line may not hold before it is parsed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from ..errors import ExitStatus
from .entry import hand_over


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


class _HelpOrOneLine:
    """`--help` that stdout cannot take ends as any other output does: one error line and
    exit 1 for `> FILE` on a full disk, not a traceback; a quiet exit 0 for a reader that went
    away (`| head -1`), where rich exits 1 (its `Console.on_broken_pipe`)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from .common import output_failed

        try:
            super().format_help(ctx, formatter)  # type: ignore[misc]
        except OSError as exc:
            output_failed(exc)
        except SystemExit as exc:
            if not isinstance(exc.__context__, BrokenPipeError):
                raise
            output_failed(exc.__context__)


class Command(_HelpOrOneLine, _PlainFlags, TyperCommand):
    """Every dlstudy command's class (directly, or through configured.ConfigCommand)."""

    def invoke(self, ctx: Any) -> Any:
        hand_over()  # start-up is over: SIGTERM and SIGHUP are the command's (entry.py)
        return super().invoke(ctx)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _refuse_empty_paths(ctx, self.get_params(ctx), args)
        try:
            result: list[str] = super().parse_args(ctx, args)
        except Exception as exc:
            # The parser's own errors ("Option '--url' requires an argument") come without
            # the command they are of: the error line would point to `dlstudy --help`.
            if getattr(exc, "ctx", ctx) is None:
                exc.ctx = ctx  # type: ignore[attr-defined]
            raise
        return result


class _CompletionOrOneLine:
    """`--show-completion` and `--install-completion` (the script, or the line saying where it
    went) that stdout cannot take end as `--help` does: one error line and exit 1 on a full
    disk, not a traceback; a quiet exit 0 for a reader that went away."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if param.name in COMPLETION_OPTIONS and param.callback is not None:
                if not getattr(param.callback, "dlstudy_output_checked", False):
                    param.callback = _output_or_one_line(param.callback)
        return params


# The options typer adds to the top group (add_completion).
COMPLETION_OPTIONS = frozenset({"install_completion", "show_completion"})


def _output_or_one_line(callback: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any) -> Any:
        try:
            return callback(*args)
        except OSError as exc:
            if exc.filename is not None:  # a file --install-completion writes: not stdout
                raise
            from .common import output_failed

            output_failed(exc)

    checked.dlstudy_output_checked = True  # type: ignore[attr-defined]
    return checked


class Group(_CompletionOrOneLine, _HelpOrOneLine, _PlainFlags, TyperGroup):
    """`dlstudy` and `dlstudy catalog`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        alone = not args  # (the parser consumes the list)
        try:
            result: list[str] = super().parse_args(ctx, args)
        except typer.Exit as exc:
            # A group alone prints its help as a usage error's answer: a reader that went
            # away (which format_help takes for a success) leaves that status as it is.
            if not alone or not self.no_args_is_help or exc.exit_code != 0:
                raise
            raise typer.Exit(int(ExitStatus.USAGE)) from None
        return result


# Catalog files, which their commands check themselves, --json summary included
# (catalog_options.check_file).
CHECKED_BY_COMMANDS = frozenset({"catalog", "from_catalog", "db", "to"})


def _refuse_empty_paths(ctx: Any, params: list[Any], args: list[str]) -> None:
    """A path given empty (`-o "$OUT"` with the variable unset) would be the current folder
    once parsed: a cron job's studies written wherever it runs. Refused while it can still be
    told from `-o .` (an empty variable in the environment counts as unset already)."""
    taking_values = {
        opt for p in params if p.param_type_name == "option" and not p.is_flag for opt in p.opts
    }
    pairs = list(zip(args, [None, *args], strict=False))  # (an argument, the one before it)
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or not descriptor.is_path or param.name in CHECKED_BY_COMMANDS:
            continue
        if param.param_type_name == "argument":  # (commands have one path argument at most)
            empty = any(a == "" and b not in taking_values for a, b in pairs)
        else:
            long = [f"{opt}=" for opt in param.opts if opt.startswith("--")]
            empty = any((a == "" and b in param.opts) or a in long for a, b in pairs)
        if empty:
            raise typer.BadParameter("is empty (an unset variable?): give a path", ctx, param)
