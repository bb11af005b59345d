"""Proxies, through real ones on 127.0.0.1 (tinyproxy for HTTP and CONNECT, microsocks for
SOCKS5), driving the installed `dlstudy` as a user would. Each proxy's own log says which
requests went through it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dlstudy.server import ServerOptions, running_server

from ..cli_helpers import assert_same_files, run_installed, start_installed
from ..fixtures.embedded_server import StartServer, SynthStudy, TlsFiles
from ..fixtures.proxies import RunningProxy, TlsProxy, tinyproxy

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def download(study: SynthStudy, url: str, out: Path, *extra: str, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    result = run_installed(
        "download", study.study_uid, "--url", url, "-o", str(out), "--json", *extra, env=env
    )
    assert result.returncode == 0, result.stderr
    summary: dict = json.loads(result.stdout)  # type: ignore[type-arg]
    return summary


def _wait_for_a_file(out: Path, run: subprocess.Popen[str]) -> None:
    """Until the run has committed its first instance into `out` (or ended, or a minute)."""
    deadline = time.monotonic() + 60
    while not any(out.rglob("*.dcm")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_downloads_and_queries_go_through_the_environments_http_proxy(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    http_proxy: RunningProxy,
    variable: str,
) -> None:
    """Upper-case HTTP_PROXY too, as httpx and requests read it (libcurl alone would not)."""
    url = embedded_server(synth_study.root)
    env = {variable: http_proxy.url}
    mark = http_proxy.mark()
    query = run_installed("query", "--url", url, "--uids", env=env)
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == [synth_study.study_uid]
    download(synth_study, url, tmp_path, "--workers", "1", env=env)
    assert_same_files(synth_study.instances, tmp_path)
    through = http_proxy.since(mark)
    assert f"GET {url}/studies" in through  # the query
    instance_gets = re.findall(r"GET \S+/instances/[0-9.]+ HTTP", through)
    assert len(instance_gets) == len(synth_study.instances)


def test_https_goes_through_a_connect_tunnel_and_keeps_http2(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    http_proxy: RunningProxy,
    tls_ca: TlsFiles,
) -> None:
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    port = url.split(":")[2].split("/")[0]
    mark = http_proxy.mark()
    summary = download(
        synth_study,
        url,
        tmp_path,
        "--ca-bundle",
        str(tls_ca.ca_pem),
        env={"HTTPS_PROXY": http_proxy.url},
    )
    assert_same_files(synth_study.instances, tmp_path)
    assert summary["http_version"] == "HTTP/2"  # end to end, inside the tunnel
    assert f"CONNECT 127.0.0.1:{port}" in http_proxy.since(mark)


@pytest.mark.parametrize("command", ["download", "query"])
@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_http2_to_an_http_url_through_a_proxy_is_a_usage_error(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    http_proxy: RunningProxy,
    command: str,
    given_by: str,
) -> None:
    """A proxy is sent http:// requests to forward, and forwards them over HTTP/1.1: `--http
    2` ran HTTP/1.1 without a word (`http_version` HTTP/1.1, exit 0), where usage.md says 2
    is that version only. Now one line saying why and what to do, exit 2, before any
    request."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    by_option = given_by == "option"
    proxy = ["--proxy", http_proxy.url] if by_option else []
    env = {} if by_option else {"HTTP_PROXY": http_proxy.url}
    chosen = [synth_study.study_uid, "-o", str(out)] if command == "download" else ["--uids"]
    mark = http_proxy.mark()
    result = run_installed(command, *chosen, "--url", url, "--http", "2", *proxy, env=env)

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: --http 2 cannot go through the proxy {http_proxy.url}")
    assert "forwards http:// requests over HTTP/1.1): use --http auto, an https:// URL" in line
    assert http_proxy.since(mark) == ""
    assert not out.exists()


def test_http2_keeps_to_http2_where_no_proxy_forwards_it(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    http_proxy: RunningProxy,
    socks_proxy: RunningProxy,
) -> None:
    """`--http 2` to an http:// URL is refused only where an HTTP proxy would forward it:
    NO_PROXY naming the archive, or a SOCKS proxy (a tunnel), keep h2c end to end."""
    url = embedded_server(synth_study.root)
    env = {"HTTP_PROXY": http_proxy.url, "NO_PROXY": "127.0.0.1"}
    bypassed = download(synth_study, url, tmp_path / "a", "--http", "2", env=env)
    assert bypassed["http_version"] == "HTTP/2"
    socks = ["--proxy", socks_proxy.url.replace("socks5://", "socks5h://")]
    tunnelled = download(synth_study, url, tmp_path / "b", "--http", "2", *socks, env={})
    assert tunnelled["http_version"] == "HTTP/2"


def test_bench_through_a_proxy_to_an_http_url_says_why_http2_is_not_measured(
    synth_study: SynthStudy, embedded_server: StartServer, http_proxy: RunningProxy
) -> None:
    """bench measures both versions by default: its HTTP/2 rows are unsupported through an
    HTTP proxy to http:// (the note said the server answered HTTP/1.1), the others measured."""
    url = embedded_server(synth_study.root)
    result = run_installed(
        "bench", synth_study.study_uid, "--url", url, "--proxy", http_proxy.url, "--json",
        "--strategy", "single-part", "-c", "2", "--repeat", "1", "--limit", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {row["http"]: row for row in report["rows"]}
    assert (rows["1.1"]["status"], rows["2"]["status"]) == ("ok", "unsupported (no HTTP/2)")
    said = f"HTTP/2: the proxy {http_proxy.url} forwards http:// requests over HTTP/1.1"
    assert said in report["notes"], report["notes"]


def test_an_https_proxy_is_trusted_by_ca_bundle_or_the_environments_ca_directory(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_proxy: TlsProxy
) -> None:
    """TLS to the proxy itself (an https:// proxy URL): its certificate is checked against
    --ca-bundle, or the CA directories SSL_CERT_DIR names, as the server's would be."""
    url = embedded_server(synth_study.root)
    mark = tls_proxy.mark()
    env = {"HTTP_PROXY": tls_proxy.url}
    query = run_installed(
        "query", "--url", url, "--uids", "--ca-bundle", str(tls_proxy.ca_pem), env=env
    )
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == [synth_study.study_uid]
    hashed = tmp_path / "certs"
    hashed.mkdir()
    shutil.copy(tls_proxy.ca_pem, hashed)
    subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
    download(synth_study, url, tmp_path / "out", env={**env, "SSL_CERT_DIR": str(hashed)})
    assert_same_files(synth_study.instances, tmp_path / "out")
    instance_gets = re.findall(r"GET \S+/instances/[0-9.]+ HTTP", tls_proxy.since(mark))
    assert len(instance_gets) == len(synth_study.instances)


def test_a_tls_failure_with_the_proxy_names_the_proxy_not_the_server(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    tls_proxy: TlsProxy,
    tls_ca: TlsFiles,
) -> None:
    """An https:// proxy whose certificate is not trusted: the line names the proxy and its
    certificate (it blamed the server's); the server's untrusted certificate behind a
    trusted proxy is still the server's."""
    unknown_ca = "certificate is signed by an unknown CA (trust it with --ca-bundle)"
    for url in (
        embedded_server(synth_study.root),
        embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key),
    ):
        variable = "HTTPS_PROXY" if url.startswith("https") else "HTTP_PROXY"
        env = {variable: tls_proxy.url}
        result = run_installed("query", "--url", url, "--ca-bundle", str(tls_ca.ca_pem), env=env)
        assert result.returncode == 3, result.stderr
        (line,) = result.stderr.splitlines()
        handshake = f"dlstudy: error: TLS handshake with proxy {tls_proxy.url} failed"
        assert line.startswith(f"{handshake}: the proxy's {unknown_ca} ("), line

    result = run_installed("query", "--url", url, "--ca-bundle", str(tls_proxy.ca_pem), env=env)
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    # (a bundle was given, the proxy's: the server's CA is not in it)
    assert line.startswith(
        "dlstudy: error: TLS handshake with '127.0.0.1' failed: the server's certificate is "
        "signed by no CA of the bundle given ("
    ), line


def test_insecure_leaves_an_https_proxy_verified(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    tls_proxy: TlsProxy,
    tls_ca: TlsFiles,
) -> None:
    """--insecure is about the server's certificate only (as curl's; --proxy-insecure is
    another option): it turned off the check of an https:// proxy's too, whose credentials
    then went over TLS to whoever answered. A proxy whose CA is not given is refused, one
    line, exit 3; --ca-bundle trusts it, the server's certificate still unchecked."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    warning = "dlstudy: warning: --insecure: the server's TLS certificate is NOT verified"
    for server in (url, embedded_server(synth_study.root)):
        mark = tls_proxy.mark()
        result = run_installed(
            "query", "--url", server, "--uids", "--insecure", "--proxy", tls_proxy.url
        )
        assert result.returncode == 3, result.stderr
        said, line = result.stderr.splitlines()
        assert said == warning
        assert line.startswith(f"dlstudy: error: TLS handshake with proxy {tls_proxy.url} "), line
        assert "the proxy's certificate is signed by an unknown CA" in line, line
        through = tls_proxy.since(mark)  # no request got through it
        assert "GET " not in through and "CONNECT 127.0.0.1:" not in through, through

    trusted = ["--proxy", tls_proxy.url, "--ca-bundle", str(tls_proxy.ca_pem)]
    summary = download(synth_study, url, tmp_path, "--insecure", *trusted, env={})
    assert summary["instances"]["downloaded"] == len(synth_study.instances)


def test_a_plain_http_proxy_given_as_https_is_named_with_the_fix(
    synth_study: SynthStudy, embedded_server: StartServer, http_proxy: RunningProxy
) -> None:
    """`https://` for a plain HTTP proxy (a common slip): one that answers the TLS hello
    with plain HTTP, and tinyproxy, which waits silently for a request line, each named
    with the fix (tinyproxy's case was `Connection timed out` alone)."""
    url = embedded_server(synth_study.root)
    plain_server = url.rsplit("/", 1)[0].replace("http://", "https://")  # answers in HTTP
    silent = http_proxy.url.replace("http://", "https://")
    no_tls = "TLS handshake with proxy {} failed: it does not speak TLS"
    # (proxy, what is said, --timeout): the server answers at once, however busy the machine;
    # the silent one is waited for.
    cases = [
        (plain_server, no_tls.format(plain_server), 30),
        (silent, f"proxy {silent} did not answer in time (Connection timed out", 2),
    ]
    for proxy, said, timeout in cases:
        logged = http_proxy.log.stat().st_size
        env = {"HTTP_PROXY": proxy}
        result = run_installed("query", "--url", url, "--timeout", str(timeout), env=env)
        assert result.returncode == 3, result.stderr
        with http_proxy.log.open("rb") as log:
            log.seek(logged)
            if proxy == silent and b"Bad Request" in log.read():
                # The TLS hello's random bytes held a blank line (about one run in a few
                # hundred): tinyproxy took what came before it as a request and answered 400.
                said = no_tls.format(silent)
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"dlstudy: error: {said}"), line
        assert line.endswith("; if it is a plain HTTP proxy, give it as http://"), line


