"""A sans-IO, streaming multipart/related parser: bytes in, events out.

    parser = MultipartParser(boundary_from_content_type(response.headers["content-type"]))
    for chunk in response.iter_bytes():
        for event in parser.feed(chunk):
            ...  # PartStarted, PartData*, PartEnded, ..., MessageEnded
    parser.close()  # raises MultipartError if the body stopped early

Framing follows RFC 2046 §5.1.1. Design points:

* Linear time, bounded memory. The body is scanned once with `bytes.find` for
  ``CRLF--boundary``; part data is emitted as soon as it is known not to start a delimiter, so
  the parser holds back at most ``len(CRLF--boundary) + _MAX_TRANSPORT_PADDING + 1`` bytes of a
  part (or one partial header block, capped by `max_header_bytes`). Nothing is rescanned except
  that bounded tail; the header scan remembers how far it got.
* Zero copies where possible. A `bytes` chunk fed while nothing is held back is parsed in
  place and `PartData.data` is a slice of it (the chunk itself when a whole chunk is part data).
  Other input (`bytearray`, `memoryview`) is copied into the internal buffer first, so events
  never alias memory the caller may reuse. `PartData.data` is always `bytes`.
* A delimiter is ``CRLF--boundary`` followed by ``--`` (the close delimiter; whatever follows is
  the epilogue) or by optional transport padding (spaces/tabs) and CRLF. Anything else —
  ``--boundaryX``, ``--boundary`` followed by a bare LF, a delimiter not at the start of a
  line — is part data. The first delimiter may start the body without a leading CRLF.
* Part headers are read leniently: a bare LF ends a header line as well as CRLF (as h11 and
  RFC 9112 §2.2 allow), folded lines are unfolded, repeated names are joined with ", ", bytes
  are decoded as Latin-1. The delimiter itself is strict: CRLF only.
* The CRLF that ends a header block also starts a delimiter if one follows, so a part with no
  data and no separator line (``Header: x CRLF CRLF --boundary``) is an empty part.
* Content-Length in a part is a check, not the framing: data of another length before the
  delimiter is an error (a truncated or corrupt part), raised as soon as it is known.
* `PartEnded` is emitted only once the delimiter after the part has been seen, so a caller that
  gets a `MultipartError` (or a `close()` error) knows the last part it started is incomplete.
* Errors carry the byte offset in the body. A chunk that completes events and then hits an
  error returns those events (parts completed in it are not lost) and the next `feed()` or
  `close()` raises; with no events to return, `feed()` raises at once. From then on every call
  raises the same error. The events before an error, merged, do not depend on the chunking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import MultipartError
from .media import MULTIPART_RELATED, parse_media_type

__all__ = [
    "Event",
    "MessageEnded",
    "MultipartParser",
    "PartData",
    "PartEnded",
    "PartStarted",
    "boundary_from_content_type",
]

# Limits. Each one bounds memory or time spent on input that a conforming server never sends.
# One part's header block (all fields + the blank line). DICOMweb parts carry three or four
# short fields; 16 KiB is generous and caps the only thing the parser must hold in memory whole.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# Text before the first delimiter. DICOMweb servers send none; the cap turns a body that is not
# multipart at all (an HTML error page labelled multipart/related, a wrong boundary) into a
# prompt error instead of reading all of it in search of a delimiter that never comes.
DEFAULT_MAX_PREAMBLE_BYTES = 64 * 1024
# Text after the close delimiter (usually nothing or one CRLF). The cap stops a server that
# keeps sending after the message ended from keeping the download busy forever.
DEFAULT_MAX_EPILOGUE_BYTES = 64 * 1024
# Spaces/tabs allowed between a delimiter and its CRLF (RFC 2046 "transport-padding", unbounded
# there). A longer run makes the line part data, which bounds what the parser holds back.
_MAX_TRANSPORT_PADDING = 1024

_PADDING = re.compile(rb"[ \t]{0,%d}" % (_MAX_TRANSPORT_PADDING + 1))
# RFC 2046 §5.1.1: 1-70 characters from bchars, the last one not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")

_CR = 0x0D
_LF = 0x0A
_DASH = 0x2D

_PREAMBLE, _HEADERS, _BODY, _EPILOGUE = range(4)
# Outcomes of a delimiter search.
_MORE, _DELIMITER, _CLOSE = range(3)


def _content_length(value: str | None) -> int | None:
    """Parse a Content-Length value: ASCII digits only (no sign, spaces or underscores)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"invalid Content-Length {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class PartStarted:
    """A part's header block was read. Names are lower-cased, values stripped."""

    headers: dict[str, str]

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def content_length(self) -> int | None:
        """The declared length (validated by the parser; ValueError if built by hand with junk)."""
        return _content_length(self.headers.get("content-length"))

    @property
    def content_location(self) -> str | None:
        return self.headers.get("content-location")


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part. A part's data may arrive in any number of these."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnded:
    """The delimiter after the current part was seen: the part is complete."""


