"""A lean HTTP/1.1 transport for httpx: what DICOMweb downloads need, at a fraction of the CPU.

Why it exists: downloading 1,000 x 512 KiB instances, httpcore's connection pool cost about 3 ms
of client CPU per instance (a scan of every pooled connection per request and per response, a
poll() per idle connection, an anyio cancel scope per socket read, h11's buffer copies), where a
plain asyncio client needs about 0.6 ms (README "Performance" has the profiles). httpx stays the
HTTP layer (auth, redirects, cookies, timeouts, Response); this replaces only httpcore beneath it,
for GET and HEAD without a body on direct connections. Anything else goes to `fallback`.

How: one asyncio Protocol per connection. The event loop keeps reading idle sockets, so a server
that closes an idle connection is noticed for free, without polling; a request that still lands
on a connection the server was closing (nothing received yet) is sent once more on a new one.
Responses are framed as RFC 9112 section 6.3 says. It needs anyio's asyncio backend (dlstudy
always runs on it).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol, TypeVar

import httpx

MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 4 * 1024  # a chunk-size or trailer line
# Bytes a connection may hold unread before it stops reading its socket: bounds memory per
# connection while the consumer (disk, hashing) catches up.
PAUSE_READING_ABOVE = 512 * 1024
RESUME_READING_BELOW = 128 * 1024

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(rb"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Origin = tuple[str, str, int]
Framing = Literal["none", "length", "chunked", "close"]


class _NoResponse(Exception):
    """The connection ended before a single byte of the response arrived."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__("Server disconnected without sending a response.")
        self.cause = cause


def _time_out(waiter: asyncio.Future[None], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)


async def wait_until(waiter: asyncio.Future[None], seconds: float | None, error: Exception) -> None:
    """Await `waiter`; if it is still pending after `seconds` (None: never), raise `error`.

    One timer per wait, and only when there is something to wait for: cheaper than a cancel
    scope per read."""
    if seconds is None:
        await waiter
        return
    timer = asyncio.get_running_loop().call_later(seconds, _time_out, waiter, error)
    try:
        await waiter
    finally:
        timer.cancel()


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: received bytes queue up here until the response reads them."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.reused = False  # has carried a response before
        self.broken = False  # framing went wrong, a read was abandoned: never reuse
        self.discarded = False  # no longer counted by the pool
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._received_any = False
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._received_any = True
        if self._buffered > PAUSE_READING_ABOVE and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if not self.lost.done():
            self.lost.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the transport ----------------------------------------------------------------

    def is_reusable(self) -> bool:
        """Idle, open, and the server has sent nothing unasked (that would be an error or EOF)."""
        transport = self.transport
        return (
            not self.broken
            and not self._eof
            and not self._chunks
            and transport is not None
            and not transport.is_closing()
        )

    def start_request(self) -> None:
        self._received_any = False

    async def send(self, data: bytes, write_timeout: float | None) -> None:
        assert self.transport is not None
        if self._eof or self.transport.is_closing():
            raise _NoResponse(self._error)
        self.transport.write(data)
        if self._writable is not None:
            await self._wait(self._writable, write_timeout, httpx.WriteTimeout("timed out writing"))

    async def receive(self, read_timeout: float | None) -> bytes:
        """The next bytes from the server; b"" once it has closed the connection."""
        while not self._chunks:
            if self._eof:
                if self._error is not None:
                    if not self._received_any:
                        raise _NoResponse(self._error)
                    detail = str(self._error) or type(self._error).__name__
                    raise httpx.ReadError(detail) from self._error
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._wait(self._waiter, read_timeout, httpx.ReadTimeout("timed out reading"))
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < RESUME_READING_BELOW:
            assert self.transport is not None
            self.transport.resume_reading()
            self._reading_paused = False
        return chunk

    def unread(self, data: bytes) -> None:
        if data:
            self._chunks.appendleft(data)
            self._buffered += len(data)

    @property
    def received_any(self) -> bool:
        return self._received_any

    async def _wait(
        self, waiter: asyncio.Future[None], seconds: float | None, error: Exception
    ) -> None:
        try:
            await wait_until(waiter, seconds, error)
        except (httpx.ReadTimeout, httpx.WriteTimeout):
            self.broken = True
            raise

    def close(self) -> None:
        self.broken = True
        if self.transport is not None:
            # abort: a half-read response must not be drained, and close() would flush writes.
            self.transport.abort()


