"""The sans-IO multipart/related parser.

Like h11's test_io, every body is fed whole, one byte at a time, split in two at every point,
and (when it ends with a close delimiter) followed by an epilogue; each must give the same
events, or the same error at the same byte offset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests_toolbelt import MultipartDecoder, MultipartEncoder

from dlstudy.dicomweb.multipart import (
    DEFAULT_MAX_PREAMBLE_BYTES,
    Event,
    MessageEnded,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    boundary_from_content_type,
)
from dlstudy.errors import MultipartError
from tests.multipart_factory import (
    DCM4CHEE_BOUNDARY,
    DICOM,
    ORTHANC_BOUNDARY,
    MultipartFactory,
    Part,
)

B = "b0undary"
F = MultipartFactory(B)
END = ("end",)
MESSAGE_END = ("message-end",)

Normalized = list[tuple[Any, ...]]


def normalize(events: list[Event]) -> Normalized:
    """Events as tuples, with each run of PartData merged (chunking changes how data splits)."""
    out: Normalized = []
    for event in events:
        if isinstance(event, PartData):
            assert isinstance(event.data, bytes)
            assert event.data, "PartData is never empty"
            if out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + event.data)
            else:
                out.append(("data", event.data))
        elif isinstance(event, PartStarted):
            out.append(("start", event.headers))
        elif isinstance(event, PartEnded):
            out.append(END)
        else:
            assert isinstance(event, MessageEnded)
            out.append(MESSAGE_END)
    return out


def expected_events(*parts: Part | tuple[dict[str, str], bytes]) -> Normalized:
    out: Normalized = []
    for part in parts:
        headers, data = (part.headers, part.data) if isinstance(part, Part) else part
        out.append(("start", headers))
        if data:
            out.append(("data", data))
        out.append(END)
    return out + [MESSAGE_END]


def run(
    chunks: Sequence[bytes | bytearray | memoryview], boundary: str = B, **limits: int
) -> tuple[Normalized, tuple[int, str] | None]:
    """Feed `chunks` then close; the normalized events and the (offset, message) of any error."""
    parser = MultipartParser(boundary, **limits)
    events: list[Event] = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
            assert parser.offset <= sum(len(c) for c in chunks)
        events += parser.close()
    except MultipartError as exc:
        return normalize(events), (exc.offset, exc.message)
    assert parser.offset == sum(len(c) for c in chunks)
    return normalize(events), None


def chunkings(body: bytes) -> Iterator[list[bytes]]:
    """Whole, one byte at a time, and in two at every point (every 7th for long bodies)."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for i in range(1, len(body), 1 if len(body) < 600 else 7):
        yield [body[:i], body[i:]]


def check(
    body: bytes, expected: Normalized, boundary: str = B, *, trailing: bool = True, **limits: int
) -> None:
    """`body` gives `expected` however it is chunked, and with an epilogue after it."""
    for chunks in chunkings(body):
        assert run(chunks, boundary, **limits) == (expected, None), chunks
    assert run([bytearray(body)], boundary, **limits) == (expected, None)
    assert run([memoryview(body)], boundary, **limits) == (expected, None)
    if trailing and expected[-1:] == [MESSAGE_END]:
        with_epilogue = body + b"\r\nepilogue --" + boundary.encode() + b"--\r\n"
        for chunks in chunkings(with_epilogue):
            assert run(chunks, boundary, **limits) == (expected, None), chunks


def check_error(
    body: bytes, offset: int, match: str, boundary: str = B, **limits: int
) -> Normalized:
    """`body` fails at `offset` after the same events however it is chunked; returns those."""
    before, error = run([body], boundary, **limits)
    assert error is not None
    assert error[0] == offset, error
    assert re.search(match, error[1]), error[1]
    assert error[1].endswith(f"(at byte {offset})")
    for chunks in chunkings(body):
        assert run(chunks, boundary, **limits) == (before, error), chunks
    return before


# -- valid bodies --------------------------------------------------------------------------


