"""Every error path of `dlstudy download`: exit code, one clear line, nothing lost or leaked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..cli_helpers import run_cli, run_installed, summary_of
from ..fixtures.embedded_server import StartServer, SynthStudy, TlsFiles
from ..tools import missing_tool

STUDY = "1.2.826.0.1.3680043.8.498.1"
TOKEN = "s3cr3t-t0ken-value"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dlstudy: error:")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_invalid_uid_argument_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("download", "1.2.abc", "--url", "http://127.0.0.1:1/x", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        "dlstudy: error: invalid study UID '1.2.abc': a UID is digits and dots, at most 64 "
        "characters"
    ]


def test_from_file_reports_the_line_of_a_bad_uid(tmp_path: Path) -> None:
    uids = tmp_path / "uids.txt"
    uids.write_text(f"# cohort\n{STUDY}\n\n1.2.3 # ok\nnot-a-uid\n")
    result = run_cli("download", "--from-file", str(uids), "--url", "http://127.0.0.1:1/x")
    assert result.exit_code == 2
    assert "line 5: invalid UID 'not-a-uid'" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((STUDY,), "--url (or DLSTUDY_URL, or url in a config profile) is required"),
        (("--url", "http://x"), "give at least one STUDY_UID, --from-file or --from-catalog"),
        ((STUDY, "--url", "ftp://x"), "--url must start with http:// or https://"),
        ((STUDY, "--url", "http://x", "--http", "4"), "--http must be one of auto, 1.1, 2, 3"),
        ((STUDY, "--url", "http://x", "--concurrency", "-1"), "Invalid value for '--concurrency'"),
        ((STUDY, "--url", "http://x", "--layout", "../{sop}"), "must be a relative path"),
        # Every instance under one name: '{sop}' escaped, or cut to one character.
        ((STUDY, "--url", "http://x", "--layout", "{{sop}}.dcm"), "containing {sop}"),
        ((STUDY, "--url", "http://x", "--layout", "{sop[1]}/{sop}"), "each whole (no index"),
        ((STUDY, "--url", "http://x", "--layout", "{sop}.1-2.part"), "dlstudy's temp files"),
        ((STUDY, "--url", "http://x", "--header", "novalue"), "--header must look like"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("download", *args, "-o", str(tmp_path), env={"DLSTUDY_URL": None})
    assert result.exit_code == 2
    assert message in result.stderr


# Every command that takes --url, with what else it needs to get as far as using it.
URL_COMMANDS = {
    "query": (),
    "download": (STUDY,),
    "sync": (),
    "bench": (STUDY,),
    "catalog pull": ("--db",),  # + a path in tmp_path
}


@pytest.mark.parametrize("command", URL_COMMANDS)
def test_every_command_checks_the_url_up_front(tmp_path: Path, command: str) -> None:
    """The same check everywhere, before any request: exit 2 and one line (no traceback
    from urlsplit's lazy port check, no "redirected" about a URL no server sent back)."""
    for url, said in [
        ("http://bob:pw@127.0.0.1:99999/dicomweb", "--url has a port that is not a number"),
        ("http://127.0.0.1:abc/dicomweb", "--url has a port that is not a number"),
        ("http://[::1:9201/dicomweb", "--url is malformed (an IPv6 address without its"),
        ("127.0.0.1:9201/dicomweb", "--url must start with http:// or https://, got '127"),
        ("http://127.0.0.1 :9201/dicomweb", "--url has a space in its host"),
        ("http:///dicomweb", "--url has no host"),
        ("http://bob:p%0Aw@127.0.0.1:9201/x", "--url has a control character in its user or"),
    ]:
        args = (*command.split(), *URL_COMMANDS[command], "--url", url)
        if command == "catalog pull":
            args = (*args[:3], str(tmp_path / "catalog.duckdb"), *args[3:])
        result = run_installed(*args, "-v")
        assert result.returncode == 2, (url, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"dlstudy: error: {said}"), (url, lines)
        assert "pw" not in lines[0]


@pytest.mark.parametrize("command", URL_COMMANDS)
def test_every_command_without_a_url_names_every_place_to_give_it(
    tmp_path: Path, command: str
) -> None:
    """The same line from each command: download's left out the config profile, which its
    --help (and the other commands' errors) name as a place for the URL."""
    args = (*command.split(), *URL_COMMANDS[command])
    if command == "catalog pull":
        args = (*args, str(tmp_path / "catalog.duckdb"))
    if command in ("download", "sync"):
        args = (*args, "-o", str(tmp_path / "out"))
    result = run_installed(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "dlstudy: error: --url (or DLSTUDY_URL, or url in a config profile) is required"
    ]


@pytest.mark.parametrize("command", ["download", "sync"])
def test_a_run_that_wrote_nothing_leaves_no_folder_it_made(tmp_path: Path, command: str) -> None:
    """An unreachable server (exit 3) left the -o folder the run had made, and the folders
    above it, in place and empty (but for dlstudy's hidden state): a cron job then found an
    empty study folder. Now they are removed; a folder that was there before stays."""
    chosen = [STUDY] if command == "download" else []
    dead = ["--url", "http://127.0.0.1:1/dicomweb", *chosen]
    made = tmp_path / "new" / "deeper" / "out"
    result = run_installed(command, *dead, "-o", str(made))
    assert result.returncode == 3, result.stderr
    assert "connection refused by 127.0.0.1:1" in result.stderr
    assert list(tmp_path.iterdir()) == []

    mine = tmp_path / "mine"
    mine.mkdir()
    result = run_installed(command, *dead, "-o", str(mine))
    assert result.returncode == 3, result.stderr
    assert (mine / ".dlstudy").is_dir()  # the user's folder: kept, and the run's index in it


def test_unwritable_output_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("download", STUDY, "--url", "http://127.0.0.1:1/x", "-o", str(blocker / "out"))
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"dlstudy: error: output folder '{blocker / 'out'}' is not writable: Not a directory"
    ]
    result = run_cli("download", STUDY, "--url", "http://127.0.0.1:1/x", "-o", str(blocker))
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"dlstudy: error: output folder '{blocker}' exists and is not a folder"
    ]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".dlstudy").write_text("")
    result = run_cli(
        "download", STUDY, "--url", "http://127.0.0.1:1/x", "-o", str(tmp_path / "out")
    )
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [
        f"dlstudy: error: cannot use '{tmp_path / 'out' / '.dlstudy'}': it is not a folder of "
        "its own (a symbolic link?); move it away"
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["download", "{study}", "--url", "{url}", "-o", ""], "'-o' / '--output'"),
        (["download", "{study}", "--url", "{url}", "--output="], "'-o' / '--output'"),
        (["sync", "--url", "{url}", "-o", ""], "'-o' / '--output'"),
        (["download", "{study}", "--url", "{url}", "-o", "out", "--report", ""], "'--report'"),
        (["download", "{study}", "--url", "{url}", "-o", "out", "--log-file", ""], "'--log-file'"),
        (["synth", ""], "'OUT'"),
        (["synth", "", "--modality", "CT"], "'OUT'"),
        (["serve", "", "--port", "0"], "'DIRECTORY'"),
    ],
)
def test_an_empty_path_is_refused_not_taken_for_this_folder(
    synth_study: SynthStudy,
    embedded_server: StartServer,
    tmp_path: Path,
    args: list[str],
    named: str,
) -> None:
    """`-o "$OUT"` with OUT unset in a cron job: an empty path became `.`, and the studies
    landed wherever the job ran (`synth ""` wrote there, `serve ""` served it), exit 0."""
    url = embedded_server(synth_study.root)
    study = synth_study.instances[0].study_uid
    argv = [a.format(url=url, study=study) for a in args]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_installed(*argv, cwd=cwd, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"dlstudy: error: Invalid value for {named}"), result.stderr
    assert "is empty" in result.stderr and len(result.stderr.splitlines()) == 1
    assert list(cwd.iterdir()) == []
    # `.` itself is still a folder like any other (and --from-file, text, says so too)
    listed = run_installed("download", "--url", url, "--from-file", "", cwd=cwd, timeout=60)
    assert listed.returncode == 2 and listed.stderr == (
        "dlstudy: error: --from-file is empty (an unset variable?): give a file, or - for stdin\n"
    )
    here = run_installed("download", study, "--url", url, "-o", str(cwd))
    assert here.returncode == 0, here.stderr


