"""WADO-RS bodies: one instance as stored, a multipart/related stream of instances, metadata.

Bodies stream from disk in 1 MiB reads (in a worker thread, so a cold disk does not stall other
streams): a 1.5 GiB instance costs the server about one chunk of memory per response. The vendor
profiles differ only in the multipart framing, reproduced from what those servers send
(DOMAIN.md): Orthanc's two-UUID boundary and MIME-Version part header, dcm4chee's RESTEasy
Content-Type and parts without Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from .index import Instance, header_json

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Body:
    """A streamed response body: headers to send, the chunks, and the total length."""

    headers: list[tuple[str, str]]
    chunks: AsyncGenerator[bytes, None]
    length: int


def single_part(instance: Instance) -> Body:
    return Body(
        [
            ("content-type", f"application/dicom; transfer-syntax={instance.transfer_syntax}"),
            ("content-length", str(instance.size)),
        ],
        file_chunks(instance),
        instance.size,
    )


def multipart(instances: Sequence[Instance], *, profile: str, base_url: str) -> Body:
    """A multipart/related body (no Content-Length: streamed, chunked on HTTP/1.1)."""
    if profile == "orthanc":
        boundary = f"{uuid.uuid4()}-{uuid.uuid4()}"[:70]
        content_type = f"multipart/related; type=application/dicom; boundary={boundary}"
    elif profile == "dcm4chee":
        boundary = str(uuid.uuid4())
        content_type = (
            'multipart/related;start="<1@resteasy-multipart>";type="application/dicom"; '
            f"boundary={boundary}"
        )
    else:
        boundary = f"dlstudy-{secrets.token_hex(16)}"
        content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    heads = [_part_head(i, boundary, profile, base_url) for i in instances]
    closing = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + i.size + 2 for h, i in zip(heads, instances, strict=True)) + len(closing)
    return Body(
        [("content-type", content_type)], _multipart_chunks(instances, heads, closing), length
    )


def _part_head(instance: Instance, boundary: str, profile: str, base_url: str) -> bytes:
    ts = instance.transfer_syntax
    if profile == "dcm4chee":
        lines = [f"Content-Type: application/dicom;transfer-syntax={ts}"]
    elif profile == "orthanc":
        lines = [
            f"Content-Type: application/dicom; transfer-syntax={ts}",
            f"Content-Length: {instance.size}",
            "MIME-Version: 1.0",
        ]
    else:
        location = (
            f"{base_url}/studies/{instance.study_uid}/series/{instance.series_uid}"
            f"/instances/{instance.sop_uid}"
        )
        lines = [
            f"Content-Type: application/dicom; transfer-syntax={ts}",
            f"Content-Length: {instance.size}",
            f"Content-Location: {location}",
        ]
    return ("\r\n".join([f"--{boundary}", *lines, "", ""])).encode()


async def _multipart_chunks(
    instances: Sequence[Instance], heads: list[bytes], closing: bytes
) -> AsyncGenerator[bytes, None]:
    for head, instance in zip(heads, instances, strict=True):
        yield head
        async with aclosing(file_chunks(instance)) as chunks:  # closes the file on a cut
            async for chunk in chunks:
                yield chunk
        yield b"\r\n"
    yield closing


async def file_chunks(instance: Instance) -> AsyncGenerator[bytes, None]:
    """The file's bytes as indexed; an error if it shrank (the announced length would lie)."""
    fd = os.open(instance.path, os.O_RDONLY)
    try:
        offset = 0
        while offset < instance.size:
            n = min(CHUNK, instance.size - offset)
            data = await asyncio.to_thread(os.pread, fd, n, offset)
            if not data:
                raise OSError(f"{instance.path} is shorter than when it was indexed")
            offset += len(data)
            yield data
    finally:
        os.close(fd)


async def metadata(instances: Sequence[Instance]) -> bytes:
    """DICOM JSON of every instance's header (pixel data left out), as one JSON array."""

    def build() -> bytes:
        return json.dumps([header_json(i.path) for i in instances]).encode()

    return await asyncio.to_thread(build)
