"""dlstudy/h2frames.py: h2's incoming buffer filled in place, checked against h2's own."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from dlstudy.h2frames import SCRATCH, FrameReader

MAX_FRAME = 1024 * 1024


def frames_sample() -> list[Frame]:
    settings = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100})
    headers = HeadersFrame(1, b"\x88" * 40)
    headers.flags.add("END_HEADERS")
    big = DataFrame(1, bytes(range(256)) * 2048)  # 512 KiB: read in place
    small = DataFrame(3, b"tiny body")
    padded = DataFrame(3, b"padded body" * 100)
    padded.flags.add("PADDED")
    padded.pad_length = 7
    ended = DataFrame(1, b"last")
    ended.flags.add("END_STREAM")
    split_headers = HeadersFrame(5, b"\x82" * 10)
    continuation = ContinuationFrame(5, b"\x84" * 10)
    continuation.flags.add("END_HEADERS")
    huge_headers = HeadersFrame(7, b"\x86" * (SCRATCH + 1000))  # larger than the scratch buffer
    huge_headers.flags.add("END_HEADERS")
    return [
        settings,
        headers,
        big,
        WindowUpdateFrame(0, window_increment=1000),
        small,
        padded,
        PingFrame(0, opaque_data=b"12345678"),
        ended,
        split_headers,
        continuation,
        huge_headers,
        DataFrame(7, b"x" * (SCRATCH * 3)),
    ]


def wire(frames: list[Frame]) -> bytes:
    return b"".join(frame.serialize() for frame in frames)


def parsed_by_h2(data: bytes) -> list[str]:
    reference = h2.frame_buffer.FrameBuffer()
    reference.max_frame_size = MAX_FRAME
    reference.add_data(data)
    return [summary(frame) for frame in reference]


def summary(frame: Frame) -> str:
    body = getattr(frame, "data", b"")
    return f"{type(frame).__name__} {frame.stream_id} {sorted(frame.flags)} {bytes(body)!r}"


def fill(reader: FrameReader, data: bytes, piece: int) -> list[str]:
    """Feed `data` as a socket would, at most `piece` bytes per read, iterating as h2 does."""
    out: list[str] = []
    reader.max_frame_size = MAX_FRAME
    view = memoryview(data)
    while view:
        target = reader.get_buffer()
        assert len(target) > 0
        count = min(len(target), len(view), piece)
        target[:count] = view[:count]
        reader.buffer_updated(count)
        view = view[count:]
        out.extend(summary(frame) for frame in reader)
    return out


@pytest.mark.parametrize("piece", [1, 7, 9, 100, 16_384, 65_536, 10**7])
def test_same_frames_as_h2s_own_buffer_whatever_the_read_sizes(piece: int) -> None:
    data = wire(frames_sample())
    expected = parsed_by_h2(data)
    assert len(expected) == 11  # the CONTINUATION is merged into its HEADERS
    assert fill(FrameReader(), data, piece) == expected


def test_a_large_data_frame_body_is_the_buffer_it_was_received_into() -> None:
    reader = FrameReader()
    reader.max_frame_size = MAX_FRAME
    frame = DataFrame(1, b"\xab" * 300_000)
    data = frame.serialize()
    reader.add_data(data[:100])  # header and the start of the body land in the scratch buffer
    assert list(reader) == []
    target = reader.get_buffer()
    assert len(target) == 300_000 - 91  # exactly the rest of this body
    target[:] = data[100:]
    received = target.obj
    reader.buffer_updated(len(target))
    (parsed,) = list(reader)
    assert isinstance(parsed, DataFrame)
    assert parsed.data is received
    assert parsed.data == frame.data and parsed.body_len == 300_000


def test_a_frame_over_the_limit_is_refused_before_its_body_is_allocated() -> None:
    reader = FrameReader()
    reader.max_frame_size = 16_384
    reader.add_data(DataFrame(1, b"x" * 20_000).serialize()[:9])
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        list(reader)


def test_a_continuation_without_headers_is_a_protocol_error() -> None:
    reader = FrameReader()
    reader.max_frame_size = MAX_FRAME
    headers = HeadersFrame(1, b"\x82")  # no END_HEADERS: a CONTINUATION must follow
    stray = DataFrame(1, b"not a continuation")
    reader.add_data(wire([headers, stray]))
    with pytest.raises(h2.exceptions.ProtocolError):
        list(reader)


def test_peek_and_discard() -> None:
    reader = FrameReader()
    reader.add_data(b"HTTP/1.1 400 Bad Request\r\n")
    assert reader.peek(7) == b"HTTP/1."
    reader.discard()
    assert reader.peek(7) == b""
    assert len(reader.get_buffer()) == SCRATCH


def test_h2_connection_delivers_events_from_it() -> None:
    """The whole path as dlstudy/http2.py uses it: h2 iterating the reader on receive_data(b"")."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    reader = FrameReader()
    client.incoming_buffer = reader
    client.initiate_connection()
    server = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.send_headers(
        1,
        [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200")])
    server.send_data(1, b"body" * 1000, end_stream=True)
    events = []
    data = server.data_to_send()
    for start in range(0, len(data), 1000):
        reader.add_data(data[start : start + 1000])
        events.extend(client.receive_data(b""))
    kinds = [type(event) for event in events]
    assert h2.events.ResponseReceived in kinds and h2.events.StreamEnded in kinds
    body = b"".join(bytes(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    assert body == b"body" * 1000