def test_orthanc_style_body() -> None:
    factory = MultipartFactory(ORTHANC_BOUNDARY)
    parts = [Part(b"DICM" + bytes(range(256)), extra_headers=[("MIME-Version", "1.0")])] * 2
    check(factory.body(parts, epilogue=b"\r\n"), expected_events(*parts), ORTHANC_BOUNDARY)


def test_dcm4chee_style_body_without_content_length() -> None:
    factory = MultipartFactory(DCM4CHEE_BOUNDARY)
    parts = [Part(b"first", content_length=False), Part(b"2nd\r\n", content_length=False)]
    check(factory.body(parts), expected_events(*parts), DCM4CHEE_BOUNDARY)


def test_zero_parts() -> None:
    check(b"--b0undary--", [MESSAGE_END])
    check(b"--b0undary--\r\n", [MESSAGE_END])
    check(b"\r\n--b0undary--", [MESSAGE_END])
    check(b"preamble\r\n--b0undary-- \t\r\nepilogue", [MESSAGE_END])


def test_empty_parts() -> None:
    parts = [Part(b""), Part(b"", content_type=None, content_length=False), Part(b"")]
    check(F.body(parts), expected_events(*parts))


def test_part_without_headers() -> None:
    check(b"--b0undary\r\n\r\ndata\r\n--b0undary--", expected_events(({}, b"data")))


def test_part_without_headers_or_data() -> None:
    # RFC 2046: a body part may be empty; the CRLF is the delimiter's.
    check(b"--b0undary\r\n\r\n--b0undary--", expected_events(({}, b"")))


def test_empty_data_without_blank_line_separator() -> None:
    # The CRLF that ends the header block is also the start of the delimiter.
    body = b"--b0undary\r\nA: 1\r\n\r\n--b0undary\r\nA: 2\r\n\r\n\r\n--b0undary--"
    check(body, expected_events(({"a": "1"}, b""), ({"a": "2"}, b"")))


NEAR_MISSES = [
    b"\r\n--b0undar",
    b"\r\n--b0undar\r\n",
    b"--b0undary\r\n",
    b"x--b0undary--",
    b"\r\n--b0undaryX\r\n",
    b"\r\n--b0undary-\r\n",
    b"\r\n--b0undary-x",
    b"\r\n--b0undary \tX\r\n",
    b"\r\n--b0undary\n",
    b"\r\n--b0undary\rX",
    b"\r\n--b0undary \r\r\n",
    b"\n--b0undary\r\n",
    b"\r--b0undary\r\n",
    b"\r\n-b0undary\r\n",
    b"\r\n\r\n\r\n\r\r\r\n\n",
    b"\r\n--B0UNDARY\r\n",
    b"\r\n--b0undar\r\n--b0undaryy",
]


def short_repr(value: bytes) -> str:
    return repr(value) if len(value) < 40 else f"{value[:20]!r}...({len(value)} bytes)"


@pytest.mark.parametrize("payload", NEAR_MISSES, ids=short_repr)
def test_near_delimiters_are_data(payload: bytes) -> None:
    # At the very start of the data `--b0undary` follows the blank line's CRLF: see below.
    variants = [b"abc" + payload, b"abc" + payload + b"xyz"]
    if not payload.startswith(b"--"):
        variants += [payload, payload + b"xyz"]
    for data in variants:
        parts = [Part(data), Part(data, content_length=False)]
        check(F.body(parts), expected_events(*parts))


@pytest.mark.parametrize("payload", NEAR_MISSES, ids=short_repr)
def test_near_delimiters_in_preamble(payload: bytes) -> None:
    part = Part(b"x")
    check(F.body([part], preamble=b"p" + payload), expected_events(part))


def test_delimiter_at_the_start_of_a_line_of_data_ends_the_part() -> None:
    body = b"--b0undary\r\n\r\nab\r\r\n--b0undary\r\n\r\n--b0undary--"
    check(body, expected_events(({}, b"ab\r"), ({}, b"")))
    # Right after the blank line too: the blank line's CRLF starts the delimiter.
    body = b"--b0undary\r\nA: b\r\n\r\n--b0undary \r\n\r\nx\r\n--b0undary--"
    check(body, expected_events(({"a": "b"}, b""), ({}, b"x")))


