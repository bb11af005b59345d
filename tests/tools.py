"""What a test does when a system tool it needs is missing: skip on a developer's machine,
fail under CI (CI=true), where scripts/install-system-deps.sh must have installed it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_tool(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI installs it with scripts/install-system-deps.sh")
    pytest.skip(f"{reason}; run: bash scripts/install-system-deps.sh")
