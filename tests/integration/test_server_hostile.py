"""`serve` as a real process against what a shared folder and its clients may throw at it:
searches built to be slow, files changed or swapped after indexing, links out of the folder,
unusable TLS files."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.test_server_cli import SAMPLE, start

pytestmark = pytest.mark.integration


@contextmanager
def serving(folder: Path, *args: str, seen: list[str] | None = None) -> Iterator[str]:
    """The installed `dlstudy serve FOLDER --port 0 ARGS`; its base URL. Killed at the end if
    Ctrl-C did not stop it (a test that fails must not leave it running)."""
    proc, url = start(str(folder), "--port", "0", *args, seen=seen, installed=True)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_a_search_of_many_wildcards_answers_and_leaves_the_server_answering(
    tmp_path: Path,
) -> None:
    """`*` and `?` were made a regular expression of `.*`: thirty stars against a name that
    does not match backtracked for hours, holding the interpreter, so no request was answered
    again (Ctrl-C did not stop it either)."""
    shutil.copy(SAMPLE, tmp_path / "one.dcm")  # PatientName Lestrade^G
    with serving(tmp_path) as url:
        stars = "*" * 30
        for name, status in [(stars + "Holmes", 204), (stars + "G", 200), ("l*E*^?", 200)]:
            answer = httpx.get(f"{url}/studies", params={"PatientName": name}, timeout=30)
            assert answer.status_code == status, name
        assert httpx.get(f"{url}/studies", timeout=30).status_code == 200