@pytest.mark.parametrize("padding", [b" ", b"\t", b" \t \t"])
def test_transport_padding(padding: bytes) -> None:
    parts = [Part(b"one"), Part(b"two")]
    check(F.body(parts, padding=padding, epilogue=b"\r\n"), expected_events(*parts))


def test_transport_padding_limit() -> None:
    # Up to 1024 spaces/tabs make a delimiter; a longer run makes the line part data.
    body = b"--b0undary\r\n\r\none\r\n--b0undary" + b" \t" * 512 + b"\r\n\r\n\r\n--b0undary--"
    check(body, expected_events(({}, b"one"), ({}, b"")))
    body = body.replace(b" \t" * 512, b"\t" * 1025)
    check(body, expected_events(({}, b"one\r\n--b0undary" + b"\t" * 1025 + b"\r\n\r\n")))


def test_preamble_and_epilogue_are_ignored() -> None:
    parts = [Part(b"one")]
    body = F.body(parts, preamble=b"This is a MIME message.\r\n", epilogue=b"\r\nbye\r\n")
    check(body, expected_events(*parts))
    check(F.body(parts, preamble=b""), expected_events(*parts))  # body starts with CRLF


def test_header_parsing() -> None:
    head = (
        b"Content-Type :  application/dicom  \r\n"
        b"CONTENT-LOCATION: http://x/instances/1\r\n"
        b"X-Dup: a\r\n"
        b"x-dup: b\r\n"
        b"X-Folded: first\r\n"
        b" \tsecond\r\n"
        b"X-Empty:\r\n"
        b"X-Empty-Folded:\r\n"
        b"  more\r\n"
        b"X-Latin1: caf\xe9\r\n"
        b"Content-Length: 4\r\n"
        b"\r\n"
    )
    headers = {
        "content-type": "application/dicom",
        "content-location": "http://x/instances/1",
        "x-dup": "a, b",
        "x-folded": "first second",
        "x-empty": "",
        "x-empty-folded": "more",
        "x-latin1": "café",
        "content-length": "4",
    }
    check(F.body([head + b"DICM"]), expected_events((headers, b"DICM")))


def test_bare_lf_ends_header_lines() -> None:
    body = (
        b"--b0undary\r\nContent-Type: a/b\nX: y\r\n\ndata\r\n--b0undary\r\n\nmore\r\n--b0undary--"
    )
    check(body, expected_events(({"content-type": "a/b", "x": "y"}, b"data"), ({}, b"more")))


def test_bare_lf_blank_line_then_delimiter_is_data() -> None:
    # After a bare-LF blank line the data starts; `--b0undary` there has no CRLF before it.
    body = b"--b0undary\r\nX: y\n\n--b0undary\r\nmore\r\n--b0undary--"
    check(body, expected_events(({"x": "y"}, b"--b0undary\r\nmore")))


def test_part_started_properties() -> None:
    event = PartStarted({"content-type": DICOM, "content-length": "12", "content-location": "/a"})
    assert (event.content_type, event.content_length, event.content_location) == (DICOM, 12, "/a")
    empty = PartStarted({})
    assert (empty.content_type, empty.content_length, empty.content_location) == (None,) * 3
    with pytest.raises(ValueError):
        _ = PartStarted({"content-length": "+1"}).content_length


def test_bytes_chunk_of_part_data_is_not_copied() -> None:
    parser = MultipartParser(B)
    [started] = parser.feed(b"--b0undary\r\nContent-Type: a/b\r\n\r\n")
    assert isinstance(started, PartStarted) and started.content_length is None
    chunk = bytes(range(256)) * 64
    [data] = parser.feed(chunk)  # copied: the blank line's CRLF was held back with it
    assert data == PartData(chunk)
    [data] = parser.feed(chunk)
    assert isinstance(data, PartData) and data.data is chunk