@dataclass(frozen=True, slots=True)
class MessageEnded:
    """The close delimiter was seen. Anything after it is epilogue and is ignored."""


Event: TypeAlias = PartStarted | PartData | PartEnded | MessageEnded

_PART_ENDED = PartEnded()
_MESSAGE_ENDED = MessageEnded()


def _check_boundary(boundary: str) -> None:
    if not _BOUNDARY.fullmatch(boundary):
        raise MultipartError(
            f"invalid multipart boundary {boundary!r}: RFC 2046 allows 1-70 characters "
            "of letters, digits and '()+_,-./:=? and space, not ending in a space",
            offset=0,
        )


def boundary_from_content_type(content_type: str) -> str:
    """The boundary of a multipart/related Content-Type (quoted or not, among any parameters)."""
    media_type = parse_media_type(content_type)
    if media_type.mime != MULTIPART_RELATED:
        raise MultipartError(
            f"expected a {MULTIPART_RELATED} body, got Content-Type {content_type!r}", offset=0
        )
    boundary = media_type.boundary
    if boundary is None:
        raise MultipartError(f"no boundary parameter in Content-Type {content_type!r}", offset=0)
    _check_boundary(boundary)
    return boundary


def _slice(view: bytes | bytearray, start: int, stop: int) -> bytes:
    """`view[start:stop]` as bytes with one copy (none for a whole `bytes` object)."""
    if type(view) is bytes:
        return view[start:stop]
    with memoryview(view) as whole:
        return whole[start:stop].tobytes()


