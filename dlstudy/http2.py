"""A lean HTTP/2 transport for httpx, on the h2 state machine and one asyncio Protocol per
connection: the HTTP/2 counterpart of dlstudy/http11.py, for the same reason (README
"Performance": httpcore spent most of the client CPU of an HTTP/2 download on its own
bookkeeping: a lock, a cancel scope and an event-list shuffle per frame and per read).

- Settings: 1 MiB frames and 8 MiB stream windows, so a 512 KiB instance is one DATA frame
  instead of 32, and a stream is not held to 64 KiB per round trip at high RTT. Received data is
  acknowledged only when the reader takes it, so the 16 MiB connection window bounds what a
  connection buffers, whatever the number of streams.
- Frames that the protocol sends back (HEADERS, WINDOW_UPDATE) are flushed once per turn of the
  event loop, so many streams share one TLS record and one send().
- Streams share one connection per origin while the server's SETTINGS_MAX_CONCURRENT_STREAMS
  allows; beyond that, more connections.
- Over https://, ALPN offers h2 (and http/1.1 when `http1_fallback` is given: origins that pick
  it are then served by that transport).
- GOAWAY: streams the server never processed fail with the GOAWAY event in their cause chain,
  which dlstudy/transport.py treats as safe to send again; the connection takes no new streams.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx

from .h2frames import FrameReader
from .hpack_fast import PlainEncoder, TablelessDecoder
from .http11 import (
    OpenConnections,
    Origin,
    check_header,
    connect,
    handled_here,
    origin_of,
    take_slot,
    wait_until,
)

# A 512 KiB instance in one frame instead of 32 of the default 16 KiB: h2 handles each frame in
# Python. Measured side by side here: 1 MiB frames 12% faster than 64 KiB on `ct`, 27% on `wsi`
# (256 KiB frames made glibc trim and refault the heap: more system time than they saved).
MAX_FRAME_SIZE = 1024 * 1024
# A stream may have this much in flight: 8 MiB per round trip is 400 MB/s at 20 ms RTT for one
# big response (a series as multipart, a whole-slide image); with 2 MiB, `many` as one multipart
# response per series took 0.85 s at 20 ms against 0.61 s (8 MiB, and HTTP/1.1). Half the
# connection window, so one slowly read stream cannot hold all of it.
STREAM_WINDOW = 8 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_HEADER_LIST_SIZE = 64 * 1024
GOAWAY_GRACE = 0.5  # seconds a connection draining after a GOAWAY may stay silent
# Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2; TE only as "trailers"): never
# sent, and a response carrying one is malformed.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Left out of a request's fields: those, and Host, which becomes :authority.
_DROPPED_HEADERS = _CONNECTION_SPECIFIC | {b"host"}


_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN

# RFC 9113 8.2.1: a field name is lowercase visible ASCII without a colon (pseudo-headers
# aside); a value has no NUL, CR or LF, and no whitespace at either end.
_FIELD_NAME = re.compile(rb"[!-9;-@\[-~]+")
_FIELD_VALUE = re.compile(rb"(?:[^\0\r\n \t](?:[^\0\r\n]*[^\0\r\n \t])?)?")
_STATUS = re.compile(rb"[1-5][0-9][0-9]")


def malformed(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a response's header block is malformed (RFC 9113 8.2, 8.3.2), or None.

    What h2's inbound validation checks for a response, and a three-digit :status, in one pass
    with regular expressions: h2 walks every byte of every field in Python (14.5 µs a response
    here against ~3). Its validation is off (see Connection); trailers and interim responses,
    which dlstudy ignores, are not checked."""
    if not headers or headers[0][0] != b":status":
        return ":status missing or not first"
    if not _STATUS.fullmatch(headers[0][1]):
        return f"status {headers[0][1]!r}"
    for name, value in headers[1:]:
        if name[:1] == b":":
            return f"pseudo-header {name!r} in a response or out of place"
        if not _FIELD_NAME.fullmatch(name):
            return f"field name {name!r}"
        if not _FIELD_VALUE.fullmatch(value):
            return f"value of {name.decode('ascii')}"
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            return f"connection-specific field {name.decode('ascii')}"
    return None


class _Refused(Exception):
    """Carries the GOAWAY that refused a stream, for dlstudy.transport's cause-chain probe."""


