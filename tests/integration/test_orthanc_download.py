"""`dlstudy download` against a real Orthanc + DICOMweb plugin: no options beyond --url.

Orthanc answers single-part requests with 400, speaks HTTP/1.1 only and streams multipart
responses with `Connection: close`; dlstudy must negotiate all of that and still write exactly
the bytes Orthanc stored (its REST `GET /instances/{id}/file`).
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dlstudy.server.synth import PRESETS, SynthSpec, generate

from ..cli_helpers import instance_counts, run_cli, run_installed, summary_of
from ..cohort_helpers import assert_report_is_exact, read_report
from ..fixtures.orthanc import OrthancError, OrthancServer
from .test_orthanc_server import PYDICOM_TEST_FILES, SLOW_TO_REJECT

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class StoredInstance:
    study: str
    series: str
    sop: str
    orthanc_study: str
    data: bytes


@pytest.fixture(scope="module")
def loaded(
    orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory
) -> list[StoredInstance]:
    """pydicom's test files and a synthetic study, as Orthanc stored them."""
    orthanc.reset()
    synth_dir = tmp_path_factory.mktemp("synth-for-orthanc")
    synthetic = [i.path for i in generate(synth_dir, PRESETS["small"])]
    files = sorted(p for p in PYDICOM_TEST_FILES.glob("*.dcm") if p.name not in SLOW_TO_REJECT)
    stored = []
    for path in [*synthetic, *files]:
        try:
            answer = orthanc.upload(path)
        except OrthancError:
            continue  # Orthanc refuses some of pydicom's deliberately broken files
        if answer["Status"] != "Success":
            continue
        tags = orthanc.client.get(f"/instances/{answer['ID']}/simplified-tags").json()
        stored.append(
            StoredInstance(
                tags["StudyInstanceUID"],
                tags["SeriesInstanceUID"],
                tags["SOPInstanceUID"],
                answer["ParentStudy"],
                orthanc.stored_file(answer["ID"]),
            )
        )
    return stored


def addressable_studies(stored: list[StoredInstance]) -> dict[str, list[StoredInstance]]:
    """Studies WADO-RS can serve: Orthanc 404s a study UID stored under two PatientIDs, and
    an instance whose SOP UID it stored twice (tests/ORTHANC_NOTES.md)."""
    sop_counts = Counter(s.sop for s in stored)
    studies: dict[str, list[StoredInstance]] = {}
    for s in stored:
        studies.setdefault(s.study, []).append(s)
    return {
        uid: members
        for uid, members in studies.items()
        if len({m.orthanc_study for m in members}) == 1
        and all(sop_counts[m.sop] == 1 for m in members)
    }


def assert_byte_exact(members: list[StoredInstance], out: Path) -> None:
    for m in members:
        assert (out / m.study / m.series / f"{m.sop}.dcm").read_bytes() == m.data, m.sop


