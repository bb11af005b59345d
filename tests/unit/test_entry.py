"""cli/entry.py: what counts as a Ctrl-C while the CLI is imported."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from dlstudy.cli.entry import StoppedWhileStarting, is_interrupt
from dlstudy.errors import how_stopped, stop_for


class _InterruptedWhileNamed:
    def __set_name__(self, owner: type, name: str) -> None:
        raise KeyboardInterrupt


def test_a_ctrl_c_while_a_class_is_made_is_an_interrupt() -> None:
    """Python 3.11 wraps it in a RuntimeError (importing ipaddress met it in CI)."""
    with pytest.raises(BaseException) as caught:

        class _Made:
            attribute = _InterruptedWhileNamed()

    assert is_interrupt(caught.value)


def test_other_errors_are_not_interrupts() -> None:
    assert is_interrupt(KeyboardInterrupt())
    assert not is_interrupt(RuntimeError("something else"))
    plain = RuntimeError("wrapped")
    plain.__cause__ = ValueError()
    assert not is_interrupt(plain)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_while_starting_says_what_the_commands_say(signum: int) -> None:
    """Its words and status are written out in entry.py (errors cannot be imported that
    early): the same as a command's stop by that signal."""
    stop = StoppedWhileStarting(signum)
    assert (stop.said, stop.exit_status) == how_stopped(stop_for(signum))


_DYING_WITH_A_CTRL_C = """
import sys, time
from dlstudy.cli import entry
sys.unraisablehook = entry.deliver_interrupts_again  # as the console script's entry sets it
class Dying:
    def __del__(self):
        raise KeyboardInterrupt  # where Python cannot raise it: "Exception ignored"
try:
    Dying()
    time.sleep(5)
    print("the interrupt was lost")
except KeyboardInterrupt:
    print("interrupted")
"""


_DYING_WITH_A_SIGTERM = """
import signal, sys, time
from dlstudy.cli import entry
sys.unraisablehook = entry.deliver_interrupts_again
class Dying:
    def __del__(self):
        raise entry.StoppedWhileStarting(signal.SIGTERM)  # as the start-up's handler does
try:
    Dying()
    time.sleep(5)
    print("the stop was lost")
except entry.StoppedWhileStarting as stop:
    print(stop.said)
"""


@pytest.mark.parametrize(
    ("program", "said"),
    [(_DYING_WITH_A_CTRL_C, "interrupted"), (_DYING_WITH_A_SIGTERM, "terminated")],
)
def test_a_stop_that_python_cannot_raise_where_it_lands_is_delivered_again(
    program: str, said: str
) -> None:
    """A Ctrl-C landing in a weakref callback of an import's module lock (seen in a test of
    Ctrl-C during start-up) printed Python's traceback and was lost. The same from a
    `__del__`, in a fresh interpreter: no traceback, and the run is interrupted. A SIGTERM
    while the CLI starts is delivered again as itself, not as the Ctrl-C the hook delivers."""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == said, result
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
