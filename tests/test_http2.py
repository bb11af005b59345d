"""dlstudy/http2.py against scripted HTTP/2 servers on 127.0.0.1: multiplexing, settings, flow
control, resets, GOAWAY, broken connections, ALPN.

Each test runs a tiny asyncio server on the h2 library's server-side state machine, whose
per-request handler says exactly which frames go out, then drives the transport through a real
httpx.AsyncClient, as dlstudy does. The server records what it received (settings, headers,
WINDOW_UPDATE, RST_STREAM, GOAWAY) so the tests can assert what the client put on the wire.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import struct
import warnings
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Self

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
import hpack
import httpx
import hyperframe.frame
import pytest

from dlstudy.errors import TransferError
from dlstudy.http2 import (
    CONNECTION_WINDOW,
    GOAWAY_GRACE,
    MAX_FRAME_SIZE,
    STREAM_WINDOW,
    Http2Transport,
    malformed,
)
from dlstudy.transport import protocol_errors, translate_error

from .transport_doubles import Recorder, run

ErrorCodes = h2.errors.ErrorCodes
SettingCodes = h2.settings.SettingCodes
SERVER_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None)


class Peer:
    """One accepted connection as the scripted server sees it: its h2 state machine, helpers
    to send frames, and a record of every frame that matters that came from the client."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.h2 = h2.connection.H2Connection(SERVER_CONFIG)
        self.writer = writer
        self.requests: dict[int, list[tuple[bytes, bytes]]] = {}  # stream id -> raw headers
        self.client_settings: dict[int, int] = {}
        self.window_updates: list[tuple[int, int]] = []  # (stream id, increment)
        self.resets: dict[int, int] = {}  # stream id -> first RST_STREAM error code
        self.goaways: list[h2.events.ConnectionTerminated] = []
        self.sent: defaultdict[int, int] = defaultdict(int)  # DATA bytes sent per stream
        self.frame_sizes: list[int] = []
        self.blocked = 0  # times a send waited for the client to open its window
        self.most_open = 0  # most streams open at once
        self.closed = False  # the read loop saw the end of the connection
        self._window = asyncio.Event()

    def receive(self, data: bytes) -> list[h2.events.Event]:
        events = self.h2.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = list(event.headers)
                self.most_open = max(self.most_open, self.h2.open_inbound_streams)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for code, change in event.changed_settings.items():
                    self.client_settings[code] = change.new_value
                self._window.set()
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_updates.append((event.stream_id, event.delta))
                self._window.set()
            elif isinstance(event, h2.events.StreamReset):
                self.resets.setdefault(event.stream_id, event.error_code)
                self._window.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaways.append(event)
        return events

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_headers(self, stream_id: int, status: int = 200, end: bool = False) -> None:
        self.h2.send_headers(stream_id, [(b":status", b"%d" % status)], end_stream=end)
        self.flush()

    async def send_body(self, stream_id: int, body: bytes, end: bool = True) -> None:
        """DATA frames as large as the client allows, waiting for WINDOW_UPDATE when the
        flow-control window is shut; stops quietly if the client resets the stream."""
        offset = 0
        while offset < len(body):
            if stream_id in self.resets:
                return
            window = self.h2.local_flow_control_window(stream_id)
            if window == 0:
                self.blocked += 1
                self._window.clear()
                await asyncio.wait_for(self._window.wait(), 5)
                continue
            size = min(window, self.h2.max_outbound_frame_size, len(body) - offset)
            last = offset + size == len(body)
            self.h2.send_data(stream_id, body[offset : offset + size], end_stream=end and last)
            self.sent[stream_id] += size
            self.frame_sizes.append(size)
            offset += size
            self.flush()
            await self.writer.drain()
        if end and not body:
            self.h2.end_stream(stream_id)
            self.flush()

    async def respond(self, stream_id: int, body: bytes, status: int = 200) -> None:
        self.send_headers(stream_id, status)
        await self.send_body(stream_id, body)

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        self.h2.reset_stream(stream_id, code)
        self.flush()

    def send_raw_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A HEADERS frame by hand, which h2 would refuse to send if malformed; literals never
        indexed, so the client's HPACK table stays as this side's h2 believes it is."""
        block = hpack.Encoder().encode(
            [hpack.NeverIndexedHeaderTuple(n, v) for n, v in headers], huffman=False
        )
        frame = hyperframe.frame.HeadersFrame(stream_id)
        frame.data = block
        frame.flags.add("END_HEADERS")
        self.flush()
        self.writer.write(frame.serialize())

    def goaway(self, last_stream_id: int, code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY by hand: h2 would refuse to send anything after its own, and a server that
        shuts down gracefully still answers the streams up to `last_stream_id`."""
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        self.flush()
        self.writer.write(frame.serialize())

    def path(self, stream_id: int) -> bytes:
        return dict(self.requests[stream_id])[b":path"]


