"""Process-wide adjustments of the HTTP stack (httpcore, h2) that change cost, not behaviour.

Each one answers a line of the client profile (`benchmarks/`, README "Performance"); each is
checked by tests/test_httptuning.py, so an httpcore or h2 release that moves the code they rely
on fails the tests instead of silently losing the gain. httpcore is pinned to 1.0.x for this.

- Socket reads of 256 KiB instead of 64 KiB: every read costs a trip through httpcore, httpx
  and our write loop, and DICOM bodies are large.
- h2 formats a trace line for every received frame even when nothing logs it, and `repr()` of a
  DATA frame hex-encodes its whole body first (about 8% of client CPU on HTTP/2 downloads):
  DATA frames get a repr that names their size instead.
- Before every request httpcore asks every pooled HTTP/1.1 connection whether its socket became
  readable (the server closed it). It goes through anyio's typed-attribute lookup, which builds
  a dict of lambdas and calls getpeername() each time: the raw socket is looked up once per
  connection and polled directly.
"""

from __future__ import annotations

import socket
from typing import Any

from httpcore._async.http2 import AsyncHTTP2Connection
from httpcore._async.http11 import AsyncHTTP11Connection
from httpcore._backends.anyio import AnyIOStream
from httpcore._utils import is_socket_readable
from hyperframe.frame import DataFrame

SOCKET_READ_SIZE = 256 * 1024

_applied = False


def _data_frame_repr(self: DataFrame) -> str:
    return f"DataFrame(stream_id={self.stream_id}, flags={self.flags!r}): {len(self.data)} bytes"


_original_get_extra_info = AnyIOStream.get_extra_info


def _get_extra_info(self: AnyIOStream, info: str) -> Any:
    if info != "is_readable":
        return _original_get_extra_info(self, info)
    raw: socket.socket | None = self.__dict__.get("_dlstudy_raw_socket")
    if raw is None:
        raw = _original_get_extra_info(self, "socket")
        self.__dict__["_dlstudy_raw_socket"] = raw
    return is_socket_readable(raw)


def apply() -> None:
    """Install the adjustments once per process."""
    global _applied
    if _applied:
        return
    AsyncHTTP11Connection.READ_NUM_BYTES = SOCKET_READ_SIZE
    AsyncHTTP2Connection.READ_NUM_BYTES = SOCKET_READ_SIZE
    DataFrame.__repr__ = _data_frame_repr  # type: ignore[method-assign, assignment]
    AnyIOStream.get_extra_info = _get_extra_info  # type: ignore[method-assign]
    _applied = True
