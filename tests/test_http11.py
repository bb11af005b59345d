"""dlstudy/http11.py against scripted servers on 127.0.0.1: framing, reuse, limits, failures.

Each test runs a tiny asyncio server whose handler says exactly what goes on the wire, then
drives the transport through a real httpx.AsyncClient, as dlstudy does.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from dlstudy.http11 import MAX_HEAD_BYTES, PAUSE_READING_ABOVE, Http11Transport
from dlstudy.settings import Settings
from dlstudy.transport import Transport, translate_error

from .transport_doubles import Recorder, run

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """Counts connections (total and at once) and runs `handler` on each."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def client(max_connections: int = 4, **kwargs: Any) -> httpx.AsyncClient:
    transport = Http11Transport(
        tls_context=ssl.create_default_context,
        max_connections=max_connections,
        fallback=kwargs.pop("fallback", Recorder()),
    )
    return httpx.AsyncClient(transport=transport, **kwargs)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def keep_alive_answers(body: bytes, count: int = 100) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(count):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    return handler


def test_content_length_bodies_reuse_one_connection() -> None:
    async def test() -> None:
        async with Server(keep_alive_answers(b"x" * 100_000)) as server, client() as c:
            for _ in range(5):
                response = await c.get(server.url + "/a?b=c")
                assert response.content == b"x" * 100_000
                assert response.http_version == "HTTP/1.1"
            assert server.connections == 1

    run(test)


def test_request_line_and_headers_are_what_httpx_built() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            response = await c.get(server.url + "/dicomweb/studies?limit=1", headers={"X-A": "1"})
            assert response.status_code == 204 and response.content == b""

    run(test)
    head = seen[0].decode()
    assert head.startswith("GET /dicomweb/studies?limit=1 HTTP/1.1\r\n")
    assert "\r\nHost: 127.0.0.1:" in head and "\r\nX-A: 1\r\n" in head