@pytest.mark.parametrize("command", ["download", "sync"])
def test_relative_paths_in_a_deleted_working_folder_are_one_line(
    synth_study: SynthStudy, embedded_server: StartServer, tmp_path: Path, command: str
) -> None:
    """A job whose working folder was removed under it: a relative --report or --log-file
    was a FileNotFoundError traceback (exit 1, no --json object), and a relative -o was
    called not writable. Each is one line naming what cannot be found; absolute paths work."""
    url = embedded_server(synth_study.root)
    study = [synth_study.study_uid] if command == "download" else []
    gone = tmp_path / "gone"
    out = tmp_path / "out"

    def in_gone(*args: str) -> subprocess.CompletedProcess[str]:
        gone.mkdir()  # (removed by the child, once in it)
        return run_installed(
            command, *study, "--url", url, *args, cwd=gone, preexec_fn=lambda: os.rmdir(gone)
        )

    reported = in_gone("-o", str(out), "--report", "r.csv", "--json")
    assert reported.returncode == 2, reported.stderr
    assert reported.stderr.splitlines() == [
        "dlstudy: error: --report 'r.csv': the current folder no longer exists; give an "
        "absolute path, or run from another folder"
    ]
    assert json.loads(reported.stdout)["exit_status"] == 2
    relative = in_gone("-o", "mirror")
    assert relative.returncode == 2, relative.stderr
    assert relative.stderr.splitlines() == [
        "dlstudy: error: output folder 'mirror' cannot be made: the current folder no longer "
        "exists (give an absolute path)"
    ]
    whole = in_gone("-o", str(out), "--report", str(tmp_path / "r.csv"))
    assert whole.returncode == 0, whole.stderr
    assert len(list(out.rglob("*.dcm"))) == len(synth_study.instances)


def _folder_of_length(base: Path, length: int) -> Path:
    """A path under `base` exactly `length` bytes long, in names of at most 100 bytes."""
    path = str(base.resolve())
    while len(path) < length:
        room = length - len(path) - 1
        path += "/" + "e" * (min(100, room) if room - min(100, room) != 1 else 99)
    assert len(path) == length
    return Path(path)