Handler = Callable[[Peer, int], Awaitable[None]]


class ScriptedServer:
    """A server on 127.0.0.1 that counts connections at TCP accept (before any TLS handshake)
    and runs `serve` on each. On exit it gives each connection a moment to end (its client
    closes it), then aborts the rest: nothing outlives the test."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.accepts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self.serve(reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)
            writer.transport.abort()  # a TLS peer that never answered our close_notify

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        self.accepts += 1
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._serve)

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        pending = set(self._connections)
        for grace in (2, 2):
            if not pending:
                break
            _, pending = await asyncio.wait(pending, timeout=grace)
            for task in pending:
                self._connections[task].transport.abort()  # its read loop ends with EOF
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


class H2Server(ScriptedServer):
    """An h2 server per connection; `handler(peer, stream_id)` runs for each request.

    `max_concurrent_streams` is announced in the server's SETTINGS; streams beyond it are
    refused with RST_STREAM(REFUSED_STREAM), as nginx does. `settings_delay` holds the
    server's SETTINGS back, as network latency does: on 127.0.0.1 they would otherwise reach
    the client before it has even finished connecting."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_concurrent_streams: int | None = None,
        settings_delay: float = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(tls)
        self.handler = handler
        self.max_concurrent_streams = max_concurrent_streams
        self.settings_delay = settings_delay
        self.peers: list[Peer] = []
        self.refused = 0
        self.errors: list[BaseException] = []  # raised by handlers, or h2 on the server side

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer)
        self.peers.append(peer)
        handlers: set[asyncio.Task[None]] = set()
        limit = self.max_concurrent_streams
        try:
            await asyncio.sleep(self.settings_delay)
            if limit is not None:
                peer.h2.local_settings = h2.settings.Settings(
                    client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: limit}
                )
            peer.h2.initiate_connection()
            if limit is not None:  # announced; enforced below, by stream, not by h2
                peer.h2.local_settings = h2.settings.Settings(client=False)
            peer.flush()
            while data := await reader.read(1 << 20):
                try:
                    events = peer.receive(data)
                except h2.exceptions.ProtocolError as exc:
                    self.errors.append(exc)
                    peer.flush()
                    return
                for event in events:
                    if not isinstance(event, h2.events.RequestReceived):
                        continue
                    stream_id = event.stream_id
                    if limit is not None and peer.h2.open_inbound_streams > limit:
                        self.refused += 1
                        peer.reset(stream_id, ErrorCodes.REFUSED_STREAM)
                        continue
                    handlers.add(asyncio.create_task(self._handle(peer, stream_id)))
                peer.flush()
        finally:
            peer.closed = True
            for handler in handlers:
                handler.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(self, peer: Peer, stream_id: int) -> None:
        try:
            await self.handler(peer, stream_id)
        except ConnectionError:
            pass
        except Exception as exc:
            self.errors.append(exc)


class Http11Only(ScriptedServer):
    """An HTTP/1.1 server: it reads the h2 preface's first line as a request line and answers
    400 Bad Request, then closes, as HTTP/1.1 servers do (or, `keep_open`, waits for more)."""

    def __init__(self, tls: ssl.SSLContext | None = None, keep_open: bool = False) -> None:
        super().__init__(tls)
        self.request_lines: list[bytes] = []
        self.keep_open = keep_open

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line:
            self.request_lines.append(line)
            if self.keep_open:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await reader.read()  # until the client hangs up
                return
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            await writer.drain()


def client(
    max_streams: int = 10,
    *,
    ssl_context: ssl.SSLContext | None = None,
    fallback: httpx.AsyncBaseTransport | None = None,
    http1_fallback: httpx.AsyncBaseTransport | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    context = ssl_context or ssl.create_default_context()
    transport = Http2Transport(
        tls_context=lambda: context,
        max_streams=max_streams,
        fallback=fallback or Recorder(),
        http1_fallback=http1_fallback,
    )
    return httpx.AsyncClient(transport=transport, **kwargs)


def answer(body: bytes) -> Handler:
    async def handler(peer: Peer, stream_id: int) -> None:
        await peer.respond(stream_id, body)

    return handler


async def eventually(condition: Callable[[], bool], within: float = 2) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def requests_in(peer: Peer, count: int) -> None:
    """Returns once `count` requests have arrived on `peer`: a handler that waits for this
    before answering proves the client sent them side by side."""
    await eventually(lambda: len(peer.requests) >= count, within=5)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# -- multiplexing and what goes on the wire ------------------------------------------------------


def test_concurrent_gets_share_one_connection_with_the_headers_httpx_built() -> None:
    paths = [f"/studies/{i}?part={i}&x=y" for i in range(5)]
    bodies = {path.encode(): payload(100_000 + 7_000 * i, seed=i) for i, path in enumerate(paths)}

    async def handler(peer: Peer, stream_id: int) -> None:
        await requests_in(peer, len(paths))
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
                names = [name for name, _ in headers]
                assert names[:4] == [b":method", b":authority", b":scheme", b":path"]
                fields = dict(headers)
                assert fields[b":method"] == b"GET"
                assert fields[b":scheme"] == b"http"
                assert fields[b":authority"] == b"127.0.0.1:%d" % server.port
                assert fields[b":path"] in bodies
                assert fields[b"x-custom"] == b"yes"
                assert not {b"host", b"connection", b"keep-alive"} & set(names)
            assert sorted(peer.path(i) for i in peer.requests) == sorted(bodies)

    run(test)


def test_request_headers_arrive_normalised_and_illegal_ones_never_leave() -> None:
    """h2's own outbound checks are off (http2.py checks once); the server's h2, which
    validates what it receives, must still accept every request."""

    async def test() -> None:
        async with H2Server(answer(b"ok")) as server, client() as c:
            sent = {
                "X-Padded": "  spaced\t",
                "Authorization": "Bearer t0ken",
                "Connection": "keep-alive",
                "Keep-Alive": "timeout=5",
                "TE": "gzip",
                "Upgrade": "h2c",
            }
            response = await c.get(server.url + "/a", headers=sent)
            assert response.status_code == 200
            for bad in ({"X-Evil": "a\r\nx-injected: 1"}, {"X-Nul": "a\0b"}, {"Bad Name": "x"}):
                with pytest.raises(httpx.LocalProtocolError):
                    await c.get(server.url + "/b", headers=bad)
            (peer,) = server.peers
            (headers,) = peer.requests.values()  # the bad ones never reached the server
            fields = dict(headers)
            assert fields[b"x-padded"] == b"spaced"
            assert fields[b"authorization"] == b"Bearer t0ken"
            assert isinstance(_field(headers, b"authorization"), hpack.NeverIndexedHeaderTuple)
            assert not {b"connection", b"keep-alive", b"te", b"upgrade", b"host"} & set(fields)
            assert all(name == name.lower() for name in fields)

    run(test)


def _field(headers: list[tuple[bytes, bytes]], name: bytes) -> tuple[bytes, bytes]:
    return next(field for field in headers if field[0] == name)


def test_client_settings_allow_1mib_frames_and_an_8mib_stream_window() -> None:
    body = payload(3 * 1024 * 1024 + 123)

    async def test() -> None:
        async with H2Server(answer(body)) as server, client() as c:
            got, sizes = bytearray(), []
            async with c.stream("GET", server.url) as response:
                async for chunk in response.aiter_raw():
                    got += chunk
                    sizes.append(len(chunk))
            assert bytes(got) == body
            (peer,) = server.peers
            settings = peer.client_settings
            assert settings[SettingCodes.ENABLE_PUSH] == 0
            assert settings[SettingCodes.MAX_FRAME_SIZE] == MAX_FRAME_SIZE == 1024 * 1024
            assert settings[SettingCodes.INITIAL_WINDOW_SIZE] == STREAM_WINDOW == 8 * 1024 * 1024
            assert SettingCodes.ENABLE_CONNECT_PROTOCOL not in settings
            # The connection window opens to 16 MiB right away, before any data.
            assert peer.window_updates[0] == (0, CONNECTION_WINDOW - 65_535)
            # The server could send (and the client took) 1 MiB frames, not 16 KiB ones.
            assert max(peer.frame_sizes) == MAX_FRAME_SIZE and max(sizes) == MAX_FRAME_SIZE

    run(test)


def test_a_slow_reader_holds_the_server_to_the_stream_window() -> None:
    body = payload(6 * STREAM_WINDOW)

    async def test() -> None:
        async with H2Server(answer(body)) as server, client() as c:
            async with c.stream("GET", server.url) as response:
                chunks = response.aiter_raw()
                got = bytearray(await chunks.__anext__())
                await asyncio.sleep(0.3)  # the reader dawdles: the server must stop
                (peer,) = server.peers
                sent_while_paused = peer.sent[1]
                await asyncio.sleep(0.2)
                assert peer.sent[1] == sent_while_paused
                buffered = response.stream._stream._stream.chunks  # type: ignore[attr-defined]
                most_buffered = 0
                async for chunk in chunks:
                    got += chunk
                    most_buffered = max(most_buffered, sum(len(d) for d, _ in buffered))
                    await asyncio.sleep(0.001)
            assert bytes(got) == body
            # No WINDOW_UPDATE for data not yet read: the window (plus the one chunk read, if
            # that reopened it) is all the server could send.
            assert STREAM_WINDOW <= sent_while_paused <= STREAM_WINDOW + MAX_FRAME_SIZE
            assert peer.blocked >= 5  # six windows' worth through one window
            assert most_buffered <= STREAM_WINDOW
            assert server.errors == []

    run(test)


def test_max_streams_caps_the_streams_open_at_once() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        await asyncio.sleep(0.02)
        await peer.respond(stream_id, b"ok")

    async def test() -> None:
        async with H2Server(handler) as server, client(max_streams=2) as c:
            responses = await asyncio.gather(*(c.get(server.url) for _ in range(8)))
            assert [r.content for r in responses] == [b"ok"] * 8
            assert server.accepts == 1 and server.peers[0].most_open == 2

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
            response = await c.get(server.url + "/empty")
            assert response.status_code == 204 and response.content == b""
            assert server.accepts == 1

    run(test)


MALFORMED = {
    "no status": [(b"x-a", b"1")],
    "status not first": [(b"x-a", b"1"), (b":status", b"200")],
    "status not a code": [(b":status", b"2x0")],
    "request pseudo-header": [(b":status", b"200"), (b":path", b"/")],
    "two statuses": [(b":status", b"200"), (b":status", b"200")],
    "uppercase name": [(b":status", b"200"), (b"X-Upper", b"1")],
    "space in name": [(b":status", b"200"), (b"x a", b"1")],
    "colon in name": [(b":status", b"200"), (b"x:a", b"1")],
    "empty name": [(b":status", b"200"), (b"", b"1")],
    "connection-specific": [(b":status", b"200"), (b"connection", b"close")],
    "te": [(b":status", b"200"), (b"te", b"gzip")],
    "padded value": [(b":status", b"200"), (b"x-a", b" 1")],
    "newline in value": [(b":status", b"200"), (b"x-a", b"1\r\nx-b: 2")],
    "nul in value": [(b":status", b"200"), (b"x-a", b"1\x002")],
}
WELL_FORMED = {
    "bare": [(b":status", b"204")],
    "nginx": [
        (b":status", b"200"),
        (b"server", b"nginx/1.22.1"),
        (b"content-type", b"application/dicom"),
        (b"content-length", b"524504"),
        (b"etag", b'"6740c2d5-80098"'),
    ],
    "empty value": [(b":status", b"200"), (b"x-a", b"")],
    "inner spaces and symbols": [(b":status", b"404"), (b"x-a!#$%&'*+.^_`|~9", b"a  b\tc\x7f\xff")],
    "te trailers": [(b":status", b"200"), (b"te", b"Trailers")],
}


@pytest.mark.parametrize(
    "headers", [*MALFORMED.values(), *WELL_FORMED.values()], ids=[*MALFORMED, *WELL_FORMED]
)
def test_response_headers_are_judged_as_h2_judges_them(headers: list[tuple[bytes, bytes]]) -> None:
    """h2's own inbound validation is off (it cost 14.5 µs a response); dlstudy's one-pass
    check accepts and rejects the same blocks (and, beyond it, a status that is no code)."""
    flags = h2.utilities.HeaderValidationFlags(
        is_client=True, is_trailer=False, is_response_header=True, is_push_promise=False
    )
    try:
        list(h2.utilities.validate_headers(headers, flags))
        h2_accepts = True
    except h2.exceptions.ProtocolError:
        h2_accepts = False
    verdict = malformed(headers)
    assert (verdict is None) == (headers in WELL_FORMED.values())
    if headers != MALFORMED["status not a code"]:
        assert (verdict is None) == h2_accepts, verdict


@pytest.mark.parametrize("name", ["no status", "uppercase name", "connection-specific"])
def test_a_malformed_response_fails_only_its_own_stream(name: str) -> None:
    """A malformed response is a stream error (RFC 9113 8.1.1): its request fails, the stream
    is reset with PROTOCOL_ERROR, and the connection goes on serving the others."""

    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/bad":
            peer.send_raw_headers(stream_id, MALFORMED[name])
        else:
            await peer.respond(stream_id, b"fine")

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            bad, good = await asyncio.gather(
                c.get(server.url + "/bad"), c.get(server.url + "/good"), return_exceptions=True
            )
            assert isinstance(bad, httpx.RemoteProtocolError), repr(bad)
            assert "malformed HTTP/2 response" in str(bad)
            assert isinstance(good, httpx.Response) and good.content == b"fine"
            assert (await c.get(server.url + "/after")).content == b"fine"
            (peer,) = server.peers
            await eventually(lambda: ErrorCodes.PROTOCOL_ERROR in peer.resets.values(), within=5)
            assert server.accepts == 1 and not server.errors

    run(test)


# -- flow control when a reader gives up -----------------------------------------------------------


def test_a_response_closed_early_is_cancelled_and_its_window_given_back() -> None:
    big = payload(4 * 1024 * 1024, seed=7)

    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/full":
            await peer.respond(stream_id, big)
        else:  # a whole stream window's worth, then nothing until the client gives up
            peer.send_headers(stream_id)
            await peer.send_body(stream_id, bytes(STREAM_WINDOW), end=False)

    async def test() -> None:
        # 20 abandoned streams hold 20 MiB, more than the 16 MiB connection window: unless the
        # client hands their unread bytes back, the server cannot send the last download.
        async with H2Server(handler) as server, client(timeout=3) as c:
            for _ in range(20):
                async with c.stream("GET", server.url + "/cancel") as response:
                    async for _ in response.aiter_raw():
                        await asyncio.sleep(0.05)  # the rest of the window arrives, unread
                        break
            response = await c.get(server.url + "/full")
            assert response.content == big
            assert server.accepts == 1
            (peer,) = server.peers
            cancelled = list(range(1, 41, 2))
            assert {i: peer.resets.get(i) for i in cancelled} == dict.fromkeys(
                cancelled, ErrorCodes.CANCEL
            )
            assert 41 not in peer.resets

    run(test)


# -- the server's stream limit ---------------------------------------------------------------------


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "after a first request"])
@pytest.mark.parametrize("latency", [0, 0.1], ids=["settings at once", "settings in 100 ms"])
def test_the_servers_max_concurrent_streams_is_respected(warm: bool, latency: float) -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        await asyncio.sleep(0.05)
        await peer.respond(stream_id, b"ok %d" % stream_id)

    async def test() -> None:
        server = H2Server(handler, max_concurrent_streams=1, settings_delay=latency)
        async with server, client() as c:
            if warm:
                assert (await c.get(server.url)).status_code == 200
            responses = await asyncio.gather(
                *(c.get(server.url + f"/{i}") for i in range(4)), return_exceptions=True
            )
            failed = [r for r in responses if isinstance(r, BaseException)]
            assert failed == [], f"{len(failed)} of 4 requests failed: {failed[0]!r}"
            assert all(r.status_code == 200 for r in responses)  # type: ignore[union-attr]
            assert server.refused == 0
            assert max(peer.most_open for peer in server.peers) == 1
            assert 2 <= server.accepts <= 5

    run(test)


