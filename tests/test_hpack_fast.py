"""dlstudy/hpack_fast.py: cheaper HPACK, same headers."""

from __future__ import annotations

import hpack
import hpack.hpack
import hpack.huffman_table
from hpack import NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from dlstudy import hpack_fast

RESPONSE = [
    (b":status", b"200"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Sun, 22 Nov 2026 05:53:26 GMT"),
    (b"content-type", b"application/dicom"),
    (b"content-length", b"524514"),
]


def test_huffman_strings_decode_the_same_and_are_remembered() -> None:
    assert hpack.hpack.decode_huffman is hpack_fast._remembered_decode_huffman  # type: ignore[attr-defined]
    hpack_fast._decoded.clear()
    block = hpack.Encoder().encode([NeverIndexedHeaderTuple(k, v) for k, v in RESPONSE])
    for _ in range(3):  # the same block again and again, as a server sends it
        assert hpack.Decoder().decode(block, raw=True) == RESPONSE
    assert b"application/dicom" in hpack_fast._decoded.values()
    encoded = hpack.huffman_table.decode_huffman  # the original, for comparison
    for key, value in hpack_fast._decoded.items():
        assert encoded(key) == value


def test_the_memo_is_bounded() -> None:
    huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    hpack_fast._decoded.clear()
    for i in range(hpack_fast._MEMO_LIMIT + 10):
        value = str(i).encode()
        assert hpack_fast._remembered_decode_huffman(huffman.encode(value)) == value
    assert 0 < len(hpack_fast._decoded) <= hpack_fast._MEMO_LIMIT


def test_requests_are_encoded_without_huffman_and_decode_to_the_same_headers() -> None:
    headers = [(b":method", b"GET"), (b":path", b"/studies/1.2.3/series/4.5/instances/6.7.8")]
    plain = hpack_fast.PlainEncoder().encode(headers)
    assert b"/studies/1.2.3/series/4.5/instances/6.7.8" in plain  # literal, not Huffman-coded
    assert hpack.Decoder().decode(plain, raw=True) == headers
    assert len(plain) > len(hpack.Encoder().encode(headers))


REQUEST = [
    (b":method", b"GET"),  # a full static-table entry
    (b":authority", b"127.0.0.1:8443"),
    (b":scheme", b"https"),
    (b":path", b"/dicomweb/studies/1.2.3/series/4.5/instances/6.7.8"),
    (b"user-agent", b"dlstudy"),
    (b"accept", b"application/dicom; transfer-syntax=*"),
    (b"authorization", b"Bearer secret"),
    (b"x-api-key", b"k3y"),  # no static name: both strings literal
]


def test_request_blocks_leave_the_peers_dynamic_table_empty() -> None:
    encoder, decoder = hpack_fast.PlainEncoder(), hpack.Decoder()
    blocks = [encoder.encode(REQUEST) for _ in range(3)]
    assert blocks[0] == blocks[1] == blocks[2]  # no state carried from one request to the next
    for block in blocks:
        assert decoder.decode(block, raw=True) == REQUEST
    assert not decoder.header_table.dynamic_entries
    assert encoder.header_table.dynamic_entries == type(encoder.header_table.dynamic_entries)()


def test_credentials_are_marked_never_indexed() -> None:
    decoded = hpack.Decoder().decode(hpack_fast.PlainEncoder().encode(REQUEST), raw=True)
    never = {field[0] for field in decoded if isinstance(field, NeverIndexedHeaderTuple)}
    assert never == {b"authorization"}


def test_a_table_size_the_peer_sets_is_signalled_first_in_the_next_block() -> None:
    encoder, decoder = hpack_fast.PlainEncoder(), hpack.Decoder()
    decoder.decode(encoder.encode(REQUEST), raw=True)
    encoder.header_table_size = 0  # h2 does this on SETTINGS_HEADER_TABLE_SIZE 0
    decoder.max_allowed_table_size = 0
    block = encoder.encode(REQUEST)
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update (RFC 7541 6.3)
    assert decoder.decode(block, raw=True) == REQUEST
    assert decoder.header_table.maxsize == 0
    assert encoder.encode(REQUEST)[0] & 0xE0 != 0x20  # once only


def test_paths_are_not_remembered_and_the_field_memo_is_bounded() -> None:
    encoder = hpack_fast.PlainEncoder()
    for i in range(3):
        encoder.encode([(b":path", f"/p/{i}".encode())])
    assert not encoder._fields
    decoder = hpack.Decoder()
    for i in range(hpack_fast._FIELD_MEMO_LIMIT + 10):
        field = [(b"x-n", str(i).encode())]
        assert decoder.decode(encoder.encode(field), raw=True) == field
    assert 0 < len(encoder._fields) <= hpack_fast._FIELD_MEMO_LIMIT
