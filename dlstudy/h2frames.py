"""h2's incoming frame buffer, filled in place by an asyncio BufferedProtocol.

h2's own FrameBuffer copies every received byte three times before a DATA frame reaches the
reader (into its buffer, out as a slice, then `tobytes()`), on top of the copy asyncio makes to
hand `data_received` one bytes object: with 512 KiB frames that is most of the memory traffic
of a download. Here a DATA frame's body is allocated once, at its exact size, as soon as its
header is read, and TLS (or the socket) writes the rest of it straight there; that buffer is
what the reader gets. Smaller frames and the first bytes of a body go through a scratch buffer.

h2 drives it as its `incoming_buffer`: `H2Connection.receive_data(b"")` iterates the frames
that are complete, with FrameBuffer's own checks (frame size, CONTINUATION assembly).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import h2.exceptions
import h2.frame_buffer
import hyperframe.frame
from hyperframe.exceptions import InvalidDataError, InvalidFrameError

if TYPE_CHECKING:
    from typing_extensions import Buffer

FRAME_HEADER = 9
SCRATCH = 64 * 1024


def _data_frame_body_repr(frame: hyperframe.frame.DataFrame) -> str:
    """hyperframe's text for a DATA frame's body, from the 10 bytes it shows.

    h2 formats a trace line for every received frame whether or not anything logs it, and
    hyperframe builds it by serializing the frame (a copy of its body) and hex-encoding all of
    it to show the first 10 bytes: 15% of the client CPU of an HTTP/2 download. Same text here.
    """
    total = len(frame.serialize_padding_data()) + len(frame.data) + frame.pad_length
    if not total:
        return "None"
    head = frame.serialize_padding_data() + bytes(frame.data[:10]) + b"\0" * frame.pad_length
    return "<hex:" + head[:10].hex() + ("..." if total > 10 else "") + ">"


hyperframe.frame.DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]


class FrameReader(h2.frame_buffer.FrameBuffer):
    """Hands out the memory the next received bytes go to; yields complete frames to h2."""

    def __init__(self) -> None:
        super().__init__(server=False)
        self._scratch = memoryview(bytearray(SCRATCH))
        self._start = 0  # scratch[_start:_end] is received and not yet parsed
        self._end = 0
        self._body: bytearray | None = None  # the DATA body being filled in place
        self._body_view = memoryview(b"")
        self._filled = 0
        self._body_frame: hyperframe.frame.DataFrame | None = None
        self._complete: deque[hyperframe.frame.Frame] = deque()

    # -- the asyncio BufferedProtocol side ----------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go (never empty)."""
        if self._body is not None:
            return self._body_view[self._filled :]
        if self._end == len(self._scratch):
            self._compact()
        return self._scratch[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._body is None:
            self._end += nbytes
            return
        self._filled += nbytes
        if self._filled == len(self._body):
            frame = self._body_frame
            assert frame is not None
            frame.data = self._body  # type: ignore[assignment]  # bytes-like, never copied
            frame.body_len = len(self._body)
            self._complete.append(frame)
            self._body = self._body_frame = None
            self._body_view = memoryview(b"")

    def peek(self, length: int) -> bytes:
        """The first unparsed received bytes, up to `length` (for sniffing an HTTP/1 answer)."""
        return bytes(self._scratch[self._start : min(self._end, self._start + length)])

    def discard(self) -> None:
        """Drop whatever was received and not parsed (a connection that takes nothing more)."""
        self._start = self._end = 0
        self._body = self._body_frame = None
        self._body_view = memoryview(b"")

    def add_data(self, data: Buffer) -> None:
        """FrameBuffer's entry point: copies `data` in (h2 calls it with b"" from here)."""
        view = memoryview(data)
        while view:
            target = self.get_buffer()
            count = min(len(target), len(view))
            target[:count] = view[:count]
            self.buffer_updated(count)
            view = view[count:]

    # -- the h2 side ---------------------------------------------------------------------------

    def __next__(self) -> hyperframe.frame.Frame:
        while True:
            frame = self._next_frame()
            if frame is None:
                raise StopIteration
            # HEADERS + CONTINUATION become one frame; a lone CONTINUATION is an error.
            whole = self._update_header_buffer(frame)
            if whole is not None:
                return whole

    def _next_frame(self) -> hyperframe.frame.Frame | None:
        if self._complete:
            return self._complete.popleft()
        available = self._end - self._start
        if self._body is not None or available < FRAME_HEADER:
            return None
        start = self._start
        try:
            frame, length = hyperframe.frame.Frame.parse_frame_header(
                self._scratch[start : start + FRAME_HEADER]
            )
        except (
            hyperframe.exceptions.InvalidDataError,
            hyperframe.exceptions.InvalidFrameError,
        ) as exc:
            raise h2.exceptions.ProtocolError(f"Received frame with invalid header: {exc}") from exc
        self._validate_frame_length(length)  # before anything is allocated for it
        body_start = start + FRAME_HEADER
        have = self._end - body_start
        if have < length:
            if isinstance(frame, hyperframe.frame.DataFrame) and "PADDED" not in frame.flags:
                self._read_body_in_place(frame, length, body_start, have)
            elif FRAME_HEADER + length > len(self._scratch):
                self._grow(FRAME_HEADER + length)
            return None
        body = self._scratch[body_start : body_start + length]
        self._start = body_start + length
        if self._start == self._end:
            self._start = self._end = 0
        try:
            if isinstance(frame, hyperframe.frame.DataFrame) and "PADDED" not in frame.flags:
                frame.data = bytes(body)
                frame.body_len = length
            else:
                frame.parse_body(body)  # every frame type copies what it keeps
        except InvalidDataError as exc:
            raise h2.exceptions.ProtocolError("Received frame with non-compliant data") from exc
        except InvalidFrameError as exc:
            raise h2.exceptions.FrameDataMissingError("Frame data missing or invalid") from exc
        return frame

    def _read_body_in_place(
        self, frame: hyperframe.frame.DataFrame, length: int, body_start: int, have: int
    ) -> None:
        body = bytearray(length)
        body[:have] = self._scratch[body_start : self._end]
        self._start = self._end = 0
        self._body, self._body_view, self._filled = body, memoryview(body), have
        self._body_frame = frame

    def _compact(self) -> None:
        """Move the unparsed tail to the front of the scratch buffer."""
        tail = bytes(self._scratch[self._start : self._end])
        self._scratch[: len(tail)] = tail
        self._start, self._end = 0, len(tail)

    def _grow(self, size: int) -> None:
        """Room for one frame larger than the scratch buffer (a big HEADERS frame)."""
        tail = bytes(self._scratch[self._start : self._end])
        self._scratch = memoryview(bytearray(max(size, SCRATCH)))
        self._scratch[: len(tail)] = tail
        self._start, self._end = 0, len(tail)