def test_input_buffers_are_not_aliased() -> None:
    parser = MultipartParser(B)
    parser.feed(b"--b0undary\r\n\r\n")
    chunk = bytearray(b"data")
    [event] = parser.feed(chunk)
    chunk[:] = b"XXXX"
    assert event == PartData(b"data")


def test_offset_tracks_processed_bytes() -> None:
    parser = MultipartParser(B)
    assert parser.offset == 0
    parser.feed(b"--b0und")
    assert parser.offset == 0
    parser.feed(b"ary\r\nA: ")
    assert parser.offset == 12  # a header block is parsed whole
    parser.feed(b"b\r\n\r\n")
    assert parser.offset == 18  # its CRLF blank line may start a delimiter
    parser.feed(b"da")
    assert parser.offset == 22
    parser.feed(b"ta\r\n--b0")
    assert parser.offset == 24  # CRLF--b0 may start a delimiter
    parser.feed(b"undary--\r\n")
    assert parser.offset == 40
    assert parser.close() == []
    assert parser.close() == []


# -- errors --------------------------------------------------------------------------------


def test_empty_body() -> None:
    assert run([]) == ([], (0, "body ended before the first multipart delimiter (at byte 0)"))


def test_no_delimiter() -> None:
    check_error(b"<html>not multipart</html>\r\n--b0undar", 37, "before the first")


def test_truncated_inside_headers() -> None:
    check_error(b"--b0undary\r\nContent-Type: a", 27, "inside the headers of part 1")
    check_error(b"--b0undary\r\n\r\nx\r\n--b0undary\r\n", 29, "inside the headers of part 2")


@pytest.mark.parametrize(
    "tail", [b"", b"\r", b"\r\n--b0und", b"\r\n--b0undary", b"\r\n--b0undary-"]
)
def test_truncated_part_never_ends(tail: bytes) -> None:
    body = b"--b0undary\r\nContent-Type: a/b\r\n\r\npartial" + tail
    events = check_error(body, len(body), "inside part 1: no delimiter after its data")
    assert events == [("start", {"content-type": "a/b"}), ("data", b"partial")]


def test_missing_close_delimiter() -> None:
    body = F.body([Part(b"x")], close=False) + b"\r\n--b0undary\r\n"
    check_error(body, len(body), "inside the headers of part 2")


def test_content_length_too_large() -> None:
    body = F.body([Part(b"x"), b"Content-Length: 10\r\n\r\nhello"])
    check_error(body, body.index(b"hello") + 5, r"part 2 is shorter .*: 5 of 10 bytes")


def test_content_length_too_small() -> None:
    body = F.body([b"Content-Length: 3\r\n\r\nhello"])
    events = check_error(body, body.index(b"hello") + 3, r"part 1 is longer .*\(3 bytes\)")
    assert events == [("start", {"content-length": "3"}), ("data", b"hel")]


def test_content_length_zero_with_data() -> None:
    body = F.body([b"Content-Length: 0\r\n\r\nx"])
    check_error(body, body.index(b"x\r\n"), r"part 1 is longer")


def test_content_length_not_zero_without_data() -> None:
    body = F.body([b"Content-Length: 1\r\n"])  # no blank line: the CRLF starts the delimiter
    check_error(body, body.index(b"\r\n--b0undary--"), r"shorter .*: 0 of 1 bytes")


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+1", b"5, 5", b"", b"1_0", b"\xd9\xa1"])
def test_invalid_content_length(value: bytes) -> None:
    body = F.body([Part(b"x"), b"A: b\r\nContent-Length: " + value + b"\r\n\r\nx"])
    check_error(body, body.index(b"A: b"), "part 2: invalid Content-Length")


def test_repeated_content_length_is_invalid() -> None:
    body = F.body([b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx"])
    check_error(body, 12, "invalid Content-Length '1, 1'")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"no colon", "malformed header line 'no colon'"),
        (b": no name", "malformed header line"),
        (b" continuation", "starts with a continuation line"),
        (b"--b0undary--", "malformed header line '--b0undary--'"),
    ],
)
def test_malformed_header_line(line: bytes, match: str) -> None:
    body = F.body([Part(b"x"), line + b"\r\nA: b\r\n\r\nx"])
    check_error(body, body.index(line), match)