def test_a_socks_proxy_given_as_http_is_named_with_the_fix(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    socks_proxy: RunningProxy,
    tls_ca: TlsFiles,
) -> None:
    """`http://` for a SOCKS proxy (a common slip, `ssh -D` as much as microsocks): the line
    names the proxy and socks5:// (it blamed the archive: `127.0.0.1:<port> gave no HTTP
    answer (Received HTTP/0.9 when not allowed); if it speaks TLS, use https://`, or
    `(Proxy CONNECT aborted)`). Over http://, what came may be the archive's, passed on."""
    proxy = socks_proxy.url.replace("socks5://", "http://")
    socks = "if it is a SOCKS proxy, not an HTTP one, give it as socks5://"
    url = embedded_server(synth_study.root)
    tls_url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    cases = [
        (url, f"no HTTP answer through proxy {proxy} (", f"{socks}; if {url.split('/')[2]} "),
        (tls_url, f"proxy {proxy} did not answer as an HTTP proxy (", f"; {socks} ({tls_url}/"),
    ]
    for archive, starts, then in cases:
        for args in (("query",), ("download", synth_study.study_uid, "-o", str(tmp_path))):
            result = run_installed(
                *args, "--url", archive, "--proxy", proxy, "--ca-bundle", str(tls_ca.ca_pem)
            )
            assert result.returncode == 3, result.stderr
            line = result.stderr.splitlines()[-1]
            assert line.startswith(f"dlstudy: error: {starts}"), line
            assert then in line, line


