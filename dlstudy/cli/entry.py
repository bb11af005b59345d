"""The console script's entry: a Ctrl-C while the CLI is still being imported ends as any other
interrupt does (a line, exit 130), not as a traceback; a SIGTERM or SIGHUP then ends as the
commands end them (a line, exit 143 or 129), not killed mute."""

import os
import signal
import sys
from types import FrameType


def main() -> None:
    stop_while_starting()
    stand_in_for_closed_streams()
    sys.unraisablehook = deliver_interrupts_again
    try:
        from .app import main as run_cli
    except (KeyboardInterrupt, RuntimeError) as exc:
        if not is_interrupt(exc):
            raise
        sys.exit(say_stopped(exc))
    run_cli()


class StoppedWhileStarting(KeyboardInterrupt):
    """SIGTERM or SIGHUP before the command runs, raised as Ctrl-C's KeyboardInterrupt is, so
    that it ends where a Ctrl-C would. Its words and status are errors.Terminated's and
    HungUp's, which cannot be imported this early (errors imports enum and typing, most of
    the window this covers)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.said = "hung up" if signum == signal.SIGHUP else "terminated"
        self.exit_status = 128 + signum


# The signals the command takes over (its own stop handling), or dies of as before.
_STARTING = (signal.SIGTERM, signal.SIGHUP)
_stopped = False


def stop_while_starting() -> None:
    """SIGTERM (cron, systemd, timeout(1)) and SIGHUP raise until the command runs. A signal
    inherited ignored stays so: `nohup` ignores SIGHUP for a run meant to outlive the
    terminal."""
    for signum in _STARTING:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_stop)


def hand_over() -> None:
    """The command starts: SIGTERM and SIGHUP go back to their default, as the command found
    them before (it installs its own handling, or is killed by them). Not once one has
    stopped the start: a second must not cut its line short."""
    if _stopped:
        return
    for signum in _STARTING:
        if signal.getsignal(signum) is _raise_stop:
            signal.signal(signum, signal.SIG_DFL)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    global _stopped
    if not _stopped:  # a second one while the first ends the run has nothing left to stop
        _stopped = True
        raise StoppedWhileStarting(signum)


def say_stopped(exc: BaseException) -> int:
    """Print the line of the stop `exc` is, or carries (typer's Abort, the RuntimeError of a
    class being made); its exit status."""
    stop: BaseException | None = exc
    while stop is not None and not isinstance(stop, KeyboardInterrupt):
        stop = stop.__cause__ or stop.__context__
    said, status = "interrupted", 130
    if isinstance(stop, StoppedWhileStarting):
        said, status = stop.said, stop.exit_status
    try:  # (a terminal that hung up takes nothing: the status still says it)
        os.write(2, f"dlstudy: {said}\n".encode())
    except OSError:
        pass
    return status


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


# The stop deliver_interrupts_again delivers again.
_lost: list[KeyboardInterrupt] = []


def deliver_interrupts_again(unraisable: "sys.UnraisableHookArgs") -> None:
    """A Ctrl-C (or a SIGTERM while starting) that lands where Python cannot raise it (a
    weakref callback of an import's module lock, a `__del__`) is printed as "Exception
    ignored" with a traceback, and lost: the run goes on. It is delivered again a millisecond
    later instead, once out of that place (a signal sent now would be raised in this hook, as
    unraisable as before)."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        try:
            signal.signal(signal.SIGALRM, _interrupt_now)
        except ValueError:  # not the main thread, which alone takes signals
            pass
        else:
            _lost[:] = [unraisable.exc_value]
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
    sys.__unraisablehook__(unraisable)


def _interrupt_now(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    stop = _lost.pop() if _lost else None
    if isinstance(stop, StoppedWhileStarting):  # not Ctrl-C's: raised as it was
        raise stop
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Python's (KeyboardInterrupt) or the running command's
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt
