"""Scripted servers on 127.0.0.1 for tests of the HTTP engine: an HTTP/2 server on the h2
library's server-side state machine, whose per-request handler says exactly which frames go out,
and an HTTP/1.1-only server that answers an h2c preface as HTTP/1.1 servers do. The servers
record what they received (settings, headers, WINDOW_UPDATE, RST_STREAM, GOAWAY) so that tests
can assert what the client put on the wire."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Self

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hyperframe.frame

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
