"""What a hostile or broken server can send back as instances (WADO-RS, single-part and
multipart), end to end through the installed CLI against scripted servers on 127.0.0.1.

docs/reliability.md has a row for each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from ..cli_helpers import run_installed
from ..factories import STUDY, multipart_body, part10
from ..scripted_servers import SERIES, SOPS, serving

pytestmark = pytest.mark.integration

DICOM = "application/dicom"
MULTIPART = f'multipart/related; type="{DICOM}"; boundary=b0undary'
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OB\0\0"  # (7FE0,0010) OB, then its 4-byte length

# Headers that pydicom (which reads what the fast header parser leaves to it) fails on with
# errors of its own kinds, not its InvalidDicomError.
UNREADABLE_HEADERS: dict[str, Callable[[bytes], bytes]] = {
    # The body ends inside the 12-byte header of the first element after the UIDs (struct.error).
    "cut inside an element header": lambda data: data[: data.index(PIXEL_DATA_HEADER) + 9],
    # (0002,0003) with VR "U5" (NotImplementedError when the value is read).
    "unknown VR in the file meta": lambda data: data.replace(
        b"\x02\x00\x03\x00UI", b"\x02\x00\x03\x00U5"
    ),
    # (0002,0000) UL of 6 bytes (pydicom's BytesLengthException).
    "group length of 6 bytes": lambda data: data.replace(
        b"\x02\x00\x00\x00UL\x04\x00", b"\x02\x00\x00\x00UL\x06\x00"
    ),
}


def served_files(out: Path) -> dict[str, bytes]:
    """The files under OUT (outside its state folder), by name."""
    return {
        p.name: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".dlstudy" not in p.parts
    }


Answer = Callable[[str, str], tuple[bytes, str]]  # (path, Accept) -> (body, Content-Type)


def good_files() -> dict[str, bytes]:
    """The study's instances as the server should send them, by SOP Instance UID."""
    return {sop: part10(STUDY, SERIES, sop, payload=b"\1" * 4096) for sop in SOPS}


def alone_or_as_the_series(served: dict[str, bytes]) -> Answer:
    """Each instance alone when asked alone; the series as one multipart body of them all."""

    def answer(path: str, accept: str) -> tuple[bytes, str]:
        if "/instances/" in path:
            return served[path.rsplit("/", 1)[1]], DICOM
        return multipart_body(list(served.values())), MULTIPART

    return answer


def download(answer: Answer, out: Path, mode: str, retries: int) -> CompletedProcess[str]:
    """The installed `dlstudy download` of the study, from a server answering with `answer`."""
    with serving(answer) as url:
        return run_installed(
            "download", STUDY, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--mode", mode, "--retries", str(retries),
        )  # fmt: skip


@pytest.mark.parametrize("mode", ["instance", "series"])
@pytest.mark.parametrize("how", UNREADABLE_HEADERS)
def test_a_header_pydicom_cannot_read_fails_that_instance_not_the_run(
    tmp_path: Path, how: str, mode: str
) -> None:
    """One instance whose header makes pydicom raise something else than its InvalidDicomError
    (the run ended in a traceback, nothing downloaded and no summary): that instance fails,
    named, and the others are kept, whether it came alone or as a part of a series."""
    good = good_files()
    bad = SOPS[1]
    served = {**good, bad: UNREADABLE_HEADERS[how](good[bad])}
    out = tmp_path / "out"
    result = download(alone_or_as_the_series(served), out, mode, 1)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [failure] = json.loads(result.stdout)["failures"]
    assert failure["sop_instance_uid"] == bad
    assert f"instance {bad}: DICOM header cannot be parsed (" in failure["reason"]
    assert len(failure["reason"]) < 400  # pydicom's message may quote the bytes it read
    files = served_files(out)
    assert files == {f"{sop}.dcm": good[sop] for sop in SOPS if sop != bad}