# -- GOAWAY and RST_STREAM from the server --------------------------------------------------------


def test_goaway_fails_the_unprocessed_streams_as_collateral_and_retryable() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/again":
            await peer.respond(stream_id, b"fresh")
            return
        await requests_in(peer, 3)
        if stream_id == 1:
            await peer.respond(1, b"one")
            peer.goaway(last_stream_id=1)
        else:
            await asyncio.sleep(5)  # never answered; cancelled when the connection ends

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            urls = [server.url + f"/{i}" for i in range(3)]
            results = await asyncio.gather(*(c.get(url) for url in urls), return_exceptions=True)
            (peer,) = server.peers
            first = peer.path(1).decode()
            for url, result in zip(urls, results, strict=True):
                if url.endswith(first):
                    assert isinstance(result, httpx.Response) and result.content == b"one"
                    continue
                assert isinstance(result, httpx.RemoteProtocolError), repr(result)
                error = translate_error(result, url)
                assert isinstance(error, TransferError)
                assert error.retryable and error.collateral
                assert "GOAWAY" in str(error)
            await eventually(lambda: peer.closed)  # nothing left on it: the client closed it
            response = await c.get(server.url + "/again")
            assert response.content == b"fresh" and response.http_version == "HTTP/2"
            assert server.accepts == 2

    run(test)