def test_headers_too_large() -> None:
    head = b"X-Long: " + b"a" * 100 + b"\r\n\r\n"
    check(F.body([head]), expected_events(({"x-long": "a" * 100}, b"")), max_header_bytes=112)
    body = F.body([Part(b"x"), head])
    start = body.index(b"X-Long")
    check_error(body, start + 111, "headers of part 2 exceed 111 bytes", max_header_bytes=111)
    check_error(body[: start + 110], start + 110, "inside the headers", max_header_bytes=111)
    check_error(body[: start + 111], start + 111, "exceed 111 bytes", max_header_bytes=111)


def test_preamble_too_large() -> None:
    check(F.body([], preamble=b"p" * 9), [MESSAGE_END], max_preamble_bytes=9)
    check(F.body([], preamble=b"p" * 8 + b"\r\n"), [MESSAGE_END], max_preamble_bytes=10)
    check_error(F.body([], preamble=b"p" * 10), 9, "first 9 bytes", max_preamble_bytes=9)
    check_error(b"p" * 10, 9, "no multipart delimiter in the first 9", max_preamble_bytes=9)
    check_error(b"p" * 9 + b"\r\n--b0und", 18, "before the first", max_preamble_bytes=9)
    cap = DEFAULT_MAX_PREAMBLE_BYTES
    assert run([b"x" * cap + b"\r\n--b0undary--"]) == ([MESSAGE_END], None)
    _, error = run([b"x" * (cap + 1) + b"\r\n--b0undary--"])
    assert error == (cap, f"no multipart delimiter in the first {cap} bytes (at byte {cap})")


def test_epilogue_too_large() -> None:
    body = F.body([Part(b"x")])
    check(body + b"e" * 5, expected_events(Part(b"x")), trailing=False, max_epilogue_bytes=5)
    check_error(body + b"e" * 6, len(body) + 5, "more than 5 bytes after", max_epilogue_bytes=5)


def test_events_before_an_error_are_returned_first() -> None:
    parts = [Part(b"complete"), Part(b"broken")]
    body = F.body(parts).replace(b"Content-Length: 6", b"Content-Length: 5")
    parser = MultipartParser(B)
    events = normalize(parser.feed(body))  # no exception: this call has events to return
    assert events == expected_events(parts[0])[:-1] + [
        ("start", {"content-type": DICOM, "content-length": "5"}),
        ("data", b"broke"),
    ]
    with pytest.raises(MultipartError, match="part 2 is longer") as info:
        parser.feed(b"")
    assert info.value.offset == body.index(b"broken") + 5
    with pytest.raises(MultipartError) as again:
        parser.close()
    assert again.value is info.value


def test_errors_are_sticky_and_close_is_final() -> None:
    parser = MultipartParser(B)
    with pytest.raises(MultipartError) as first:
        parser.feed(b"--b0undary\r\nbad\r\n\r\n")
    with pytest.raises(MultipartError) as again:
        parser.feed(b"more")
    assert again.value is first.value and first.value.offset == 12
    with pytest.raises(MultipartError) as closing:
        parser.close()
    assert closing.value is first.value

    parser = MultipartParser(B)
    with pytest.raises(MultipartError):
        parser.close()
    with pytest.raises(MultipartError):
        parser.close()

    parser = MultipartParser(B)
    parser.feed(b"--b0undary--")
    assert parser.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        parser.feed(b"")


