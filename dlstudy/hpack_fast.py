"""HPACK at a lower cost per request, for dlstudy/http2.py (same bytes on the wire semantics).

hpack is pure Python and its Huffman coder works bit by bit: for one instance request (a
~150-character :path that is new every time) and one nginx response (seven Huffman-coded
literals) it spent ~65 µs here, a tenth of the Python work per small instance.

- Requests never use the dynamic table, so each header field's encoding is computed once and
  reused (see PlainEncoder), and strings go without Huffman coding.
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
import hpack.table

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


# Fields sent as "never indexed" (RFC 7541 6.2.3): intermediaries must not index them either.
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
_FIELD_MEMO_LIMIT = 512


def _static_tables() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    fields: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for index, (name, value) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, start=1):
        fields.setdefault((name, value), index)
        names.setdefault(name, index)
    return fields, names


_STATIC_FIELDS, _STATIC_NAMES = _static_tables()


def _string(data: bytes) -> bytes:
    """An HPACK string literal, not Huffman-coded (RFC 7541 5.2)."""
    return bytes(hpack.hpack.encode_integer(len(data), 7)) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One header field that touches no dynamic table: a static-table index, or a literal
    "without indexing" (or "never indexed") with a static name index where there is one."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        prefix = hpack.hpack.encode_integer(index, 7)
        prefix[0] |= 0x80
        return bytes(prefix)
    flag = 0x10 if name in _SENSITIVE else 0x00
    index = _STATIC_NAMES.get(name, 0)
    prefix = hpack.hpack.encode_integer(index, 4)
    prefix[0] |= flag
    if index:
        return bytes(prefix) + _string(value)
    return bytes(prefix) + _string(name) + _string(value)


class PlainEncoder(hpack.Encoder):
    """An HPACK encoder for requests that never inserts into the dynamic table.

    A run sends the same few fields (method, authority, accept...) with every request and a new
    :path each time. Without the dynamic table, each field's encoding depends only on the field,
    so it is computed once and reused; hpack's Encoder searched and grew its table and logged
    every field on every request (~25 µs of a ~35 µs send_headers here). Strings go without
    Huffman coding (RFC 7541 5.2 lets the encoder choose): ~30% more header bytes.
    The one piece of state an encoder must keep, a table size change the peer asked for
    (SETTINGS_HEADER_TABLE_SIZE), is still signalled first in the next block, as hpack does.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[Any], huffman: bool = False) -> bytes:
        block = []
        if self.header_table.resized:
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
        fields = self._fields
        for name, value, *_ in headers:
            if name == b":path":
                block.append(encode_field(name, value))
                continue
            encoded = fields.get((name, value))
            if encoded is None:
                if len(fields) >= _FIELD_MEMO_LIMIT:
                    fields.clear()
                encoded = fields[name, value] = encode_field(name, value)
            block.append(encoded)
        return b"".join(block)
