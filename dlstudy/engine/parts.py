"""Stream the parts of a multipart/related HTTP response through the sans-IO parser."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

from ..dicomweb.multipart import Event, MultipartParser, boundary_from_content_type
from ..errors import MultipartError, TransferError
from ..http.transfer import pour_body
from ..http.urls import redact_url

# How far into a boundary-less body we look for its first delimiter line.
_SNIFF_LIMIT = 1024
_FIRST_LINE = re.compile(rb"\s*--([^\r\n]{1,70}?)[ \t]*\r?\n")


async def pour_parts(response: httpx.Response, on_event: Callable[[Event], None]) -> None:
    """Every parser event of the response body, in order, to `on_event`, as the bytes arrive
    (no task switch per chunk); malformed or cut bodies raise TransferError."""
    shown = redact_url(str(response.url))
    try:
        splitter = _PartSplitter(response.headers.get("content-type", ""), on_event)
        await pour_body(response, splitter.feed)
        splitter.close()
    except MultipartError as exc:
        raise TransferError(
            f"malformed multipart response from {shown}: {exc}", url=shown, retryable=True
        ) from exc


class _PartSplitter:
    """Feeds the sans-IO parser; without a boundary parameter (some servers omit it), the
    boundary is taken from the body's first delimiter line."""

    def __init__(self, content_type: str, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event
        self._parser: MultipartParser | None = None
        self._head = b""
        try:
            self._parser = MultipartParser(boundary_from_content_type(content_type))
        except MultipartError:
            if "boundary" in content_type.lower():
                raise

    def feed(self, chunk: bytes) -> None:
        parser = self._parser
        if parser is None:
            self._head += chunk
            match = _FIRST_LINE.match(self._head)
            if match is None:
                if len(self._head) > _SNIFF_LIMIT:
                    raise _no_boundary()
                return
            parser = self._parser = MultipartParser(match.group(1).decode("latin-1"))
            chunk, self._head = self._head, b""
        for event in parser.feed(chunk):
            self._on_event(event)

    def close(self) -> None:
        if self._parser is None:
            raise _no_boundary()
        for event in self._parser.close():
            self._on_event(event)


def _no_boundary() -> MultipartError:
    return MultipartError("multipart response without a boundary parameter or delimiter", offset=0)
