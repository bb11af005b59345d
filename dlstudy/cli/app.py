"""The `dlstudy` Typer app: each command lives in its own module and registers itself here."""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import typer

from .command import Group
from .entry import hand_over, is_interrupt, say_stopped

# Each command's module, in the order `dlstudy --help` lists them.
COMMANDS = {
    "download": "download_cmd",
    "query": "query_cmd",
    "sync": "sync_cmd",
    "catalog": "catalog_cmd",
    "serve": "server_cmds",
    "synth": "server_cmds",
    "demo": "demo_cmd",
    "bench": "bench_cmd",
}


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI; with `only`, just the group and that command (see main)."""
    app = typer.Typer(
        cls=_Group,
        name="dlstudy",
        help="Pull whole DICOM studies out of DICOMweb servers: fast, resumable, byte-exact.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
    )
    # The group's own option; it also keeps a Typer of one command a group (which would
    # otherwise run that command without its name).
    app.callback()(_group_options)
    modules = [COMMANDS[only]] if only is not None else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"{__package__}.{module}").register(app)
    return app


class _Interrupted(BaseException):
    """A Ctrl-C that no command turned into its own ending (while typer builds and parses the
    command line, say). typer would turn a KeyboardInterrupt into a silent exit 130; this one
    reaches main, which says so."""


class _Group(Group):
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _interrupt_reaches_main():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _interrupt_reaches_main():
            return super().invoke(ctx)


@contextlib.contextmanager
def _interrupt_reaches_main() -> Iterator[None]:
    try:
        yield
    except (KeyboardInterrupt, RuntimeError) as exc:  # (typer.Exit is a RuntimeError too)
        if not is_interrupt(exc):
            raise
        raise _Interrupted() from exc


def _print_version(asked: bool) -> None:
    if asked:
        import importlib.metadata

        from ..http.curl import engine_version

        try:
            typer.echo(f"dlstudy {importlib.metadata.version('dlstudy')} ({engine_version()})")
        except OSError as exc:
            from .common import output_failed

            output_failed(exc)
        raise typer.Exit(0)


def _group_options(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        is_eager=True,
        callback=_print_version,
        help="Print dlstudy's version (and libcurl's) and exit.",
    ),
) -> None:
    """Options of `dlstudy` itself."""


def __getattr__(name: str) -> typer.Typer:
    """`app`, the whole CLI (tests, documentation), built when first asked for."""
    if name == "app":
        app = globals()["app"] = build_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _replace_what_stdout_cannot_encode() -> None:
    """A server's text may hold what stdout cannot encode: a lone surrogate (JSON's `\ud800`
    is valid JSON), or `Müller` with PYTHONIOENCODING=ascii. Each such character is printed
    as `?`, as a control character is, not a UnicodeEncodeError after part of the output."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")


def main() -> None:
    """Run the CLI, then exit without tearing the interpreter down.

    Only the command named on the command line is imported and built: typer builds each
    command's options from its signature at every start, and building all of them is a
    measurable part of a small download (docs/decisions.md). Anything else (--help,
    completion, a typo) gets the whole app.

    By the time a command returns, everything it wrote is flushed and closed (manifest lines
    are flushed as written, instances committed by rename). Python's teardown after that only
    deallocates modules and objects, a measurable part of a small download's CPU
    (docs/decisions.md).
    atexit handlers (logging, multiprocessing) still run; under a profiler, debugger or
    coverage tracer the exit is the usual one.
    """
    first = sys.argv[1] if len(sys.argv) > 1 else None
    code: str | int | None = 0
    # pydicom warns about the odd files real archives hold (a VR other than the transfer
    # syntax says), naming none: dlstudy keeps such files as sent and says so itself.
    warnings.filterwarnings("ignore", module=r"pydicom\.")
    _replace_what_stdout_cannot_encode()
    try:
        try:
            with _interrupt_reaches_main():  # while the command's modules are imported
                app = build_app(first if first in COMMANDS else None)
            _pace_collector()
            returned = app(standalone_mode=False)
        finally:
            hand_over()  # (done as the command started, if one did: see command.py)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as exc:
        code = exc.code
    except (typer.Abort, KeyboardInterrupt, _Interrupted) as exc:
        # Ctrl-C (or SIGTERM, SIGHUP while starting: entry.py) before a command ends it
        code = say_stopped(exc)
    except RuntimeError as exc:  # Ctrl-C while DuckDB ran a query outside a run (catalog status)
        from .common import stop_behind

        if stop_behind(exc) is None:
            raise
        print("dlstudy: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `dlstudy`, `dlstudy catalog` alone
            # The help is the answer (typer's rich help has printed itself: nothing is left in
            # the message), and the exit a usage error's: `dlstudy "$cmd"` with $cmd empty
            # must not pass in a script.
            if text := exc.format_message().strip():  # type: ignore[attr-defined]
                print(text)
        else:
            context = getattr(exc, "ctx", None)  # the (sub)command whose line was wrong
            where = getattr(context, "command_path", None) or "dlstudy"
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            message = _without_split_off_secrets(message, sys.argv[1:])
            message = _in_plain_words(exc, message)
            print(f"dlstudy: error: {message} (see '{where} --help')", file=sys.stderr)
        code = exc.exit_code  # type: ignore[attr-defined]
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)  # a profiler, debugger or coverage writes its results at teardown
    if isinstance(code, str):  # what sys.exit("message") does
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) or stream: nothing to keep
            pass
    os._exit(code or 0)


# A young-generation pass of the cycle collector every this many objects made and not yet
# freed (Python's default: 700). A run makes and drops objects by the dozen per instance,
# almost none of them in a cycle (docs/decisions.md).
COLLECTOR_PACE = (10_000, 10, 10)


def _pace_collector() -> None:
    """Collect cycles less often, and never walk what was alive before the command ran
    (modules, classes, the command's own objects): it lives until the process ends."""
    gc.set_threshold(*COLLECTOR_PACE)
    gc.freeze()


def _without_split_off_secrets(message: str, argv: list[str]) -> str:
    """The parser's complaint about extra arguments, without them when they may be the rest
    of a secret's value (cli/strays.py)."""
    if not message.startswith("Got unexpected extra argument"):
        return message
    from .strays import not_shown, split_off_secrets

    strays = split_off_secrets(argv)
    if not strays:
        return message
    option = next(iter(strays.values()))
    return f"Got unexpected extra arguments ({not_shown(option)})"


# pydantic's words for a value typer could not convert (typer 0.29 converts through it).
_CONVERSIONS = {
    "Input should be a valid integer, unable to parse string as an integer": ("not a whole number"),
    "Input should be a valid number, unable to parse string as a number": "not a number",
}


def _in_plain_words(exc: BaseException, message: str) -> str:
    """A bad value's line naming where it came from: the environment variable only when the
    value was taken from it (the parser names it whatever the source), and in words of its
    own where pydantic's would show (`-c x`: `not a whole number`)."""
    for said, plain in _CONVERSIONS.items():
        message = message.replace(said, plain)
    context, param = getattr(exc, "ctx", None), getattr(exc, "param", None)
    envvar = getattr(param, "envvar", None)
    if context is None or not isinstance(envvar, str) or param is None:
        return message
    source = context.get_parameter_source(param.name)
    if source is not None and source.name != "ENVIRONMENT":
        message = message.replace(f" (env var: '{envvar}')", "")
    return message


def _is_usage_error(exc: BaseException) -> bool:
    """The command-line parser's complaints (no such option, missing argument, bad value):
    typer raises its click's exceptions, which carry a message and an exit status."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )
