"""Cohort lists as spreadsheets and shells hand them over, through the installed CLI against
the embedded server: Excel's exports read as written, and stdin that is closed or not text is
a one-line usage error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..cli_helpers import DLSTUDY

pytestmark = pytest.mark.integration


def one_line_usage_error(done: subprocess.CompletedProcess[bytes], expected: str) -> None:
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith(f"dlstudy: error: {expected}"), stderr


def test_stdin_closed_or_not_text_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """No server needed: the list is read before any request."""
    args = ["download", "--url", "http://127.0.0.1:9/dicomweb", "-o", str(tmp_path / "out"),
            "--from-file", "-"]  # fmt: skip
    closed = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" <&-', DLSTUDY, *args],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    one_line_usage_error(closed, "cannot read --from-file -: standard input is closed")

    binary = subprocess.run(
        [DLSTUDY, *args], input=b"\x8e\xa3\xcd1.2.3\xff\n", capture_output=True, timeout=120,
        check=False,
    )  # fmt: skip
    one_line_usage_error(binary, "--from-file -: not UTF-8 text")
