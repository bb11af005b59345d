"""Stream the parts of a multipart/related HTTP response through the sans-IO parser."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx

from .errors import MultipartError, TransferError
from .multipart import Event, MultipartParser, boundary_from_content_type
from .urls import redact_url

# How far into a boundary-less body we look for its first delimiter line.
_SNIFF_LIMIT = 1024
_FIRST_LINE = re.compile(rb"\s*--([^\r\n]{1,70}?)[ \t]*\r?\n")


async def iter_part_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Parser events for the response body; malformed or cut bodies raise TransferError."""
    shown = redact_url(str(response.url))
    content_type = response.headers.get("content-type", "")
    chunks = response.aiter_bytes()
    try:
        pending = b""
        try:
            boundary = boundary_from_content_type(content_type)
        except MultipartError:
            if "boundary" in content_type.lower():
                raise
            # Some servers omit the boundary parameter: take it from the first delimiter line.
            boundary, pending = await _sniff_boundary(chunks)
        parser = MultipartParser(boundary)
        if pending:
            for event in parser.feed(pending):
                yield event
        async for chunk in chunks:
            for event in parser.feed(chunk):
                yield event
        for event in parser.close():
            yield event
    except MultipartError as exc:
        raise TransferError(
            f"malformed multipart response from {shown}: {exc}", url=shown, retryable=True
        ) from exc


async def _sniff_boundary(chunks: AsyncIterator[bytes]) -> tuple[str, bytes]:
    head = b""
    async for chunk in chunks:
        head += chunk
        match = _FIRST_LINE.match(head)
        if match:
            return match.group(1).decode("latin-1"), head
        if len(head) > _SNIFF_LIMIT:
            break
    raise MultipartError("multipart response without a boundary parameter or delimiter", offset=0)
