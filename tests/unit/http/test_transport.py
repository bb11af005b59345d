"""Error translation at the one boundary where transport errors become dlstudy's; the client
above the engine (credentials, redirects, the h2c probe)."""

from __future__ import annotations

import inspect
from base64 import b64encode

import anyio
import httpx
import pytest

from dlstudy.engine.fetch import status_error
from dlstudy.errors import ConnectError, StorageError, TransferError
from dlstudy.http.client import Transport
from dlstudy.http.curl import AnswerToGet, CurlFailure
from dlstudy.http.failures import translate_error
from dlstudy.http.urls import instance_url
from dlstudy.settings import Settings

from ...fixtures.scripted_routes import Routes, scripted_server

URL = "https://bob:hunter2@pacs.test/dicomweb/studies?token=abc"


def curl(exc: httpx.TransportError, code: int, message: str, **kw: object) -> BaseException:
    """`exc` as dlstudy/http/curl.py raises it: libcurl's failure as its cause."""
    exc.__cause__ = CurlFailure(
        code,
        message,
        proxy=kw.get("proxy"),
        tls=bool(kw.get("tls")),
        os_errno=int(kw.get("os_errno", 0)),
        handshake_cut=bool(kw.get("handshake_cut")),
    )  # type: ignore[arg-type]
    return exc


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            curl(httpx.ConnectError("x"), 6, "Could not resolve host: pacs.test"),
            ConnectError,
            "cannot resolve host 'pacs.test'",
        ),
        (
            curl(httpx.ConnectError("x"), 7, "Could not connect to server", os_errno=111),
            ConnectError,
            "connection refused by pacs.test",
        ),
        (
            curl(httpx.ConnectError("x"), 7, "Could not connect to server", os_errno=113),
            ConnectError,
            "cannot connect to pacs.test: No route to host",
        ),
        (
            curl(httpx.ConnectError("x"), 60, "SSL certificate problem: self-signed", tls=True),
            ConnectError,
            "TLS handshake with 'pacs.test' failed: the server's certificate is signed by an "
            "unknown CA (trust it with --ca-bundle) (SSL certificate problem: self-signed)",
        ),
        (
            curl(
                httpx.ConnectError("x"),
                35,
                "Recv failure: Connection reset by peer",
                os_errno=104,
                handshake_cut=True,
            ),
            ConnectError,
            "connection to pacs.test broken during the TLS handshake (Recv failure: "
            "Connection reset by peer) (https://***:***@pacs.test",
        ),
        (
            curl(httpx.ProxyError("x"), 7, "Could not connect", proxy="http://u:***@proxy:3128"),
            ConnectError,
            "cannot use proxy http://u:***@proxy:3128 for https://***:***@pacs.test",
        ),
        (httpx.ConnectTimeout("slow"), ConnectError, "timed out connecting"),
        (httpx.ReadTimeout("slow"), TransferError, "timed out waiting"),
        (
            curl(httpx.RemoteProtocolError("x"), 18, "end of response with 10 bytes missing"),
            TransferError,
            "connection broken (end of response with 10 bytes missing)",
        ),
        (httpx.RemoteProtocolError("peer closed"), TransferError, "connection broken"),
        (httpx.ReadError("reset"), TransferError, "network error"),
        (
            OSError(30, "Read-only file system", "/out/.dlstudy/incoming/.part.dcm.1-2.part"),
            StorageError,
            "cannot use '/out/.dlstudy/incoming/.part.dcm.1-2.part': Read-only file system",
        ),
    ],
)
def test_translate_error_gives_one_clear_line_without_secrets(
    exc: BaseException, kind: type, text: str
) -> None:
    error = translate_error(exc, URL)
    assert isinstance(error, kind)
    assert text in str(error)
    assert "hunter2" not in str(error) and "abc" not in str(error)
    assert "\n" not in str(error)


def test_every_httpx_transport_error_is_mapped_to_something_specific() -> None:
    """Fails when an httpx release adds a transport error we would report as 'unexpected'."""
    transport_errors = [
        cls
        for _, cls in inspect.getmembers(httpx, inspect.isclass)
        if issubclass(cls, httpx.TransportError)
    ]
    assert len(transport_errors) > 10
    for cls in transport_errors:
        error = translate_error(cls("boom"), URL)
        assert "unexpected" not in str(error), cls
        if issubclass(cls, httpx.UnsupportedProtocol):  # a redirect to file://: nothing to retry
            assert isinstance(error, TransferError) and not error.retryable, cls
        elif not issubclass(cls, httpx.ConnectError | httpx.ConnectTimeout | httpx.ProxyError):
            assert isinstance(error, TransferError) and error.retryable, cls


def test_transient_errors_are_retryable_and_connect_errors_are_fatal() -> None:
    assert isinstance(translate_error(httpx.ConnectError("x"), URL), ConnectError)
    transfer = translate_error(httpx.RemoteProtocolError("x"), URL)
    assert isinstance(transfer, TransferError) and transfer.retryable


