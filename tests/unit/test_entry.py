"""cli/entry.py: what counts as a Ctrl-C while the CLI is imported."""

from __future__ import annotations

import pytest

from dlstudy.cli.entry import is_interrupt


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