def test_a_multipart_delimiter_without_its_crlf_never_makes_one_file_of_several(
    tmp_path: Path,
) -> None:
    """A series answered with parts that have no Content-Length (as dcm4chee sends them) and
    delimiters not preceded by CRLF: by RFC 2046 such a line is part data, so the first part
    runs on to the close delimiter, holding every instance after its own. It was committed as
    the first instance (exit 0, a file three times its size); the walk finds the bytes after
    its pixel data, and the instances are fetched one by one instead."""
    good = good_files()
    framed = b"".join(
        b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data for data in good.values()
    )

    def answer(path: str, accept: str) -> tuple[bytes, str]:
        if "/instances/" in path:
            return good[path.rsplit("/", 1)[1]], DICOM
        return framed + b"\r\n--b0undary--\r\n", MULTIPART

    out = tmp_path / "out"
    result = download(answer, out, "series", 1)
    assert result.returncode == 0, result.stderr
    assert "something was appended to the instance" in result.stderr  # the bulk warning
    assert served_files(out) == {f"{sop}.dcm": data for sop, data in good.items()}


def test_a_second_file_after_an_instance_is_refused_not_kept(tmp_path: Path) -> None:
    """A single-part answer holding the instance and then more (another file, a page a proxy
    appended): refused, named, never kept under the instance's name (it was: exit 0)."""
    good = good_files()
    bad = SOPS[2]

    def answer(path: str, accept: str) -> tuple[bytes, str]:
        sop = path.rsplit("/", 1)[1]
        return good[sop] + (good[SOPS[0]] if sop == bad else b""), DICOM

    out = tmp_path / "out"
    result = download(answer, out, "instance", 1)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [failure] = json.loads(result.stdout)["failures"]
    assert failure["sop_instance_uid"] == bad
    size = len(good[bad])
    assert failure["reason"] == (
        f"instance {bad}: {size} bytes after the pixel data, from byte {size}, are no element: "
        f"something was appended to the instance: it sent all {size + len(good[SOPS[0]])} "
        "bytes it announced (after 2 attempts)"
    )
    assert served_files(out) == {f"{sop}.dcm": good[sop] for sop in SOPS if sop != bad}


@pytest.mark.parametrize("cut_to", [132, 140, 250, 300], ids=lambda n: f"cut at byte {n}")
def test_a_body_cut_before_its_uids_is_called_incomplete(tmp_path: Path, cut_to: int) -> None:
    """Close-delimited answers cut inside the DICOM header, after `DICM` and before the UIDs:
    each failure says the body was cut short, as bench says (it said `Study Instance UID in the
    file is missing`, blaming the archive's data for a broken transfer)."""
    from ..scripted_servers import cutting

    out = tmp_path / "out"
    with cutting(100, cut_to=cut_to) as (url, study, sops):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--mode", "instance", "--retries", "1",
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    failures = json.loads(result.stdout)["failures"]
    assert sorted(f["sop_instance_uid"] for f in failures) == sorted(sops)
    for failure in failures:
        reason = failure["reason"]
        assert reason.startswith(f"instance {failure['sop_instance_uid']}: the file is incomplete")
        assert reason.endswith("the body was cut short (after 2 attempts)")
    assert served_files(out) == {}


