"""The console script's entry: a Ctrl-C while the CLI is still being imported ends as any other
interrupt does (a line, exit 130), not as a traceback."""

import sys


def main() -> None:
    try:
        from .app import main as run_cli
    except KeyboardInterrupt:
        print("dlstudy: interrupted", file=sys.stderr)
        sys.exit(130)
    run_cli()
