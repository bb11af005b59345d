"""The libcurl engine (dlstudy/http/curl.py) under a real httpx.AsyncClient, against scripted
servers on 127.0.0.1: multiplexing, stream limits, flow control and pausing, resets, GOAWAY,
broken and stalled connections, h2c against an HTTP/1.1 server, TLS and ALPN, cut bodies."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlstudy.errors import ConnectError, TransferError
from dlstudy.http.curl import CurlTransport, HttpChoice, TlsOptions
from dlstudy.http.failures import translate_error
from dlstudy.http.proxy import Proxies
from dlstudy.http.transfer import PAUSE_ABOVE, pour_body

from ..scripted_h2 import ErrorCodes, H2Server, Http11Only, Peer, answer, eventually, payload
from ..scripted_h2 import requests_in as all_requests_in


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run one test coroutine, bounded in time."""
    asyncio.run(asyncio.wait_for(test(), 30))
    gc.collect()  # an unclosed socket warns now, inside the test, not in a later one


def client(
    http: HttpChoice = "2",
    *,
    max_connections: int = 10,
    ca: Path | None = None,
    timeout: float | httpx.Timeout = 5,
    **kwargs: Any,
) -> httpx.AsyncClient:
    engine = CurlTransport(
        http=http, max_connections=max_connections, tls=TlsOptions(ca_bundle=ca), proxies=Proxies()
    )
    return httpx.AsyncClient(transport=engine, timeout=timeout, **kwargs)


# -- multiplexing and what goes on the wire ------------------------------------------------------


def test_concurrent_gets_share_one_connection_with_the_headers_httpx_built() -> None:
    paths = [f"/studies/{i}?part={i}&x=y" for i in range(5)]
    bodies = {path.encode(): payload(100_000 + 7_000 * i, seed=i) for i, path in enumerate(paths)}

    async def handler(peer: Peer, stream_id: int) -> None:
        await all_requests_in(peer, len(paths))
        await peer.respond(stream_id, bodies[peer.path(stream_id)])

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            responses = await asyncio.gather(
                *(c.get(server.url + path, headers={"X-Custom": "yes"}) for path in paths)
            )
            for path, response in zip(paths, responses, strict=True):
                assert response.status_code == 200
                assert response.http_version == "HTTP/2"
                assert response.content == bodies[path.encode()]
            assert server.accepts == 1
            (peer,) = server.peers
            assert peer.most_open == len(paths)
            for headers in peer.requests.values():
                fields = dict(headers)
                assert fields[b":method"] == b"GET"
                assert fields[b":scheme"] == b"http"
                assert fields[b":authority"] == b"127.0.0.1:%d" % server.port
                assert fields[b"x-custom"] == b"yes"
                assert fields[b"user-agent"].startswith(b"python-httpx")  # httpx's headers
                assert not {b"host", b"connection", b"keep-alive"} & set(fields)
            assert sorted(peer.path(i) for i in peer.requests) == sorted(bodies)

    run(test)


def test_header_values_cannot_smuggle_other_headers() -> None:
    async def test() -> None:
        async with H2Server(answer(b"ok")) as server, client() as c:
            response = await c.get(server.url + "/a", headers={"Authorization": "Bearer t0ken"})
            assert response.status_code == 200
            for bad in ({"X-Evil": "a\r\nx-injected: 1"}, {"X-Nul": "a\0b"}):
                with pytest.raises(httpx.LocalProtocolError):
                    await c.get(server.url + "/b", headers=bad)
            (peer,) = server.peers
            (headers,) = peer.requests.values()  # the bad ones never reached the server
            assert dict(headers)[b"authorization"] == b"Bearer t0ken"

    run(test)


def test_an_empty_header_value_is_sent_empty() -> None:
    async def test() -> None:
        async with H2Server(answer(b"ok")) as server, client() as c:
            await c.get(server.url, headers={"X-Empty": ""})
            (peer,) = server.peers
            assert dict(peer.requests[1])[b"x-empty"] == b""

    run(test)