def test_streams_below_the_goaway_last_stream_id_still_complete() -> None:
    """A server shutting down gracefully sends GOAWAY first, then finishes what it took; the
    connection takes no new stream after it."""
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


def test_a_goaway_naming_streams_it_never_answers_gives_them_up_after_a_grace() -> None:
    """hypercorn's GOAWAY covers every stream it received, answered or not: a draining
    connection that stays silent hands its streams back for a free resend, long before the
    read timeout."""

    async def handler(peer: Peer, stream_id: int) -> None:
        peer.goaway(last_stream_id=stream_id)
        await asyncio.sleep(5)

    async def test() -> None:
        async with H2Server(handler) as server, client(timeout=10) as c:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.RemoteProtocolError, match="GOAWAY") as caught:
                await c.get(server.url)
            waited = asyncio.get_running_loop().time() - started
            assert GOAWAY_GRACE <= waited < GOAWAY_GRACE + 1
            error = translate_error(caught.value, server.url)
            assert isinstance(error, TransferError) and error.retryable and error.collateral

    run(test)


@pytest.mark.parametrize("gives_up", ["closes the response early", "times out"])
def test_giving_up_on_a_stream_after_goaway_frees_its_slot(gives_up: str) -> None:
    """The stream is at or below the GOAWAY's last_stream_id, so still open, when the reader
    gives up on it: that must fail (or end) only that request, as without a GOAWAY."""
    early = gives_up == "closes the response early"

    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/again":
            await peer.respond(stream_id, b"fresh")
            return
        if early:
            peer.send_headers(stream_id)
            await peer.send_body(stream_id, b"x" * 1000, end=False)
        peer.goaway(last_stream_id=stream_id)  # this stream will still be answered...
        await asyncio.sleep(5)  # ...but slowly

    async def test() -> None:
        timeout = httpx.Timeout(3 if early else 0.3, pool=1)
        async with H2Server(handler) as server, client(max_streams=1, timeout=timeout) as c:
            if early:
                async with c.stream("GET", server.url) as response:
                    async for chunk in response.aiter_raw():
                        assert chunk == b"x" * 1000
                        await asyncio.sleep(0.1)  # the GOAWAY arrives
                        break
            else:
                with pytest.raises(httpx.ReadTimeout):
                    await c.get(server.url)
            # The one slot (max_streams=1) is free again: no PoolTimeout.
            assert (await c.get(server.url + "/again")).content == b"fresh"
            assert server.accepts == 2

    run(test)


