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
