"""Small answers read whole (QIDO pages, probes), with a bound on what a server can make
dlstudy hold: the decoded size is capped while it is decoded, so a compressed answer of a
few kilobytes cannot expand into gigabytes, and a compressed stream that stops early is an
error, never a shorter answer.

Only gzip and deflate are asked for; an answer in another content-coding is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

ACCEPTED_ENCODINGS = "gzip, deflate"
# Far above any QIDO page (1,000 results of a few KB), and small enough that refusing a
# hostile answer keeps the process well under 100 MB.
MAX_SMALL_ANSWER = 32 * 1024 * 1024
_STEP = 1024 * 1024  # decoded bytes made per step


class BadAnswer(Exception):
    """An answer too large, or in a content-coding not asked for or that does not decode."""


class AnswerCutShort(Exception):
    """A compressed answer whose stream stops before its end."""


class _Decoder:
    """Decodes one content-coding (or none), never producing more than `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0
        self._zlib: zlib._Decompress | None = None
        self._first = True
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
        elif encoding not in ("", "identity"):
            raise BadAnswer(f"an answer in content-coding {encoding!r}, which was not asked for")

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            return self._count(data)
        if self._first and self.encoding == "deflate":
            self._first = False
            if data and (data[0] & 0x0F) != 8:  # raw deflate, no zlib header: servers do send it
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        pieces = []
        while True:  # in steps: one call could make up to 1,000 times its input at once
            try:
                piece = self._zlib.decompress(data, _STEP)
            except zlib.error as exc:
                raise BadAnswer(f"a {self.encoding} answer that does not decode ({exc})") from exc
            self.size += len(piece)
            if self.size > self.limit:
                raise BadAnswer(f"an answer larger than {self.limit // 2**20} MiB once decoded")
            pieces.append(piece)
            data = self._zlib.unconsumed_tail
            if not data and len(piece) < _STEP:
                return b"".join(pieces)

    def finish(self) -> None:
        if self._zlib is not None and not self._zlib.eof:
            raise AnswerCutShort(f"a {self.encoding} answer cut short")

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.limit:
            raise BadAnswer(f"an answer larger than {self.limit // 2**20} MiB")
        return data


async def read_bounded(
    raw: AsyncIterator[bytes], content_encoding: str, limit: int = MAX_SMALL_ANSWER
) -> bytes:
    """The decoded body from its raw (still encoded) chunks; BadAnswer past `limit`, for a
    coding not asked for or one that does not decode; AnswerCutShort for one cut short."""
    decoder = _Decoder(content_encoding.strip().lower(), limit)
    chunks = [decoder.feed(chunk) async for chunk in raw]
    decoder.finish()
    return b"".join(chunks)
