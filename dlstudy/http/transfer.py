"""One request's response on one libcurl easy handle: its head, then its body, which arrives
in one of two ways:

- as an httpx stream (`aiter_bytes`, `aread`): chunks queue up, and the transfer is paused while
  PAUSE_ABOVE bytes wait unread, so a slow reader holds the server back instead of filling memory;
- poured into a sink (`pour_body`): every chunk goes straight from libcurl's write callback to
  the sink, a plain function that writes, hashes and checks it, with no task switch per chunk.
  The sink runs on the event loop's thread while libcurl waits, which is its back-pressure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpx
import pycurl

if TYPE_CHECKING:
    from .curl import CurlTransport

# The response extension under which a libcurl response offers `pour(sink)`.
BODY = "dlstudy.body"
# Body bytes a reader may leave unread before the transfer is paused.
PAUSE_ABOVE = 1 << 20
# Bytes a sink is given at a time (see Transfer.on_data).
SINK_BATCH = 128 * 1024
_PAUSE: int = pycurl.WRITEFUNC_PAUSE

Sink = Callable[[bytes], None]


class Transfer:
    """One request on one easy handle: the response head as libcurl reports it line by line,
    then the body, queued or poured into a sink."""

    def __init__(self, engine: CurlTransport, easy: pycurl.Curl, proxy: str | None) -> None:
        self.engine = engine
        self.easy = easy
        self.proxy = proxy
        loop = engine.driver().loop
        self.head: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.reason = b""
        # the secrets of the request masked in words of its answer (echoes.mask_echoed)
        self.mask_echoed: Callable[[bytes], bytes] | None = None
        self.version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.paused = False
        self.sink: Sink | None = None
        self.sink_error: BaseException | None = None
        self.batch: list[bytes] = []  # for the sink
        self.batch_size = 0
        self.received = 0  # body bytes that went to the sink's batch
        self.done = False
        self.error: BaseException | None = None
        self.reusable = False  # the handle may serve another request once this one ends
        self.min_progress: tuple[int, float] | None = None  # see MIN_PROGRESS
        self.rate_limit = engine.rate_limit  # --max-rate's bucket, or None
        self.granted = False  # the rate limit resumed it: its held piece is counted in
        self._wakeup: asyncio.Future[None] | None = None

    # --- called by libcurl, on the loop's thread ---------------------------------------------

    def on_header(self, line: bytes) -> None:
        if self.head.done():
            return  # trailers
        if line.startswith(b"HTTP/"):  # a status line: a new head (after a 1xx)
            version, _, rest = line.rstrip(b"\r\n").partition(b" ")
            status, _, reason = rest.strip().partition(b" ")
            self.version = b"HTTP/2" if version == b"HTTP/2" else version
            self.status = int(status) if status.isdigit() else 0  # 0: never a response head
            self.reason = reason.strip()
            self.headers = []
        elif line in (b"\r\n", b"\n"):
            if self.status >= 200:
                self.head.set_result(None)
        elif line[:1] in (b" ", b"\t") and self.headers:  # an obsolete folded line
            name, value = self.headers[-1]
            self.headers[-1] = (name, value + b" " + line.strip())
        else:
            name, _, value = line.partition(b":")
            self.headers.append((name.strip(), value.strip()))

    def on_data(self, chunk: bytes) -> int | None:
        if self.sink is None and self.queued >= PAUSE_ABOVE:
            self.paused = True
            return _PAUSE  # libcurl keeps this chunk and offers it again
        if self.rate_limit is not None and not self.rate_limit.take(self, len(chunk)):
            return _PAUSE  # offered again once the rate limit resumes it
        if self.sink is not None:
            # Servers frame HTTP/2 bodies in 8-16 KiB DATA frames, cut further by TLS records:
            # libcurl calls back once a piece. The sink (a write, a hash, a check: Python
            # each time) gets them SINK_BATCH at a time, the first one at once so
            # an error page is recognised before the rest of it arrives.
            first = not self.received
            self.received += len(chunk)
            self.batch.append(chunk)
            self.batch_size += len(chunk)
            if first or self.batch_size >= SINK_BATCH:
                return self._flush()
            return None
        self.chunks.append(chunk)
        self.queued += len(chunk)
        self._wake()
        return None

    def _flush(self) -> int | None:
        data = b"".join(self.batch) if len(self.batch) > 1 else self.batch[0]
        self.batch.clear()
        self.batch_size = 0
        try:
            self.sink(data)  # type: ignore[misc]  # only called with a sink
        except BaseException as exc:  # noqa: BLE001 - given to the consumer, not lost
            self.sink_error = exc
            return 0  # libcurl aborts the transfer with a write error
        return None

    def finished(self, code: int, message: str) -> None:
        """libcurl is done: `code` 0 when the whole response arrived. A body cut short still
        hands the sink what arrived: the parts of a multipart answer complete in it are kept."""
        if self.batch:
            before = self.sink_error
            if self._flush() is not None:
                if code == 0:
                    code, message = pycurl.E_WRITE_ERROR, "the sink failed"
                else:
                    self.sink_error = before  # what failed is the body cut short
        self.done = True
        if code:
            self.error = self.sink_error or self.engine.error_for(code, message, self)
        if not self.head.done():
            if self.error is not None:
                self.head.set_exception(self.error)
            else:  # no head at all (libcurl accepts that only for HTTP/0.9, which is off)
                self.head.set_exception(httpx.RemoteProtocolError("no response head"))
            self.head.exception()  # retrieved here: the waiter may be gone
        if self.rate_limit is not None:
            self.rate_limit.forget(self)
        self.engine.release(self.easy, self.reusable)
        self._wake()

    # --- called by the consumer ------------------------------------------------------------

    async def next_chunk(self) -> bytes | None:
        """What has arrived, joined; None at the end. Raises the transfer's error."""
        while not self.chunks:
            if self.done:
                if self.error is not None:
                    raise self.error
                return None
            await self._wait()
        data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        self.chunks.clear()
        self.queued = 0
        self._resume()
        return data

    async def pour(self, sink: Sink) -> None:
        """Every byte of the body into `sink`, until the end. Raises the transfer's error, or
        the sink's own if it raised."""
        if self.chunks:
            waiting = b"".join(self.chunks)
            self.received += len(waiting)
            self.chunks.clear()
            try:
                sink(waiting)
            except BaseException:
                self.abandon()
                raise
        self.queued = 0
        self.sink = sink
        self._resume()
        while not self.done:
            await self._wait()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        if not self.done:
            self.done = True
            self.error = httpx.ReadError("the response was closed before its end")
            if self.rate_limit is not None:
                self.rate_limit.forget(self)
            self.engine.abandon(self.easy, self.reusable)

    def resume_for_rate(self) -> None:
        """The rate limit lets it go on (it paused in on_data). A pause for its reader stays."""
        if self.done or self.paused:  # (its reader's _resume goes on)
            self.granted = False
            return
        try:
            self.easy.pause(pycurl.PAUSE_CONT)  # hands the held chunk to on_data right here
        except pycurl.error:
            pass  # the chunk failed in the sink: libcurl ends the transfer with that error

    async def _wait(self) -> None:
        self._wakeup = self.engine.driver().loop.create_future()
        try:
            await self._wakeup
        except BaseException:
            self.abandon()  # cancelled: the transfer goes with the reader
            raise
        finally:
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _resume(self) -> None:
        if self.paused and not self.done:
            self.paused = False
            self.easy.pause(pycurl.PAUSE_CONT)  # may deliver the held chunk right here


class CurlBody(httpx.AsyncByteStream):
    def __init__(self, transfer: Transfer) -> None:
        self._transfer = transfer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._transfer.next_chunk()) is not None:
            yield chunk

    async def pour(self, sink: Sink) -> None:
        await self._transfer.pour(sink)

    async def aclose(self) -> None:
        self._transfer.abandon()


async def pour_body(response: httpx.Response, sink: Sink) -> None:
    """Every byte of `response`'s body, as the server sent it (not decoded), into `sink`:
    straight from libcurl for its responses, through httpx's raw stream for any other
    transport's (tests with a mock transport)."""
    body = response.extensions.get(BODY)
    if isinstance(body, CurlBody):
        await body.pour(sink)
        return
    async for chunk in response.aiter_raw():
        sink(chunk)
