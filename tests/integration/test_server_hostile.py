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
import trustme
from cryptography.hazmat.primitives import serialization

from tests.cli_helpers import DLSTUDY, run_installed
from tests.fixtures.embedded_server import TlsFiles
from tests.integration.test_server_cli import SAMPLE, start

pytestmark = pytest.mark.integration


@contextmanager
def serving(folder: Path, *args: str, seen: list[str] | None = None) -> Iterator[str]:
    """The installed `dlstudy serve FOLDER --port 0 ARGS`; its base URL. Killed at the end if
    Ctrl-C did not stop it (a test that fails must not leave it running); `seen` gets all it
    wrote on stderr."""
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
        rest = proc.stderr.read()
        if seen is not None:
            seen.append(rest)
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


def _sample_urls(url: str) -> tuple[str, str]:
    """The sample's study URL and instance URL, from the server's own listing."""
    (found,) = httpx.get(f"{url}/instances", timeout=30).json()
    instance: str = found["00081190"]["Value"][0]
    return instance.split("/series/")[0], instance


SINGLE = {"accept": "application/dicom; transfer-syntax=*"}
MULTIPART = {"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def test_a_file_swapped_for_a_link_out_of_the_folder_is_never_sent(tmp_path: Path) -> None:
    """Indexed, then replaced by a link to a file outside: the instance's URL sent the first
    bytes of whatever the link led to (/etc/services: 200, 12,813 bytes of it, then a cut and
    a traceback), its metadata and includefield=all read it. Now 410, and nothing of it."""
    folder, outside = tmp_path / "shared", tmp_path / "private.txt"
    folder.mkdir()
    sample = folder / "one.dcm"
    shutil.copy(SAMPLE, sample)
    outside.write_bytes(b"secret " * 100_000)
    with serving(folder) as url:
        study, instance = _sample_urls(url)
        sample.unlink()
        sample.symlink_to(outside)
        answer = httpx.get(instance, headers=SINGLE, timeout=30)
        assert (answer.status_code, b"secret" in answer.content) == (410, False)
        assert "changed or was removed since the server indexed" in answer.text
        for asked in (f"{instance}/metadata", study):
            answer = httpx.get(asked, headers=MULTIPART, timeout=30)
            assert (answer.status_code, b"secret" in answer.content) == (410, False), asked
        every = httpx.get(f"{url}/instances", params={"includefield": "all"}, timeout=30)
        assert every.status_code == 200 and b"secret" not in every.content


@pytest.mark.parametrize("change", ["removed", "cut short", "rewritten"])
def test_a_file_changed_after_indexing_is_410_not_a_200_cut_short(
    tmp_path: Path, change: str
) -> None:
    """The status line went out first: 200 with the indexed Content-Length, then the file was
    missing or shorter and the connection was cut, with a traceback in the server's log."""
    served = tmp_path / "one.dcm"
    shutil.copy(SAMPLE, served)
    seen: list[str] = []
    with serving(tmp_path, "-v", seen=seen) as url:
        _, instance = _sample_urls(url)
        if change == "removed":
            served.unlink()
        elif change == "cut short":
            served.write_bytes(SAMPLE.read_bytes()[:1000])
        else:  # the same size, other bytes: not the instance the listing promised
            served.write_bytes(b"x" * SAMPLE.stat().st_size)
        answer = httpx.get(instance, headers=SINGLE, timeout=30)
        assert answer.status_code == 410, answer.text
        assert httpx.head(instance, headers=SINGLE, timeout=30).status_code == 410
    assert "Traceback" not in "".join(seen)


def test_a_link_to_a_file_outside_the_folder_is_not_served(tmp_path: Path) -> None:
    """A folder shared as it came (an unpacked archive) may hold links anywhere: one to a DICOM
    file outside was indexed and served, listing and bytes. A link within the folder still is."""
    folder, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    shutil.copy(SAMPLE, elsewhere / "private.dcm")
    (folder / "private.dcm").symlink_to(elsewhere / "private.dcm")
    seen: list[str] = []
    with serving(folder, "-v", seen=seen) as url:
        assert httpx.get(f"{url}/studies", timeout=30).status_code == 204
    assert f"skipped {folder / 'private.dcm'}: a link to {elsewhere / 'private.dcm'}" in (
        "".join(seen)
    )
    (folder / "private.dcm").unlink()
    (folder / "kept").mkdir()
    shutil.copy(SAMPLE, folder / "kept" / "one.dcm")
    (folder / "link.dcm").symlink_to(folder / "kept" / "one.dcm")  # a duplicate, within
    with serving(folder) as url:
        _, instance = _sample_urls(url)
        assert httpx.get(instance, headers=SINGLE, timeout=30).content == SAMPLE.read_bytes()


def test_a_study_with_one_file_removed_sends_the_others(tmp_path: Path) -> None:
    """A multipart study leaves out the instance whose file is gone, rather than cut the whole
    response at that part; the server's log names the file."""
    synth = ["synth", str(tmp_path), "--studies", "1", "--series", "1", "--instances", "3"]
    subprocess.run([DLSTUDY, *synth, "--size", "4000"], capture_output=True, check=True)
    files = sorted(tmp_path.rglob("*.dcm"))
    seen: list[str] = []
    with serving(tmp_path, seen=seen) as url:
        (study,) = httpx.get(f"{url}/studies", timeout=30).json()
        study_url = study["00081190"]["Value"][0]
        files[1].unlink()
        answer = httpx.get(study_url, headers=MULTIPART, timeout=30)
        assert answer.status_code == 200
        assert answer.content.count(b"Content-Location:") == 2
        assert answer.content.endswith(b"--\r\n")
    assert f"not served: {files[1]} changed or was removed since indexing" in "".join(seen)


def test_tls_files_it_cannot_use_are_one_line_before_indexing(
    tmp_path: Path, tls_ca: TlsFiles
) -> None:
    """hypercorn loads them only as it starts: `serve` printed that it was serving at https://,
    then `serve: No such file or directory` (which?), `[SSL] PEM lib (_ssl.c:3905)` or
    `[X509: KEY_VALUES_MISMATCH]`, exit 1; an encrypted key had OpenSSL ask for a passphrase
    on the terminal. Now a usage error naming the option, before the folder is indexed."""
    shutil.copy(SAMPLE, tmp_path / "one.dcm")
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(str(other_key))
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        serialization.load_pem_private_key(tls_ca.key.read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cert, key = str(tls_ca.cert), str(tls_ca.key)
    for given, said in [
        ((str(tmp_path / "none.pem"), key), "Invalid value for '--tls-cert': file "),
        ((cert, str(tmp_path)), "Invalid value for '--tls-key': file "),
        ((key, cert), f"--tls-cert {key}: no PEM certificate in it"),
        (
            (cert, str(tmp_path / "one.dcm")),
            f"--tls-key {tmp_path / 'one.dcm'}: no PEM private key",
        ),
        ((cert, str(other_key)), f"--tls-key {other_key} is not the key of the certificate in "),
        ((cert, str(encrypted)), f"--tls-key {encrypted}: the key is encrypted (it needs a pass"),
    ]:
        done = run_installed(
            "serve", str(tmp_path), "--port", "0", "--tls-cert", given[0], "--tls-key", given[1]
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"dlstudy: error: {said}"), line
