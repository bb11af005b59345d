"""cli/common.py: a signal DuckDB swallowed while it ran a query on the main thread still ends
the command as that signal (exit 130 or 143), in a command's exit_on_interrupt.

DuckDB runs the signal's handler while it runs a query, and replaces the exception the handler
raised (KeyboardInterrupt, Terminated) with its own `RuntimeError: Query interrupted` (seen with
duckdb 2.0; tests/integration/test_catalog_cron.py shows it through the installed CLI)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import typer

from dlstudy.cli.common import exit_on_interrupt, stop_behind
from dlstudy.errors import Terminated


@pytest.fixture
def ctrl_c_at_its_default() -> Iterator[None]:
    """As a terminal's Ctrl-C finds it: a background job of a non-interactive shell (a CI
    runner may be one) starts with SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def swallowed_as_duckdb_does(signum: int) -> None:
    try:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises here, at once
    except KeyboardInterrupt:
        raise RuntimeError("Query interrupted") from None
    raise AssertionError("the signal's handler raised nothing")


@pytest.mark.usefixtures("ctrl_c_at_its_default")
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_duckdb_swallowed_ends_the_command_as_that_signal(
    signum: int, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as stopped, exit_on_interrupt(kept="nothing was done"):
        swallowed_as_duckdb_does(signum)
    assert stopped.value.exit_code == status
    said = "terminated" if status == 143 else "interrupted"
    assert capsys.readouterr().err.splitlines()[-1] == f"dlstudy: error: {said}; nothing was done"


def test_other_runtime_errors_are_no_signal() -> None:
    with pytest.raises(RuntimeError, match="something else"), exit_on_interrupt():
        raise RuntimeError("something else")
    assert stop_behind(ValueError("Query interrupted")) is None
    assert type(stop_behind(RuntimeError("Query interrupted"))) in (KeyboardInterrupt, Terminated)