def test_the_servers_max_concurrent_streams_is_respected() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        await asyncio.sleep(0.05)
        await peer.respond(stream_id, b"ok %d" % stream_id)

    async def test() -> None:
        # Streams sent before the server's SETTINGS arrive may be refused (RFC 9113 allows
        # both): libcurl sends those again. Once the limit is known, it keeps to it.
        server = H2Server(handler, max_concurrent_streams=2, settings_delay=0.05)
        async with server, client() as c:
            for _ in range(2):
                responses = await asyncio.gather(*(c.get(server.url + f"/{i}") for i in range(8)))
                assert all(r.status_code == 200 for r in responses)

    run(test)


def test_interim_responses_trailers_and_bodiless_responses() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        path = peer.path(stream_id)
        if path == b"/empty":
            peer.h2.send_headers(stream_id, [(b":status", b"204")], end_stream=True)
        else:
            peer.h2.send_headers(stream_id, [(b":status", b"103"), (b"link", b"</a>")])
            peer.h2.send_headers(stream_id, [(b":status", b"200"), (b"x-a", b"1"), (b"x-a", b"2")])
            await peer.send_body(stream_id, b"body", end=False)
            peer.h2.send_headers(stream_id, [(b"x-trailer", b"t")], end_stream=True)
        peer.flush()

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            response = await c.get(server.url + "/trailers")
            assert response.status_code == 200 and response.content == b"body"
            assert response.headers.get_list("x-a") == ["1", "2"]
            assert "x-trailer" not in response.headers and "link" not in response.headers
            response = await c.get(server.url + "/empty")
            assert response.status_code == 204 and response.content == b""
            assert server.accepts == 1

    run(test)


# -- bodies: pausing a slow reader, sinks ----------------------------------------------------------


def test_a_slow_reader_pauses_the_transfer_and_still_gets_every_byte() -> None:
    body = payload(48 * 1024 * 1024, seed=3)

    async def test() -> None:
        async with H2Server(answer(body)) as server, client() as c:
            async with c.stream("GET", server.url) as response:
                chunks = response.aiter_raw()
                got = bytearray(await chunks.__anext__())
                await asyncio.sleep(0.5)  # the reader dawdles: the server must stop
                (peer,) = server.peers
                sent_while_paused = peer.sent[1]
                await asyncio.sleep(0.3)
                assert peer.sent[1] == sent_while_paused
                async for chunk in chunks:
                    got += chunk
                    assert len(chunk) <= PAUSE_ABOVE + 1024 * 1024  # never more queued
            assert bytes(got) == body
            # libcurl's stream window and the 1 MiB queue: far below the whole body.
            assert sent_while_paused < len(body) // 2
            assert server.errors == []

    run(test)


def test_a_sink_gets_every_byte_and_its_error_ends_only_its_transfer() -> None:
    body = payload(3_000_000, seed=5)

    class Full(Exception):
        pass

    async def test() -> None:
        async with H2Server(answer(body)) as server, client() as c:
            got = bytearray()
            async with c.stream("GET", server.url + "/a") as response:
                await pour_body(response, got.extend)
            assert bytes(got) == body

            def failing(chunk: bytes) -> None:
                if len(got) > 1_000_000:
                    raise Full("disk full")
                got.extend(chunk)

            got.clear()
            with pytest.raises(Full):
                async with c.stream("GET", server.url + "/b") as response:
                    await pour_body(response, failing)
            assert (await c.get(server.url + "/c")).content == body  # same connection
            assert server.accepts == 1

    run(test)