def test_chunked_body_with_extensions_and_trailers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5;name=value\r\nhello\r\n")
            await writer.drain()
            writer.write(b"1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            for _ in range(2):
                assert (await c.get(server.url)).content == b"hello world!"
            assert server.connections == 1

    run(test)


def test_chunked_body_split_at_every_byte() -> None:
    wire = b"4\r\nDICM\r\nA\r\n0123456789\r\n0\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
        for i in range(len(wire)):
            writer.write(wire[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            # Content-Encoding is not Transfer-Encoding: gzip here is a transfer coding we do
            # not undo, but httpx gets the de-chunked bytes.
            response = await c.get(server.url)
            assert response.content == b"DICM0123456789"

    run(test)


@pytest.mark.parametrize(
    "chunked",
    [b"zz\r\n", b"5\r\nhello\r\n0\r\n", b"3\r\nhello\r\n0\r\n\r\n"],
    ids=["bad size", "closed before the end", "data longer than its size"],
)
def test_broken_chunked_bodies_are_protocol_errors(chunked: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.get(server.url)

    run(test)


def test_body_until_close_and_http10_are_never_reused() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\n\r\nuntil close",
            b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nten!",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose",
        ]
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(next(answers))
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            bodies = [(await c.get(server.url)).content for _ in range(3)]
            assert bodies == [b"until close", b"ten!", b"close"]
            assert server.connections == 3

    run(test)


def test_interim_1xx_responses_are_skipped_and_head_has_no_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            assert (await c.get(server.url)).content == b"ok"
            head = await c.head(server.url)
            assert head.headers["content-length"] == "1000" and head.content == b""
            assert (await c.get(server.url)).status_code == 304
            assert server.connections == 1

    run(test)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf!", "received 5 bytes, expected 10"),
        (b"HTTP/2 200\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n", "folded header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD_BYTES, "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-", "in the middle of the headers"),
        (b"", "Server disconnected without sending a response"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ],
)
def test_malformed_or_cut_responses_are_protocol_errors(wire: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(wire)
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await c.get(server.url)

    run(test)


def test_a_connection_closed_as_it_is_reused_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Every connection answers one request, then reads the next and closes without a
        # word: what a server closing an idle connection looks like when the request crosses
        # its FIN on the wire.
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            for _ in range(3):
                assert (await c.get(server.url)).content == b"ok"
            assert server.connections == 3

    run(test)


def test_an_idle_connection_the_server_closed_is_not_used_again() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client() as c:
            assert (await c.get(server.url)).content == b"ok"
            await asyncio.sleep(0.1)  # the FIN arrives while the connection sits idle
            assert (await c.get(server.url)).content == b"ok"
            assert server.connections == 2

    run(test)


def test_never_more_connections_than_allowed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def test() -> None:
        async with Server(handler) as server, client(max_connections=3) as c:
            responses = await asyncio.gather(*(c.get(server.url) for _ in range(12)))
            assert [r.content for r in responses] == [b"ok"] * 12
            assert server.most_open <= 3 and server.connections == 3

    run(test)


def test_a_pool_timeout_when_every_connection_stays_busy() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def test() -> None:
        timeout = httpx.Timeout(5, pool=0.2)
        async with Server(handler) as server, client(max_connections=1, timeout=timeout) as c:
            first = asyncio.create_task(c.get(server.url))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await c.get(server.url)
            first.cancel()

    run(test)


def test_a_response_closed_early_takes_its_connection_with_it() -> None:
    async def test() -> None:
        body = b"y" * 3_000_000
        async with Server(keep_alive_answers(body)) as server, client() as c:
            async with c.stream("GET", server.url) as response:
                async for _ in response.aiter_raw():
                    break
            assert (await c.get(server.url)).content == body
            assert server.connections == 2

    run(test)


def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte() -> None:
    body = bytes(range(256)) * (4 * PAUSE_READING_ABOVE // 256)

    async def test() -> None:
        async with Server(keep_alive_answers(body)) as server, client() as c:
            got = bytearray()
            paused, most_buffered = False, 0
            async with c.stream("GET", server.url) as response:
                connection = response.stream._stream._connection  # type: ignore[attr-defined]
                async for chunk in response.aiter_raw():
                    got += chunk
                    paused |= connection._reading_paused
                    most_buffered = max(most_buffered, connection._buffered)
                    await asyncio.sleep(0.001)
            assert bytes(got) == body
            # One socket read (256 KiB at most) may land after the pause threshold.
            assert paused and most_buffered <= PAUSE_READING_ABOVE + 256 * 1024
            assert (await c.get(server.url)).content == body  # and the connection is reusable
            assert server.connections == 1

    run(test)


def test_read_timeout_between_bytes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(3)

    async def test() -> None:
        async with Server(handler) as server, client(timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.get(server.url)

    run(test)


def test_refused_connection_is_a_connect_error_with_its_cause() -> None:
    async def test() -> None:
        async with Server(keep_alive_answers(b"")) as server:
            url = server.url
        async with client() as c:
            with pytest.raises(httpx.ConnectError) as caught:
                await c.get(url)
        error = translate_error(caught.value, url)
        assert "connection refused" in str(error)

    run(test)


def test_requests_with_a_body_or_other_methods_go_to_the_fallback() -> None:
    async def test() -> None:
        fallback = Recorder()
        async with client(fallback=fallback) as c:
            assert (await c.post("http://127.0.0.1:9/x", content=b"body")).status_code == 299
            assert (await c.delete("http://127.0.0.1:9/y")).status_code == 299
        assert [r.method for r in fallback.requests] == ["POST", "DELETE"]

    run(test)


def test_header_values_cannot_smuggle_a_second_request() -> None:
    async def test() -> None:
        async with Server(keep_alive_answers(b"")) as server, client() as c:
            request = c.build_request("GET", server.url)
            request.headers["X-Evil"] = "a"
            request.headers._list[-1] = (b"X-Evil", b"x-evil", b"a\r\nGET /other HTTP/1.1")
            with pytest.raises(httpx.LocalProtocolError):
                await c.send(request)

    run(test)


@pytest.mark.integration
def test_dlstudy_transport_speaks_lean_http11_over_tls(
    synth_study: Any, embedded_server: Any, tls_ca: Any
) -> None:
    """--http 1.1 over https:// offers only http/1.1 by ALPN and verifies the certificate."""
    url = embedded_server(synth_study.root, tls_cert=tls_ca.cert, tls_key=tls_ca.key)
    settings = Settings(url=url, http="1.1", ca_bundle=tls_ca.ca_pem)

    async def test() -> None:
        transport = Transport(settings)
        try:
            response = await transport.get(url + "/studies")
            assert response.status_code == 200 and response.http_version == "HTTP/1.1"
            assert isinstance(transport._client._transport, Http11Transport)
        finally:
            await transport.aclose()

    run(test)