class _Stream:
    __slots__ = ("id", "status", "headers", "chunks", "ended", "error", "waiter")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self.ended = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, read_timeout: float | None) -> None:
        self.waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await wait_until(waiter, read_timeout, httpx.ReadTimeout("timed out reading"))
        finally:
            self.waiter = None


class Connection(asyncio.BufferedProtocol):
    """One HTTP/2 connection: h2 parses, this routes events to the streams waiting on them."""

    def __init__(self, origin: Origin, *, http1_allowed: bool = False) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        # Request headers are built and checked by _request_headers (lower-case names, no
        # connection-specific fields, no CR/LF/NUL); h2 checking them again cost ~10 µs each.
        # Response headers are checked by `malformed` instead of h2 (five times faster); h2's
        # inbound normalising only joins split Cookie fields, which responses do not carry.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self._reader = FrameReader()
        self.h2.incoming_buffer = self._reader
        self.h2.encoder = PlainEncoder()
        decoder = TablelessDecoder()
        decoder.max_header_list_size = self.h2.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.h2.decoder.max_allowed_table_size
        self.h2.decoder = decoder
        # h2 closes its state machine on a GOAWAY and then rejects every frame, even those of
        # the streams the GOAWAY says the server will still finish: this connection stays open
        # for them (it only takes no new streams).
        machine = self.h2.state_machine
        machine._transitions = {
            **machine._transitions,
            (_CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY): (None, _CLIENT_OPEN),
        }
        self.streams: dict[int, _Stream] = {}
        self.max_streams = 1
        self.accepting = True  # False after GOAWAY, a connection error or close()
        self.broken = False  # a protocol error: h2 takes and sends nothing more
        self.closed = False
        self._goaway_event: h2.events.ConnectionTerminated | None = None
        self._last_received = 0.0
        self.speaks_http1 = False  # TLS chose http/1.1 (or nothing) by ALPN
        self._http1_allowed = http1_allowed
        self._framed = False  # has received bytes, so they were checked for an HTTP/1 answer
        self._flush_scheduled = False
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        # The server's SETTINGS (its stream limit) arrive one round trip after connecting; no
        # stream goes out before, or a burst could exceed a limit below ours.
        self.settled: asyncio.Future[None] = loop.create_future()

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            if self._http1_allowed:
                self.speaks_http1 = True  # the transport hands the origin to HTTP/1.1
                return
        # Set as initial values, as httpcore does, so only one SETTINGS frame goes out; h2 then
        # never learns of the larger frame size by ACK, hence max_inbound_frame_size by hand.
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.MAX_CONCURRENT_STREAMS: 100,
                codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
                codes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        # Some servers reject this setting, which the original RFC 7540 did not define.
        del self.h2.local_settings[codes.ENABLE_CONNECT_PROTOCOL]
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._reader.buffer_updated(nbytes)
        if not self._framed:
            self._framed = True
            if self._reader.peek(7) == b"HTTP/1.":
                # An HTTP/1.1 server answering our preface (h2c to a server without it): h2
                # would read "HTTP/1.1 " as the header of a 4 MB frame and wait for the rest.
                self._fail(httpx.RemoteProtocolError("server answered in HTTP/1.1"), None)
                assert self.transport is not None
                self.transport.close()
        if self.closed or self.broken:
            self._reader.discard()
            return
        if not self.accepting:
            self._last_received = asyncio.get_running_loop().time()
        try:
            events = self.h2.receive_data(b"")  # h2 takes the complete frames from the reader
        except h2.exceptions.ProtocolError as exc:
            self.flush()  # h2 queued a GOAWAY saying why
            self._fail(httpx.RemoteProtocolError(f"HTTP/2 protocol error: {exc}"), exc)
            self._reader.discard()
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and event.data is not None:
                stream.chunks.append((event.data, event.flow_controlled_length or 0))
                stream.wake()
            elif event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                self._take_headers(stream, event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                stream.ended = True
                stream.wake()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                code = event.error_code
                name = getattr(code, "name", code)
                stream.error = httpx.RemoteProtocolError(f"server reset the stream ({name})")
                stream.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.max_streams = self.h2.remote_settings.max_concurrent_streams
            if not self.settled.done():
                self.settled.set_result(None)

    def _take_headers(self, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
        why = malformed(headers)
        if why is not None:  # a stream error (RFC 9113 8.1.1): the connection carries on
            stream.error = httpx.RemoteProtocolError(f"malformed HTTP/2 response: {why}")
            if self.streams.pop(stream.id, None) is not None:
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            stream.wake()
            return
        stream.status = int(headers[0][1])
        stream.headers.extend(headers[1:])
        stream.wake()

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """Streams above last_stream_id were never processed: they fail with the GOAWAY as
        their cause, which dlstudy sends again without using up a retry. The others may finish,
        as long as the connection keeps delivering (see _check_draining)."""
        self.accepting = False
        self._goaway_event = event
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self._fail_streams(event, [i for i in self.streams if i > last])
        if self.streams:
            self._last_received = asyncio.get_running_loop().time()
            asyncio.get_running_loop().call_later(GOAWAY_GRACE, self._check_draining)
        self.close_if_done()

    def _check_draining(self) -> None:
        """Some servers (hypercorn) name streams in their GOAWAY that they will never answer:
        a draining connection silent for GOAWAY_GRACE gives its streams up, for a free resend."""
        if self.closed or self.broken or not self.streams or self._goaway_event is None:
            return
        loop = asyncio.get_running_loop()
        silent = loop.time() - self._last_received
        if silent < GOAWAY_GRACE:
            loop.call_later(GOAWAY_GRACE - silent, self._check_draining)
            return
        self._fail_streams(self._goaway_event, list(self.streams))
        self.close_if_done()

    def _fail_streams(self, event: h2.events.ConnectionTerminated, ids: list[int]) -> None:
        for stream_id in ids:
            stream = self.streams.pop(stream_id)
            error = httpx.RemoteProtocolError(
                f"server closed the HTTP/2 connection (GOAWAY, error {event.error_code})"
            )
            error.__cause__ = _Refused(event)
            stream.error = error
            stream.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        if exc is None:
            error: BaseException = httpx.RemoteProtocolError("server closed the connection")
        else:
            error = httpx.ReadError(str(exc) or type(exc).__name__)
        self._fail(error, exc)

    def _fail(self, error: BaseException, cause: BaseException | None) -> None:
        self.broken = True
        if not self.settled.done():
            self.settled.set_exception(error)
            self.settled.exception()  # retrieved: whoever waits on it gets it too
        self.accepting = False
        self._error = error
        error.__cause__ = cause
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.error = error
            stream.wake()

    # -- used by the transport ----------------------------------------------------------------

    def has_room(self) -> bool:
        return (
            self.accepting
            and not self.closed
            and len(self.streams) < self.max_streams
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def open_stream(self, headers: list[tuple[bytes, bytes]]) -> _Stream:
        stream_id = self.h2.get_next_available_stream_id()
        stream = _Stream(stream_id)
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, headers, end_stream=True)
        self.flush_soon()
        return stream

    def acknowledge(self, stream: _Stream, size: int) -> None:
        if size and not (self.closed or self.broken):
            self.h2.acknowledge_received_data(size, stream.id)
            self.flush_soon()

    def cancel(self, stream: _Stream) -> None:
        """The reader gave up: reset the stream and hand back the window its data held."""
        unread = sum(size for _, size in stream.chunks)
        stream.chunks.clear()
        if self.closed or self.broken:
            return
        if self.streams.pop(stream.id, None) is not None:
            self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        if unread:
            self.h2.acknowledge_received_data(unread, stream.id)
        self.flush()
        self.close_if_done()

    def close_if_done(self) -> None:
        if not self.accepting and not self.streams and self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Flush once the event loop has run every ready task: the HEADERS and WINDOW_UPDATE
        frames of many streams then leave in one TLS record and one send() instead of one each."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def close(self) -> None:
        """Say goodbye (GOAWAY) if the connection is still in good standing, then close."""
        in_good_standing = not (self.broken or self.closed or self.speaks_http1)
        self.accepting = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if in_good_standing:
            self.h2.close_connection()
            self.flush()
        transport.close()


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        pool: Http2Transport,
        connection: Connection,
        stream: _Stream,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._stream = stream
        self._timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream, connection = self._stream, self._connection
        while True:
            if stream.chunks:
                data, size = stream.chunks.popleft()
                connection.acknowledge(stream, size)
                if not stream.chunks and stream.ended:
                    self._finish()
                yield data
                continue
            if stream.error is not None:
                raise stream.error
            if stream.ended:
                break
            await stream.wait(self._timeout)
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._pool._release(self._connection)

    async def aclose(self) -> None:
        if not self._done:
            try:
                self._connection.cancel(self._stream)
            finally:
                self._finish()


class Http2Transport(httpx.AsyncBaseTransport):
    """At most `max_streams` requests at once, over as few connections per origin as the
    server's stream limit allows."""

    def __init__(
        self,
        *,
        tls_context: Callable[[], ssl.SSLContext],
        max_streams: int,
        fallback: httpx.AsyncBaseTransport,
        http1_fallback: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`fallback` takes what this transport does not handle (bodies, other methods);
        `http1_fallback`, if given, takes origins whose TLS server picks http/1.1 by ALPN."""
        self._tls_context = tls_context
        self._fallback = fallback
        self._http1 = http1_fallback
        self._http1_origins: set[Origin] = set()
        self._connections: dict[Origin, list[Connection]] = {}
        self._connecting: dict[Origin, asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(max(1, max_streams))
        self._closed = False
        self._every = OpenConnections()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not handled_here(request) or self._closed:
            return await self._fallback.handle_async_request(request)
        origin = origin_of(request.url)
        if origin in self._http1_origins and self._http1 is not None:
            return await self._http1.handle_async_request(request)
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        headers = _request_headers(request)

        await take_slot(self._slots, timeouts.get("pool"))
        try:
            connection = await self._connection_for(origin, timeouts.get("connect"))
        except BaseException:
            self._slots.release()
            raise
        if connection is None:  # the server picked HTTP/1.1 by ALPN
            self._slots.release()
            assert self._http1 is not None
            return await self._http1.handle_async_request(request)
        try:
            stream = connection.open_stream(headers)
        except BaseException:
            self._release(connection)
            raise
        try:
            while not stream.status:
                if stream.error is not None:
                    raise stream.error
                if stream.ended:
                    raise httpx.RemoteProtocolError("stream ended without a response")
                await stream.wait(read_timeout)
        except BaseException:
            try:
                connection.cancel(stream)
            finally:
                self._release(connection)
            raise
        return httpx.Response(
            stream.status,
            headers=stream.headers,
            stream=_Body(self, connection, stream, read_timeout),
            extensions={"http_version": b"HTTP/2"},
        )

    async def _connection_for(
        self, origin: Origin, connect_timeout: float | None
    ) -> Connection | None:
        """A connection with room for one more stream; None if the origin speaks HTTP/1.1."""
        found = self._with_room(origin)
        if found is not None:
            return found
        lock = self._connecting.setdefault(origin, asyncio.Lock())
        async with lock:  # one handshake at a time per origin; the others then share it
            found = self._with_room(origin)
            if found is not None or origin in self._http1_origins:
                return found
            http1_allowed = self._http1 is not None
            connection = await connect(
                lambda o: Connection(o, http1_allowed=http1_allowed),
                origin,
                self._tls_context,
                connect_timeout,
            )
            self._every.add(connection)
            if connection.speaks_http1:
                connection.close()
                self._http1_origins.add(origin)
                return None
            try:
                await asyncio.wait_for(asyncio.shield(connection.settled), connect_timeout)
            except TimeoutError:
                connection.close()
                raise httpx.RemoteProtocolError("server sent no HTTP/2 SETTINGS") from None
            except BaseException:
                connection.close()
                raise
            self._connections.setdefault(origin, []).append(connection)
            return connection

    def _with_room(self, origin: Origin) -> Connection | None:
        connections = self._connections.get(origin)
        if not connections:
            return None
        for connection in connections:
            if connection.has_room():
                return connection
        # Drop the ones that will never take a stream again.
        connections[:] = [c for c in connections if c.accepting and not c.closed]
        return None

    def _release(self, connection: Connection) -> None:
        self._slots.release()
        connection.close_if_done()

    async def aclose(self) -> None:
        self._closed = True
        self._connections.clear()
        await self._every.close_all()
        await self._fallback.aclose()
        if self._http1 is not None:
            await self._http1.aclose()


def _request_headers(request: httpx.Request) -> list[tuple[bytes, bytes]]:
    url = request.url
    authority = request.headers.get("host", url.netloc.decode("ascii")).encode("ascii")
    headers = [
        (b":method", request.method.encode("ascii")),
        (b":authority", authority),
        (b":scheme", url.scheme.encode("ascii")),
        (b":path", url.raw_path),
    ]
    for name, value in request.headers.raw:
        check_header(name, value)
        lowered = name.lower()
        if lowered not in _DROPPED_HEADERS and not (lowered == b"te" and value != b"trailers"):
            headers.append((lowered, value.strip(b" \t")))
    return headers
