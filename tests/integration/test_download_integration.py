"""`dlstudy download` through the real CLI against the embedded server on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from pathlib import Path

import pydicom
import pytest

from dlstudy.server.synth import SynthInstance, SynthSpec, generate

from ..cli_helpers import (
    assert_same_files,
    installed_download,
    instance_counts,
    run_cli,
    run_installed,
    summary_of,
)
from ..factories import STUDY
from ..fixtures.embedded_server import SeenRequests, StartServer, SynthStudy, TlsFiles
from ..manifest_helpers import index_of
from ..scripted_servers import SOPS, refusing

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("tls", "http", "expected_version"),
    [
        (False, "1.1", "HTTP/1.1"),
        (False, "2", "HTTP/2"),  # h2c, prior knowledge
        (False, "auto", "HTTP/2"),  # h2c probe succeeds on hypercorn
        (True, "auto", "HTTP/2"),  # ALPN
        (True, "1.1", "HTTP/1.1"),
        (True, "2", "HTTP/2"),
    ],
    ids=["h1", "h2c", "auto-h2c", "tls-auto-h2", "tls-h1", "tls-h2"],
)
def test_download_is_byte_exact_over_every_protocol(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    tls_ca: TlsFiles,
    tls: bool,
    http: str,
    expected_version: str,
) -> None:
    tls_options = {"tls_cert": tls_ca.cert, "tls_key": tls_ca.key} if tls else {}
    url = embedded_server(synth_study.root, **tls_options)
    out = tmp_path / "out"
    extra = ["--ca-bundle", str(tls_ca.ca_pem)] if tls else []

    result = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        url,
        "-o",
        str(out),
        "--http",
        http,
        "--json",
        *extra,
    )

    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["instances"] == instance_counts(60, downloaded=60)
    assert summary["bytes"] == sum(i.size for i in synth_study.instances)
    assert summary["http_version"] == expected_version
    assert summary["retrieval"]["form"] == "single-part"
    # --concurrency 0 (the default): many streams on one HTTP/2 connection, few connections
    assert summary["concurrency"] == (64 if expected_version == "HTTP/2" else 16)
    assert_same_files(synth_study.instances, out)


def test_a_given_concurrency_is_kept_and_never_exceeded(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    url = embedded_server(synth_study.root)
    result = run_cli(
        "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--json",
        "-c", "3", "--workers", "1", "--mode", "instance",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert summary_of(result)["concurrency"] == 3
    assert seen_requests.instance_requests == len(synth_study.instances)
    assert 2 <= seen_requests.peak_instances <= 3


def test_thousand_instance_study_and_rerun_skips_everything(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=4, instances=250, size=8 * 1024, seed=7))
    url = embedded_server(source)
    out = tmp_path / "out"
    args = ("download", instances[0].study_uid, "--url", url, "-o", str(out), "--json", "-c", "16")

    first = run_cli(*args)

    assert first.exit_code == 0, first.output
    summary = summary_of(first)
    assert summary["instances"] == instance_counts(1000, downloaded=1000)
    assert summary["bytes"] == sum(i.size for i in instances)
    assert summary["http_version"] == "HTTP/2"
    assert_same_files(instances, out)

    second = run_cli(*args)

    assert second.exit_code == 0, second.output
    assert summary_of(second)["instances"] == instance_counts(1000, skipped=1000)


def test_qido_cap_with_warning_and_ignored_offset_still_resolve_everything(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    capped = embedded_server(synth_study.root, max_page_size=7)
    result = run_cli(
        "download", synth_study.study_uid, "--url", capped, "-o", str(tmp_path / "a"), "--json"
    )
    assert result.exit_code == 0, result.output
    assert summary_of(result)["instances"]["downloaded"] == 60

    static = embedded_server(synth_study.root, ignore_offset=True)
    result = run_cli(
        "download", synth_study.study_uid, "--url", static, "-o", str(tmp_path / "b"), "--json"
    )
    assert result.exit_code == 0, result.output
    assert summary_of(result)["instances"]["downloaded"] == 60


@pytest.mark.parametrize("mode", ["instance", "series"])
def test_a_query_in_the_url_goes_with_every_request_below_it(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    mode: str,
) -> None:
    """Some gateways take an API key in the query (`--url https://h/dicomweb?key=...`): the
    resource paths go after the base path, and the query comes along on every QIDO and WADO
    request, after the QIDO parameters' own."""
    seen_requests.gateway_keys = {"key", "tenant"}
    url = embedded_server(synth_study.root) + "?key=s3cret&tenant=a%20b"
    out = tmp_path / "out"
    result = run_cli(
        "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
        "--mode", mode,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_files(synth_study.instances, out)
    assert "s3cret" not in result.output  # the summary's URL is redacted
    assert seen_requests.requests
    for path, query in seen_requests.requests:
        assert path.startswith("/dicomweb/studies"), path
        assert query.startswith(b"key=s3cret&tenant=a") or b"&key=s3cret&tenant=a" in query, query


def test_series_and_modality_filters(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    wanted = synth_study.series_uids[1]
    result = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--json",
        "--series",
        wanted,
    )
    assert result.exit_code == 0, result.output
    assert summary_of(result)["instances"]["downloaded"] == 20
    assert {p.parent.name for p in tmp_path.rglob("*.dcm")} == {wanted}

    result = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        url,
        "-o",
        str(tmp_path / "x"),
        "--modality",
        "MR",
    )
    assert result.exit_code == 4
    assert "error: no instance matched --modality MR\n" in result.stderr
    out = str(tmp_path / "y")
    result = run_cli(
        "download", synth_study.study_uid, "--url", url, "-o", out, "--series", "1.2.3"
    )
    assert result.exit_code == 4
    assert "error: no instance matched --series 1.2.3\n" in result.stderr


