"""The console script's entry: a Ctrl-C while the CLI is still being imported ends as any other
interrupt does (a line, exit 130), not as a traceback."""

import signal
import sys
from types import FrameType


def main() -> None:
    sys.unraisablehook = deliver_interrupts_again
    try:
        from .app import main as run_cli
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        print("dlstudy: interrupted", file=sys.stderr)
        sys.exit(130)
    run_cli()


def is_interrupt(exc: BaseException) -> bool:
    """A KeyboardInterrupt, or the RuntimeError Python 3.11 wraps one in when it comes while a
    class is made (in a `__set_name__`, as importing a module does)."""
    return isinstance(exc, KeyboardInterrupt) or (
        type(exc) is RuntimeError and isinstance(exc.__cause__, KeyboardInterrupt)
    )


def deliver_interrupts_again(unraisable: "sys.UnraisableHookArgs") -> None:
    """A Ctrl-C that lands where Python cannot raise it (a weakref callback of an import's
    module lock, a `__del__`) is printed as "Exception ignored" with a traceback, and lost: the
    run goes on. It is delivered again a millisecond later instead, once out of that place
    (a signal sent now would be raised in this hook, as unraisable as before)."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        try:
            signal.signal(signal.SIGALRM, _interrupt_now)
        except ValueError:  # not the main thread, which alone takes signals
            pass
        else:
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
    sys.__unraisablehook__(unraisable)


def _interrupt_now(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Python's (KeyboardInterrupt) or the running command's
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt
