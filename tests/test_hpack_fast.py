"""dlstudy/hpack_fast.py: cheaper HPACK, same headers."""

from __future__ import annotations

from typing import Any

import hpack
import hpack.hpack
import hpack.huffman_table
import pytest
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


# What nginx 1.22 sent for two answers on one connection (captured here): the first sets the
# dynamic table size to 0, then every field is a static index or a literal "with incremental
# indexing" that a 0-byte table evicts at once.
NGINX_FIRST = bytes.fromhex(
    "20887689aa6355e580ae212e1f6196dd6d5f4a084a693f75040138a01db8dbf704ca98b46f5f901d75d0620d"
    "263d4c48621e9ff7d107ab5c04313138326c96dd6d5f4a084a693f75040138a00571966e32f298b46f0083"
    "2a47378bfe5c8c026da784b34f97f9008919085ad2b583aa62a3848fd24a8f"
)
NGINX_NEXT = NGINX_FIRST[1:]


class CountingDecoder(hpack_fast.TablelessDecoder):
    """Counts the blocks that went to hpack's own decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.by_hpack = 0

    def decode(self, data: bytes, raw: bool = False) -> Any:
        original = hpack.Decoder.decode

        def counted(decoder: hpack.Decoder, block: bytes, raw: bool = False) -> Any:
            self.by_hpack += 1
            return original(decoder, block, raw)

        hpack.Decoder.decode = counted  # type: ignore[method-assign]
        try:
            return super().decode(data, raw)
        finally:
            hpack.Decoder.decode = original  # type: ignore[method-assign]


def decoded_as_hpack_does(blocks: list[bytes]) -> CountingDecoder:
    """Decode `blocks` with both decoders, in order; assert the same fields, field types and
    table state after each."""
    reference, fast = hpack.Decoder(), CountingDecoder()
    for block in blocks:
        expected = reference.decode(block, raw=True)
        got = fast.decode(block, raw=True)
        assert got == expected
        assert [type(field) for field in got] == [type(field) for field in expected]
        assert fast.header_table.maxsize == reference.header_table.maxsize
        assert list(fast.header_table.dynamic_entries) == list(
            reference.header_table.dynamic_entries
        )
    return fast


def test_nginx_answers_decode_the_same_and_the_short_way_after_the_first() -> None:
    fast = decoded_as_hpack_does([NGINX_FIRST, NGINX_NEXT, NGINX_NEXT])
    assert fast.by_hpack == 1  # the size update
    fields = dict(fast.decode(NGINX_NEXT, raw=True))
    assert fields[b":status"] == b"200"
    assert fields[b"server"] == b"nginx/1.22.1"


def test_blocks_that_use_the_dynamic_table_go_to_hpack() -> None:
    encoder = hpack.Encoder()  # indexes into a 4096-byte table, as h2 servers do
    blocks = [encoder.encode(RESPONSE), encoder.encode(RESPONSE)]
    fast = decoded_as_hpack_does(blocks)
    assert fast.by_hpack == 2


@pytest.mark.parametrize("huffman", [True, False])
def test_stateless_blocks_of_every_kind_decode_the_same(huffman: bool) -> None:
    block = b"".join(
        [
            hpack_fast.encode_field(b":status", b"200"),  # a full static entry: indexed
            hpack_fast.encode_field(b"content-type", b"application/dicom"),  # static name
            hpack_fast.encode_field(b"x-custom", b"v" * 200),  # literal name; a long length
            hpack_fast.encode_field(b"authorization", b"Bearer t"),  # never indexed
            hpack.Encoder().encode(  # never indexed, Huffman-coded or not
                [NeverIndexedHeaderTuple(b"x-secret", b"s3cret value")], huffman=huffman
            ),
        ]
    )
    fast = decoded_as_hpack_does([block])
    assert fast.by_hpack == 0
    assert len(fast.decode(block, raw=True)) == 5


def test_every_truncation_fails_or_succeeds_as_hpack_does() -> None:
    for block in (NGINX_NEXT, hpack.Encoder().encode(RESPONSE)):
        for end in range(len(block)):
            cut = block[:end]
            reference, fast = hpack.Decoder(), hpack_fast.TablelessDecoder()
            reference.header_table_size = fast.header_table_size = 0
            try:
                expected: Any = reference.decode(cut, raw=True)
            except Exception as exc:  # noqa: BLE001 (the type is what is compared)
                expected = type(exc)
            try:
                got: Any = fast.decode(cut, raw=True)
            except Exception as exc:  # noqa: BLE001
                got = type(exc)
            assert got == expected, end


def test_a_header_list_over_the_limit_is_refused_as_hpack_does() -> None:
    fast = hpack_fast.TablelessDecoder()
    fast.max_header_list_size = 100
    block = hpack.Encoder().encode([NeverIndexedHeaderTuple(b"x-big", b"v" * 80)] * 2)
    with pytest.raises(hpack.OversizedHeaderListError):
        fast.decode(block, raw=True)
