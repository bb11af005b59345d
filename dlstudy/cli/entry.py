"""The console script's entry: a Ctrl-C while the CLI is still being imported ends as any other
interrupt does (a line, exit 130), not as a traceback."""

import sys


def main() -> None:
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