class _Head:
    __slots__ = ("version", "status", "reason", "headers")

    def __init__(
        self, version: bytes, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    def tokens(self, name: bytes) -> list[bytes]:
        return [
            token.strip().lower()
            for value in self.values(name)
            for token in value.split(b",")
            if token.strip()
        ]


def _protocol_error(message: str) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(message)


async def _read_head(connection: Connection, read_timeout: float | None) -> tuple[_Head, bytes]:
    """The status line and headers, plus whatever body bytes came with them."""
    buffer = b""
    searched = 0
    while True:
        chunk = await connection.receive(read_timeout)
        if not chunk:
            if not buffer:
                raise (
                    _NoResponse(None)
                    if not connection.received_any
                    else _protocol_error("Server disconnected without sending a response.")
                )
            raise _protocol_error("server closed the connection in the middle of the headers")
        buffer = buffer + chunk if buffer else chunk
        match = _HEAD_END.search(buffer, max(0, searched - 3))
        if match is not None:
            return _parse_head(buffer[: match.start()]), buffer[match.end() :]
        if len(buffer) > MAX_HEAD_BYTES:
            raise _protocol_error(f"response headers longer than {MAX_HEAD_BYTES} bytes")
        searched = len(buffer)


def _parse_head(head: bytes) -> _Head:
    lines = head.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    parts = status_line.split(b" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(parts[1]) != 3
        or not _DIGITS.fullmatch(parts[1])
    ):
        raise _protocol_error(f"malformed status line {status_line[:80]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            raise _protocol_error("folded header line (obsolete line folding)")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _protocol_error(f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip(b" \t")))
    reason = parts[2] if len(parts) == 3 else b""
    return _Head(parts[0], int(parts[1]), reason, headers)


def _framing(method: bytes, head: _Head) -> tuple[Framing, int]:
    """How the body ends (RFC 9112 6.3), and its length when the headers say."""
    if method == b"HEAD" or head.status in (204, 304) or head.status < 200:
        return "none", 0
    codings = head.tokens(b"transfer-encoding")
    if codings:
        return ("chunked", 0) if codings[-1] == b"chunked" else ("close", 0)
    lengths = {value.strip() for value in head.values(b"content-length")}
    if not lengths:
        return "close", 0
    (length, *others) = lengths
    if others or not _DIGITS.fullmatch(length):
        raise _protocol_error(f"invalid Content-Length {b', '.join(sorted(lengths))[:80]!r}")
    return "length", int(length)


class _Body(httpx.AsyncByteStream):
    """A response body read straight off its connection; the connection goes back to the pool
    as soon as the last byte is read, or is closed if the reader stops early."""

    def __init__(
        self,
        pool: Http11Transport,
        connection: Connection,
        framing: Framing,
        length: int,
        leftover: bytes,
        timeout: float | None,
        keep_alive: bool,
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._framing: Framing = framing
        self._length = length
        self._timeout = timeout
        self._keep_alive = keep_alive and framing != "close"
        self._done = False
        connection.unread(leftover)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._framing == "length":
                async for chunk in self._fixed_length():
                    yield chunk
            elif self._framing == "chunked":
                async for chunk in self._chunked():
                    yield chunk
            elif self._framing == "close":
                while chunk := await self._connection.receive(self._timeout):
                    yield chunk
        except BaseException:
            self._connection.broken = True
            raise
        self._finish()

    async def _fixed_length(self) -> AsyncIterator[bytes]:
        remaining = self._length
        while remaining:
            chunk = await self._connection.receive(self._timeout)
            if not chunk:
                received = self._length - remaining
                raise _protocol_error(
                    "peer closed connection without sending complete message body: "
                    f"received {received} bytes, expected {self._length}"
                )
            if len(chunk) > remaining:
                # More than Content-Length said: we never pipeline, so the rest is garbage.
                self._connection.broken = True
                chunk = chunk[:remaining]
            remaining -= len(chunk)
            if not remaining:
                self._finish()  # the connection can serve others while this chunk is written
            yield chunk

    async def _chunked(self) -> AsyncIterator[bytes]:
        buffer = b""
        while True:
            line, buffer = await self._line(buffer)
            size_field = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_field):
                raise _protocol_error(f"malformed chunk size line {line[:80]!r}")
            remaining = int(size_field, 16)
            if remaining == 0:
                break
            while remaining:
                if not buffer:
                    buffer = await self._connection.receive(self._timeout)
                    if not buffer:
                        raise _protocol_error("peer closed connection in the middle of a chunk")
                if len(buffer) <= remaining:
                    piece, buffer = buffer, b""
                else:
                    piece, buffer = buffer[:remaining], buffer[remaining:]
                remaining -= len(piece)
                yield piece
            line, buffer = await self._line(buffer)
            if line:
                raise _protocol_error("chunk data longer than its size line said")
        while True:  # trailer fields, ignored, up to the empty line
            line, buffer = await self._line(buffer)
            if not line:
                break
        if buffer:
            self._connection.broken = True  # bytes after the message: never reuse

    async def _line(self, buffer: bytes) -> tuple[bytes, bytes]:
        """One line (without its CRLF) from `buffer` topped up from the connection; the rest."""
        while (end := buffer.find(b"\n")) < 0:
            if len(buffer) > MAX_LINE_BYTES:
                raise _protocol_error("chunked body line too long")
            more = await self._connection.receive(self._timeout)
            if not more:
                raise _protocol_error("peer closed connection in the middle of a chunked body")
            buffer += more
        return buffer[:end].rstrip(b"\r"), buffer[end + 1 :]

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._pool._release(self._connection, reusable=self._keep_alive)

    async def aclose(self) -> None:
        if not self._done:
            self._connection.broken = True
            self._finish()


class Http11Transport(httpx.AsyncBaseTransport):
    """A pool of at most `max_connections` HTTP/1.1 connections, reused last-in first-out."""

    def __init__(
        self,
        *,
        tls_context: Callable[[], ssl.SSLContext],
        max_connections: int,
        fallback: httpx.AsyncBaseTransport,
    ) -> None:
        self._tls_context = tls_context
        self._max_connections = max(1, max_connections)
        self._fallback = fallback
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_order: deque[Connection] = deque()  # oldest first, to close when full
        self._open = 0
        self._slots = asyncio.Semaphore(self._max_connections)
        self._closed = False
        self._every = OpenConnections()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not handled_here(request) or self._closed:
            return await self._fallback.handle_async_request(request)
        method = request.method.encode("ascii")
        origin = origin_of(request.url)
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        head_bytes = _request_head(method, request)

        await take_slot(self._slots, timeouts.get("pool"))
        connection: Connection | None = None
        try:
            connection = await self._checkout(origin, timeouts.get("connect"))
            try:
                head, leftover = await _exchange(
                    connection, head_bytes, timeouts.get("write"), read_timeout
                )
            except _NoResponse as exc:
                if not connection.reused:
                    raise _disconnected(exc) from exc.cause
                # The server closed an idle connection just as we used it: once more, fresh.
                self._discard(connection)
                connection = None
                connection = await self._connect(origin, timeouts.get("connect"))
                try:
                    head, leftover = await _exchange(
                        connection, head_bytes, timeouts.get("write"), read_timeout
                    )
                except _NoResponse as again:
                    raise _disconnected(again) from again.cause
            framing, length = _framing(method, head)
        except BaseException:
            if connection is not None:
                self._discard(connection)
            self._slots.release()
            raise
        keep_alive = head.version == b"HTTP/1.1" and b"close" not in head.tokens(b"connection")
        body = _Body(self, connection, framing, length, leftover, read_timeout, keep_alive)
        if framing == "none":
            body._finish()
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=body,
            extensions={"http_version": head.version, "reason_phrase": head.reason},
        )

    async def _checkout(self, origin: Origin, connect_timeout: float | None) -> Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            self._idle_order.remove(connection)
            if connection.is_reusable():
                return connection
            self._discard(connection)
        return await self._connect(origin, connect_timeout)

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> Connection:
        if self._open >= self._max_connections and self._idle_order:
            oldest = self._idle_order.popleft()
            self._idle[oldest.origin].remove(oldest)
            self._discard(oldest)
        self._open += 1
        try:
            connection = await connect(Connection, origin, self._tls_context, connect_timeout)
        except BaseException:
            self._open -= 1
            raise
        self._every.add(connection)
        return connection

    def _release(self, connection: Connection, *, reusable: bool) -> None:
        """A request is over: its connection goes idle or is closed, and its slot frees up."""
        self._slots.release()
        if reusable and not self._closed and connection.is_reusable():
            connection.reused = True
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_order.append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: Connection) -> None:
        if not connection.discarded:
            connection.discarded = True
            self._open -= 1
        connection.close()

    async def aclose(self) -> None:
        self._closed = True
        while self._idle_order:
            connection = self._idle_order.popleft()
            self._idle[connection.origin].remove(connection)
            self._discard(connection)
        await self._every.close_all()
        await self._fallback.aclose()