# -- boundaries and Content-Type -----------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (MultipartFactory(DCM4CHEE_BOUNDARY).content_type("dcm4chee"), DCM4CHEE_BOUNDARY),
        (MultipartFactory(ORTHANC_BOUNDARY).content_type("orthanc"), ORTHANC_BOUNDARY),
        (MultipartFactory("a b:c").content_type("quoted"), "a b:c"),
        ('multipart/related;boundary="q\\"";type=application/dicom', None),
        ("multipart/related;  BOUNDARY = abc ; type=application/dicom", "abc"),
        ("multipart/related; transfer-syntax=*; boundary=abc", "abc"),
        ('MULTIPART/RELATED;boundary="\'()+_,-./:=?"', "'()+_,-./:=?"),
        ("multipart/related; boundary=" + "x" * 70, "x" * 70),
        ("multipart/related; boundary=-", "-"),
    ],
)
def test_boundary_from_content_type(content_type: str, boundary: str | None) -> None:
    if boundary is None:  # a quote is not a bchar
        with pytest.raises(MultipartError, match="invalid multipart boundary"):
            boundary_from_content_type(content_type)
    else:
        assert boundary_from_content_type(content_type) == boundary


@pytest.mark.parametrize(
    ("content_type", "match"),
    [
        ("application/dicom", "expected a multipart/related body"),
        ("multipart/mixed; boundary=abc", "expected a multipart/related body"),
        ("multipart/related; type=application/dicom", "no boundary parameter"),
        ("multipart/related; boundary", "invalid multipart boundary ''"),
        ('multipart/related; boundary=""', "invalid multipart boundary ''"),
        ('multipart/related; boundary="abc "', "invalid multipart boundary 'abc '"),
        ("multipart/related; boundary=" + "x" * 71, "invalid multipart boundary"),
        ("multipart/related; boundary=a@b", "invalid multipart boundary"),
        ("multipart/related; boundary=caf\xe9", "invalid multipart boundary"),
    ],
)
def test_bad_content_type(content_type: str, match: str) -> None:
    with pytest.raises(MultipartError, match=match) as info:
        boundary_from_content_type(content_type)
    assert info.value.offset == 0


def test_parser_rejects_invalid_boundary() -> None:
    with pytest.raises(MultipartError, match="invalid multipart boundary") as info:
        MultipartParser("a\r\nb")
    assert info.value.offset == 0


@pytest.mark.parametrize("boundary", ["-", "--", "b", "a b", "'()+_,-./:=?", ORTHANC_BOUNDARY])
def test_unusual_boundaries(boundary: str) -> None:
    factory = MultipartFactory(boundary)
    parts = [Part(factory.defuse(b"--" + boundary.encode() + b"-x\r\n--")), Part(b"")]
    check(factory.body(parts), expected_events(*parts), boundary)


# -- properties ----------------------------------------------------------------------------

BOUNDARIES = ["b", "-", "a b", "b0undary", DCM4CHEE_BOUNDARY, ORTHANC_BOUNDARY]
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def near_boundary_bytes(boundary: str, max_size: int = 40) -> st.SearchStrategy[bytes]:
    """Byte strings built mostly from pieces of delimiters, padding and line endings."""
    dash = b"--" + boundary.encode()
    pieces = [b"\r", b"\n", b"\r\n", b"-", b"--", b" ", b"\t", b"X", dash, dash[:-1], dash + b"--"]
    pieces += [b"\r\n" + dash, b"\r\n" + dash[:-1], b"\r\n" + dash + b"-", b"\r\n" + dash + b" "]
    piece = st.sampled_from(pieces) | st.binary(max_size=6)
    return st.lists(piece, max_size=max_size).map(b"".join)


def split(body: bytes, draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[Any]:
    """`body` cut at random points, as bytes, bytearray or memoryview chunks."""
    cuts = sorted(draw(st.sets(st.integers(0, len(body)), max_size=12)))
    edges = [0, *cuts, len(body)]
    kinds = draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(edges)))
    return [kind(body[a:b]) for kind, a, b in zip(kinds, edges, edges[1:], strict=False)]


