"""The console script's entry: a Ctrl-C while the CLI is still being imported ends as any other
interrupt does (a line, exit 130), not as a traceback."""

import os
import signal
import sys
from types import FrameType


def main() -> None:
    stand_in_for_closed_streams()
    sys.unraisablehook = deliver_interrupts_again
    try:
        from .app import main as run_cli
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        print("dlstudy: interrupted", file=sys.stderr)
        sys.exit(130)
    run_cli()


def stand_in_for_closed_streams() -> None:
    """A standard stream cron or a script closed (`>&-`, `2>&-`, `<&-`): Python leaves its
    `sys` stream None, where printing a line or asking `isatty()` raised. Each closed
    descriptor 0-2 is opened on /dev/null instead, so the run goes on as with that output
    thrown away (as after `| head`), and no file opened later takes descriptor 0-2, where
    libcurl or OpenSSL writing an error would write into it, or `--from-file -` read it.
    `sys.stdin` stays None: `--from-file -` says standard input is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w", closefd=False))


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
