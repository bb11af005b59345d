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


class _Stateful(Exception):
    """The block needs hpack's own decoder: it uses or changes the dynamic table, or is not
    well-formed (hpack then raises the proper error)."""


_STATIC = hpack.table.HeaderTable.STATIC_TABLE
_PLAIN, _NEVER = hpack.HeaderTuple, hpack.NeverIndexedHeaderTuple
_new_field = tuple.__new__  # what HeaderTuple(name, value) does, without its Python __new__


def _read_integer(data: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) starting at `at`: (value, where the next item starts)."""
    mask = (1 << prefix_bits) - 1
    value = data[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while at < len(data) and shift < 28:
        byte = data[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise _Stateful


def _read_string(data: bytes, at: int) -> tuple[bytes, int]:
    huffman = data[at] & 0x80
    length, at = _read_integer(data, at, 7)
    end = at + length
    if end > len(data):
        raise _Stateful
    raw = data[at:end]
    return (_remembered_decode_huffman(raw) if huffman else raw), end


def _static_name(index: int) -> bytes:
    if not 1 <= index <= len(_STATIC):
        raise _Stateful  # the dynamic table
    name: bytes = _STATIC[index - 1][0]
    return name


def decode_without_table(data: bytes, limit: int, *, zero_table: bool) -> list[hpack.HeaderTuple]:
    """Decode a block that touches no dynamic table entry; `_Stateful` if it does.

    With `zero_table` (the table's size is 0 and it is empty), a "literal with incremental
    indexing" touches nothing either: its entry is evicted as it is added. That is how nginx
    answers: its first block sets the size to 0 (hpack decodes that one), then every field is
    such a literal or a static index.
    """
    fields: list[hpack.HeaderTuple] = []
    size = 0
    at = 0
    while at < len(data):
        first = data[at]
        if first & 0x80:  # indexed field
            index, at = _read_integer(data, at, 7)
            field = _new_field(_PLAIN, (_static_name(index), _STATIC[index - 1][1]))
        else:
            if first & 0x40:  # literal with incremental indexing
                if not zero_table:
                    raise _Stateful
                prefix_bits = 6
            elif first & 0x20:  # dynamic table size update
                raise _Stateful
            else:  # literal without indexing (0000) or never indexed (0001)
                prefix_bits = 4
            index, at = _read_integer(data, at, prefix_bits)
            if index:
                name = _static_name(index)
            else:
                name, at = _read_string(data, at)
            value, at = _read_string(data, at)
            never = prefix_bits == 4 and first & 0x10
            field = _new_field(_NEVER if never else _PLAIN, (name, value))
        size += 32 + len(field[0]) + len(field[1])
        if size > limit:
            raise _Stateful  # hpack raises OversizedHeaderListError
        fields.append(field)
    return fields


class TablelessDecoder(hpack.Decoder):
    """hpack's Decoder, with a short way for blocks that neither use nor change the dynamic
    table (RFC 7541 allows any mix; nginx sends only such blocks after its first). hpack's
    decoder costs ~18 µs per nginx response here, field by field through its generic path;
    this takes ~6 µs. Anything else, malformed blocks included, goes to hpack unchanged."""

    def decode(self, data: bytes, raw: bool = False) -> Iterable[hpack.HeaderTuple]:
        table = self.header_table
        if raw and not table.dynamic_entries:
            try:
                fields = decode_without_table(
                    data if type(data) is bytes else bytes(data),
                    self.max_header_list_size,
                    zero_table=table.maxsize == 0,
                )
            except (_Stateful, IndexError):
                pass
            else:
                self._assert_valid_table_size()
                return fields
        return super().decode(data, raw)
