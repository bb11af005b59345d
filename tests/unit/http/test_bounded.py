"""Small answers read whole with a bound on their decoded size (dlstudy/http/bounded.py)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from dlstudy.http.bounded import AnswerCutShort, BadAnswer, read_bounded

BODY = b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]' * 1000


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read(data: bytes, encoding: str, limit: int = 1 << 20) -> bytes:
    async def main() -> bytes:
        return await read_bounded(_chunks(data), encoding, limit)

    return anyio.run(main)


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("", lambda d: d),
        ("identity", lambda d: d),
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),  # what some servers send as "deflate"
    ],
)
def test_each_coding_asked_for_decodes_whole(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    assert read(encode(BODY), encoding) == BODY


def test_past_the_limit_is_refused_plain_and_once_decoded() -> None:
    with pytest.raises(BadAnswer, match="larger than 0 MiB$"):
        read(BODY, "", limit=len(BODY) - 1)
    with pytest.raises(BadAnswer, match="larger than 0 MiB once decoded"):
        read(gzip.compress(BODY), "gzip", limit=len(BODY) - 1)
    assert read(gzip.compress(BODY), "gzip", limit=len(BODY)) == BODY


def test_a_bomb_is_stopped_at_the_limit() -> None:
    bomb = gzip.compress(b" " * (64 << 20))  # 64 MB from about 64 KB
    with pytest.raises(BadAnswer, match="larger than 1 MiB once decoded"):
        read(bomb, "gzip")


def test_a_stream_cut_short_or_broken_or_unasked_is_an_error() -> None:
    whole = gzip.compress(BODY)
    with pytest.raises(AnswerCutShort, match="gzip answer cut short"):
        read(whole[: len(whole) // 2], "gzip")
    with pytest.raises(BadAnswer, match="does not decode"):
        read(b"not gzip at all", "gzip")
    with pytest.raises(BadAnswer, match="content-coding 'br', which was not asked for"):
        read(b"\x0b\x02\x80[]\x03", "br")