@st.composite
def valid_bodies(draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[str, bytes, Normalized]:
    boundary = draw(st.sampled_from(BOUNDARIES))
    factory = MultipartFactory(boundary)
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        data = factory.defuse(draw(near_boundary_bytes(boundary)))
        extra = draw(st.lists(st.sampled_from([("Content-Location", "/i/1"), ("X-A", "b")])))
        content_type = draw(st.sampled_from([DICOM, None]))
        parts.append(Part(data, content_type, draw(st.booleans()), extra))
    preamble = draw(st.none() | near_boundary_bytes(boundary, 8).map(factory.defuse))
    padding = draw(st.sampled_from([b"", b" ", b"\t \t"]))
    epilogue = draw(st.sampled_from([b"", b"\r\n", b"\r\n--" + boundary.encode() + b"\r\n"]))
    body = factory.body(parts, preamble=preamble, padding=padding, epilogue=epilogue)
    return boundary, body, expected_events(*parts)


@PROPERTY_SETTINGS
@given(valid_bodies(), st.data())
def test_property_round_trip_any_chunking(case: Any, data: st.DataObject) -> None:
    boundary, body, expected = case
    assert run(split(body, data.draw), boundary) == (expected, None)


@PROPERTY_SETTINGS
@given(st.sampled_from(BOUNDARIES), st.data())
def test_property_chunking_never_changes_the_outcome(boundary: str, data: st.DataObject) -> None:
    """Any input at all (mostly near-delimiters and header lines): same events, same error."""
    lines = st.sampled_from([b"A: b\r\n", b"Content-Length: 2\r\n", b"\r\n", b"\n", b"x:"])
    pieces = st.lists(near_boundary_bytes(boundary, 8) | lines, max_size=12)
    body = b"".join(data.draw(pieces))
    whole = run([body], boundary, max_header_bytes=64)
    assert run(split(body, data.draw), boundary, max_header_bytes=64) == whole


@PROPERTY_SETTINGS
@given(st.sampled_from(BOUNDARIES), st.data())
def test_property_agrees_with_requests_toolbelt(boundary: str, data: st.DataObject) -> None:
    """requests-toolbelt encodes the body, and decodes it as an independent oracle."""
    factory = MultipartFactory(boundary)
    # Both toolbelt classes split on CRLF--boundary wherever it occurs, even in data.
    payloads = data.draw(st.lists(near_boundary_bytes(boundary), max_size=4))
    payloads = [factory.strip_dash_boundary(p) for p in payloads]
    fields = [(f"f{i}", (f"n{i}.dcm", p, DICOM)) for i, p in enumerate(payloads)]
    body = MultipartEncoder(fields=fields, boundary=boundary).to_string()
    if not fields:
        return  # neither toolbelt class handles zero parts
    content_type = f'multipart/related; type="{DICOM}"; boundary="{boundary}"'
    assert boundary_from_content_type(content_type) == boundary

    events, error = run(split(body, data.draw), boundary)
    assert error is None
    oracle = MultipartDecoder(body, content_type).parts
    assert [e[1] for e in events if e[0] == "start"] == [
        {k.decode().lower(): v.decode() for k, v in part.headers.items()} for part in oracle
    ]
    contents = [b""]
    for event in events:
        if event[0] == "data":
            contents[-1] += event[1]
        elif event == END:
            contents.append(b"")
    assert contents[:-1] == [part.content for part in oracle] == payloads
    assert events[-1] == MESSAGE_END


@PROPERTY_SETTINGS
@given(st.sampled_from(BOUNDARIES), st.data())
def test_property_requests_toolbelt_decoder_agrees_on_factory_bodies(
    boundary: str, data: st.DataObject
) -> None:
    factory = MultipartFactory(boundary)
    payloads = data.draw(st.lists(near_boundary_bytes(boundary), max_size=4))
    parts = [
        Part(factory.strip_dash_boundary(p), DICOM, i % 2 == 0) for i, p in enumerate(payloads)
    ]
    body = factory.body(parts, epilogue=b"\r\n")
    if parts:  # the decoder fails on zero parts
        oracle = MultipartDecoder(body, factory.content_type("dcm4chee")).parts
        assert [part.content for part in oracle] == [part.data for part in parts]
    assert run(split(body, data.draw), boundary) == (expected_events(*parts), None)