def test_a_series_value_no_study_has_is_a_failure_naming_it(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`--series RIGHT --series TYPO`: the right series came, and the run exited 0 with
    nothing anywhere naming the typo (a list line naming it failed, exit 1)."""
    url = embedded_server(synth_study.root)
    wanted, typo = synth_study.series_uids[1], "1.2.3.999"
    report = tmp_path / "run.csv"
    code, summary, stderr = installed_download(
        url, synth_study.study_uid, tmp_path / "out",
        "--series", wanted, "--series", typo, "--report", str(report),
    )  # fmt: skip
    assert code == 1, stderr
    assert summary["instances"] == instance_counts(20, downloaded=20)
    reason = f"--series {typo}: none of the studies asked for has this series"
    assert [(f["series"], f["reason"]) for f in summary["failures"]] == [(typo, reason)]
    with report.open(newline="") as fp:
        rows = list(csv.DictReader(fp))
    assert [
        (r["status"], r["series"], r["reason"]) for r in rows if r["status"] != "downloaded"
    ] == [("failed", typo, reason)]
    assert sum(r["status"] == "downloaded" for r in rows) == 20
    plain = run_installed(
        "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path / "out"),
        "--series", wanted, "--series", typo,
    )  # fmt: skip
    assert plain.returncode == 1
    assert reason in plain.stderr, plain.stderr


@pytest.mark.parametrize("profile", ["orthanc", "dcm4chee"])
def test_multipart_only_profiles_are_negotiated_and_byte_exact(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, profile: str
) -> None:
    url = embedded_server(synth_study.root, profile=profile)
    result = run_cli("download", synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["retrieval"]["form"] == "multipart"
    status = 400 if profile == "orthanc" else 406
    assert summary["retrieval"]["rejected"] == [
        f"application/dicom; transfer-syntax=* -> HTTP {status}"
    ]
    assert_same_files(synth_study.instances, tmp_path)


def test_a_refused_transfer_syntax_is_a_warning_on_stderr(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A server that will not send JPEG baseline sends its own choice: the files land, and the
    run says so where a person reads it, not only in --json."""
    url = embedded_server(synth_study.root, profile="dcm4chee")
    jpeg = "1.2.840.10008.1.2.4.50"
    args = ["--transfer-syntax", jpeg, "--json"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    result = run_installed("download", synth_study.study_uid, "--url", url, "-o", a, *args)
    assert result.returncode == 0, result.stderr
    warning = f"server refused transfer-syntax={jpeg}; it may transcode what it sends"
    assert result.stderr.splitlines() == [f"dlstudy: warning: {warning}"]
    assert json.loads(result.stdout)["retrieval"]["warnings"] == [warning]
    # --quiet leaves only errors on stderr (cron mails nothing else); --json still says it.
    quiet = run_installed("download", synth_study.study_uid, "--url", url, "-o", b, *args, "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout)["retrieval"]["warnings"] == [warning]


TRANSCODE_HINT = "ask for --transfer-syntax '*' (as stored) or another one"


def test_a_transfer_syntax_refused_with_406_says_to_ask_for_another(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """Files stored in Implicit VR: a server that does not transcode answers 406 to JPEG
    baseline and to its default (Explicit VR) alike. Each failure said only `HTTP 406`; it
    now says which transfer syntax was refused and to ask for another, as a 500 does."""
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=1, instances=3, size=1024, seed=95))
    for instance in instances:
        dataset = pydicom.dcmread(instance.path)
        dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        dataset.save_as(instance.path, implicit_vr=True, little_endian=True)
    url = embedded_server(source)
    study, jpeg = instances[0].study_uid, "1.2.840.10008.1.2.4.50"

    result = run_installed("download", study, "--url", url, "-o", str(tmp_path / "a"),
                           "--json", "--transfer-syntax", jpeg)  # fmt: skip
    assert result.returncode == 1, result.stderr
    reasons = [failure["reason"] for failure in json.loads(result.stdout)["failures"]]
    assert len(reasons) == 3, reasons
    said = f"the server could not send it in transfer syntax {jpeg} (HTTP 406); {TRANSCODE_HINT}"
    assert all(reason.endswith(said) for reason in reasons), reasons

    as_stored = run_installed("download", study, "--url", url, "-o", str(tmp_path / "b"))
    assert as_stored.returncode == 0, as_stored.stderr
    assert_same_files(instances, tmp_path / "b")


@pytest.mark.parametrize("syntax", ["*", "1.2.840.10008.1.2.4.50"])
def test_a_406_suggests_another_transfer_syntax_only_when_one_was_asked_for(
    tmp_path: Path, syntax: str
) -> None:
    """A server that answers 406 to every retrieval: asked as stored (the default), there
    is no other transfer syntax to suggest, and the line stays the server's answer."""
    with refusing(406) as url:
        result = run_installed("download", STUDY, "--url", url, "-o", str(tmp_path), "--json",
                               "--http", "1.1", "--transfer-syntax", syntax)  # fmt: skip
    assert result.returncode == 1, result.stderr
    reasons = [failure["reason"] for failure in json.loads(result.stdout)["failures"]]
    assert len(reasons) == len(SOPS) and all("HTTP 406" in r for r in reasons), reasons
    assert all((TRANSCODE_HINT in r) == (syntax != "*") for r in reasons), reasons


@pytest.mark.parametrize("mode", ["series", "study"])
@pytest.mark.parametrize("profile", ["standard", "dcm4chee"])
def test_bulk_modes_commit_every_part_byte_exact(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    mode: str,
    profile: str,
) -> None:
    url = embedded_server(synth_study.root, profile=profile)
    result = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--json",
        "--mode",
        mode,
    )
    assert result.exit_code == 0, result.output
    assert summary_of(result)["instances"]["downloaded"] == 60
    assert_same_files(synth_study.instances, tmp_path)
    assert list((tmp_path / ".dlstudy" / "incoming").glob("*")) == []


def test_plain_progress_lines_when_stderr_is_not_a_terminal(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    result = run_cli("download", synth_study.study_uid, "--url", url, "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"dlstudy: resolving study {synth_study.study_uid}"
    assert lines[1] == "dlstudy: downloading 60 of 60 instances"
    assert lines[-1].startswith("60 downloaded, 0 already present, 0 failed of 60 instances")


@pytest.mark.integration
def test_a_resumed_series_fetches_only_its_missing_instances(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    """Series mode, rerun after losing 3 of a series' 20 files: those 3 come one by one, the
    series is not streamed again; a series missing most of its files is streamed."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    first = run_cli(
        "download", synth_study.study_uid, "--url", url, "-o", str(out), "--mode", "series"
    )
    assert first.exit_code == 0, first.output
    few, most = synth_study.series_uids[0], synth_study.series_uids[1]
    lost = [i for i in synth_study.instances if i.series_uid == few][:3]
    lost += [i for i in synth_study.instances if i.series_uid == most][:15]
    for instance in lost:
        (out / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm").unlink()
    seen_requests.requests.clear()
    seen_requests.instance_requests = 0

    rerun = run_cli(
        "download", synth_study.study_uid, "--url", url, "-o", str(out), "--mode", "series",
        "--json",
    )  # fmt: skip

    assert rerun.exit_code == 0, rerun.output
    assert summary_of(rerun)["instances"]["downloaded"] == len(lost)
    retrieves = [path for path, _ in seen_requests.requests if "/series/" in path]
    whole_series = [path for path in retrieves if path.endswith(("/" + few, "/" + most))]
    assert whole_series == [f"/dicomweb/studies/{synth_study.study_uid}/series/{most}"]
    assert seen_requests.instance_requests == 3  # the few of the first series
    assert_same_files(synth_study.instances, out)


@pytest.mark.parametrize("mode", ["instance", "series"])
def test_one_sop_uid_in_two_series_is_a_failure_not_a_silent_drop(
    tmp_path: Path, embedded_server: StartServer, mode: str
) -> None:
    """A broken archive lists a SOP Instance UID in two series: only one instance can be
    stored under it, and the run must not end as if the study were whole."""
    import pydicom

    source = tmp_path / "source"
    instances = generate(source, SynthSpec(series=2, instances=5, size=4000, seed=3))
    kept, twin = instances[0], instances[5]
    twin_path = source / twin.study_uid / twin.series_uid / f"{twin.sop_uid}.dcm"
    dataset = pydicom.dcmread(twin_path)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = kept.sop_uid
    dataset.save_as(twin_path)
    url = embedded_server(source)
    out = tmp_path / "out"

    result = run_installed(
        "download", kept.study_uid, "--url", url, "-o", str(out), "--json", "--mode", mode
    )

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"] == instance_counts(10, downloaded=9, failed=1)
    (failure,) = summary["failures"]
    assert failure["sop_instance_uid"] == kept.sop_uid and failure["series"] == twin.series_uid
    assert f"same SOP Instance UID in series {kept.series_uid} too" in failure["reason"]
    assert len(list(out.rglob("*.dcm"))) == 9
    stored = out / kept.study_uid / kept.series_uid / f"{kept.sop_uid}.dcm"
    assert stored.read_bytes() == kept.path.read_bytes()
    again = run_installed("download", kept.study_uid, "--url", url, "-o", str(out), "--json")
    assert again.returncode == 1  # never recorded as a complete study


def test_a_rerun_fetches_again_a_file_cut_short_in_a_complete_study(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """The index records the study complete; a file emptied and one cut short since are not
    taken as done (no --verify needed to notice a size change)."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    first = run_installed("download", synth_study.study_uid, "--url", url, "-o", str(out))
    assert first.returncode == 0, first.stderr
    emptied, cut = synth_study.instances[3], synth_study.instances[40]
    for instance, size in ((emptied, 0), (cut, 100)):
        path = out / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"
        with path.open("r+b") as file:
            file.truncate(size)

    rerun = run_installed("download", synth_study.study_uid, "--url", url, "-o", str(out), "--json")

    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["studies_complete_in_manifest"] == 0
    assert summary["instances"]["downloaded"] == 2
    assert_same_files(synth_study.instances, out)


@pytest.mark.parametrize("recorded", ["study complete", "mid-run"])
def test_a_rerun_fetches_again_files_a_power_loss_left_of_another_size(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, recorded: str
) -> None:
    """Files are renamed into place without an fsync: after a power loss one the index
    records may be empty, short or (a block of another write) longer. A plain rerun takes
    none of them as done, whether the study was recorded complete or the run died before:
    each is fetched again and reported repaired."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    first = run_installed("download", synth_study.study_uid, "--url", url, "-o", str(out))
    assert first.returncode == 0, first.stderr
    if recorded == "mid-run":
        with sqlite3.connect(index_of(out)) as db:
            db.execute("DELETE FROM complete_studies")
    damaged = {0: synth_study.instances[3], 100: synth_study.instances[40]}
    longer = synth_study.instances[55]
    for size, instance in damaged.items():
        os.truncate(_stored(out, instance), size)
    with _stored(out, longer).open("ab") as file:
        file.write(bytes(4096))

    rerun = run_installed("download", synth_study.study_uid, "--url", url, "-o", str(out), "--json")

    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["instances"] == instance_counts(60, downloaded=3, skipped=57)
    repaired = {instance.sop_uid for instance in (*damaged.values(), longer)}
    assert set(summary["repaired"]) == repaired
    assert rerun.stderr.count(", manifest says ") == 3, rerun.stderr  # a warning each
    assert_same_files(synth_study.instances, out)


def _stored(out: Path, instance: SynthInstance) -> Path:
    return out / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"


def test_the_library_takes_paths_as_strings_in_settings(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Settings(output="lib")`, as download(output="lib") takes it: sync() and
    download(settings=...) join it with `/` like a Path."""
    import dlstudy

    url = embedded_server(synth_study.root)
    monkeypatch.chdir(tmp_path)
    settings = dlstudy.Settings(url=url, output="synced", report="landed.csv")  # type: ignore[arg-type]
    synced = dlstudy.sync(settings, dlstudy.StudyQuery())
    assert synced.failed == 0
    assert_same_files(synth_study.instances, tmp_path / "synced")
    assert (tmp_path / "landed.csv").is_file()

    downloaded = dlstudy.download(
        [synth_study.study_uid],
        settings=dlstudy.Settings(url=url, output="downloaded"),  # type: ignore[arg-type]
    )
    assert downloaded.downloaded == len(synth_study.instances)
    assert_same_files(synth_study.instances, tmp_path / "downloaded")

    with pytest.raises(dlstudy.DlstudyError) as refused:
        dlstudy.download([synth_study.study_uid], url, output="x", transfer_syntax="jpeg")
    assert refused.value.exit_status == 2 and "'jpeg'" in str(refused.value)


@pytest.mark.parametrize("http", ["1.1", "2"])
def test_a_series_answer_cut_short_keeps_every_part_that_came_whole(
    embedded_server: StartServer, tmp_path: Path, http: str
) -> None:
    """A series of 70 parts of ~8 KB cut after 120,000 bytes: about 14 parts came whole, but
    the pieces not yet handed on (up to 128 KiB, batched for the sink) were dropped with the
    cut, so the warning said `stopped after 0 parts` and all 70 were fetched again one by
    one. What arrived is handed on: the parts complete in it are kept."""
    source = tmp_path / "source"
    instances = generate(source, SynthSpec(studies=1, series=1, instances=70, size=8000, seed=7))
    url = embedded_server(source, drop_after_bytes=120_000)
    out = tmp_path / "out"
    result = run_installed(
        "download", instances[0].study_uid, "--url", url, "-o", str(out), "--mode", "series",
        "--http", http, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "bulk retrieval stopped" in line]
    kept = int(warning.split("stopped after ")[1].split()[0])
    assert kept >= 12, warning
    assert json.loads(result.stdout)["instances"]["downloaded"] == 70
    assert_same_files(instances, out)