def test_a_response_closed_early_resets_its_stream_and_the_connection_goes_on() -> None:
    big = payload(4 * 1024 * 1024, seed=7)

    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/full":
            await peer.respond(stream_id, big)
        else:
            peer.send_headers(stream_id)
            await peer.send_body(stream_id, bytes(1024 * 1024), end=False)
            await asyncio.sleep(5)

    async def test() -> None:
        async with H2Server(handler) as server, client(timeout=3) as c:
            for _ in range(5):
                async with c.stream("GET", server.url + "/cancel") as response:
                    async for _ in response.aiter_raw():
                        break
            response = await c.get(server.url + "/full")
            assert response.content == big
            assert server.accepts == 1
            (peer,) = server.peers
            await eventually(lambda: len(peer.resets) == 5)  # each abandoned stream reset

    run(test)


# -- GOAWAY and RST_STREAM from the server --------------------------------------------------------


def test_streams_a_goaway_left_unprocessed_are_sent_again_on_a_new_connection() -> None:
    """GOAWAY names the last stream the server processed; libcurl sends the others again on
    a new connection (they never reached the application), so no request fails."""
    first: list[Peer] = []

    async def handler(peer: Peer, stream_id: int) -> None:
        if not first or peer is first[0]:
            first[:1] = [peer]
            await all_requests_in(peer, 3)
            if stream_id != 1:
                await asyncio.sleep(5)  # never answered: the GOAWAY below says so
                return
            await peer.respond(stream_id, b"ok " + peer.path(stream_id))
            peer.goaway(last_stream_id=1)
            return
        await peer.respond(stream_id, b"ok " + peer.path(stream_id))

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            responses = await asyncio.gather(*(c.get(server.url + f"/{i}") for i in range(3)))
            assert sorted(r.content for r in responses) == [b"ok /0", b"ok /1", b"ok /2"]
            assert server.accepts == 2

    run(test)


def test_streams_below_the_goaway_last_stream_id_still_complete() -> None:
    body = payload(200_000)

    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/again":
            await peer.respond(stream_id, body)
            return
        peer.goaway(last_stream_id=stream_id)
        await asyncio.sleep(0.05)
        await peer.respond(stream_id, body)

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            assert (await c.get(server.url)).content == body
            assert (await c.get(server.url + "/again")).content == body
            assert server.accepts == 2

    run(test)


@pytest.mark.parametrize("mid_body", [False, True], ids=["before headers", "mid-body"])
def test_rst_stream_fails_only_its_own_request(mid_body: bool) -> None:
    good_body = payload(300_000)

    async def handler(peer: Peer, stream_id: int) -> None:
        path = peer.path(stream_id)
        if path == b"/bad":
            await all_requests_in(peer, 2)
            if mid_body:
                peer.send_headers(stream_id)
                await peer.send_body(stream_id, b"partial", end=False)
            peer.reset(stream_id, ErrorCodes.INTERNAL_ERROR)
        else:
            if path == b"/good":
                await all_requests_in(peer, 2)
                await asyncio.sleep(0.05)  # after the reset
            await peer.respond(stream_id, good_body)

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            bad, good = await asyncio.gather(
                c.get(server.url + "/bad"), c.get(server.url + "/good"), return_exceptions=True
            )
            assert isinstance(bad, httpx.RemoteProtocolError), repr(bad)
            error = translate_error(bad, server.url + "/bad")
            assert isinstance(error, TransferError) and error.retryable
            assert isinstance(good, httpx.Response) and good.content == good_body
            assert (await c.get(server.url + "/after")).content == good_body
            assert server.accepts == 1

    run(test)


def test_a_refused_stream_is_sent_again() -> None:
    """REFUSED_STREAM says the server did not process the stream: libcurl sends it again."""

    refused: list[int] = []

    async def handler(peer: Peer, stream_id: int) -> None:
        if not refused:
            refused.append(stream_id)
            peer.reset(stream_id, ErrorCodes.REFUSED_STREAM)
        else:
            await peer.respond(stream_id, b"second try")

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            assert (await c.get(server.url)).content == b"second try"

    run(test)