async def _exchange(
    connection: Connection,
    head_bytes: bytes,
    write_timeout: float | None,
    read_timeout: float | None,
) -> tuple[_Head, bytes]:
    """Send one request head; return the final response head and the body bytes after it."""
    connection.start_request()
    await connection.send(head_bytes, write_timeout)
    while True:
        head, leftover = await _read_head(connection, read_timeout)
        if head.status == 101:
            raise _protocol_error("unexpected 101 Switching Protocols")
        if head.status >= 200:
            return head, leftover
        connection.unread(leftover)  # 1xx interim response: the real one follows


class _Closable(Protocol):
    lost: asyncio.Future[None]

    def close(self) -> None: ...


class OpenConnections:
    """Every connection a pool opened that is not closed yet, so that the pool's aclose() can
    close them all (idle or busy) and wait until asyncio has really released their sockets."""

    def __init__(self) -> None:
        self._open: set[_Closable] = set()

    def add(self, connection: _Closable) -> None:
        self._open.add(connection)
        connection.lost.add_done_callback(lambda _: self._open.discard(connection))

    async def close_all(self) -> None:
        connections = list(self._open)
        for connection in connections:
            connection.close()
        lost = [c.lost for c in connections if not c.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=2)


async def take_slot(slots: asyncio.Semaphore, pool_timeout: float | None) -> None:
    if pool_timeout is None:
        await slots.acquire()
        return
    try:
        await asyncio.wait_for(slots.acquire(), pool_timeout)
    except TimeoutError:
        raise httpx.PoolTimeout("timed out waiting for a free connection") from None


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def connect(
    protocol: Callable[[Origin], P],
    origin: Origin,
    tls_context: Callable[[], ssl.SSLContext],
    connect_timeout: float | None,
) -> P:
    """A new connection to `origin` (TLS for https), its failures as httpx errors.

    `tls_context` is called for https only: a context costs ~35 ms (the CA store), which plain
    http:// runs need not pay."""
    scheme, host, port = origin
    tls = scheme == "https"
    loop = asyncio.get_running_loop()
    try:
        _, connection = await asyncio.wait_for(
            loop.create_connection(
                lambda: protocol(origin),
                host,
                port,
                ssl=tls_context() if tls else None,
                server_hostname=host if tls else None,
                ssl_handshake_timeout=connect_timeout if tls else None,
            ),
            connect_timeout,
        )
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
    return connection


def origin_of(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))


def handled_here(request: httpx.Request) -> bool:
    """GET and HEAD without a body: everything dlstudy sends. The rest goes to httpcore."""
    return request.method in ("GET", "HEAD") and not (
        "content-length" in request.headers or "transfer-encoding" in request.headers
    )


def check_header(name: bytes, value: bytes) -> None:
    if not _TOKEN.fullmatch(name) or any(c in value for c in (b"\r", b"\n", b"\0")):
        raise httpx.LocalProtocolError(f"illegal header {name[:40]!r}")


def _request_head(method: bytes, request: httpx.Request) -> bytes:
    lines = [method + b" " + request.url.raw_path + b" HTTP/1.1"]
    for name, value in request.headers.raw:
        check_header(name, value)
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _disconnected(exc: _NoResponse) -> httpx.RemoteProtocolError:
    cause = exc.cause
    detail = f" ({cause})" if cause is not None and str(cause) else ""
    return _protocol_error(f"Server disconnected without sending a response.{detail}")
