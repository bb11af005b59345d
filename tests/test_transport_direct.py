"""Transport.stream sends plain GETs straight to the lean transport, skipping httpx's request
pipeline; whatever that pipeline acts on (redirects, cookies, another origin, auth flows) must
still behave as httpx makes it. Against a real HTTP/1.1 server on 127.0.0.1."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dlstudy import transport as transport_module
from dlstudy.settings import Settings
from dlstudy.transport import Transport


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    port: int
    seen: list[Seen] = field(default_factory=list)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/dicomweb"


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
            state.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            extra: list[tuple[str, str]] = []
            status = 200
            if self.path == "/dicomweb/redirect":
                status, extra = 302, [("Location", "/dicomweb/target")]
            elif self.path == "/dicomweb/elsewhere":
                status, extra = 302, [("Location", f"{state.url('localhost')}/target")]
            elif self.path == "/dicomweb/cookie":
                extra = [("Set-Cookie", "affinity=node-7; Path=/")]
            body = f"body of {self.path}".encode()
            self.send_response(status)
            for name, value in extra:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fetch(settings: Settings, *paths: str) -> list[tuple[int, bytes]]:
    async def run() -> list[tuple[int, bytes]]:
        transport = Transport(settings)
        results = []
        try:
            for path in paths:
                async with transport.stream(
                    f"{transport.base_url}{path}", {"Accept": "application/dicom"}
                ) as response:
                    results.append((response.status_code, await response.aread()))
        finally:
            await transport.aclose()
        return results

    return anyio.run(run)


def settings_for(server: Server) -> Settings:
    return Settings(url=server.url(), http="1.1", token="t0k", headers=(("X-Api-Key", "k1"),))


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Requests that went through httpx's client pipeline (AsyncClient.send)."""
    calls: list[str] = []
    send = httpx.AsyncClient.send

    async def counting_send(
        self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        calls.append(request.url.path)
        return await send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", counting_send)
    return calls


def test_a_plain_get_carries_the_clients_headers_and_the_callers(
    server: Server, pipeline_calls: list[str]
) -> None:
    assert fetch(settings_for(server), "/a") == [(200, b"body of /dicomweb/a")]
    assert pipeline_calls == []  # sent straight to the transport
    (seen,) = server.seen
    assert seen.headers["accept"] == "application/dicom"
    assert seen.headers["authorization"] == "Bearer t0k"
    assert seen.headers["x-api-key"] == "k1"
    assert seen.headers["user-agent"] == "dlstudy"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"


def test_a_redirect_is_followed_with_the_same_headers(
    server: Server, pipeline_calls: list[str]
) -> None:
    assert fetch(settings_for(server), "/redirect") == [(200, b"body of /dicomweb/target")]
    assert pipeline_calls == ["/dicomweb/redirect"]  # httpx followed it
    target = server.seen[-1]
    assert target.path == "/dicomweb/target"
    assert target.headers["accept"] == "application/dicom"
    assert target.headers["authorization"] == "Bearer t0k"


def test_secrets_never_follow_a_redirect_to_another_origin(server: Server) -> None:
    assert fetch(settings_for(server), "/elsewhere") == [(200, b"body of /dicomweb/target")]
    target = server.seen[-1]
    assert (
        target.path == "/dicomweb/target" and target.headers["host"] == f"localhost:{server.port}"
    )
    assert "authorization" not in target.headers
    assert "x-api-key" not in target.headers


def test_a_cookie_the_server_sets_is_sent_back(server: Server) -> None:
    fetch(settings_for(server), "/cookie", "/after")
    assert "cookie" not in server.seen[0].headers
    assert server.seen[1].headers["cookie"] == "affinity=node-7"


def test_basic_auth_goes_through_httpx(server: Server) -> None:
    fetch(Settings(url=server.url(), http="1.1", user="bob", password="hunter2"), "/a")
    assert server.seen[0].headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "base",
    [
        "http://127.0.0.1:8042/dicom-web",
        "https://[::1]:8443/wado/rs",
        "https://pacs.example.org/",
        "http://EXAMPLE.org:80/a%20b",
    ],
)
def test_a_url_below_the_base_is_the_base_with_a_longer_path(base: str) -> None:
    transport = Transport(Settings(url=base))
    url = f"{transport.base_url}/studies/1.2.840.10008/series/1.2.3/instances/4.5.6"
    fast = transport._parsed(url)
    assert isinstance(fast, httpx.URL)
    parsed = httpx.URL(url)
    assert fast == parsed
    assert str(fast) == str(parsed)
    assert fast.raw_path == parsed.raw_path
    assert (fast.scheme, fast.host, fast.port, fast.netloc) == (
        parsed.scheme,
        parsed.host,
        parsed.port,
        parsed.netloc,
    )
    assert transport._parsed(url + "?includefield=all") == url + "?includefield=all"
    assert transport._parsed(url + "/x y") == url + "/x y"  # httpx quotes it
    assert transport._parsed("http://other.example/studies") == "http://other.example/studies"


