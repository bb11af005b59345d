"""HPACK at a lower cost per request, for dlstudy/http2.py (same bytes on the wire semantics).

hpack is pure Python and its Huffman coder works bit by bit: for one instance request (a
~150-character :path that is new every time) and one nginx response (seven Huffman-coded
literals) it spent ~65 µs here, a tenth of the Python work per small instance.

- Requests are sent without Huffman coding (RFC 7541 5.2 lets the encoder choose per string):
  ~30% more header bytes, a third of the encoding time.
- Decoded Huffman strings are remembered: a server repeats the same values (server, content
  type, dates within a second) in every response, and the decoder runs the bit loop again for
  each. The result depends only on the input bytes, so memoizing changes nothing but speed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hpack
import hpack.hpack
import hpack.huffman_table

# Distinct values a run sees are few (dates, lengths, ETags); the bound only guards memory.
_MEMO_LIMIT = 4096
_decoded: dict[bytes, bytes] = {}
_decode_huffman = hpack.huffman_table.decode_huffman


def _remembered_decode_huffman(data: bytes | bytearray | memoryview | None) -> bytes:
    if not data:
        return b""
    key = bytes(data)
    value = _decoded.get(key)
    if value is None:
        if len(_decoded) >= _MEMO_LIMIT:
            _decoded.clear()
        value = _decoded[key] = _decode_huffman(key)
    return value


hpack.hpack.decode_huffman = _remembered_decode_huffman  # type: ignore[attr-defined,assignment]


class PlainEncoder(hpack.Encoder):
    """An hpack Encoder that never Huffman-codes (h2 calls `encode(headers)`)."""

    def encode(self, headers: Iterable[Any], huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)