@pytest.mark.parametrize("code", [ErrorCodes.REFUSED_STREAM, ErrorCodes.INTERNAL_ERROR])
@pytest.mark.parametrize("mid_body", [False, True], ids=["before headers", "mid-body"])
def test_rst_stream_fails_only_its_own_request(code: ErrorCodes, mid_body: bool) -> None:
    good_body = payload(300_000)

    async def handler(peer: Peer, stream_id: int) -> None:
        path = peer.path(stream_id)
        if path == b"/bad":
            await requests_in(peer, 2)
            if mid_body:
                peer.send_headers(stream_id)
                await peer.send_body(stream_id, b"partial", end=False)
            peer.reset(stream_id, code)
        else:
            if path == b"/good":
                await requests_in(peer, 2)
                await asyncio.sleep(0.05)  # after the reset
            await peer.respond(stream_id, good_body)

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            bad, good = await asyncio.gather(
                c.get(server.url + "/bad"), c.get(server.url + "/good"), return_exceptions=True
            )
            assert isinstance(bad, httpx.RemoteProtocolError), repr(bad)
            assert code.name in str(bad)
            assert isinstance(good, httpx.Response) and good.content == good_body
            assert (await c.get(server.url + "/after")).content == good_body
            assert server.accepts == 1

    run(test)