def test_no_proxy_is_honoured(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    dead = f"http://127.0.0.1:{closed_port()}"
    download(
        synth_study, url, tmp_path, env={"HTTP_PROXY": dead, "NO_PROXY": "localhost,127.0.0.1"}
    )
    assert_same_files(synth_study.instances, tmp_path)


def test_an_empty_proxy_option_ignores_the_environments_proxy(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`--proxy ''` (or `proxy = ""` in a config profile): no proxy for this run, whatever
    the environment says, as curl's `--proxy ''` (it fell back to the environment's proxy)."""
    url = embedded_server(synth_study.root)
    env = {"HTTP_PROXY": f"http://user:s3cret@127.0.0.1:{closed_port()}"}  # dead
    query = run_installed("query", "--url", url, "--uids", "--proxy", "", env=env)
    assert query.returncode == 0, query.stderr
    assert query.stdout.split() == [synth_study.study_uid]
    config = tmp_path / "dlstudy.toml"
    config.write_text(f'[servers.pacs]\nurl = "{url}"\nproxy = ""\n')
    out = tmp_path / "out"
    result = run_installed(
        "download", synth_study.study_uid, "-o", str(out), "--config", str(config),
        "--server", "pacs", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_same_files(synth_study.instances, out)


def test_an_empty_dlstudy_proxy_counts_as_unset_as_every_variable_does(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`DLSTUDY_PROXY=''` is no `--proxy ''`: an empty DLSTUDY_ variable counts as unset
    (docs/usage.md, Configuration), so the environment's proxy applies; `NO_PROXY='*'` is the
    environment's way to turn it off."""
    url = embedded_server(synth_study.root)
    env = {"HTTP_PROXY": f"http://127.0.0.1:{closed_port()}", "DLSTUDY_PROXY": ""}  # dead
    through = run_installed("query", "--url", url, "--uids", env=env)
    assert through.returncode == 3, through.stderr
    assert "cannot use proxy http://127.0.0.1:" in through.stderr
    direct = run_installed("query", "--url", url, "--uids", env={**env, "NO_PROXY": "*"})
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.split() == [synth_study.study_uid]


# (NO_PROXY, the host in --url, whether the request goes through the proxy). libcurl resolves
# names under .localhost to 127.0.0.1 itself; tinyproxy could not: only direct requests use one.
# {port} is the server's.
NO_PROXY_CASES = [
    ("*.localhost", "pacs.localhost", False),
    (".localhost", "pacs.localhost", False),
    ("localhost", "pacs.localhost", False),
    ("127.0.0.0/8", "127.0.0.1", False),
    ("127.0.0.1:{port}", "127.0.0.1", False),
    ("*.example.org", "127.0.0.1", True),
    ("127.0.0.1:{other}", "127.0.0.1", True),
    ("127.0.0.2/32,10.0.0.0/8", "127.0.0.1", True),
    ("*", "127.0.0.1", False),
    ("pacs.example.org, 127.0.0.1", "127.0.0.1", False),
]


@pytest.mark.parametrize(("no_proxy", "host", "proxied"), NO_PROXY_CASES)
def test_no_proxy_forms_as_curl_requests_and_httpx_users_write_them(
    synth_study: SynthStudy,
    embedded_server: StartServer,
    http_proxy: RunningProxy,
    no_proxy: str,
    host: str,
    proxied: bool,
) -> None:
    """A leading dot or `*.`: the name and the names below it; CIDR ranges; a `:port` suffix:
    that port only (as httpx and requests read it; curl never matches such an entry)."""
    url = embedded_server(synth_study.root).replace("127.0.0.1", host)
    port = int(url.split(":")[2].split("/")[0])
    no_proxy = no_proxy.format(port=port, other=port + 1 if port < 65535 else port - 1)
    mark = http_proxy.mark()
    result = run_installed(
        "query", "--url", url, "--uids", env={"HTTP_PROXY": http_proxy.url, "NO_PROXY": no_proxy}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [synth_study.study_uid]
    assert (f"GET {url}/studies" in http_proxy.since(mark)) == proxied


@pytest.mark.parametrize("how", ["environment", "--proxy"])
def test_a_dead_proxy_fails_at_once_with_exit_3_naming_it(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, how: str
) -> None:
    url = embedded_server(synth_study.root)
    port = closed_port()
    dead = f"http://proxyuser:s3cret@127.0.0.1:{port}"
    if how == "--proxy":
        result = run_installed(
            "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path), "--proxy", dead
        )
    else:
        result = run_installed(
            "download", synth_study.study_uid, "--url", url, "-o", str(tmp_path),
            env={"HTTP_PROXY": dead},
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert error.startswith(
        f"dlstudy: error: cannot use proxy http://***:***@127.0.0.1:{port} for {url}/"
    )
    assert error.endswith(": connection refused by the proxy"), error
    assert "s3cret" not in result.stderr
    assert not any(tmp_path.rglob("*.dcm"))


def test_a_dead_proxy_for_an_https_archive_is_the_one_said_to_refuse(
    synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """libcurl's words for a CONNECT that never reached the proxy name the archive's address
    (`Failed to connect to 127.0.0.1 port <archive's> over proxy ...`), which read as the
    archive being down: the line says the proxy refused."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    dead = f"http://127.0.0.1:{closed_port()}"
    result = run_installed(
        "query", "--url", url, "--ca-bundle", str(tls_ca.ca_pem), "--proxy", dead
    )
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"dlstudy: error: cannot use proxy {dead} for {url}/studies"), line
    assert line.endswith(": connection refused by the proxy"), line


def test_a_socks5_proxy_given_by_option(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    socks_proxy: RunningProxy,
) -> None:
    url = embedded_server(synth_study.root)
    port = url.split(":")[2].split("/")[0]
    mark = socks_proxy.mark()
    # --proxy wins over the environment's (dead) proxy.
    dead = f"http://127.0.0.1:{closed_port()}"
    download(
        synth_study,
        url,
        tmp_path,
        "--proxy",
        socks_proxy.url.replace("socks5://", "socks5h://"),
        env={"HTTP_PROXY": dead},
    )
    assert_same_files(synth_study.instances, tmp_path)
    assert f"connected to 127.0.0.1:{port}" in socks_proxy.since(mark)


def test_an_unusable_proxy_url_is_a_usage_error(tmp_path: Path) -> None:
    result = run_installed(
        "download", "1.2.3", "--url", "http://127.0.0.1:9/dicomweb", "-o", str(tmp_path),
        "--proxy", "ftp://127.0.0.1:21",
    )  # fmt: skip
    assert result.returncode == 2
    assert "unsupported proxy scheme 'ftp'" in result.stderr


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_asking_for_credentials_is_named(
    tmp_path: Path, locked_proxy: RunningProxy, scheme: str
) -> None:
    """407 comes from the proxy, not the archive: the error names the proxy and what it
    wants (over http:// it is the answer to the request; over https://, to the CONNECT)."""
    url = f"{scheme}://127.0.0.1:{closed_port()}/dicomweb"
    for args in (("query",), ("download", "1.2.3", "-o", str(tmp_path))):
        result = run_installed(*args, "--url", url, "--proxy", locked_proxy.url)
        assert result.returncode == 3, result.stderr
        assert result.stderr.splitlines()[-1] == (
            f"dlstudy: error: proxy {locked_proxy.url} wants credentials (HTTP 407 Proxy "
            "Authentication Required); give them in its URL: http://user:password@host:port"
        )
    with_them = locked_proxy.url.replace("://", "://dlstudy:pr0xy-pass@")
    result = run_installed("query", "--url", url, "--proxy", with_them)
    assert result.returncode == 3 and "407" not in result.stderr  # through: nothing listens


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_refusing_the_credentials_in_its_url_is_named(
    tmp_path: Path, locked_proxy: RunningProxy, scheme: str
) -> None:
    """Wrong credentials: tinyproxy refuses them with 401, not 407. Through a CONNECT tunnel
    that is the proxy's answer for sure; over http:// it reads as the archive's, so the line
    names the proxy's credentials too. The password is never shown."""
    url = f"{scheme}://127.0.0.1:{closed_port()}/dicomweb"
    wrong = locked_proxy.url.replace("://", "://dlstudy:wr0ng-pass@")
    shown = locked_proxy.url.replace("://", "://***:***@")
    for args in (("query",), ("download", "1.2.3", "-o", str(tmp_path))):
        result = run_installed(*args, "--url", url, "--proxy", wrong)
        assert result.returncode == 3, result.stderr
        last = result.stderr.splitlines()[-1]
        if scheme == "https":
            assert last == (
                f"dlstudy: error: proxy {shown} refused the credentials in its URL (HTTP 401)"
            )
        else:
            assert last.startswith("dlstudy: error: server rejected the credentials: HTTP 401")
            assert last.endswith(
                f"(check --token / --user / --password, and the credentials of proxy {shown})"
            )
        assert "wr0ng-pass" not in result.stderr


def test_a_proxy_denying_the_archive_is_named_with_the_403(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A proxy whose rules do not allow the archive's host (tinyproxy's filter) answers an
    http:// request with 403, which reads as the archive's: the line names the proxy too
    (it blamed the server alone)."""
    url = embedded_server(synth_study.root)
    (tmp_path / "filter").write_text("example\\.org\n")
    extra = f'Filter "{tmp_path / "filter"}"\nFilterDefaultDeny Yes\n'
    with tinyproxy(tmp_path / "proxy", closed_port(), extra) as proxy:
        for args in (("query",), ("download", synth_study.study_uid, "-o", str(tmp_path / "o"))):
            result = run_installed(*args, "--url", url, env={"HTTP_PROXY": proxy.url})
            assert result.returncode == 3, result.stderr
            line = result.stderr.splitlines()[-1]
            assert line.startswith(f"dlstudy: error: server denied access: HTTP 403 on {url}/")
            assert line.endswith(
                f" (through proxy {proxy.url}, which may be the one refusing; to reach the "
                "archive without it, add its host to NO_PROXY)"
            ), line
    assert not any((tmp_path / "o").rglob("*.dcm"))


def test_a_proxy_restarting_mid_run_costs_no_instance(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A proxy that refuses connections for a moment (a restart, a configuration reload)
    after the run began: requests connect again (for up to --timeout), the run completes.
    (A proxy dead from the start still stops the run at once: see above.)"""
    url = embedded_server(synth_study.root, latency=0.2)  # one at a time: the run lasts ~12 s
    port, out = closed_port(), tmp_path / "out"
    with tinyproxy(tmp_path / "proxy", port) as proxy:
        run = start_installed(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
            "--proxy", proxy.url, "-c", "1", "--workers", "1",
        )  # fmt: skip
        _wait_for_a_file(out, run)
    time.sleep(1)  # the proxy is down: every connection is refused
    with tinyproxy(tmp_path / "proxy", port):
        output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    assert_same_files(synth_study.instances, out)


def test_the_server_restarting_behind_a_socks_proxy_costs_no_instance(
    tmp_path: Path, synth_study: SynthStudy, socks_proxy: RunningProxy
) -> None:
    """The archive restarting behind a SOCKS5 proxy: the proxy says the server refused its
    connection (SOCKS5 reply 5), which is the refusal an HTTP proxy's CONNECT answer or a
    direct connection gives: connected to again for up to --timeout (it stopped the run at
    once: `cannot complete SOCKS5 connection to 127.0.0.1. (5)`, exit 3)."""
    options = ServerOptions(root=synth_study.root, port=closed_port(), latency=0.2)
    out = tmp_path / "out"
    with running_server(options) as url:  # one at a time: the run lasts ~12 s
        run = start_installed(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--json",
            "--proxy", socks_proxy.url, "-c", "1", "--workers", "1",
        )  # fmt: skip
        _wait_for_a_file(out, run)
    time.sleep(1)  # the server is down: the proxy's every connection to it is refused
    with running_server(options):
        output, _ = run.communicate(timeout=120)
    assert run.returncode == 0, output
    assert_same_files(synth_study.instances, out)


def test_a_proxy_refusing_a_tunnel_mid_run_stops_the_run_at_once(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, tls_ca: TlsFiles
) -> None:
    """A proxy that comes back from a restart with rules that deny the archive answers its
    CONNECT with 403: a refusal, not a connection refused, so it is not tried again for
    --timeout seconds (libcurl gives both the same code; it was tried again every 0.5 s)."""
    url = embedded_server(
        synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key, latency=0.2
    )  # one at a time: the run lasts ~12 s
    port, out = closed_port(), tmp_path / "out"
    (tmp_path / "filter").write_text("example\\.org\n")
    deny = f'Filter "{tmp_path / "filter"}"\nFilterDefaultDeny Yes\n'
    with tinyproxy(tmp_path / "proxy", port) as proxy:
        run = start_installed(
            "download", synth_study.study_uid, "--url", url, "-o", str(out), "--proxy",
            proxy.url, "--ca-bundle", str(tls_ca.ca_pem), "-c", "1", "--workers", "1", "-v",
            "--timeout", "8",
        )  # fmt: skip
        _wait_for_a_file(out, run)
    with tinyproxy(tmp_path / "proxy", port, deny):
        output, _ = run.communicate(timeout=120)
    assert run.returncode == 3, output
    assert "response 403); trying again" not in output
    assert output.splitlines()[-1].startswith(f"dlstudy: error: cannot use proxy {proxy.url} for")
    assert output.splitlines()[-1].endswith("CONNECT tunnel failed, response 403"), output


def test_a_request_timing_out_through_a_proxy_names_the_proxy(
    tmp_path: Path, http_proxy: RunningProxy
) -> None:
    """A server that never answers, reached through a proxy, looks the same as a proxy that
    never answers: the line says which proxy the request went through."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicomweb"
        result = run_installed(
            "download", "1.2.3", "--url", url, "-o", str(tmp_path), "--proxy", http_proxy.url,
            "--timeout", "3", "--retries", "0",
        )  # fmt: skip
    assert result.returncode == 3, result.stderr
    # libcurl gives up after 3-4 s of silence, well before the search's own watchdog (6 s).
    assert result.stderr.splitlines()[-1].endswith(
        f"timed out waiting for {url}/studies/1.2.3/series through proxy {http_proxy.url}"
    ), result.stderr


def test_a_server_error_through_a_proxy_names_the_proxy(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, http_proxy: RunningProxy
) -> None:
    """An archive that is down behind an HTTP proxy: tinyproxy answers `500 Unable to
    connect` itself, which the line gave as the archive's own answer, with no word of the
    proxy. A 5xx through a proxy now names it; the archive's own 502 does the same, as the
    two cannot be told apart."""
    env = {"HTTP_PROXY": http_proxy.url}
    dead = f"http://127.0.0.1:{closed_port()}/dicomweb"
    out = tmp_path / "out"
    args = (synth_study.study_uid, "-o", str(out), "--json", "--retries", "0")
    search = run_installed("download", "--url", dead, *args, env=env)
    assert search.returncode == 3, search.stderr
    (line,) = search.stderr.splitlines()
    assert re.search(rf"HTTP 500 on {re.escape(dead)}\S* \(through proxy {http_proxy.url}\)", line)
    url = embedded_server(synth_study.root, fault_rate=1.0, fault_status=502)
    result = run_installed("download", "--url", url, *args, env=env)
    assert result.returncode == 1, result.stderr
    reasons = [f["reason"] for f in json.loads(result.stdout)["failures"]]
    assert reasons and all(
        r.endswith(f"HTTP 502 (through proxy {http_proxy.url})") for r in reasons
    ), reasons