@pytest.mark.parametrize("command", ["download", "sync"])
def test_an_output_folder_too_long_for_sqlite_is_refused_before_anything_is_made(
    synth_study: SynthStudy, embedded_server: StartServer, tmp_path: Path, command: str
) -> None:
    """SQLite opens no path past 512 bytes, its journal's name included: an OUT of 480 bytes
    or more failed after making OUT and its state folder, `cannot write '.../manifest.sqlite':
    unable to open database file`, exit 1. It is refused up front; 479 bytes work."""
    url = embedded_server(synth_study.root)
    study = [synth_study.study_uid] if command == "download" else []
    longest = _folder_of_length(tmp_path / "ok", 479)
    done = run_installed(command, *study, "--url", url, "-o", str(longest))
    assert done.returncode == 0, done.stderr
    assert len(list(longest.rglob("*.dcm"))) == len(synth_study.instances)
    too_long = _folder_of_length(tmp_path / "no", 480)
    refused = run_installed(command, *study, "--url", url, "-o", str(too_long), "--json")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines() == [
        f"dlstudy: error: output folder '{too_long}' is 480 bytes long as a full path: its "
        "index (SQLite) opens only under at most 479; give a shorter path"
    ]
    assert json.loads(refused.stdout)["exit_status"] == 2
    assert not (tmp_path / "no").exists()


def test_refused_connection_exit_3_with_json_and_no_password(tmp_path: Path) -> None:
    url = f"http://bob:hunter2@127.0.0.1:{free_port()}/dicomweb"
    result = run_cli("download", STUDY, "--url", url, "-o", str(tmp_path), "--json")
    assert result.exit_code == 3
    assert "connection refused by 127.0.0.1" in result.stderr
    summary = summary_of(result)
    assert summary["exit_status"] == 3 and "connection refused" in summary["error"]
    assert "hunter2" not in result.output


def test_unknown_host_exit_3(tmp_path: Path) -> None:
    result = run_cli(
        "download", STUDY, "--url", "http://dlstudy-test.invalid/dw", "-o", str(tmp_path)
    )
    assert result.exit_code == 3
    assert "cannot resolve host 'dlstudy-test.invalid'" in result.stderr


@pytest.mark.integration
def test_tls_failure_exit_3_and_insecure_warns(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    result = run_cli("download", synth_study.study_uid, "--url", url, "-o", str(tmp_path))
    assert result.exit_code == 3
    assert "TLS handshake with '127.0.0.1' failed" in result.stderr
    assert "unable to get local issuer certificate" in result.stderr

    result = run_cli(
        "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--insecure", "-q"
    )
    assert result.exit_code == 0, result.output
    assert "--insecure: the server's TLS certificate is NOT verified" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(("command", "log_format"), [("download", "text"), ("sync", "json")])
def test_insecures_warning_reaches_the_log_file(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    tls_ca: TlsFiles,
    command: str,
    log_format: str,
) -> None:
    """--insecure's warning was printed past logging: in no --log-file (where the run's
    warnings stay), plain text under --log-format json. Now a warning as the others are, in
    the log and on stderr in its format; --quiet still shows it (no option silences it)."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    log = tmp_path / "run.log"
    uids = [synth_study.study_uid] if command == "download" else []
    args = [command, *uids, "--url", url, "-o", str(tmp_path / "out"), "--insecure"]
    args += ["--log-file", str(log), "--log-format", log_format]
    said = "--insecure: the server's TLS certificate is NOT verified"
    for quiet in ([], ["-q"]):
        log.unlink(missing_ok=True)
        result = run_installed(*args, *quiet)
        assert result.returncode == 0, result.stderr
        if log_format == "text":
            assert result.stderr.splitlines()[0] == f"dlstudy: warning: {said}"
            logged = [line for line in log.read_text().splitlines() if said in line]
            assert len(logged) == 1, logged
            assert logged[0].endswith(f" WARNING dlstudy.cli.connection: {said}"), logged
        else:
            first = json.loads(result.stderr.splitlines()[0])
            assert (first["level"], first["message"]) == ("warning", said)
            records = [json.loads(line) for line in log.read_text().splitlines()]
            assert [r for r in records if r.get("message") == said] == [first]


@pytest.mark.integration
@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_environments_ca_bundle_is_trusted_without_ca_bundle(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    tls_ca: TlsFiles,
    variable: str,
) -> None:
    """A hospital's CA (or its TLS-inspecting proxy's) is set up for every client through
    these variables, as httpx, requests and curl read them; a file they name that is missing
    is a usage error naming the variable."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    result = run_installed("query", "--url", url, "--uids", env={variable: str(tls_ca.ca_pem)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [synth_study.study_uid]

    missing = tmp_path / "no-such-ca.pem"
    result = run_installed("query", "--url", url, env={variable: str(missing)})
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [f"dlstudy: error: ${variable} {missing}: no such file"]


def rehashed(folder: Path, *pems: Path) -> Path:
    """An OpenSSL CA directory (SSL_CERT_DIR's kind) holding `pems`, hashed by `openssl
    rehash` as distributions do."""
    folder.mkdir()
    for pem in pems:
        shutil.copy(pem, folder / pem.name)
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
    return folder