# -- broken connections ----------------------------------------------------------------------------


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
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)) as caught:
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
        await asyncio.sleep(5)

    async def test() -> None:
        async with H2Server(handler) as server, client(timeout=0.3) as c:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpx.ReadTimeout):
                await c.get(server.url + "/stall")
            assert loop.time() - started < 2
            (peer,) = server.peers
            await eventually(lambda: peer.resets.get(1) == ErrorCodes.CANCEL)
            assert (await c.get(server.url + "/ok")).content == b"ok"  # same connection
            assert server.accepts == 1

    run(test)


def test_garbage_from_the_server_fails_open_streams_and_the_next_request_reconnects() -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        if peer.path(stream_id) == b"/again":
            await peer.respond(stream_id, b"fresh")
            return
        await requests_in(peer, 2)
        if stream_id == 1:
            # A DATA frame on stream 0, which no HTTP/2 peer may send. (Text would not do: its
            # first bytes read as a frame length of megabytes, which h2 waits for.)
            peer.writer.write(b"\x00\x00\x08\x00\x00\x00\x00\x00\x00garbage!")

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            results = await asyncio.gather(
                c.get(server.url + "/a"), c.get(server.url + "/b"), return_exceptions=True
            )
            for result in results:
                assert isinstance(result, httpx.RemoteProtocolError), repr(result)
                assert "protocol error" in str(result)
            peer = server.peers[0]
            await eventually(lambda: peer.closed)
            assert [g.error_code for g in peer.goaways] == [ErrorCodes.PROTOCOL_ERROR]
            assert (await c.get(server.url + "/again")).content == b"fresh"
            assert server.accepts == 2

    run(test)


@pytest.mark.parametrize("goodbye", ["GOAWAY and FIN", "FIN only"])
def test_a_connection_the_server_closed_while_idle_is_not_used_again(goodbye: str) -> None:
    async def handler(peer: Peer, stream_id: int) -> None:
        await peer.respond(stream_id, b"ok")
        if goodbye == "GOAWAY and FIN":
            peer.goaway(last_stream_id=stream_id)
        peer.writer.close()

    async def test() -> None:
        async with H2Server(handler) as server, client() as c:
            assert (await c.get(server.url)).content == b"ok"
            await asyncio.sleep(0.1)  # the FIN arrives while the connection sits idle
            assert (await c.get(server.url)).content == b"ok"
            assert server.accepts == 2

    run(test)