class MultipartParser:
    """Incremental multipart/related parser. See the module docstring for the rules."""

    def __init__(
        self,
        boundary: str,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_preamble_bytes: int = DEFAULT_MAX_PREAMBLE_BYTES,
        max_epilogue_bytes: int = DEFAULT_MAX_EPILOGUE_BYTES,
    ) -> None:
        _check_boundary(boundary)
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._max_header_bytes = max_header_bytes
        self._max_preamble_bytes = max_preamble_bytes
        self._max_epilogue_bytes = max_epilogue_bytes
        # Unprocessed input. It starts with a virtual CRLF so that a delimiter at the very start
        # of the body is found like any other; `_base` (the body offset of `_buf[0]`, or of the
        # chunk being parsed in place) starts at -2 to match.
        self._buf = bytearray(b"\r\n")
        self._base = -2
        self._state = _PREAMBLE
        self._closed = False
        self._error: MultipartError | None = None
        self._parts = 0  # parts started so far (for messages)
        # How far the search for the end of the current header block has got (from its start).
        self._scanned = 0
        # Current part: `_skip` is 2 while the CRLF that ended its header block is held (the
        # separator before the data, or the start of a delimiter if there is no data); where its
        # data starts in the body; how much data came; the declared Content-Length.
        self._skip = 0
        self._data_start = 0
        self._data_len = 0
        self._expected_len: int | None = None
        self._epilogue_start = 0

    @property
    def offset(self) -> int:
        """Bytes of the body fully processed: every byte before it is reflected in the events
        returned so far. It trails the bytes fed by what is held back (a possible delimiter,
        a partial header block) and equals the body length once the message has ended."""
        return max(self._base, 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse the next chunk of the body; returns the events it completes (maybe none)."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("MultipartParser.feed() called after close()")
        view: bytes | bytearray
        if self._buf or type(data) is not bytes:
            self._buf += data
            view = self._buf
        else:
            view = data
        events: list[Event] = []
        try:
            pos = self._parse(view, events)
        except MultipartError as exc:
            self._error = exc
            if events:  # hand over what came before the error; the next call raises it
                return events
            raise
        if view is self._buf:
            del self._buf[:pos]
        elif pos < len(view):
            self._buf += memoryview(view)[pos:]
        self._base += pos
        return events

    def close(self) -> list[Event]:
        """Signal the end of the body. Raises MultipartError if the message is incomplete."""
        if self._error is not None:
            raise self._error
        if self._closed or self._state == _EPILOGUE:
            self._closed = True
            return []
        self._closed = True
        end = self._base + len(self._buf)
        if self._state == _PREAMBLE:
            message = "body ended before the first multipart delimiter"
        elif self._state == _HEADERS:
            message = f"body ended inside the headers of part {self._parts + 1}"
        else:
            message = f"body ended inside part {self._parts}: no delimiter after its data"
        self._error = MultipartError(message, offset=end)
        raise self._error

    # -- parsing -----------------------------------------------------------------------------

    def _parse(self, view: bytes | bytearray, events: list[Event]) -> int:
        """Process `view` as far as it decides; returns the index of the first byte kept."""
        pos = 0
        while True:
            state = self._state
            if state == _BODY:
                new_pos = self._body(view, pos, events)
            elif state == _HEADERS:
                new_pos = self._headers(view, pos, events)
            elif state == _PREAMBLE:
                new_pos = self._preamble(view, pos, events)
            else:
                return self._epilogue(view)
            if self._state == state:  # needs more input
                return new_pos
            pos = new_pos

    def _find_delimiter(self, view: bytes | bytearray, pos: int) -> tuple[int, int, int]:
        """Look for the next delimiter in `view[pos:]`.

        Returns (_DELIMITER, start, end) or (_CLOSE, start, end), where `start` is the index of
        its CRLF and `end` the index after it; or (_MORE, start, start) when no delimiter starts
        before `start` and `view[start:]` might begin one (it is held back for more input).
        """
        delimiter = self._delimiter
        size = len(delimiter)
        n = len(view)
        i = pos
        while True:
            i = view.find(delimiter, i)
            if i < 0:
                # A partial delimiter at the end starts at its only CR (bchars exclude CR).
                k = view.rfind(b"\r", max(pos, n - size + 1))
                if k >= 0 and delimiter.startswith(view[k:]):
                    return _MORE, k, k
                return _MORE, n, n
            after = i + size
            if after >= n:
                return _MORE, i, i
            if view[after] == _DASH:
                if after + 1 >= n:
                    return _MORE, i, i
                if view[after + 1] == _DASH:
                    return _CLOSE, i, after + 2
            else:
                match = _PADDING.match(view, after)
                assert match is not None  # the pattern matches the empty string
                cr = match.end()
                if cr - after <= _MAX_TRANSPORT_PADDING:
                    if cr >= n:
                        return _MORE, i, i
                    if view[cr] == _CR:
                        if cr + 1 >= n:
                            return _MORE, i, i
                        if view[cr + 1] == _LF:
                            return _DELIMITER, i, cr + 2
            i += 1  # `--boundary` followed by something else: part data

    def _preamble(self, view: bytes | bytearray, pos: int, events: list[Event]) -> int:
        kind, start, end = self._find_delimiter(view, pos)
        if self._base + start > self._max_preamble_bytes:
            raise MultipartError(
                f"no multipart delimiter in the first {self._max_preamble_bytes} bytes",
                offset=self._max_preamble_bytes,
            )
        if kind == _MORE:
            return start
        if kind == _CLOSE:
            events.append(_MESSAGE_ENDED)
            self._start_epilogue(end)
        else:
            self._start_headers(end)
        return end

    def _start_headers(self, pos: int) -> None:
        self._state = _HEADERS
        self._scanned = 0

    def _start_epilogue(self, pos: int) -> None:
        self._state = _EPILOGUE
        self._epilogue_start = self._base + pos

    def _headers(self, view: bytes | bytearray, pos: int, events: list[Event]) -> int:
        """Find the end of the header block (the first empty line) and parse the block."""
        n = len(view)
        limit = pos + self._max_header_bytes  # the block's last LF must come before this
        blank = -1
        if self._scanned == 0 and pos < n:  # an empty block: no headers at all
            if view[pos] == _LF:
                blank, skip = pos, 1
            elif view[pos] == _CR and pos + 1 < n and view[pos + 1] == _LF:
                blank, skip = pos, 2
            elif view[pos] == _CR and pos + 1 == n:
                return pos  # cannot tell yet
        if blank < 0:
            # An empty line after a line's LF: CRLF (the usual) or bare LF. The search resumes
            # where the last one stopped, backing up over a possibly split "\n\r\n".
            scan = pos + max(self._scanned - 2, 0)
            crlf = view.find(b"\n\r\n", scan, limit)
            lf = view.find(b"\n\n", scan, limit if crlf < 0 else crlf + 1)
            if lf >= 0:
                blank, skip = lf + 1, 1
            elif crlf >= 0:
                blank, skip = crlf + 1, 2
            elif n >= limit:
                raise MultipartError(
                    f"headers of part {self._parts + 1} exceed {self._max_header_bytes} bytes",
                    offset=self._base + limit,
                )
            else:
                self._scanned = n - pos
                return pos
        headers = self._parse_header_block(_slice(view, pos, blank), self._base + pos)
        try:
            expected = _content_length(headers.get("content-length"))
        except ValueError as exc:
            raise MultipartError(f"part {self._parts + 1}: {exc}", offset=self._base + pos) from exc
        self._parts += 1
        events.append(PartStarted(headers))
        self._state = _BODY
        self._data_start = self._base + blank + skip
        self._data_len = 0
        self._expected_len = expected
        if skip == 1:  # a bare LF: nothing to hold back
            self._skip = 0
            return blank + 1
        # A CRLF: the data starts after it, unless a delimiter starts at it (empty data).
        self._skip = 2
        return blank

    def _parse_header_block(self, block: bytes, offset: int) -> dict[str, str]:
        """Parse header lines (each ending in LF or CRLF); `offset` is the block's position."""
        headers: dict[str, str] = {}
        name = ""
        for line in block.decode("latin-1").split("\n")[:-1]:  # drop what follows the last LF
            size = len(line) + 1
            if line.endswith("\r"):
                line = line[:-1]
            if line[:1] in (" ", "\t"):  # obsolete line folding: continues the previous value
                if not name:
                    raise MultipartError(
                        f"part {self._parts + 1}: header block starts with a continuation line",
                        offset=offset,
                    )
                headers[name] = f"{headers[name]} {line.strip()}".strip()
            else:
                name, colon, value = line.partition(":")
                name = name.strip().lower()
                if not colon or not name:
                    raise MultipartError(
                        f"part {self._parts + 1}: malformed header line {line[:80]!r}",
                        offset=offset,
                    )
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            offset += size
        return headers

    def _body(self, view: bytes | bytearray, pos: int, events: list[Event]) -> int:
        kind, start, end = self._find_delimiter(view, pos)
        data_from = pos + self._skip
        if start >= data_from:
            if start > data_from:
                expected = self._expected_len
                if expected is not None and self._data_len + start - data_from > expected:
                    if expected > self._data_len:  # the data up to the declared length
                        stop = data_from + expected - self._data_len
                        events.append(PartData(_slice(view, data_from, stop)))
                    raise MultipartError(
                        f"part {self._parts} is longer than its Content-Length ({expected} bytes)",
                        offset=self._data_start + expected,
                    )
                self._data_len += start - data_from
                events.append(PartData(_slice(view, data_from, start)))
            self._skip = 0
        if kind == _MORE:
            return start
        if self._expected_len is not None and self._data_len != self._expected_len:
            raise MultipartError(
                f"part {self._parts} is shorter than its Content-Length: "
                f"{self._data_len} of {self._expected_len} bytes",
                offset=self._base + start,
            )
        events.append(_PART_ENDED)
        if kind == _CLOSE:
            events.append(_MESSAGE_ENDED)
            self._start_epilogue(end)
        else:
            self._start_headers(end)
        return end

    def _epilogue(self, view: bytes | bytearray) -> int:
        if self._base + len(view) - self._epilogue_start > self._max_epilogue_bytes:
            raise MultipartError(
                f"more than {self._max_epilogue_bytes} bytes after the close delimiter",
                offset=self._epilogue_start + self._max_epilogue_bytes,
            )
        return len(view)