@pytest.mark.parametrize("framed", ["cut", "multipart"])
def test_a_file_short_on_the_server_is_named_so_and_asked_once_more(
    tmp_path: Path, framed: str
) -> None:
    """Files the server itself holds cut short, sent whole with a Content-Length that matches
    (the response's, or the one part's): it was asked 7 times in 11 s, and blamed on the
    transfer (`the body was cut short`). Every byte came as announced: the server's file is
    short, asked once more (it may have been being written), not six times."""
    from ..scripted_servers import cutting

    out = tmp_path / "out"
    with cutting(100, framed=framed) as (url, study, sops):
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--json", "--http", "1.1",
            "--mode", "instance",
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["retried"] == len(sops), summary["retried"]
    for failure in summary["failures"]:
        reason = failure["reason"]
        assert reason.startswith(
            f"instance {failure['sop_instance_uid']}: the server's file is incomplete ("
        ), reason
        assert re.search(r"\): it sent all \d+ bytes it announced \(after 2 attempts\)$", reason)
    assert sorted(f["sop_instance_uid"] for f in summary["failures"]) == sorted(sops)
    assert served_files(out) == {}

    with cutting(1, framed=framed) as (url, study, sops):  # the file whole by the next request
        result = run_installed(
            "download", study, "--url", url, "-o", str(out), "--http", "1.1",
            "--mode", "instance", "-c", "1",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(served_files(out)) == len(sops)


@pytest.mark.parametrize("mode", ["instance", "series"])
def test_a_file_without_its_preamble_is_named_so_at_once(tmp_path: Path, mode: str) -> None:
    """An instance sent as a Part 10 file without its 128-byte preamble (`DICM` first), alone
    or as a part: refused on its first bytes, not retried, saying so (it was retried and
    reported as `SOP Instance UID in the file is missing`: DICM at byte 0 reads as no
    header at all)."""
    good = good_files()
    bad = SOPS[0]
    served = {**good, bad: good[bad][128:]}
    out = tmp_path / "out"
    result = download(alone_or_as_the_series(served), out, mode, 2)
    assert result.returncode == 1, result.stderr
    [failure] = json.loads(result.stdout)["failures"]
    assert failure["reason"] == (
        f"instance {bad}: response starts with DICM, without the 128-byte preamble of a DICOM file"
    )
    assert served_files(out) == {f"{sop}.dcm": good[sop] for sop in SOPS if sop != bad}


@pytest.mark.parametrize("mode", ["instance", "series"])
@pytest.mark.parametrize("cut", [False, True], ids=["whole", "cut"])
def test_one_dicom_file_labelled_multipart_is_taken_as_one_part(
    tmp_path: Path, mode: str, cut: bool
) -> None:
    """A server answering every retrieval with one Part 10 file, whatever was asked, under
    the multipart type that was asked for. Each file is taken as one part, then judged as any
    other (a cut one is found by the walk and never kept); a series answered so gives its
    first instance, the others come one by one. Every instance failed, `no multipart delimiter`
    (exit 1 on a server that sent every byte right)."""
    good = good_files()

    def answer(path: str, accept: str) -> tuple[bytes, str]:
        data = good[path.rsplit("/", 1)[1] if "/instances/" in path else SOPS[0]]
        return (data[: len(data) // 2] if cut else data), MULTIPART

    out = tmp_path / "out"
    result = download(answer, out, mode, 1)
    assert "Traceback" not in result.stderr
    if not cut:
        assert result.returncode == 0, result.stderr
        assert served_files(out) == {f"{sop}.dcm": data for sop, data in good.items()}
        return
    assert result.returncode == 1, result.stderr
    failures = json.loads(result.stdout)["failures"]
    assert sorted(f["sop_instance_uid"] for f in failures) == SOPS
    assert all("the file is incomplete" in f["reason"] for f in failures), failures
    assert served_files(out) == {}


@pytest.mark.parametrize(
    "content_type", [DICOM, "multipart/mixed; boundary=b0undary"], ids=["dicom", "mixed"]
)
def test_a_multipart_body_under_another_type_is_named_at_once(
    tmp_path: Path, content_type: str
) -> None:
    """Instances asked for one at a time, answered with a multipart/related body under another
    Content-Type: refused on its first bytes, not retried, saying what it looks like (its
    framing was taken for the file: retried, then `SOP Instance UID in the file is missing`)."""
    good = good_files()

    def answer(path: str, accept: str) -> tuple[bytes, str]:
        return multipart_body([good[path.rsplit("/", 1)[1]]]), content_type

    out = tmp_path / "out"
    result = download(answer, out, "instance", 2)
    assert result.returncode == 1, result.stderr
    failures = json.loads(result.stdout)["failures"]
    assert sorted(f["sop_instance_uid"] for f in failures) == SOPS
    for failure in failures:
        assert failure["reason"] == (
            f"instance {failure['sop_instance_uid']}: response is not DICOM "
            "(looks like a multipart body)"
        )
    assert served_files(out) == {}


def test_a_part_that_is_no_dicom_is_named_by_its_place_not_as_an_instance(
    tmp_path: Path,
) -> None:
    """In a series answered multipart, which instance a part holds is known from its header
    only: a part that is an HTML page is `part N` in the line saying why the series was not
    taken whole (it read `instance part N`)."""
    good = good_files()
    served = {**good, SOPS[1]: b"<!doctype html><html>" + b" " * 200 + b"</html>"}
    out = tmp_path / "out"
    result = download(alone_or_as_the_series(served), out, "series", 0)
    assert result.returncode == 1, result.stderr
    assert "part 2: response is not DICOM (looks like an HTML page)" in result.stderr
    assert "instance part" not in result.stderr + result.stdout
    [failure] = json.loads(result.stdout)["failures"]
    assert failure["sop_instance_uid"] == SOPS[1]