@pytest.mark.parametrize("keep_open", [False, True], ids=["closes", "keeps the connection"])
def test_an_http11_only_server_fails_with_a_protocol_error(keep_open: bool) -> None:
    """What lets `--http auto` fall back to HTTP/1.1 on plain http://: at once, even when the
    server keeps the connection open after its 400 (no wait for a timeout)."""

    async def test() -> None:
        async with Http11Only(keep_open=keep_open) as server, client(timeout=10) as c:
            started = asyncio.get_running_loop().time()
            with pytest.raises(protocol_errors()):
                await c.get(server.url + "/studies")
            assert asyncio.get_running_loop().time() - started < 2
            assert server.request_lines == [b"PRI * HTTP/2.0\r\n"]

    run(test)


# -- what this transport hands over --------------------------------------------------------------


def test_requests_with_a_body_or_other_methods_go_to_the_fallback() -> None:
    async def test() -> None:
        fallback = Recorder()
        async with client(fallback=fallback) as c:
            assert (await c.post("http://127.0.0.1:9/x", content=b"body")).status_code == 299
            assert (await c.delete("http://127.0.0.1:9/y")).status_code == 299
            request = c.build_request("GET", "http://127.0.0.1:9/z", content=b"query")
            assert (await c.send(request)).status_code == 299
        assert [r.method for r in fallback.requests] == ["POST", "DELETE", "GET"]

    run(test)


# -- TLS and ALPN ----------------------------------------------------------------------------------


def tls_server_context(tls_ca: Any, alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_ca.cert), str(tls_ca.key))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def tls_client_context(tls_ca: Any) -> ssl.SSLContext:
    context = tls_ca.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def test_h2_over_tls_by_alpn(tls_ca: Any) -> None:
    body = payload(500_000)

    async def test() -> None:
        tls = tls_server_context(tls_ca, ["h2"])
        async with (
            H2Server(answer(body), tls=tls) as server,
            client(ssl_context=tls_client_context(tls_ca)) as c,
        ):
            responses = await asyncio.gather(*(c.get(server.url + "/x") for _ in range(3)))
            for response in responses:
                assert response.http_version == "HTTP/2" and response.content == body
            assert server.accepts == 1
            (peer,) = server.peers
            assert peer.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
            assert dict(peer.requests[1])[b":scheme"] == b"https"

    run(test)


def test_an_origin_that_picks_http11_by_alpn_goes_to_the_http1_fallback(tls_ca: Any) -> None:
    async def test() -> None:
        http1, fallback = Recorder(), Recorder()
        tls = tls_server_context(tls_ca, ["http/1.1"])
        async with (
            Http11Only(tls=tls) as server,
            client(
                ssl_context=tls_client_context(tls_ca), fallback=fallback, http1_fallback=http1
            ) as c,
        ):
            for path in ("/first", "/second", "/third"):
                assert (await c.get(server.url + path)).status_code == 299
            assert [r.url.path for r in http1.requests] == ["/first", "/second", "/third"]
            assert fallback.requests == []
            assert server.accepts == 1  # the origin is remembered: one TLS handshake
            assert server.request_lines == []  # the h2 preface never went out

    run(test)


def test_a_tls_server_that_answers_no_alpn_goes_to_the_http1_fallback(tls_ca: Any) -> None:
    """h2 over TLS exists only by ALPN (RFC 9113 section 3.2): a server that selects no
    protocol at all speaks HTTP/1.1, which is also how httpcore decides."""

    async def test() -> None:
        http1 = Recorder()
        tls = tls_server_context(tls_ca, None)
        async with (
            Http11Only(tls=tls) as server,
            client(ssl_context=tls_client_context(tls_ca), http1_fallback=http1) as c,
        ):
            response = await c.get(server.url + "/studies")
            assert response.status_code == 299
            assert [r.url.path for r in http1.requests] == ["/studies"]
            assert server.request_lines == []

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
            assert all(len(peer.goaways) == 1 for peer in peers)
            await busy.aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(test)
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
