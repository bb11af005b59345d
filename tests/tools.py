"""What a test does when a system tool it needs is missing: skip on a developer's machine,
fail under CI (CI=true), where scripts/install-system-deps.sh must have installed it; and a
file system of a test's own (a full disk, a read-only one)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest


def missing_tool(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI installs it with scripts/install-system-deps.sh")
    pytest.skip(f"{reason}; run: bash scripts/install-system-deps.sh")


@contextmanager
def mounted(folder: Path, *options: str) -> Iterator[Path]:
    """`folder` as a file system of its own for the test (`mount OPTIONS`), unmounted after."""
    if os.geteuid() != 0:
        missing_tool("mounting a file system needs root")
    folder.mkdir(exist_ok=True)
    subprocess.run(["mount", *options, str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