@pytest.mark.integration
def test_the_environments_ca_directory_is_trusted_without_a_ca_file(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """SSL_CERT_DIR, OpenSSL's hashed CA directory (a list of them, colon-separated), is
    trusted as libcurl's CAPATH; --ca-bundle and the CA-file variables come first."""
    if shutil.which("openssl") is None:
        missing_tool("openssl not installed")
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    hashed = rehashed(tmp_path / "certs", tls_ca.ca_pem)
    listed = f"{tmp_path / 'empty'}:{hashed}"
    (tmp_path / "empty").mkdir()
    for directory in (str(hashed), listed):
        result = run_installed("query", "--url", url, "--uids", env={"SSL_CERT_DIR": directory})
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [synth_study.study_uid]

    import certifi  # a CA file without the test's CA: it wins, and the handshake fails

    for first in (["--ca-bundle", certifi.where()], []):
        env = {"SSL_CERT_DIR": str(hashed), "SSL_CERT_FILE": certifi.where()}
        result = run_installed("query", "--url", url, *first, env=env)
        assert result.returncode == 3, result.stderr
        assert "signed by no CA of the bundle given" in result.stderr


@pytest.mark.integration
def test_a_ca_directory_in_requests_ca_bundle_is_trusted_as_requests_takes_it(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """requests takes a directory in REQUESTS_CA_BUNDLE as OpenSSL's hashed CA directory: a
    site set up for requests works unchanged; one with no hashed certificate is named."""
    if shutil.which("openssl") is None:
        missing_tool("openssl not installed")
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    hashed = rehashed(tmp_path / "certs", tls_ca.ca_pem)
    result = run_installed("query", "--url", url, "--uids", env={"REQUESTS_CA_BUNDLE": str(hashed)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [synth_study.study_uid]

    unhashed = tmp_path / "unhashed"
    unhashed.mkdir()
    shutil.copy(tls_ca.ca_pem, unhashed / "ca.pem")
    result = run_installed("query", "--url", url, env={"REQUESTS_CA_BUNDLE": str(unhashed)})
    assert result.returncode == 2, result.stderr
    assert error_lines(result.stderr) == [
        f"dlstudy: error: $REQUESTS_CA_BUNDLE {unhashed}: no hashed CA certificate in it "
        f"(run: openssl rehash {unhashed})"
    ]


@pytest.mark.integration
def test_an_unusable_ca_directory_is_a_usage_error_naming_the_variable(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        missing_tool("openssl not installed")
    url = f"https://127.0.0.1:{free_port()}/dicomweb"
    missing, unhashed = tmp_path / "missing", tmp_path / "unhashed"
    unhashed.mkdir()
    (unhashed / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "file.pem").write_text("")
    cases = [
        (str(missing), f"$SSL_CERT_DIR {missing}: no such directory"),
        (str(tmp_path / "file.pem"), f"$SSL_CERT_DIR {tmp_path / 'file.pem'}: not a directory"),
        (
            str(unhashed),
            f"$SSL_CERT_DIR {unhashed}: no hashed CA certificate in it (run: openssl rehash "
            f"{unhashed})",
        ),
    ]
    for directory, line in cases:
        result = run_installed("query", "--url", url, env={"SSL_CERT_DIR": directory})
        assert result.returncode == 2, result.stderr
        assert error_lines(result.stderr) == [f"dlstudy: error: {line}"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("problem", "cause"),
    [
        ("expired", "the server's certificate has expired"),
        ("other host", "the server's certificate is for another host name than '127.0.0.1'"),
        # --ca-bundle given, of another CA: it said "unknown CA (trust it with --ca-bundle)"
        ("unknown CA", "the server's certificate is signed by no CA of the bundle given"),
    ],
)
def test_a_tls_failure_names_its_cause(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    problem: str,
    cause: str,
) -> None:
    import datetime

    import trustme

    ca = trustme.CA()
    if problem == "expired":
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        leaf = ca.issue_cert("127.0.0.1", not_before=past, not_after=past.replace(month=6))
    elif problem == "other host":
        leaf = ca.issue_cert("pacs.example.org")
    else:
        leaf = trustme.CA().issue_cert("127.0.0.1")  # signed by a CA the client does not know
    cert, key, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    url = embedded_server(synth_study.root, tls_cert=cert, tls_key=key)

    result = run_installed(
        "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path / "out"),
        "--ca-bundle", str(ca_pem),
    )  # fmt: skip

    assert result.returncode == 3, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert f"TLS handshake with '127.0.0.1' failed: {cause}" in line


@pytest.mark.integration
def test_auth_failures_exit_3_and_never_show_the_token(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root, token=TOKEN)
    missing = run_cli("download", synth_study.study_uid, "--url", url, "-o", str(tmp_path))
    assert missing.exit_code == 3
    # None were sent: they were said to be rejected.
    assert "server wants credentials: HTTP 401 on " in missing.stderr
    assert "(give --token, or --user and --password)" in missing.stderr

    wrong = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--json",
        "--token",
        "wrong-" + TOKEN,
        "--header",
        f"X-Api-Key: {TOKEN}",
        "--verbose",
    )
    assert wrong.exit_code == 3
    assert summary_of(wrong)["exit_status"] == 3
    assert TOKEN not in wrong.output

    right = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        url,
        "-o",
        str(tmp_path),
        "--json",
        env={"DLSTUDY_TOKEN": TOKEN},
    )
    assert right.exit_code == 0, right.output
    assert summary_of(right)["instances"]["downloaded"] == 60
    assert TOKEN not in right.output


@pytest.mark.integration
def test_unknown_study_exit_4_and_partly_unknown_exit_1(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    result = run_cli("download", STUDY, "--url", url, "-o", str(tmp_path), "--json")
    assert result.exit_code == 4
    assert error_lines(result.stderr) == [f"dlstudy: error: study {STUDY} not found on the server"]
    assert summary_of(result)["exit_status"] == 4

    result = run_cli(
        "download", STUDY, synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--json"
    )
    assert result.exit_code == 1
    summary = summary_of(result)
    assert summary["instances"]["downloaded"] == 60
    assert summary["failures"] == [
        {
            "study": STUDY,
            "series": None,
            "sop_instance_uid": None,
            "reason": f"study {STUDY} not found on the server",
            "status_code": 404,
        }
    ]


@pytest.mark.integration
def test_failed_instances_exit_1_are_named_and_a_rerun_finishes(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    flaky = embedded_server(synth_study.root, fault_rate=0.3, fault_status=503, retry_after=0)
    args = ("download", synth_study.study_uid, "-o", str(tmp_path), "--json")

    first = run_cli(*args, "--url", flaky, "--retries", "0")

    assert first.exit_code == 1
    summary = summary_of(first)
    failed = {f["sop_instance_uid"] for f in summary["failures"]}
    assert 0 < len(failed) == summary["instances"]["failed"] < 60
    assert all("HTTP 503" in f["reason"] and f["status_code"] == 503 for f in summary["failures"])
    assert summary["instances"]["downloaded"] == 60 - len(failed)
    on_disk = {p.stem for p in tmp_path.rglob("*.dcm")}
    assert on_disk.isdisjoint(failed)  # nothing under a final name for a failed instance
    assert [p for p in tmp_path.rglob("*.part")] == []

    healthy = embedded_server(synth_study.root)
    second = run_cli(*args, "--url", healthy)

    assert second.exit_code == 0, second.output
    assert summary_of(second)["instances"]["downloaded"] == len(failed)
    assert summary_of(second)["instances"]["skipped"] == 60 - len(failed)


@pytest.mark.integration
def test_cut_connections_are_retried_or_reported_and_leave_no_partial_file(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    always_cut = embedded_server(synth_study.root, drop_after_bytes=10_000)
    result = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        always_cut,
        "-o",
        str(tmp_path),
        "--json",
        "--retries",
        "1",
        "--series",
        synth_study.series_uids[0],
    )
    assert result.exit_code == 1
    summary = summary_of(result)
    assert summary["instances"]["failed"] == 20
    assert all("after 2 attempts" in f["reason"] for f in summary["failures"])
    assert [p for p in tmp_path.rglob("*") if p.is_file() and ".dlstudy" not in p.parts] == []

    sometimes_cut = embedded_server(synth_study.root, drop_after_bytes=10_000, drop_rate=0.3)
    result = run_cli(
        "download",
        synth_study.study_uid,
        "--url",
        sometimes_cut,
        "-o",
        str(tmp_path),
        "--json",
        "--retries",
        "8",
    )
    assert result.exit_code == 0, result.output
    for instance in synth_study.instances:
        target = tmp_path / instance.study_uid / instance.series_uid / f"{instance.sop_uid}.dcm"
        assert target.read_bytes() == instance.path.read_bytes()


@pytest.mark.integration
def test_plain_http_to_a_tls_port_and_tls_to_a_plain_port_say_which_to_use(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """One attempt, exit 3, and the scheme to use: retrying cannot change the answer."""
    tls_url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    plain_url = embedded_server(synth_study.root)
    cases = [
        (tls_url.replace("https://", "http://"), "gave no HTTP answer", "use https://"),
        (plain_url.replace("http://", "https://"), "does not speak TLS", "use http://"),
    ]
    for url, what, hint in cases:
        for http in ("auto", "1.1"):
            result = run_installed(
                "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path),
                "--http", http, "--ca-bundle", str(tls_ca.ca_pem),
            )  # fmt: skip
            assert result.returncode == 3, result.stderr
            (line,) = [x for x in result.stderr.splitlines() if x.startswith("dlstudy: error:")]
            assert what in line and hint in line
            assert "attempts" not in line  # not retried


def ipv6_loopback_port() -> int:
    """A port of ::1 nothing listens on; the test is skipped on a machine without IPv6."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            return int(sock.getsockname()[1])
    except OSError:
        pytest.skip("no IPv6 loopback (::1) here")


def test_an_ipv6_address_is_written_in_brackets_in_error_lines(
    synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """`[::1]:8042`, as in a URL: it was `::1:8042`, which reads as another address."""
    closed = ipv6_loopback_port()
    tls_url = embedded_server(
        synth_study.root, host="::1", tls_cert=tls_ca.cert, tls_key=tls_ca.key
    )
    plain_url = embedded_server(synth_study.root, host="::1")
    cases = [
        (f"http://[::1]:{closed}/dicomweb", f"connection refused by [::1]:{closed} (http://"),
        (tls_url.replace("https://", "http://"), f"{tls_url.split('/')[2]} gave no HTTP answer"),
        (plain_url.replace("http://", "https://"), f"{plain_url.split('/')[2]} does not speak TLS"),
    ]
    for url, said in cases:
        result = run_installed("query", "--url", url, "--ca-bundle", str(tls_ca.ca_pem))
        assert result.returncode == 3, result.stderr
        (line,) = error_lines(result.stderr)
        assert said in line, line


def test_a_fatal_error_is_one_line_on_stderr_and_nothing_else(tmp_path: Path) -> None:
    """With --json, stderr holds the one error line: no bare copy of it (a logger with no
    handler would print one through logging's last resort)."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}/dicomweb"
    port.close()  # nothing listens there now
    result = run_installed("download", "1.2.3", "--url", url, "-o", str(tmp_path), "--json")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"dlstudy: error: connection refused by 127.0.0.1:{url.split(':')[2].split('/')[0]} "
        f"({url}/studies/1.2.3/instances)"
    ]


@pytest.mark.integration
@pytest.mark.parametrize("http", ["auto", "1.1"])
def test_plain_http_to_a_tls_port_that_resets_says_use_https_at_once(
    tmp_path: Path, tls_ca: TlsFiles, http: str
) -> None:
    """A Python ssl server resets a plain-text connection instead of closing it: that is no
    HTTP answer either, not a network error to retry seven times."""
    from ..scripted_servers import tls_port_that_resets

    with tls_port_that_resets(str(tls_ca.cert), str(tls_ca.key)) as url:
        result = run_installed("download", STUDY, "--url", url, "-o", str(tmp_path), "--http", http)
    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result.stderr)
    assert "gave no HTTP answer" in line and "use https://" in line, line
    assert "attempts" not in line


@pytest.mark.integration
@pytest.mark.parametrize("http", ["auto", "1.1"])
def test_one_unanswered_first_request_is_asked_again(tmp_path: Path, http: str) -> None:
    """The run's first request gets an empty reply once (the server closed that connection),
    then answers: asked again, the run completes."""
    from ..scripted_servers import closing_first

    with closing_first(1) as (url, study, sops):
        result = run_installed(
            "download", study, "--url", url, "-o", str(tmp_path), "--http", http, "--json"
        )
    assert result.returncode == 0, result.stderr
    assert sorted(p.stem for p in tmp_path.rglob("*.dcm")) == sorted(sops)


@pytest.mark.integration
def test_one_unanswered_h2c_probe_is_asked_again(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`--http auto` on http://: the h2c probe's connection closed without a byte of answer
    (a restart, a balancer) is asked once more; the server speaks h2c, and the run uses it."""
    from ..faultproxy import Fault, FaultProxy

    url = embedded_server(synth_study.root)
    port = int(url.split(":")[2].split("/")[0])
    proxy = FaultProxy(port, Fault("close", connections={1}))
    try:
        result = run_installed(
            "download", synth_study.study_uid, "--url", proxy.url(), "-o", str(tmp_path),
            "--http", "auto", "--json", "-v",
        )  # fmt: skip
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.faulted == [1]
    assert json.loads(result.stdout)["http_version"] == "HTTP/2", result.stderr
    assert "no HTTP/2 answer to the h2c probe" in result.stderr


@pytest.mark.integration
def test_a_server_without_h2c_is_probed_once(tmp_path: Path) -> None:
    """`--http auto` on http://: a server that answers the h2c preface in HTTP/1.1 (a 505) has
    answered; asking it again would only cost a request. Once, then HTTP/1.1."""
    from ..scripted_servers import http1_only

    with http1_only() as (url, study, sops, lines):
        result = run_installed(
            "download", study, "--url", url, "-o", str(tmp_path), "--http", "auto", "--json"
        )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["http_version"] == "HTTP/1.1"
    assert sorted(p.stem for p in tmp_path.rglob("*.dcm")) == sorted(sops)
    assert [line for line in lines if line.startswith(b"PRI ")] == [b"PRI * HTTP/2.0"]


@pytest.mark.integration
def test_a_server_that_never_answers_fails_at_once_with_the_hint(tmp_path: Path) -> None:
    from ..scripted_servers import closing_first

    with closing_first(1000) as (url, study, _):
        result = run_installed(
            "download", study, "--url", url, "-o", str(tmp_path), "--http", "1.1"
        )
    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result.stderr)
    assert "gave no HTTP answer (Empty reply from server)" in line, line
    assert "use https://" in line and "attempts" not in line


@pytest.mark.integration
@pytest.mark.parametrize("http", ["1.1", "2"])
def test_a_reset_in_the_body_of_the_first_answer_is_retried(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, http: str
) -> None:
    """A reset after the first answer started is a broken connection, not a TLS port."""
    from ..faultproxy import Fault, FaultProxy

    url = embedded_server(synth_study.root)
    port = int(url.split(":")[2].split("/")[0])
    proxy = FaultProxy(port, Fault("reset", after_bytes=400, connections={1}))
    try:
        result = run_installed(
            "download", synth_study.study_uid, "--url", proxy.url(), "-o", str(tmp_path),
            "--http", http, "--json",
        )  # fmt: skip
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.faulted == [1]


def tls_file_cases(tmp_path: Path, tls: TlsFiles) -> list[tuple[list[str], str]]:
    """(options, the error line expected) for TLS files that cannot be used."""
    junk = tmp_path / "junk.pem"
    junk.write_text("this is no certificate\n")
    missing = tmp_path / "missing.pem"
    return [
        (["--ca-bundle", str(missing)], f"--ca-bundle {missing}: no such file"),
        (["--ca-bundle", str(tmp_path)], f"--ca-bundle {tmp_path}: not a file"),
        (["--ca-bundle", str(junk)], f"--ca-bundle {junk}: no PEM certificate in it"),
        (["--cert", str(missing), "--key", str(tls.key)], f"--cert {missing}: no such file"),
        (["--cert", str(tls.cert), "--key", str(missing)], f"--key {missing}: no such file"),
        (["--cert", str(tls.cert), "--key", str(junk)], f"--key {junk}: no PEM private key in it"),
        (
            ["--cert", str(tls.cert)],
            f"--cert {tls.cert}: no PEM private key in it (give it with --key)",
        ),
    ]


def test_unusable_tls_files_are_usage_errors_before_any_request(
    tmp_path: Path, tls_ca: TlsFiles
) -> None:
    """Exit 2 and one line naming the option and the file; the URL (nothing listens there)
    is never asked, or the run would end with exit 3."""
    url = f"https://127.0.0.1:{free_port()}/dicomweb"
    for options, expected in tls_file_cases(tmp_path, tls_ca):
        result = run_installed("download", STUDY, "--url", url, "-o", str(tmp_path), *options)
        assert result.returncode == 2, (options, result.stderr)
        assert error_lines(result.stderr) == [f"dlstudy: error: {expected}"], options


def test_a_damaged_ca_bundle_is_a_usage_error_naming_where_it_came_from(
    tmp_path: Path, tls_ca: TlsFiles
) -> None:
    """A CA bundle cut short, a block that is no certificate, alone or after a good CA: exit
    2 before any request (nothing listens at the URL), naming the option or the variable that
    gave the file. libcurl found these at the first handshake only: exit 3, always naming
    --ca-bundle."""
    good = tls_ca.ca_pem.read_text()
    not_one = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    files = {"cut.pem": good[:200], "no-certificate.pem": not_one, "then-not.pem": good + not_one}
    url = f"https://127.0.0.1:{free_port()}/dicomweb"
    out = str(tmp_path / "out")
    damaged = "damaged: a PEM block in it is cut short or is no certificate"
    for name, text in files.items():
        bundle = tmp_path / name
        bundle.write_text(text)
        for options, env, named in (
            (["--ca-bundle", str(bundle)], {}, "--ca-bundle"),
            ([], {"SSL_CERT_FILE": str(bundle)}, "$SSL_CERT_FILE"),
        ):
            result = run_installed("download", STUDY, "--url", url, "-o", out, *options, env=env)
            assert result.returncode == 2, (name, named, result.stderr)
            expected = f"dlstudy: error: {named} {bundle}: {damaged}"
            assert error_lines(result.stderr) == [expected]


@pytest.mark.integration
def test_a_key_of_another_certificate_is_named_at_once(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """--cert and --key that are no pair: libcurl refuses them before any byte is sent (as a
    bad argument). One line naming the options, not a broken connection retried."""
    import trustme

    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    client = trustme.CA().issue_cert("client@dlstudy.test")
    cert = tmp_path / "client.pem"
    client.cert_chain_pems[0].write_to_path(str(cert))
    result = run_installed(
        "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path / "out"),
        "--ca-bundle", str(tls_ca.ca_pem), "--cert", str(cert), "--key", str(tls_ca.key),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("dlstudy: error: cannot use --cert/--key: "), line
    assert "attempts" not in line, line


@pytest.mark.parametrize("form", ["pkcs8", "legacy"])
def test_an_encrypted_key_is_named_before_openssl_asks_for_its_pass_phrase(
    tmp_path: Path, form: str
) -> None:
    """A `--key` sealed with a pass phrase: OpenSSL asked for it on the terminal, where Ctrl-C
    and SIGTERM did not stop the run; without a terminal, `cannot use --cert/--key: unable to
    set private key file`, exit 3, never saying why. Now one line before any request."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    client = trustme.CA().issue_cert("client@dlstudy.test")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    private = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8 if form == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"xyz"),
    ))  # fmt: skip
    result = run_installed(
        "query", "--url", "https://127.0.0.1:9/dicomweb", "--cert", str(cert), "--key", str(key)
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"dlstudy: error: --key {key}: the key is encrypted (it needs a pass phrase): decrypt "
        f"it first, e.g. openssl pkey -in {key} -out plain.key (and keep that file private)"
    ]


@contextmanager
def nginx_asking_for_a_client_certificate(
    folder: Path, tls: TlsFiles, *, verify_client: bool = True
) -> Iterator[str]:
    """nginx over TLS (HTTP/1.1 alone, as `listen ... ssl` without `http2`) with
    `ssl_verify_client on` (client certificates signed by `tls`'s CA; `verify_client=False`:
    none asked for) in front of nothing: it answers requests itself. Its URL."""
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        missing_tool("nginx is needed")
    port = free_port()
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {folder}/nginx.pid; error_log {folder}/error.log;\n"
        "events {}\n"
        "http { access_log off; server {\n"
        f"  listen 127.0.0.1:{port} ssl;\n"
        f"  ssl_certificate {tls.cert}; ssl_certificate_key {tls.key};\n"
        + (
            f"  ssl_client_certificate {tls.ca_pem}; ssl_verify_client on;\n"
            if verify_client
            else ""
        )
        + f"  location / {{ proxy_pass http://127.0.0.1:{free_port()}; }}\n"
        "} }\n"
    )
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(folder)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}/dicomweb"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.integration
def test_a_server_asking_for_a_client_certificate_names_cert(
    tmp_path: Path, tls_ca: TlsFiles
) -> None:
    """nginx's `ssl_verify_client on` completes the handshake without a client certificate,
    or with one it does not trust, and answers HTTP 400 itself: the line says what it wants
    (it was `QIDO search: HTTP 400 on ...`, not a word about a certificate)."""
    import trustme

    other = trustme.CA().issue_cert("client@dlstudy.test")
    cert = tmp_path / "client.pem"
    other.private_key_and_cert_chain_pem.write_to_path(str(cert))
    with nginx_asking_for_a_client_certificate(tmp_path / "nginx", tls_ca) as url:
        for extra, expected in (
            ((), "wants a client certificate: give it with --cert/--key"),
            (
                ("--cert", str(cert)),
                "refused the client certificate (--cert): not one it trusts, or expired?",
            ),
        ):
            for args in (("query",), ("download", STUDY, "-o", str(tmp_path / "out"))):
                result = run_installed(
                    *args, "--url", url, "--ca-bundle", str(tls_ca.ca_pem), *extra
                )
                assert result.returncode == 3, result.stderr
                (line,) = error_lines(result.stderr)
                assert line.startswith(f"dlstudy: error: server {expected} (HTTP 400 on "), line


@pytest.mark.integration
def test_plain_http_to_nginxs_tls_port_says_use_https_in_every_command(
    tmp_path: Path, tls_ca: TlsFiles
) -> None:
    """nginx answers plain HTTP on its TLS port with its own HTTP 400 page (`The plain HTTP
    request was sent to HTTPS port`): the line says to use https://, exit 3. `query` said the
    URL, ending in /dicomweb, was no DICOMweb root (`answered HTTP 400 (an HTML page)`), the
    other commands `QIDO search: HTTP 400 on ...`."""
    out = str(tmp_path / "out")
    commands = [
        ("query",),
        ("download", STUDY, "-o", out),
        ("sync", "-o", out),
        ("catalog", "pull", "--db", str(tmp_path / "c.duckdb")),
        ("bench", STUDY, "--repeat", "1"),
    ]
    with nginx_asking_for_a_client_certificate(
        tmp_path / "nginx", tls_ca, verify_client=False
    ) as tls_url:
        url = tls_url.replace("https://", "http://")
        netloc = url.split("/")[2]
        for args in commands:
            result = run_installed(*args, "--url", url)
            assert result.returncode == 3, (args, result.stderr)
            (line,) = error_lines(result.stderr)
            assert line.startswith(
                f"dlstudy: error: {netloc} speaks TLS: it answered HTTP 400 (The plain HTTP "
                f"request was sent to HTTPS port); use https:// ({url}/studies"
            ), line


@pytest.mark.integration
@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
def test_a_tls_alert_about_the_client_certificate_names_cert(
    tmp_path: Path, tls_ca: TlsFiles, tls12: bool
) -> None:
    """A server that refuses the handshake with a TLS alert about the client certificate:
    the line says what it wants. In TLS 1.3 the alert comes as the first request's answer,
    which read `127.0.0.1:<port> gave no HTTP answer (... tlsv13 alert certificate required
    ...)`; in TLS 1.2 it ends the handshake, and read as any TLS failure. OpenSSL's alert
    for no certificate in TLS 1.2, `handshake failure`, says nothing certain of it."""
    import trustme

    from ..scripted_servers import tls_port_asking_for_a_client_certificate

    other = trustme.CA().issue_cert("client@dlstudy.test")
    cert = tmp_path / "client.pem"
    other.private_key_and_cert_chain_pem.write_to_path(str(cert))
    cases = [
        (
            ("--cert", str(cert)),
            "refused the client certificate (--cert): not one it trusts, or expired?",
        )
    ]
    if not tls12:
        cases.append(((), "wants a client certificate: give it with --cert/--key"))
    files = (str(tls_ca.cert), str(tls_ca.key), str(tls_ca.ca_pem))
    failed = "dlstudy: error: TLS handshake with '127.0.0.1' failed"
    with tls_port_asking_for_a_client_certificate(*files, tls12=tls12) as url:
        for extra, expected in cases:
            for args in (("query",), ("download", STUDY, "-o", str(tmp_path / "out"))):
                result = run_installed(
                    *args, "--url", url, "--ca-bundle", str(tls_ca.ca_pem), *extra
                )
                assert result.returncode == 3, result.stderr
                (line,) = error_lines(result.stderr)
                assert line.startswith(f"{failed}: the server {expected} ("), line


@pytest.mark.integration
def test_http2_asked_of_a_tls_server_without_it_says_so(tmp_path: Path, tls_ca: TlsFiles) -> None:
    """nginx's `listen ... ssl` without `http2` (a common setup) and `--http 2`: its TLS
    handshake refuses the h2 libcurl alone offers (alert 120), which read as a certificate
    problem: `TLS handshake with '127.0.0.1' failed: ... no application protocol`."""
    with nginx_asking_for_a_client_certificate(
        tmp_path / "nginx", tls_ca, verify_client=False
    ) as url:
        for args in (("query",), ("download", STUDY, "-o", str(tmp_path / "out"))):
            result = run_installed(
                *args, "--url", url, "--ca-bundle", str(tls_ca.ca_pem), "--http", "2"
            )
            assert result.returncode == 3, result.stderr
            (line,) = error_lines(result.stderr)
            assert line.startswith(
                f"dlstudy: error: {url.split('/')[2]} does not speak HTTP/2 (its TLS handshake "
                "refused h2: "
            ), line
            assert f"); try --http 1.1 ({url}/" in line, line


@pytest.mark.parametrize(
    ("command", "first", "second", "linked"),
    [
        ("download", "--from-file", "--report", False),
        ("download", "--from-file", "--log-file", True),
        ("download", "--report", "--log-file", False),
        ("sync", "--catalog", "--report", False),
        ("sync", "--report", "--log-file", True),
    ],
)
def test_one_file_for_two_options_is_a_usage_error(
    tmp_path: Path, command: str, first: str, second: str, linked: bool
) -> None:
    """`--report cohort.csv` given the list's own name replaced the cohort list with the report
    (deleted it when the run failed); `--log-file` ran the log into the list (the next run
    failed on it) or into the report (the log lost). Given by another name (a symbolic link),
    the same. Now one line naming both options, exit 2, before anything is read or written."""
    shared = tmp_path / "cohort.csv"
    shared.write_text(f"StudyInstanceUID\n{STUDY}\n")
    other = tmp_path / "link.csv"
    if linked:
        other.symlink_to(shared)
    args = [command, "--url", "http://127.0.0.1:9/x"]
    out = tmp_path / "out"
    result = run_installed(
        *args, "-o", str(out), first, str(shared), second, str(other if linked else shared)
    )
    assert result.returncode == 2, result.stderr
    shown = other if linked else shared
    assert result.stderr.splitlines() == [
        f"dlstudy: error: {first} and {second} name one file, '{shown}': give each its own"
    ]
    assert shared.read_text() == f"StudyInstanceUID\n{STUDY}\n"
    assert not out.exists()