# -- broken and stalled connections ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["FIN", "RST"])
def test_connection_closed_mid_body_is_a_retryable_transport_error(how: str) -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        peer.send_headers(stream_id)
        await peer.send_body(stream_id, payload(100_000), end=False)
        if how == "RST":
            sock = peer.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.close()

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            with pytest.raises(httpx.TransportError) as caught:
                await c.get(server.url)
            error = translate_error(caught.value, server.url)
            assert isinstance(error, TransferError) and error.retryable

    run(test)


@pytest.mark.parametrize("stall", ["before headers", "after headers"])
def test_read_timeout_when_the_server_stalls(stall: str) -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/ok":
            await peer.respond(stream_id, b"ok")
            return
        if stall == "after headers":
            peer.send_headers(stream_id)
        await asyncio.sleep(10)

    async def test() -> None:
        async with H2Server(handler) as server, client(timeout=1) as c:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpx.ReadTimeout):
                await c.get(server.url + "/stall")
            assert loop.time() - started < 8  # one second without a byte, in whole seconds
            peer = server.peers[0]
            await eventually(lambda: 1 in peer.resets or peer.closed)  # the stream is given up
            assert (await c.get(server.url + "/ok")).content == b"ok"

    run(test)


def test_garbage_from_the_server_fails_the_request_and_the_next_one_reconnects() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/again":
            await peer.respond(stream_id, b"fresh")
            return
        # A DATA frame on stream 0, which no HTTP/2 peer may send.
        peer.writer.write(b"\x00\x00\x08\x00\x00\x00\x00\x00\x00garbage!")

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(server.url + "/a")
            assert (await c.get(server.url + "/again")).content == b"fresh"
            assert server.accepts == 2

    run(test)


@pytest.mark.parametrize("keep_open", [False, True], ids=["closes", "keeps the connection"])
def test_h2c_to_an_http11_only_server_fails_at_once(keep_open: bool) -> None:
    """What lets `--http auto` fall back to HTTP/1.1 on plain http://: at once, even when the
    server keeps the connection open after its 400 (no wait for a timeout)."""

    async def test() -> None:
        async with Http11Only(keep_open=keep_open) as server, client(timeout=30) as c:
            started = asyncio.get_running_loop().time()
            # An HTTP/2 framing error, or (when the server closes while libcurl still sends)
            # a write error: what the client's h2c fallback takes (see transport._first_get).
            with pytest.raises((httpx.ProtocolError, httpx.WriteError, httpx.ReadError)):
                await c.get(server.url + "/studies")
            assert asyncio.get_running_loop().time() - started < 10  # not the 30 s timeout
            assert server.request_lines == [b"PRI * HTTP/2.0\r\n"]

    run(test)


def test_a_refused_connection_is_a_connect_error_naming_the_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x"

    async def test() -> None:
        async with client("1.1") as c:
            with pytest.raises(httpx.ConnectError) as caught:
                await c.get(url)
        error = translate_error(caught.value, url)
        assert isinstance(error, ConnectError)
        assert str(error) == f"connection refused by 127.0.0.1:{url.split(':')[2][:-2]} ({url})"

    run(test)


# -- TLS and ALPN ----------------------------------------------------------------------------------


def tls_server_context(tls_ca: Any, alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_ca.cert), str(tls_ca.key))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def test_h2_over_tls_by_alpn(tls_ca: Any) -> None:
    body = payload(500_000)

    async def test() -> None:
        tls = tls_server_context(tls_ca, ["h2"])
        async with (
            H2Server(answer(body), tls=tls) as server,
            client("h2 or 1.1", ca=tls_ca.ca_pem) as c,
        ):
            responses = await asyncio.gather(*(c.get(server.url + "/x") for _ in range(3)))
            for response in responses:
                assert response.http_version == "HTTP/2" and response.content == body
            assert server.accepts == 1
            (peer,) = server.peers
            assert peer.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
            assert dict(peer.requests[1])[b":scheme"] == b"https"

    run(test)


