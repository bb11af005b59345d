"""`query | download --from-file -` and `sync` against a real Orthanc + DICOMweb plugin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import instance_counts, run_cli, run_installed, summary_of
from ..fixtures.orthanc import OrthancServer

pytestmark = pytest.mark.integration

DLSTUDY = [sys.executable, "-m", "dlstudy"]


def upload(orthanc: OrthancServer, root: Path, studies: int, seed: int) -> list[SynthInstance]:
    instances = generate(
        root, SynthSpec(studies=studies, series=2, instances=2, size=2048, seed=seed)
    )
    for instance in instances:
        assert orthanc.upload(instance.path)["Status"] == "Success"
    return instances


def assert_stored_bytes(orthanc: OrthancServer, instances: list[SynthInstance], out: Path) -> None:
    for i in instances:
        data = (out / i.study_uid / i.series_uid / f"{i.sop_uid}.dcm").read_bytes()
        assert data == orthanc.stored_file(orthanc.find_instance(i.sop_uid))


def test_query_uids_piped_into_download(orthanc: OrthancServer, tmp_path: Path) -> None:
    orthanc.reset()
    instances = upload(orthanc, tmp_path / "source", 3, seed=61)
    rows = [
        json.loads(line)
        for line in run_cli("query", "--url", orthanc.dicomweb_url, "--json").stdout.splitlines()
    ]
    assert {r["study_uid"] for r in rows} == {i.study_uid for i in instances}
    assert all(r["instances"] == 4 and r["modalities"] == ["CT"] for r in rows)
    wanted = rows[0]
    out = tmp_path / "out"

    query = subprocess.Popen(
        [*DLSTUDY, "query", "--url", orthanc.dicomweb_url, "--uids"]
        + ["--patient-id", wanted["patient_id"], "--study-date", wanted["study_date"]],
        stdout=subprocess.PIPE,
    )
    download = subprocess.run(
        [*DLSTUDY, "download", "--from-file", "-", "--url", orthanc.dicomweb_url]
        + ["-o", str(out), "--json"],
        stdin=query.stdout,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert query.stdout is not None
    query.stdout.close()
    assert query.wait(timeout=30) == 0

    assert download.returncode == 0, download.stderr
    summary = json.loads(download.stdout)
    assert summary["study_uids"] == [wanted["study_uid"]]
    assert summary["instances"]["downloaded"] == 4
    assert_stored_bytes(orthanc, [i for i in instances if i.study_uid == wanted["study_uid"]], out)


def test_sync_downloads_only_what_orthanc_received_since(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    orthanc.reset()
    first = upload(orthanc, tmp_path / "source", 2, seed=62)
    out = tmp_path / "mirror"

    one = run_cli("sync", "--url", orthanc.dicomweb_url, "-o", str(out), "--json")
    assert one.exit_code == 0, one.output
    assert summary_of(one)["instances"]["downloaded"] == 8

    second = upload(orthanc, tmp_path / "more", 1, seed=63)
    two = run_cli("sync", "--url", orthanc.dicomweb_url, "-o", str(out), "--json")

    assert two.exit_code == 0, two.output
    summary = summary_of(two)
    assert summary["instances"] == instance_counts(12, downloaded=4, skipped=8)
    assert summary["sync"]["already_complete"] == 2
    assert_stored_bytes(orthanc, first + second, out)


def test_sync_asking_for_another_transfer_syntax_fetches_the_files_again(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """A mirror synced as Orthanc transcodes to Implicit VR is not complete for a sync asking
    for the files as stored (`*`, the default): they are fetched again, once."""
    orthanc.reset()
    instances = upload(orthanc, tmp_path / "source", 1, seed=64)
    out = tmp_path / "mirror"

    def sync(*extra: str) -> tuple[dict[str, Any], str]:
        done = run_installed(
            "sync", "--url", orthanc.dicomweb_url, "-o", str(out), "--json", *extra
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    sync("--transfer-syntax", "1.2.840.10008.1.2")
    summary, stderr = sync()

    assert summary["instances"] == instance_counts(4, downloaded=4)
    assert summary["sync"]["already_complete"] == 0
    assert "4 files on disk were fetched asking for another --transfer-syntax than '*'" in stderr
    assert_stored_bytes(orthanc, instances, out)
    summary, _ = sync()
    assert summary["instances"] == instance_counts(4, skipped=4)
    assert summary["sync"]["already_complete"] == 1


def test_wildcards_and_name_components_reach_orthanc_as_typed(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Orthanc's DICOMweb plugin matches on the query as sent: `*`, `?` and `^` escaped
    (%2A, %3F, %5E) find nothing there, so they go as typed (as curl sends them)."""
    orthanc.reset()
    upload(orthanc, tmp_path / "source", 4, seed=63)
    rows = [
        json.loads(line)
        for line in run_cli("query", "--url", orthanc.dicomweb_url, "--json").stdout.splitlines()
    ]
    name = rows[0]["patient_name"]
    family, given = name.split("^")
    expected = {r["study_uid"] for r in rows if r["patient_name"] == name}
    for pattern in (name, f"{family}*", f"{family}^{given[0]}*", f"{family[:-1]}?^*"):
        found = run_cli("query", "--url", orthanc.dicomweb_url, "--uids", "--patient-name", pattern)
        assert found.exit_code == 0, (pattern, found.stderr)
        matched = set(found.stdout.split())
        assert expected <= matched, pattern
        assert all(
            r["patient_name"].startswith(family[:-1]) for r in rows if r["study_uid"] in matched
        )


def test_orthancs_rest_root_given_as_url_is_named_no_dicomweb_root(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """--url at Orthanc's REST root, not /dicom-web (a common slip): `download` said it is no
    DICOMweb root, but `query` and `sync` said `QIDO search: HTTP 400 on ...`, and not even
    Orthanc's words (its JSON error comes without a content type)."""
    from ..cli_helpers import run_installed

    for args in (("query", "--uids"), ("sync", "-o", str(tmp_path / "out"))):
        result = run_installed(*args, "--url", orthanc.base_url)
        assert result.returncode == 3, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(
            f"dlstudy: error: {orthanc.base_url} is not a DICOMweb root: {orthanc.base_url}"
            "/studies answered HTTP 400"
        ), line


def test_a_filter_orthanc_ignores_without_a_word_is_said(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Orthanc matches on neither OtherPatientIDs nor a private tag, says nothing of it, and
    returns neither: `query` listed every study and `sync` mirrored the whole archive, exit 0,
    without a word. The search's answers not carrying a key it matched on is now said."""
    from ..cli_helpers import run_installed

    orthanc.reset()
    for instance in generate(tmp_path / "src", SynthSpec(studies=2, series=1, instances=1,
                                                        size=1024, seed=81)):  # fmt: skip
        assert orthanc.upload(instance.path)["Status"] == "Success"
    url = orthanc.dicomweb_url
    for key in ("OtherPatientIDs", "00291010"):
        listed = run_installed("query", "--url", url, "--uids", "--filter", f"{key}=NOPE")
        assert (
            f"warning: the server's answers carry no {key}, which the search matches on"
        ) in listed.stderr, listed.stderr
    honoured = run_installed("query", "--url", url, "--uids", "--filter", "StudyDescription=*")
    assert len(honoured.stdout.split()) == 2 and "carry no" not in honoured.stderr
