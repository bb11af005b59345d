"""The HTTP stack adjustments are in place and still fit the httpcore / h2 they patch."""

from __future__ import annotations

import socket

import anyio
import httpcore
from httpcore._async.http2 import AsyncHTTP2Connection
from httpcore._async.http11 import AsyncHTTP11Connection
from httpcore._backends.anyio import AnyIOBackend
from hyperframe.frame import DataFrame

from dlstudy import httptuning
from dlstudy.transport import Transport  # importing the transport applies the tuning

assert Transport is not None


def test_read_size_is_raised_for_both_protocols() -> None:
    assert AsyncHTTP11Connection.READ_NUM_BYTES == httptuning.SOCKET_READ_SIZE
    assert AsyncHTTP2Connection.READ_NUM_BYTES == httptuning.SOCKET_READ_SIZE


def test_data_frame_repr_does_not_hex_encode_the_body() -> None:
    frame = DataFrame(stream_id=1, data=b"\x00" * 16384)
    assert repr(frame).endswith("16384 bytes")
    assert "<hex:" not in repr(frame)


def test_is_readable_answers_like_httpcore_did() -> None:
    """Idle connection: not readable; after the peer closes it: readable (EOF pending)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    async def run() -> tuple[bool, bool, object]:
        stream = await AnyIOBackend().connect_tcp("127.0.0.1", port)
        peer, _ = server.accept()
        before = stream.get_extra_info("is_readable")
        peer.close()
        await anyio.sleep(0.05)
        after = stream.get_extra_info("is_readable")
        addr = stream.get_extra_info("server_addr")  # other keys still reach anyio
        await stream.aclose()
        return before, after, addr

    try:
        before, after, addr = anyio.run(run)
    finally:
        server.close()
    assert (before, after) == (False, True)
    assert addr == ("127.0.0.1", port)


def test_httpcore_is_the_version_the_tuning_was_written_for() -> None:
    assert httpcore.__version__.startswith("1.0.")