def test_an_untrusted_certificate_fails_the_handshake(tls_ca: Any) -> None:
    async def test() -> None:
        tls = tls_server_context(tls_ca, ["h2"])
        async with H2Server(answer(b"x"), tls=tls) as server, client("h2 or 1.1") as c:
            with pytest.raises(httpx.ConnectError) as caught:
                await c.get(server.url)
            error = translate_error(caught.value, server.url)
            assert isinstance(error, ConnectError)
            assert "TLS handshake with '127.0.0.1' failed" in str(error)

    run(test)


@contextmanager
def tls_http10_server(tls_ca: Any, body: bytes, cut: int) -> Iterator[str]:
    """A TLS server whose response has no Content-Length (the body ends when the connection
    does), which sends `cut` bytes of `body`, then closes the TCP connection without TLS's
    close_notify: the way a truncation attack, or a crashed proxy, ends a body."""
    context = tls_server_context(tls_ca, ["http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom\r\n\r\n")
            tls.sendall(body[:cut])
            if cut == len(body):
                tls.unwrap()  # a proper end: close_notify
            else:
                tls.shutdown(socket.SHUT_RDWR)  # the TCP connection ends, TLS does not

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}/x"
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("cut", [True, False], ids=["no close_notify", "close_notify"])
def test_a_tls_body_cut_without_close_notify_is_a_truncation(tls_ca: Any, cut: bool) -> None:
    body = payload(200_000)

    async def test() -> None:
        with tls_http10_server(tls_ca, body, len(body) // 2 if cut else len(body)) as url:
            async with client("h2 or 1.1", ca=tls_ca.ca_pem) as c:
                if not cut:
                    assert (await c.get(url)).content == body
                    return
                with pytest.raises(httpx.TransportError) as caught:
                    await c.get(url)
                error = translate_error(caught.value, url)
                assert isinstance(error, TransferError) and error.retryable

    run(test)


# -- closing ---------------------------------------------------------------------------------------


def test_aclose_closes_every_connection_idle_or_busy() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        peer.send_headers(stream_id)
        if peer.path(stream_id) == b"/busy":
            await peer.send_body(stream_id, b"some", end=False)
            await asyncio.sleep(5)
        else:
            await peer.send_body(stream_id, b"done")

    async def test() -> None:
        async with H2Server(handler) as one, H2Server(handler) as two:
            c = client()
            assert (await c.get(one.url + "/idle")).content == b"done"
            assert (await c.get(two.url + "/idle")).content == b"done"
            busy = await c.send(c.build_request("GET", one.url + "/busy"), stream=True)
            await c.aclose()
            peers = one.peers + two.peers
            assert len(peers) == 2
            await eventually(lambda: all(peer.closed for peer in peers))
            with pytest.raises(httpx.TransportError, match="the client was closed"):
                await busy.aread()

    run(test)


def test_a_client_certificate_opens_a_server_that_asks_for_one(tmp_path: Path) -> None:
    """Mutual TLS: --cert/--key reach libcurl; without them the handshake is refused."""
    import trustme

    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("client@dlstudy.test")
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    client_cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    client_cert.private_key_pem.write_to_path(str(key_pem))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])

    def with_tls(tls: TlsOptions) -> httpx.AsyncClient:
        engine = CurlTransport(http="h2 or 1.1", max_connections=2, tls=tls, proxies=Proxies())
        return httpx.AsyncClient(transport=engine, timeout=5)

    async def test() -> None:
        async with H2Server(answer(b"mutual"), tls=context) as server:
            async with with_tls(TlsOptions(ca_bundle=ca_pem, cert=cert_pem, key=key_pem)) as c:
                response = await c.get(server.url)
                assert response.content == b"mutual" and response.http_version == "HTTP/2"
            async with with_tls(TlsOptions(ca_bundle=ca_pem)) as c:
                with pytest.raises(httpx.TransportError) as caught:
                    await c.get(server.url)
                error = translate_error(caught.value, server.url)
                assert isinstance(error, ConnectError | TransferError)

    run(test)