def test_synthetic_study_downloads_byte_exact_with_only_the_url(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    studies = addressable_studies(loaded)
    synthetic = next(uid for uid, members in studies.items() if len(members) == 60)

    result = run_cli(
        "download", synthetic, "--url", orthanc.dicomweb_url, "-o", str(tmp_path), "--json"
    )

    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["instances"] == instance_counts(60, downloaded=60)
    assert summary["http_version"] == "HTTP/1.1"  # h2c refused, fell back once
    assert summary["retrieval"]["form"] == "multipart"
    assert summary["retrieval"]["rejected"] == ["application/dicom; transfer-syntax=* -> HTTP 400"]
    assert summary["retrieval"]["warnings"] == []
    assert_byte_exact(studies[synthetic], tmp_path)


def test_pydicom_test_files_download_byte_exact(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    studies = addressable_studies(loaded)
    uids = sorted(uid for uid, members in studies.items() if len(members) < 60)
    assert len(uids) >= 10

    result = run_cli(
        "download", *uids, "--url", orthanc.dicomweb_url, "-o", str(tmp_path), "--json"
    )

    summary = summary_of(result)
    assert result.exit_code == 0, "\n".join(f["reason"] for f in summary["failures"])
    expected = sum(len(studies[uid]) for uid in uids)
    assert summary["instances"]["downloaded"] == expected
    for uid in uids:
        assert_byte_exact(studies[uid], tmp_path)


@pytest.mark.parametrize("mode", ["series", "study"])
def test_bulk_modes_against_orthanc(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance], mode: str
) -> None:
    studies = addressable_studies(loaded)
    synthetic = next(uid for uid, members in studies.items() if len(members) == 60)

    result = run_cli(
        "download",
        synthetic,
        "--url",
        orthanc.dicomweb_url,
        "-o",
        str(tmp_path),
        "--json",
        "--mode",
        mode,
    )

    assert result.exit_code == 0, result.output
    assert summary_of(result)["instances"]["downloaded"] == 60
    assert_byte_exact(studies[synthetic], tmp_path)


# --- cohort lists (--from-file) and --report ------------------------------------------------

TCIA_HEADER = (
    "downloadServerUrl=https://public.cancerimagingarchive.net/nbia-download/servlet/"
    "DownloadServlet\nincludeAnnotation=true\nnoOfrRetry=4\n"
    "databasketId=manifest-1600709154662.tcia\nmanifestVersion=3.0\nListOfSeriesToDownload=\n"
)


def download_installed(
    url: str, out: Path, listing: Path, report: Path
) -> tuple[int, dict[str, Any], str]:
    done = run_installed(
        "download", "--url", url, "-o", str(out), "--from-file", str(listing),
        "--report", str(report), "--json",
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout), done.stderr


def test_tcia_manifest_of_series_against_orthanc(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    studies = addressable_studies(loaded)
    synthetic = next(members for members in studies.values() if len(members) == 60)
    series = list(dict.fromkeys(m.series for m in synthetic))[:2]
    manifest = tmp_path / "manifest-1600709154662.tcia"
    manifest.write_text(TCIA_HEADER + "\n".join(series) + "\n")
    out, report = tmp_path / "out", tmp_path / "landed.csv"

    code, summary, stderr = download_installed(orthanc.dicomweb_url, out, manifest, report)

    assert code == 0, (stderr, summary["failures"])
    expected = [m for m in synthetic if m.series in series]
    assert summary["instances"]["downloaded"] == len(expected) == 40
    rows = read_report(report)
    assert {r["sop"] for r in rows} == {m.sop for m in expected}
    assert_report_is_exact(rows, out, {m.sop: m.data for m in loaded}, status="downloaded")


def test_csv_of_mixed_levels_and_a_list_of_sop_uids_against_orthanc(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    studies = addressable_studies(loaded)
    synthetic = next(members for members in studies.values() if len(members) == 60)
    small = sorted((uid for uid, members in studies.items() if len(members) < 60))[:2]
    one_series = [m for m in synthetic if m.series == synthetic[0].series]
    other = [m for m in synthetic if m.series != synthetic[0].series]
    rows = [
        "PatientID;StudyInstanceUID;SeriesInstanceUID;SOPInstanceUID",
        f"p;{small[0]};;",  # a whole study
        f"p;{synthetic[0].study};{synthetic[0].series};",  # study + series
        f"p;;;{other[0].sop}",  # a SOP alone: looked up
        f"p;{other[5].study};{other[5].series};{other[5].sop}",  # all three: no lookup
        "p;;2.25.424242;",  # a series Orthanc does not have
    ]
    listing = tmp_path / "cohort.csv"
    listing.write_text("\n".join(rows) + "\n")
    out, report = tmp_path / "out", tmp_path / "landed.jsonl"

    code, summary, stderr = download_installed(orthanc.dicomweb_url, out, listing, report)

    assert code == 1, stderr  # the unknown series fails, the rest is there
    expected = [*studies[small[0]], *one_series, other[0], other[5]]
    report_rows = read_report(report)
    landed = [r for r in report_rows if r["status"] != "failed"]
    assert {r["sop"] for r in landed} == {m.sop for m in expected}
    assert_report_is_exact(report_rows, out, {m.sop: m.data for m in loaded}, status="downloaded")
    assert [r["reason"] for r in report_rows if r["status"] == "failed"] == [
        f"--from-file {listing}: line 6: series 2.25.424242 not found on the server"
    ]

    # A plain list of SOP UIDs: each looked up, study level first; only those instances.
    picked = [other[10], other[30], *studies[small[1]][:1]]
    sops = tmp_path / "sops.txt"
    sops.write_text("".join(m.sop + "\n" for m in picked))
    out2, report2 = tmp_path / "out2", tmp_path / "landed2.csv"
    code, summary, stderr = download_installed(orthanc.dicomweb_url, out2, sops, report2)
    assert code == 0, (stderr, summary["failures"])
    rows2 = read_report(report2)
    assert {r["sop"] for r in rows2} == {m.sop for m in picked}
    assert_report_is_exact(rows2, out2, {m.sop: m.data for m in loaded}, status="downloaded")


def test_one_study_orthanc_cannot_serve_leaves_bulk_retrieval_to_the_others(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    """Orthanc answers 404 for a study UID it stored under two PatientIDs: that study, asked
    first, must not turn series retrieval off for the studies after it."""
    studies = addressable_studies(loaded)
    synthetic = next(uid for uid, members in studies.items() if len(members) == 60)
    unservable = next(s.study for s in loaded if s.study not in studies)
    log_file = tmp_path / "run.log"

    done = run_installed(
        "download", unservable, synthetic, "--url", orthanc.dicomweb_url,
        "-o", str(tmp_path / "out"), "--json", "--mode", "series", "--concurrency", "1",
        "--log-file", str(log_file),
    )  # fmt: skip

    summary = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr  # the unservable study's instances fail
    assert summary["instances"]["downloaded"] == 60
    assert all(f["study"] == unservable for f in summary["failures"])
    one_by_one = re.findall(r"(\d+) instances missing from bulk responses", log_file.read_text())
    assert [int(n) for n in one_by_one] == [summary["instances"]["failed"]]
    assert "bulk retrieval refused" not in done.stderr
    assert_byte_exact(studies[synthetic], tmp_path / "out")


@pytest.fixture(scope="module")
def two_paged_studies(
    orthanc: OrthancServer, loaded: list[StoredInstance], tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    """Two studies whose instances together take two QIDO pages of 1,000 (after `loaded`, so
    its reset leaves them)."""
    spec = SynthSpec(studies=2, series=2, instances=260, size=600, seed=77)
    written = generate(tmp_path_factory.mktemp("paged-for-orthanc"), spec)
    for instance in written:
        orthanc.upload(instance.path)
    return list(dict.fromkeys(i.study_uid for i in written))


def test_orthanc_lists_each_instance_once_though_it_gives_no_study_counts(
    tmp_path: Path, orthanc: OrthancServer, two_paged_studies: list[str]
) -> None:
    """Orthanc's instance searches carry no NumberOfStudyRelatedInstances, so no search across
    studies (or a study) can be trusted complete: its first page shows that, and the studies
    are listed series by series without the rest of it."""
    done = run_installed(
        "download", *two_paged_studies, "--url", orthanc.dicomweb_url, "-o", str(tmp_path),
        "--json", "-v",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instances"]["downloaded"] == 1040
    searches = re.findall(r"QIDO (\S+): HTTP 200, (\d+) results", done.stderr)
    across = [n for url, n in searches if "/instances?StudyInstanceUID=" in url]
    study_wide = [url for url, _ in searches if re.search(r"/studies/[\d.]+/instances\?", url)]
    assert across == ["1000"]  # one page, not the 1,040 results listed again below
    assert study_wide == []
    per_series = [int(n) for url, n in searches if "/series/" in url and "/instances?" in url]
    assert sum(per_series) == 1040


def test_a_lossy_transfer_syntax_is_one_failure_that_says_so(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    """Orthanc transcodes to JPEG baseline under a new SOP Instance UID, at every request:
    no retry can bring the instance asked for, and the failure says why."""
    rgb = (PYDICOM_TEST_FILES / "examples_rgb_color.dcm").read_bytes()
    [wanted] = [s for s in loaded if s.data == rgb]
    listing = tmp_path / "one.csv"
    listing.write_text(
        f"StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID\n"
        f"{wanted.study},{wanted.series},{wanted.sop}\n"
    )

    done = run_installed(
        "download", "--from-file", str(listing), "--url", orthanc.dicomweb_url,
        "-o", str(tmp_path / "out"), "--json", "--transfer-syntax", "1.2.840.10008.1.2.4.50",
        "--retries", "3",
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    [failure] = summary["failures"]
    assert "the server sent a new instance" in failure["reason"]
    assert "lossy transfer syntax 1.2.840.10008.1.2.4.50" in failure["reason"]
    assert "than '*' (as stored) was asked for, ask for '*' or a lossless one" in failure["reason"]
    assert summary["retried"] == 0
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_study_mode_narrowed_to_a_series_fetches_only_that_series(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    """--mode study with --series: the study response would bring every series, all but one
    to be dropped; the series asked for comes in a response of its own."""
    studies = addressable_studies(loaded)
    synthetic = next(members for members in studies.values() if len(members) == 60)
    series = [m for m in synthetic if m.series == synthetic[0].series]
    log_file = tmp_path / "run.log"

    done = run_installed(
        "download", series[0].study, "--series", series[0].series, "--mode", "study",
        "--url", orthanc.dicomweb_url, "-o", str(tmp_path / "out"), "--json",
        "--log-file", str(log_file),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["instances"]["downloaded"] == len(series) == 20
    assert "was not asked for; dropped" not in log_file.read_text()
    assert_byte_exact(series, tmp_path / "out")


@pytest.fixture(scope="module")
def sixteen_bit_study(
    orthanc: OrthancServer, loaded: list[StoredInstance], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A study of 40 CT images of 16 bits, which Orthanc cannot transcode to JPEG baseline
    (after `loaded`, so its reset leaves them)."""
    spec = SynthSpec(studies=1, series=1, instances=40, size=4096, seed=91)
    written = generate(tmp_path_factory.mktemp("sixteen-bit-for-orthanc"), spec)
    for instance in written:
        orthanc.upload(instance.path)
    return written[0].study_uid


def transcode_failures(orthanc: OrthancServer) -> int:
    """Requests Orthanc failed to transcode so far (its log has a line for each)."""
    return orthanc.log_path.read_text(errors="replace").count("Cannot transcode image")


def test_a_transfer_syntax_orthanc_cannot_make_fails_the_study_fast(
    tmp_path: Path, orthanc: OrthancServer, sixteen_bit_study: str
) -> None:
    """Orthanc answers 500 to every 16-bit image asked as JPEG baseline: three instances
    that fail so, and none sent in it, and the others are not asked."""
    before = transcode_failures(orthanc)
    out = tmp_path / "out"

    done = run_installed(
        "download", sixteen_bit_study, "--url", orthanc.dicomweb_url, "-o", str(out), "--json",
        "--transfer-syntax", "1.2.840.10008.1.2.4.50", "--concurrency", "4",
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["instances"]["failed"] == 40
    reasons = [f["reason"] for f in summary["failures"]]
    assert all("transfer syntax 1.2.840.10008.1.2.4.50 (HTTP 500" in r for r in reasons), reasons
    assert all("ask for --transfer-syntax '*' (as stored) or another one" in r for r in reasons)
    # The third instance to fail leaves at most 3 more in flight (--concurrency 4); every
    # instance after them fails without a request.
    assert sum(": not asked: " in r for r in reasons) >= 40 - 7
    # At most three attempts at each of those 7 instances.
    assert transcode_failures(orthanc) - before <= 21  # every instance 7 times: 280
    assert not list(out.rglob("*.dcm"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_an_instance_orthanc_cannot_transcode_fails_after_three_attempts(
    tmp_path: Path, orthanc: OrthancServer, loaded: list[StoredInstance]
) -> None:
    """Orthanc (Debian's build) cannot decode JPEG 2000: asked as Explicit VR Little Endian,
    that instance fails after three attempts and says why; one it can send comes."""
    import pydicom

    sop_counts = Counter(s.sop for s in loaded)

    def syntax_of(data: bytes) -> str:
        meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
        return str(meta.get("TransferSyntaxUID", ""))

    def stored_in(syntax: str) -> StoredInstance:
        return next(s for s in loaded if sop_counts[s.sop] == 1 and syntax_of(s.data) == syntax)

    jpeg2000, plain = stored_in("1.2.840.10008.1.2.4.91"), stored_in("1.2.840.10008.1.2.1")
    listing = tmp_path / "two.csv"
    listing.write_text(
        "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID\n"
        + "".join(f"{s.study},{s.series},{s.sop}\n" for s in (jpeg2000, plain))
    )
    out = tmp_path / "out"

    done = run_installed(
        "download", "--from-file", str(listing), "--url", orthanc.dicomweb_url, "-o", str(out),
        "--json", "--transfer-syntax", "1.2.840.10008.1.2.1", "--concurrency", "1",
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["instances"]["downloaded"] == 1
    [failure] = summary["failures"]
    assert failure["sop_instance_uid"] == jpeg2000.sop
    assert "could not send it in transfer syntax 1.2.840.10008.1.2.1 (HTTP 500" in failure["reason"]
    assert "ask for --transfer-syntax '*' (as stored)" in failure["reason"]
    assert failure["reason"].endswith("(after 3 attempts)")
    assert summary["retried"] == 2  # not --retries' 6
    assert (out / plain.study / plain.series / f"{plain.sop}.dcm").read_bytes() == plain.data
    assert not (out / jpeg2000.study / jpeg2000.series / f"{jpeg2000.sop}.dcm").exists()


# --- reruns asking for another transfer syntax -----------------------------------------------

IMPLICIT_VR = "1.2.840.10008.1.2"


@pytest.fixture(scope="module")
def four_instance_study(
    orthanc: OrthancServer, loaded: list[StoredInstance], tmp_path_factory: pytest.TempPathFactory
) -> list[StoredInstance]:
    """A study of 4 uncompressed CT images, as Orthanc stored them (after `loaded`, so its
    reset leaves them)."""
    spec = SynthSpec(studies=1, series=2, instances=2, size=2048, seed=29)
    stored = []
    for instance in generate(tmp_path_factory.mktemp("four-for-orthanc"), spec):
        answer = orthanc.upload(instance.path)
        stored.append(
            StoredInstance(
                instance.study_uid,
                instance.series_uid,
                instance.sop_uid,
                answer["ParentStudy"],
                orthanc.stored_file(answer["ID"]),
            )
        )
    return stored


@pytest.mark.parametrize(
    "rerun", [[], ["--recheck"], ["--verify"]], ids=["plain", "recheck", "verify"]
)
def test_a_rerun_asking_for_another_transfer_syntax_fetches_the_files_again(
    tmp_path: Path,
    orthanc: OrthancServer,
    four_instance_study: list[StoredInstance],
    rerun: list[str],
) -> None:
    """Files Orthanc transcoded to Implicit VR are not those a rerun asking for them as
    stored (`*`, the default) wants: fetched again, once, and then present."""
    study = four_instance_study[0].study
    out = tmp_path / "out"

    def download(*extra: str) -> tuple[dict[str, Any], str]:
        done = run_installed(
            "download", study, "--url", orthanc.dicomweb_url, "-o", str(out), "--json", *extra
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    download("--transfer-syntax", IMPLICIT_VR)
    files = [out / m.study / m.series / f"{m.sop}.dcm" for m in four_instance_study]
    transcoded = [p.read_bytes() for p in files]
    assert all(data != m.data for data, m in zip(transcoded, four_instance_study, strict=True))

    summary, stderr = download(*rerun)

    assert summary["instances"] == instance_counts(4, downloaded=4)
    said = "4 files on disk were fetched asking for another --transfer-syntax than '*': fetching"
    assert stderr.count(said) == 1, stderr
    assert_byte_exact(four_instance_study, out)

    again, stderr = download(*rerun)

    assert again["instances"] == instance_counts(4, skipped=4)
    assert "--transfer-syntax" not in stderr

    # And back: asked as Implicit VR again, Orthanc's transcoded files come again.
    back, _ = download("--transfer-syntax", IMPLICIT_VR, *rerun)
    assert back["instances"] == instance_counts(4, downloaded=4)
    assert [p.read_bytes() for p in files] == transcoded
