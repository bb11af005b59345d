"""Stream the parts of a multipart/related HTTP response through the sans-IO parser."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from ..dicomweb.multipart import (
    Event,
    MessageEnded,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    boundary_from_content_type,
)
from ..dicomweb.verify import HEADER_PREFIX_LENGTH, MAGIC, PREAMBLE_LENGTH
from ..errors import MultipartError, TransferError
from ..http.transfer import pour_body
from ..http.urls import redact_url

# How far into a boundary-less body we look for its first delimiter line.
_SNIFF_LIMIT = 1024
_FIRST_LINE = re.compile(rb"\s*--([^\r\n]{1,70}?)[ \t]*\r?\n")


async def pour_parts(
    response: httpx.Response, on_event: Callable[[Event], None], *, lone_file: bool = False
) -> None:
    """Every parser event of the response body, in order, to `on_event`, as the bytes arrive
    (no task switch per chunk); malformed or cut bodies raise TransferError.

    `lone_file`: a body that is one Part 10 file (DICM at byte 128), though labelled multipart
    (servers that answer single-part whatever was asked, with the type that was asked), comes
    as one part, ended when the body ends: only for a caller that walks each part's structure,
    as nothing else tells such a part whole."""
    shown = redact_url(str(response.url))
    try:
        content_type = response.headers.get("content-type", "")
        splitter = _PartSplitter(content_type, on_event, lone_file=lone_file)
        await pour_body(response, splitter.feed)
        splitter.close()
    except MultipartError as exc:
        raise TransferError(
            f"malformed multipart response from {shown}: {exc}", url=shown, retryable=True
        ) from exc


class _PartSplitter:
    """Feeds the sans-IO parser; without a boundary parameter (some servers omit it), the
    boundary is taken from the body's first delimiter line. With `lone_file`, a body that is a
    Part 10 file is passed on as one part."""

    def __init__(
        self, content_type: str, on_event: Callable[[Event], None], *, lone_file: bool
    ) -> None:
        self._on_event = on_event
        self._parser: MultipartParser | None = None
        self._lone_file = False  # the body is one Part 10 file
        self._sniff = lone_file  # whether to look for one
        self._boundary: str | None = None
        self._head = b""
        try:
            self._boundary = boundary_from_content_type(content_type)
        except MultipartError:
            if "boundary" in content_type.lower():
                raise

    def feed(self, chunk: bytes) -> None:
        if self._parser is None and not self._lone_file:
            self._head += chunk
            if not self._decide(ended=False):
                return
            chunk, self._head = self._head, b""
        self._pass_on(chunk)

    def close(self) -> None:
        if self._parser is None and not self._lone_file:
            if not self._decide(ended=True):
                raise _no_boundary()
            chunk, self._head = self._head, b""
            self._pass_on(chunk)
        if self._lone_file:
            self._on_event(PartEnded())
            self._on_event(MessageEnded())
            return
        assert self._parser is not None
        for event in self._parser.close():
            self._on_event(event)

    def _pass_on(self, chunk: bytes) -> None:
        if self._lone_file:
            if chunk:
                self._on_event(PartData(chunk))
            return
        assert self._parser is not None
        for event in self._parser.feed(chunk):
            self._on_event(event)

    def _decide(self, *, ended: bool) -> bool:
        """Whether the head of the body (all of it when `ended`) tells how to split it: then
        the parser, or the lone file mode, is set up."""
        head = self._head
        if self._sniff and len(head) < HEADER_PREFIX_LENGTH and not ended:
            return False
        if self._sniff and head[PREAMBLE_LENGTH:HEADER_PREFIX_LENGTH] == MAGIC:
            self._lone_file = True
            self._on_event(PartStarted({}))
            return True
        boundary = self._boundary
        if boundary is None:
            match = _FIRST_LINE.match(head)
            if match is None:
                if len(head) > _SNIFF_LIMIT:
                    raise _no_boundary()
                return False
            boundary = match.group(1).decode("latin-1")
        self._parser = MultipartParser(boundary)
        return True


def _no_boundary() -> MultipartError:
    return MultipartError("multipart response without a boundary parameter or delimiter", offset=0)
