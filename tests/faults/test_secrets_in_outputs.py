"""No secret reaches any output: runs of the installed CLI with a secret in every place a user
can put one (a password and query keys in --url, --header, --token, a proxy's password),
failing in the ways that print URLs, and every output scanned: stdout (--json, tables),
stderr with -v, and --log-file. Secrets a server hands out (presigned links in redirects)
are scanned in test_faults.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from ..cli_helpers import run_installed
from ..factories import STUDY, instance_json, series_json
from ..fixtures.embedded_server import SeenRequests, StartServer, SynthStudy
from ..fixtures.scripted_routes import Route, Routes

pytestmark = pytest.mark.integration

SECRETS = {
    "password": "pw-5ecret",
    "subscription-key": "subkey-5ecret",
    "code": "code-5ecret",
    "X-Amz-Signature": "sig-5ecret",
    "header": "hdr-5ecret",
    "token": "tok-5ecret",
    "proxy password": "proxypw-5ecret",
}


def secret_url(url: str) -> str:
    """The server's URL with a password and secret query keys in it."""
    scheme, rest = url.split("://", 1)
    return (
        f"{scheme}://reader:{SECRETS['password']}@{rest}"
        f"?subscription-key={SECRETS['subscription-key']}&code={SECRETS['code']}"
        f"&X-Amz-Signature={SECRETS['X-Amz-Signature']}"
    )


def run_scanned(tmp_path: Path, name: str, *args: str) -> tuple[int, str]:
    """Run `dlstudy ARGS -v [--log-file F]`; fail if any secret is in any output."""
    log_file = tmp_path / f"{name}.log"
    log_file.touch()
    logged = ("--log-file", str(log_file)) if args[0] not in ("query", "bench") else ()  # none
    result = run_installed(*args, "-v", *logged)
    assert "Traceback" not in result.stderr, result.stderr
    outputs = {"stdout": result.stdout, "stderr": result.stderr, "log": log_file.read_text()}
    for where, text in outputs.items():
        for what, secret in SECRETS.items():
            assert secret not in text, f"{name}: the {what} is in {where}"
    return result.returncode, result.stdout


def test_no_secret_reaches_any_output(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
) -> None:
    seen_requests.gateway_keys = {"subscription-key", "code", "X-Amz-Signature"}
    url = secret_url(embedded_server(synth_study.root, fault_rate=0.3, fault_status=500))
    given = ("--url", url, "--header", f"X-Api-Key: {SECRETS['header']}")
    # A bearer token instead of the URL's user (both at once is a usage error).
    tokened = ("--url", url.replace(f"reader:{SECRETS['password']}@", ""), *given[2:])
    tokened += ("--token", SECRETS["token"])
    out = str(tmp_path / "out")

    # Some instances fail (HTTP 500, no retries): failure lines and the summary name URLs.
    code, stdout = run_scanned(
        tmp_path, "failing", "download", synth_study.study_uid, *tokened, "-o", out,
        "--json", "--retries", "0", "--mode", "instance",
    )  # fmt: skip
    summary = json.loads(stdout)
    assert code == 1 and summary["failures"]
    assert "***" in summary["url"]  # shown, masked
    logged = (tmp_path / "failing.log").read_text()  # the log is the run's record
    assert logged.count("WARNING dlstudy.outcome: failed: instance") == len(summary["failures"])

    code, _ = run_scanned(tmp_path, "unknown", "download", "1.2.3.4.5", *given, "-o", out)
    assert code == 4

    code, stdout = run_scanned(tmp_path, "query", "query", *given, "--json")
    assert code == 0 and synth_study.study_uid in stdout

    # bench: failing cells name requests in the table, the JSON and the chart's legend.
    chart = tmp_path / "bench.svg"
    for form in ((), ("--json",)):
        code, stdout = run_scanned(
            tmp_path, "bench", "bench", synth_study.study_uid, *tokened, "-c", "2",
            "--repeat", "1", "--chart", str(chart), *form,
        )  # fmt: skip
        assert code == 1 and "failed: " in stdout, stdout
        assert not any(secret in chart.read_text() for secret in SECRETS.values())

    proxy = f"http://proxyuser:{SECRETS['proxy password']}@127.0.0.1:9"
    code, _ = run_scanned(
        tmp_path, "dead proxy", "download", synth_study.study_uid, *tokened, "-o", out,
        "--proxy", proxy, "--json",
    )  # fmt: skip
    assert code == 3