def test_headers_auth_and_userinfo_credentials_are_sent(scripted: Routes) -> None:
    route = scripted.get("/dicomweb/studies").mock(return_value=httpx.Response(200))
    settings = Settings(
        url=scripted.base.replace("http://", "http://bob:hunter2@") + "/",
        http="1.1",
        headers=(("X-Api-Key", "k1"),),
    )

    async def run() -> None:
        transport = Transport(settings)
        assert transport.base_url == scripted.base
        await transport.get(f"{transport.base_url}/studies")
        await transport.aclose()

    anyio.run(run)
    request = route.requests[0]
    assert request.headers["X-Api-Key"] == "k1"
    assert request.headers["Authorization"] == "Basic " + b64encode(b"bob:hunter2").decode()
    assert "hunter2" not in str(request.url)


def test_bearer_token_and_secret_headers_never_follow_a_cross_origin_redirect(
    scripted: Routes,
) -> None:
    with scripted_server() as elsewhere:
        scripted.get("/dicomweb/studies").mock(
            return_value=httpx.Response(302, headers={"Location": f"{elsewhere.origin}/x"})
        )
        other = elsewhere.get("/x").mock(return_value=httpx.Response(200))
        settings = Settings(
            url=scripted.base, http="1.1", token="t0k", headers=(("X-Api-Key", "k1"),)
        )

        async def run() -> None:
            transport = Transport(settings)
            await transport.get(f"{transport.base_url}/studies")
            await transport.aclose()

        anyio.run(run)
    assert scripted.get("/dicomweb/studies").requests[0].headers["x-api-key"] == "k1"
    forwarded = other.requests[0].headers
    assert "authorization" not in forwarded
    assert "x-api-key" not in forwarded


def test_same_origin_redirect_keeps_credentials(scripted: Routes) -> None:
    scripted.get("/dicomweb/a").mock(
        return_value=httpx.Response(302, headers={"Location": "/dicomweb/b"})
    )
    target = scripted.get("/dicomweb/b").mock(return_value=httpx.Response(200))

    async def run() -> None:
        transport = Transport(Settings(url=scripted.base, http="1.1", token="t0k"))
        await transport.get(f"{scripted.base}/a")
        await transport.aclose()

    anyio.run(run)
    assert target.requests[0].headers["authorization"] == "Bearer t0k"


def test_a_retrieval_sent_straight_to_libcurl_still_has_its_request(scripted: Routes) -> None:
    """A GET below the base URL goes to the engine without an httpx.Request made first
    (CurlTransport.get); the response still has one when asked: the URL a failure names, the
    headers that went."""
    route = scripted.get("/dicomweb/studies/1.2/series/1.2.3/instances/1.2.3.4")
    route.mock(return_value=httpx.Response(404))
    settings = Settings(url=scripted.base, http="1.1", headers=(("X-Api-Key", "k1"),))
    url = instance_url(scripted.base, "1.2", "1.2.3", "1.2.3.4")

    async def run() -> TransferError:
        transport = Transport(settings)
        async with transport.stream(url, {"Accept": "application/dicom"}) as response:
            assert isinstance(response, AnswerToGet)
            assert str(response.url) == url
            assert response.request.headers["accept"] == "application/dicom"
            error = status_error(response, "instance 1.2.3.4")
            with pytest.raises(httpx.HTTPStatusError, match="404 Not Found"):
                response.raise_for_status()  # httpx's own, which reads the request too
        await transport.aclose()
        return error

    error = anyio.run(run)
    assert error.url == url
    assert str(error) == "instance 1.2.3.4: not found on the server (HTTP 404)"
    assert route.requests[0].headers["x-api-key"] == "k1"
    assert route.requests[0].headers["accept"] == "application/dicom"


def test_a_base_url_that_httpx_would_escape_goes_out_escaped(scripted: Routes) -> None:
    """Only a base URL that httpx sends as written is handed to libcurl as made; another (a
    space in the path) goes through httpx's URL, escaped."""
    route = scripted.get("/dicom web/studies").mock(return_value=httpx.Response(200, json=[]))

    async def run() -> int:
        transport = Transport(Settings(url=f"{scripted.origin}/dicom web", http="1.1"))
        response = await transport.get(f"{transport.base_url}/studies")
        await transport.aclose()
        return response.status_code

    assert anyio.run(run) == 200
    assert route.call_count == 1


def test_settings_repr_hides_secrets() -> None:
    settings = Settings(
        url="http://x", token="t0k3n", password="hunter2", headers=(("X-Api-Key", "k3y"),)
    )
    text = repr(settings)
    assert "t0k3n" not in text and "hunter2" not in text and "k3y" not in text


def test_auto_falls_back_to_http11_once_against_a_server_without_h2c(scripted: Routes) -> None:
    """A real HTTP/1.1-only server on 127.0.0.1 (the stdlib's): h2c fails, HTTP/1.1 is kept."""
    route = scripted.get("/dicomweb/studies").mock(return_value=httpx.Response(200, json=[]))
    settled = ""

    async def run() -> list[str | None]:
        transport = Transport(Settings(url=scripted.base, http="auto"))
        versions = []
        try:
            for _ in range(3):
                response = await transport.get(f"{scripted.base}/studies")
                versions.append(response.http_version)
        finally:
            await transport.aclose()
        versions.append(transport.http_version)
        nonlocal settled
        settled = transport.settled_http
        return versions

    versions = anyio.run(run)
    assert versions == ["HTTP/1.1"] * 4
    assert route.call_count == 3  # the failed h2c attempt never reached a handler
    assert settled == "1.1"  # what worker processes are given: no second probe