def test_a_query_in_the_base_url_goes_with_every_url_below_it_and_no_other() -> None:
    transport = Transport(Settings(url="http://127.0.0.1:1/dicomweb/?key=v&t=a%20b"))
    assert transport.base_url == "http://127.0.0.1:1/dicomweb"
    base_query = [("key", "v"), ("t", "a b")]
    instance = f"{transport.base_url}/studies/1.2/series/1.3/instances/1.4"
    fast = transport._parsed(instance)
    assert isinstance(fast, httpx.URL)
    assert str(fast) == str(httpx.URL(instance + "?key=v&t=a%20b"))
    odd = transport._parsed(instance + "/x y")  # parsed by httpx, the query merged
    assert isinstance(odd, httpx.URL)
    assert odd.path == "/dicomweb/studies/1.2/series/1.3/instances/1.4/x y"
    assert list(odd.params.multi_items()) == base_query
    for elsewhere in [f"{transport.base_url}2/studies", "http://other.example/dicomweb/studies"]:
        assert transport._parsed(elsewhere) == elsewhere  # not below the base: no key
        assert transport._params(elsewhere, {"limit": "1"}) == {"limit": "1"}
    assert transport._params(instance, {"limit": "1"}) == [*base_query, ("limit", "1")]
    assert transport._params(instance, [("a", "1"), ("a", "2")]) == [
        *base_query,
        ("a", "1"),
        ("a", "2"),
    ]


def test_merged_headers_are_per_combination_and_bounded(server: Server) -> None:
    transport = Transport(settings_for(server))
    client = transport._client
    first = transport._direct_headers(client, {"Accept": "application/dicom"})
    assert transport._direct_headers(client, {"Accept": "application/dicom"}) is first
    other = transport._direct_headers(client, {"Accept": "multipart/related"})
    assert other["accept"] == "multipart/related" and first["accept"] == "application/dicom"
    assert other["authorization"] == "Bearer t0k"
    for i in range(100):
        transport._direct_headers(client, {"X-N": str(i)})
    assert 0 < len(transport._merged_headers) <= 64


def test_the_quickest_small_get_is_kept(server: Server) -> None:
    async def run() -> tuple[list[float], float | None]:
        transport = Transport(settings_for(server))
        assert transport.quickest_reply is None
        try:
            elapsed = []
            for path in ("/a", "/b", "/c"):
                response = await transport.get(f"{transport.base_url}{path}")
                elapsed.append(response.elapsed.total_seconds())
            async with transport.stream(f"{transport.base_url}/d") as response:
                await response.aread()  # streams are not timed: their size varies
        finally:
            await transport.aclose()
        return elapsed, transport.quickest_reply

    elapsed, quickest = anyio.run(run)
    assert quickest == min(elapsed) > 0


def test_trust_stores_load_once_per_process_and_only_when_needed(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: list[object] = []
    create = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs.get("cafile"))
        return create(*args, **kwargs)

    monkeypatch.setattr("dlstudy.transport.ssl.create_default_context", counting)
    monkeypatch.setattr("dlstudy.transport.urllib.request.getproxies", dict)  # none here
    settings = Settings(url="https://127.0.0.1:1/dicomweb", ca_bundle=_ca_file(tmp_path))
    Transport(settings)
    assert made == []  # nothing until a connection needs it
    h2 = transport_module._alpn_context(settings, ("h2",))
    assert transport_module._alpn_context(settings, ("h2",)) is h2
    assert Transport(settings)._tls_context("h2")() is h2  # another run in this process
    assert transport_module._alpn_context(settings, ("http/1.1",)) is not h2
    assert len(made) == 2

    # httpcore's pool, for a request with a body, is made (and trusts) on first use.
    plain = Transport(settings_for(server))

    async def post() -> int:
        try:
            response = await plain._client.post(f"{plain.base_url}/x", content=b"body")
            return response.status_code
        finally:
            await plain.aclose()

    assert anyio.run(post) == 501  # the test server has no do_POST
    assert len(made) == 3


def _ca_file(folder: Path) -> Path:
    """A CA bundle that loads (the certifi one): only its path matters here."""
    import certifi

    path = folder / "ca.pem"
    path.write_bytes(Path(certifi.where()).read_bytes())
    return path