USER_TOKEN = "ghp_usertok3n5ecret"


def scan_for(token: str, tmp_path: Path, name: str, *args: str) -> tuple[int, str, str]:
    """Run `dlstudy ARGS -v [--log-file F]`; fail if `token` is in any output. Return the
    exit code, stdout and stderr."""
    log_file = tmp_path / f"{name}.log"
    logged = ("--log-file", str(log_file)) if args[0] in ("download", "sync") else ()
    result = run_installed(*args, "-v", *logged)
    assert "Traceback" not in result.stderr, result.stderr
    outputs = {"stdout": result.stdout, "stderr": result.stderr}
    outputs["log"] = log_file.read_text() if log_file.exists() else ""
    for where, text in outputs.items():
        assert token not in text, f"{name}: the token is in {where}: {text}"
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("userinfo", [USER_TOKEN, f"{USER_TOKEN}:x-oauth-basic"])
def test_a_token_given_as_the_urls_user_name_is_never_shown(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, userinfo: str
) -> None:
    """Many services take a token as the URL's user name (`https://<token>@host/...`). The
    user name was shown as written wherever the URL was: --json's `url` of download, sync and
    bench, and error lines (`cannot use proxy http://<token>@...`)."""
    served = embedded_server(synth_study.root, fault_rate=0.3, fault_status=500)
    url = served.replace("://", f"://{userinfo}@")
    out = str(tmp_path / "out")
    failing = ("--retries", "0", "--mode", "instance", "--json")

    code, stdout, _ = scan_for(
        USER_TOKEN, tmp_path, "download", "download", synth_study.study_uid, "--url", url,
        "-o", out, *failing,
    )  # fmt: skip
    assert code == 1 and json.loads(stdout)["url"].startswith("http://***"), stdout
    code, _, _ = scan_for(
        USER_TOKEN, tmp_path, "json log", "download", synth_study.study_uid, "--url", url,
        "-o", out, *failing, "--log-format", "json",
    )  # fmt: skip
    assert code in (0, 1)
    code, stdout, _ = scan_for(USER_TOKEN, tmp_path, "query", "query", "--url", url, "--json")
    assert code == 0 and synth_study.study_uid in stdout
    code, stdout, _ = scan_for(
        USER_TOKEN, tmp_path, "sync", "sync", "--url", url, "-o", out, "--json", "--retries", "9"
    )
    assert code == 0 and json.loads(stdout)["url"].startswith("http://***"), stdout
    code, stdout, _ = scan_for(
        USER_TOKEN, tmp_path, "bench", "bench", synth_study.study_uid, "--url", url,
        "-c", "2", "--repeat", "1", "--json",
    )  # fmt: skip
    assert json.loads(stdout)["url"].startswith("http://***"), stdout

    proxy = f"http://{userinfo}@127.0.0.1:9"
    code, _, stderr = scan_for(
        USER_TOKEN, tmp_path, "dead proxy", "download", synth_study.study_uid, "--url", served,
        "-o", str(tmp_path / "elsewhere"), "--proxy", proxy,
    )  # fmt: skip
    assert code == 3 and "cannot use proxy http://***" in stderr, stderr
    refused = f"http://{userinfo}@127.0.0.1:9/dicomweb"
    code, _, _ = scan_for(USER_TOKEN, tmp_path, "refused", "query", "--url", refused)
    assert code == 3


SECRET = "S3CRET-never-shown"


@pytest.mark.parametrize("filtered", [(), ("--filter", "PatientSex=F")])
def test_a_query_key_shaped_like_a_dicom_keyword_is_masked_unless_it_is_one(
    synth_study: SynthStudy, embedded_server: StartServer, filtered: tuple[str, ...]
) -> None:
    """Signed links and gateways use names shaped like DICOM keywords (CloudFront's `Policy`,
    a GCS link's `GoogleAccessId`, `Sid`, `Jwt`): their values are masked, the search's own
    matching keys shown. Any capitalised name was shown, as if a matching key."""
    url = embedded_server(synth_study.root, token="tok")
    keyed = f"{url}?Sid={SECRET}&Jwt={SECRET}&Policy={SECRET}&GoogleAccessId={SECRET}"
    result = run_installed("query", "--url", keyed, "--study-date", "20260105", *filtered)
    assert result.returncode == 3, result.stderr  # 401: no token given
    assert SECRET not in result.stderr + result.stdout
    assert "?Sid=***&Jwt=***&Policy=***&GoogleAccessId=***&StudyDate=20260105&" in result.stderr
    if filtered:
        assert "&PatientSex=F&" in result.stderr, result.stderr


def scan_error_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the installed `dlstudy ARGS`, expecting one usage error line that shows no SECRET in
    stderr, stdout or the --log-file (sync and download write one); return that line."""
    log_file = tmp_path / "run.log"
    log_file.unlink(missing_ok=True)
    logged = ("-o", str(tmp_path / "out"), "--json", "--log-file", str(log_file))
    result = run_installed(*args, *(logged if args[0] in ("sync", "download") else ()), env=env)
    outputs = [result.stdout, result.stderr, log_file.read_text() if log_file.exists() else ""]
    assert not any(SECRET in text for text in outputs), outputs
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlstudy: error: "), lines
    assert result.returncode == 2, lines
    return lines[0]


@pytest.mark.parametrize("command", [("query",), ("sync",), ("download", "1.2.3")])
@pytest.mark.parametrize(
    "url",
    [
        f"bob:{SECRET}@127.0.0.1:9/dicomweb",  # no scheme: bob: reads as one
        f"http:/bob:{SECRET}@127.0.0.1:9/dicomweb",  # one slash: no authority
        f"http://bob:{SECRET}/x@127.0.0.1:9/dicomweb",  # a slash in the password
    ],
)
def test_a_malformed_url_is_shown_without_its_password(
    tmp_path: Path, command: tuple[str, ...], url: str
) -> None:
    line = scan_error_run(tmp_path, *command, "--url", url)
    assert "***:***@127.0.0.1:9" in line and "bob" not in line, line


@pytest.mark.parametrize("command", [("query",), ("sync",), ("download", "1.2.3")])
@pytest.mark.parametrize("cut", ["#", "?"])
@pytest.mark.parametrize("option", ["--url", "--proxy"])
def test_a_password_with_a_hash_or_question_mark_is_not_read_as_a_port(
    tmp_path: Path, command: tuple[str, ...], cut: str, option: str
) -> None:
    """A `#` or `?` written as is in a password ends the authority: `bob:4711#...@host` reads
    as host `bob`, port 4711. The password's head was shown as that port (`cannot resolve
    host 'bob' (http://bob:4711/studies)`, exit 3) after a request to that host was tried."""
    url = f"http://bob:4711{cut}{SECRET}@127.0.0.1:9/dicomweb"
    given = (
        ("--url", url) if option == "--url" else ("--url", "http://127.0.0.1:9/dw", "--proxy", url)
    )
    line = scan_error_run(tmp_path, *command, *given)
    assert "4711" not in line and "***:***@127.0.0.1:9" in line, line
    assert "has a '#' or '?' in its user or password: write it percent-encoded (%23, %3F)" in line


@pytest.mark.parametrize(
    ("given", "env", "where"),
    [
        (("--proxy", f"http://u:{SECRET}@127.0.0.1:9299x"), None, "--proxy http://***:***@"),
        ((), {"HTTP_PROXY": f"http://u:{SECRET}@127.0.0.1:99999"}, "$HTTP_PROXY http://***:***@"),
        ((), {"http_proxy": f"http://u:{SECRET}@127 .0.0.1:9"}, "$HTTP_PROXY http://***:***@"),
        ((), {"ALL_PROXY": f"socks5h://u:{SECRET}@127.0.0.1:x"}, "$ALL_PROXY socks5h://***:***@"),
        # libcurl quoted these whole, and the redaction of its words stopped at the space
        (("--proxy", f"http://u:{SECRET} two@127.0.0.1:9"), None, "has a space in it"),
        ((), {"HTTP_PROXY": f"http://u:{SECRET} two@127.0.0.1:9"}, "$HTTP_PROXY http://***:***@"),
        (("--proxy", f"http://u:{SECRET}%0A@127.0.0.1:9"), None, "a control character in its"),
    ],
)
@pytest.mark.parametrize("command", [("query",), ("sync",)])
def test_a_malformed_proxy_url_is_a_usage_error_without_its_password(
    tmp_path: Path,
    command: tuple[str, ...],
    given: tuple[str, ...],
    env: dict[str, str] | None,
    where: str,
) -> None:
    """libcurl quotes a proxy URL it cannot parse whole, password included: dlstudy checks
    the proxy first, and says what is wrong with it itself."""
    args = (*command, "--url", "http://127.0.0.1:9/dicomweb", *given)
    line = scan_error_run(tmp_path, *args, env=env)
    assert where in line


@pytest.mark.parametrize(
    ("password", "why"),
    [(SECRET, "has a port that is not a number"), (f"{SECRET} and more", "has a space in it")],
)
def test_a_library_callers_bad_proxy_is_named_without_its_password(
    tmp_path: Path, password: str, why: str
) -> None:
    """The library checks a proxy first, as the CLI does (it was libcurl's `Unsupported proxy
    syntax`, exit 3, after the output folder was made): a usage error, the password masked,
    one with a space in it whole."""
    import dlstudy
    from dlstudy.errors import DlstudyError

    proxy = f"http://u:{password}@127.0.0.1:9299x"
    with pytest.raises(DlstudyError) as caught:
        dlstudy.download(["1.2.3"], "http://127.0.0.1:9/dw", output=tmp_path / "o", proxy=proxy)
    assert str(caught.value).startswith("--proxy http://***:***@127.0.0.1:9299x: the proxy URL")
    assert why in str(caught.value) and caught.value.exit_status == dlstudy.ExitStatus.USAGE
    assert SECRET not in str(caught.value)
    assert not (tmp_path / "o").exists()


def test_settings_are_shown_without_their_secrets() -> None:
    """A library caller's log line or traceback that shows its Settings shows no password or
    key: not the URL's nor the proxy's, which may hold them, as token and headers may."""
    import dlstudy

    settings = dlstudy.Settings(
        url=f"https://bob:{SECRET}@pacs.example.org/dw?api_key={SECRET}",
        proxy=f"http://u:{SECRET}@proxy.example.org:3128",
        token=SECRET, password=SECRET, headers=(("X-Api-Key", SECRET),),
    )  # fmt: skip
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "output=" in repr(settings)


LOGGING_CALLER = """
import logging, sys, dlstudy
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
url, study, out = sys.argv[1:]
summary = dlstudy.download(study, url, output=out)
print("downloaded", summary.downloaded)
"""


def test_a_library_callers_log_shows_no_secret_of_the_url(
    synth_study: SynthStudy,
    embedded_server: StartServer,
    seen_requests: SeenRequests,
    tmp_path: Path,
) -> None:
    """A library caller logging at INFO (DEBUG here) got httpx's `HTTP Request: GET
    ...?api_key=SECRET` lines: the CLI quiets httpx's logger, the library did not."""
    import subprocess
    import sys

    seen_requests.gateway_keys = {"api_key"}
    url = embedded_server(synth_study.root)
    keyed = f"{url}?api_key={SECRET}"
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_CALLER, keyed, synth_study.study_uid, str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"downloaded {len(synth_study.instances)}" in result.stdout
    assert "HTTP Request: GET" in result.stdout  # httpx's lines are there, masked
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "header", [f"X-Api-Key {SECRET}", SECRET, f"Authorization Bearer {SECRET}:x"]
)
def test_a_header_without_its_colon_is_not_echoed(tmp_path: Path, header: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[defaults]\nheader = [{header!r}]\n".replace("'", '"'))
    url = ("--url", "http://127.0.0.1:9/dicomweb")
    for given in (("--header", header), ("--config", str(config))):
        line = scan_error_run(tmp_path, "query", *url, *given)
        assert "--header must look like 'Name: value'" in line


def one_listed_series(scripted: Routes) -> tuple[list[str], Route]:
    """STUDY listed as one series of two instances, searched by series (its instance-level
    search refused); returns the SOP UIDs and the route of the instances themselves."""
    series, sops = f"{STUDY}.5", [f"{STUDY}.5.{i}" for i in (1, 2)]
    base = f"/dicomweb/studies/{STUDY}/series"
    scripted.get(f"/dicomweb/studies/{STUDY}/instances").mock(return_value=httpx.Response(400))
    for path, listed in [
        (base, [series_json(series, count=len(sops))]),
        (f"{base}/{series}/instances", [instance_json(sop) for sop in sops]),
    ]:
        scripted.get(path).mock(return_value=httpx.Response(200, json=listed))
    return sops, scripted.get(f"{base}/{series}/instances/", prefix=True)


def _echoing(request: httpx.Request) -> httpx.Response:
    """A refusal whose reason phrase repeats what the request carried: its Authorization
    (and a Basic one decoded, and its user name), its X-Api-Key and its query, as some
    gateways' errors do."""
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    decoded = base64.b64decode(credentials).decode() if scheme == "Basic" else ""
    echoed = (
        f"Refused {authorization} ({decoded}) user {decoded.partition(':')[0]} "
        f"key {request.headers.get('x-api-key', '')} "
        f"for {request.url.query.decode()} at {request.url.netloc.decode()}"
    )
    return httpx.Response(500, extensions={"reason_phrase": echoed.encode()})


@pytest.mark.parametrize(
    "credentials",
    [
        ("--token", SECRET, "--header", f"X-Api-Key: {SECRET}-key"),
        ("--user", "bob", "--password", SECRET),
        ("--url-user", f"{SECRET}-as-user"),
    ],
    ids=["token-and-header", "basic", "token-as-url-user"],
)
def test_a_reason_phrase_echoing_the_credentials_is_shown_without_them(
    scripted: Routes, tmp_path: Path, credentials: tuple[str, ...]
) -> None:
    """A server may answer a refusal with a reason phrase that repeats the request's
    credentials or query: the failure lines, --json, --report and --log-file show the rest of
    it with each secret masked (they showed the token, the key and the password as sent, and
    a token given as the URL's user name where the phrase named the user alone)."""
    url = f"{scripted.base}?code={SECRET}-code"
    if credentials[0] == "--url-user":  # https://<token>@host/..., GitHub-style
        url, credentials = url.replace("://", f"://{credentials[1]}@"), ()
    sops, instances = one_listed_series(scripted)
    instances.mock(side_effect=_echoing)
    report, log = tmp_path / "report.jsonl", tmp_path / "run.log"
    result = run_installed(
        "download", STUDY, "--url", url, *credentials,
        "-o", str(tmp_path / "out"), "--http", "1.1", "--retries", "0", "--json",
        "--report", str(report), "--log-file", str(log), "-v",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    outputs = {"stdout": result.stdout, "stderr": result.stderr}
    outputs |= {"report": report.read_text(), "log": log.read_text()}
    for where, text in outputs.items():
        assert SECRET not in text, f"a secret is in {where}: {text}"
    reasons = [failure["reason"] for failure in json.loads(result.stdout)["failures"]]
    assert len(reasons) == len(sops) and all("HTTP 500 Refused " in r for r in reasons), reasons
    assert all("***" in r and "for code=***" in r for r in reasons), reasons
    assert all(f" at {scripted.origin.removeprefix('http://')}" in r for r in reasons), reasons


PROXY_USER, PROXY_PASSWORD = "pxuser", f"{SECRET}-proxy"
# What libcurl sends the proxy: Proxy-Authorization: Basic <this>
PROXY_BASIC = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()


def proxied_through(scripted: Routes) -> str:
    """The scripted server as an HTTP proxy asking for PROXY_USER and PROXY_PASSWORD."""
    return scripted.origin.replace("://", f"://{PROXY_USER}:{PROXY_PASSWORD}@")


def assert_no_proxy_credentials(outputs: dict[str, str]) -> None:
    for where, text in outputs.items():
        for secret in (PROXY_USER, PROXY_PASSWORD, PROXY_BASIC):
            assert secret not in text, f"{secret} is in {where}: {text}"


def _echoing_proxy_authorization(request: httpx.Request) -> httpx.Response:
    said = f"Bad request {request.headers.get('proxy-authorization', '')}"
    return httpx.Response(400, extensions={"reason_phrase": said.encode()})


def test_a_proxys_reason_phrase_echoing_its_credentials_is_shown_without_them(
    scripted: Routes, tmp_path: Path
) -> None:
    """A proxy may refuse with a reason phrase that repeats the Proxy-Authorization it was
    sent: its Basic credential (base64 of the user and password) was shown as sent in the
    failure lines, --json, --report and --log-file."""
    sops, instances = one_listed_series(scripted)
    echoing = instances.mock(side_effect=_echoing_proxy_authorization)
    report, log = tmp_path / "report.jsonl", tmp_path / "run.log"
    result = run_installed(
        "download", STUDY, "--url", scripted.base, "--proxy", proxied_through(scripted),
        "-o", str(tmp_path / "out"), "--retries", "0", "--json",
        "--report", str(report), "--log-file", str(log), "-v",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert echoing.requests[0].headers["proxy-authorization"] == f"Basic {PROXY_BASIC}"
    outputs = {"stdout": result.stdout, "stderr": result.stderr}
    assert_no_proxy_credentials(outputs | {"report": report.read_text(), "log": log.read_text()})
    reasons = [failure["reason"] for failure in json.loads(result.stdout)["failures"]]
    assert len(reasons) == len(sops), reasons
    assert all(r.endswith("HTTP 400 Bad request Basic ***") for r in reasons), reasons


def _refusing_with_proxy_credentials(request: httpx.Request) -> httpx.Response:
    said = f"proxy auth failed for user {PROXY_USER} with password {PROXY_PASSWORD}"
    return httpx.Response(400, text=f"{said}; got {request.headers['proxy-authorization']}")


def test_a_proxys_refusal_naming_its_credentials_is_shown_without_them(
    scripted: Routes,
) -> None:
    """A proxy's 4xx body may name the user and password it refused, or repeat the headers
    it was sent: the search's error line showed them as said (only the server's own
    secrets were masked in a body, the proxy's in a reason phrase alone)."""
    scripted.get("/dicomweb/studies").mock(side_effect=_refusing_with_proxy_credentials)
    result = run_installed(
        "query", "--url", scripted.base, "--proxy", proxied_through(scripted), "-v"
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert_no_proxy_credentials({"stdout": result.stdout, "stderr": result.stderr})
    assert "user *** with password ***; got Basic ***" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("query",),
        ("sync",),
        ("download", "1.2.3"),
        ("download",),  # the rest of the secret read as the study UID
        ("bench", "1.2.3"),
        ("bench", "--json"),  # the same, and --json prints the UID asked
        ("catalog", "pull"),
    ],
)
@pytest.mark.parametrize(
    "unquoted",
    [
        ("--header", "X-Api-Key:", SECRET),
        ("--header=Authorization:", "Bearer", SECRET),
        ("--user", "bob", "--password", "two", SECRET),
        ("--token-command", "echo", SECRET),
    ],
    ids=["header", "header=", "password", "token-command"],
)
def test_the_words_a_shell_split_off_a_secret_are_not_echoed(
    tmp_path: Path, command: tuple[str, ...], unquoted: tuple[str, ...]
) -> None:
    """A value with a space, not quoted (`--header X-Api-Key: s3cret`), leaves its rest as
    arguments of their own: the parser's error named them (`Got unexpected extra argument
    (s3cret)`, `invalid study UID 's3cret'`)."""
    given = (*command, "--url", "http://127.0.0.1:9/dicomweb", *unquoted)
    if command[0] == "catalog":
        given += ("--db", str(tmp_path / "catalog.db"))
    line = scan_error_run(tmp_path, *given)
    assert "not shown" in line and "quote" in line, line


@pytest.mark.parametrize(
    "command",
    [("query",), ("sync",), ("download", "1.2.3"), ("download",), ("bench", "--json")]
    + [("catalog", "pull")],
)
@pytest.mark.parametrize("option", ["--url", "--proxy"])
def test_the_words_a_shell_split_off_a_urls_password_are_not_echoed(
    tmp_path: Path, command: tuple[str, ...], option: str
) -> None:
    """A URL whose password has a space, not quoted (`--url http://alice:Winter 2024@host`),
    left the password's rest and the host as a word of its own, which the error named:
    `Got unexpected extra argument(s) (2024@127.0.0.1:9/dicomweb)`, `invalid study UID
    '2024@...'`; and --json's `url` showed the password's head as a port
    (`http://alice:Winter`)."""
    # as a shell splits it: `http://alice:SECRET` (its "port" the password's head) and the rest
    split = f"http://alice:{SECRET} {SECRET}@127.0.0.1:9/dicomweb".split()
    given = ("--url", "http://127.0.0.1:9/dicomweb", "--proxy", *split)
    given = (*command, *(("--url", *split) if option == "--url" else given))
    if command[0] == "catalog":
        given += ("--db", str(tmp_path / "catalog.db"))
    line = scan_error_run(tmp_path, *given)
    assert f"(not shown: it follows {option} and may be part" in line, line
    assert line.endswith("write a space in a URL as %20)") or "%20) (see " in line, line


NUMERIC_KEY = "8734629183"  # all digits: a valid study UID


@pytest.mark.parametrize("command", ["download", "bench"])
@pytest.mark.parametrize(
    "header", [("--header", "X-Api-Key:"), ("--header=X-Api-Key:",)], ids=["header", "header="]
)
def test_a_valid_uid_split_off_an_empty_header_is_refused_unseen(
    scripted: Routes, tmp_path: Path, command: str, header: tuple[str, ...]
) -> None:
    """`--header X-Api-Key: 8734629183` gives the header nothing and leaves the key as a
    word: all digits, it was taken as the study UID, sent to the archive and shown (`study
    8734629183 not found on the server`, in --json too)."""
    out = ("-o", str(tmp_path / "out")) if command == "download" else ()
    result = run_installed(command, "--url", scripted.base, *out, *header, NUMERIC_KEY, "--json")
    assert NUMERIC_KEY not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    said = json.loads(result.stdout)["error"]
    assert said.startswith("--header X-Api-Key: is empty and a word follows it"), said
    assert "not shown" in said and "quote" in said and result.stderr.endswith(f"{said}\n")
    assert not scripted.raw_paths  # nothing was asked of the server


@pytest.mark.parametrize("command", ["bench", "download"])
@pytest.mark.parametrize(
    "credentials",
    [
        ("--token", "tok"),
        ("--header", "X-Api-Key: key"),
        ("--user", "bob", "--password", "pw"),
        ("--token-command", "echo tok"),
    ],
    ids=["token", "header", "password", "token-command"],
)
def test_a_valid_study_uid_after_a_secrets_value_is_taken(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    command: str,
    credentials: tuple[str, ...],
) -> None:
    """Only a word that is no valid UID may be the rest of an unquoted secret: bench refused
    a valid study UID right after a secret's value (`invalid study UID (not shown: it
    follows --token ...)`, exit 2), which download took."""
    url = embedded_server(synth_study.root)
    if command == "bench":
        rest = ("--repeat", "1", "-c", "1", "--http", "1.1", "--strategy", "study")
    else:
        rest = ("-o", str(tmp_path / "out"))
    result = run_installed(command, "--url", url, *credentials, synth_study.study_uid, *rest)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://127.0.0.1:99999/dw#access_token={SECRET}", "/dw#access_token=***'"),
        (f"ftp://127.0.0.1/dw?a=1#access_token={SECRET}&x=1", "/dw?a=***#access_token=***&x=***'"),
        (f"127.0.0.1/dw#id_token={SECRET}", "/dw#id_token=***'"),  # no scheme: loosely
    ],
)
def test_a_token_in_a_urls_fragment_is_masked(tmp_path: Path, url: str, shown: str) -> None:
    """An OAuth implicit grant hands its token back in the fragment (`#access_token=...`): a
    URL copied from a browser's address bar may hold one. It was shown as written."""
    line = scan_error_run(tmp_path, "query", "--url", url)
    assert line.endswith(shown), line
