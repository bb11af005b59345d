"""WADO-RS bodies: one instance as stored, a multipart/related stream of instances, metadata.

Bodies stream from disk in 1 MiB reads (in a worker thread, so a cold disk does not stall other
streams): a 1.5 GiB instance costs the server about one chunk of memory per response. A virtual
archive's instances bring their own bytes; a multipart body makes each part as it is sent, so a
study of a million instances is never in memory. The vendor profiles differ only in the
multipart framing, reproduced from what those servers send (DOMAIN.md): Orthanc's two-UUID
boundary and MIME-Version part header, dcm4chee's RESTEasy Content-Type and parts without
Content-Length.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol, cast

from .attributes import Json
from .index import ChangedSinceIndexed, Instance, bulk_value, header_json, open_indexed

log = logging.getLogger("dlstudy.server")

CHUNK = 1024 * 1024


class Retrievable(Protocol):
    """An instance as WADO-RS serves it: a file of the folder (`Instance`) or a virtual one,
    which also has its bytes (`data`)."""

    @property
    def size(self) -> int: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def study_uid(self) -> str: ...
    @property
    def series_uid(self) -> str: ...
    @property
    def sop_uid(self) -> str: ...


class Streamed(Retrievable, Protocol):
    """A virtual instance: its bytes are made, not read from a file."""

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True)
class Body:
    """A streamed response body: headers to send, the chunks, and a way to get the total
    length (asked only by the drop knob: a virtual study's would cost making every part)."""

    headers: list[tuple[str, str]]
    chunks: AsyncGenerator[bytes, None]
    measure: Callable[[], int]
    data: bytes | None = None  # the whole body when it is made already (a virtual instance)

    @property
    def length(self) -> int:
        return self.measure()


def single_part(instance: Retrievable) -> Body:
    return Body(
        [
            ("content-type", f"application/dicom; transfer-syntax={instance.transfer_syntax}"),
            ("content-length", str(instance.size)),
        ],
        chunks_of(instance),
        lambda: instance.size,
        None if isinstance(instance, Instance) else cast(Streamed, instance).data,
    )


def multipart(instances: Sequence[Retrievable], *, profile: str, base_url: str) -> Body:
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

    def head(instance: Retrievable) -> bytes:
        return _part_head(instance, boundary, profile, base_url)

    closing = f"--{boundary}--\r\n".encode()

    def measure() -> int:
        return sum(len(head(i)) + i.size + 2 for i in instances) + len(closing)

    return Body(
        [("content-type", content_type)], _multipart_chunks(instances, head, closing), measure
    )


def _part_head(instance: Retrievable, boundary: str, profile: str, base_url: str) -> bytes:
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
    instances: Sequence[Retrievable], head: Callable[[Retrievable], bytes], closing: bytes
) -> AsyncGenerator[bytes, None]:
    for instance in instances:
        yield head(instance)
        async with aclosing(chunks_of(instance)) as chunks:  # closes the file on a cut
            async for chunk in chunks:
                yield chunk
        yield b"\r\n"
    yield closing


def chunks_of(instance: Retrievable) -> AsyncGenerator[bytes, None]:
    if isinstance(instance, Instance):
        return file_chunks(instance)
    return _made(cast(Streamed, instance).data)


async def _made(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def file_chunks(
    instance: Instance, start: int = 0, length: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The file's bytes as indexed (`length` of them from `start`: all by default);
    ChangedSinceIndexed if it is another file now, or shrank (the announced length would
    lie)."""
    fd = open_indexed(instance)
    end = instance.size if length is None else start + length
    try:
        offset = start
        while offset < end:
            n = min(CHUNK, end - offset)
            data = await asyncio.to_thread(os.pread, fd, n, offset)
            if not data:
                raise ChangedSinceIndexed(f"{instance.path} is shorter than when it was indexed")
            offset += len(data)
            yield data
    finally:
        os.close(fd)


async def metadata(instances: Sequence[Instance], base_url: str) -> bytes:
    """DICOM JSON of every instance's header (pixel data left out, large binary values as a
    BulkDataURI), as one JSON array; an instance whose file changed since indexing is left out
    (logged)."""

    def build() -> bytes:
        headers = (_header_unless_changed(i, base_url) for i in instances)
        return json.dumps([h for h in headers if h]).encode()

    return await asyncio.to_thread(build)


def bulkdata_url(instance: Retrievable, base_url: str) -> str:
    """Where header_json's BulkDataURIs of `instance` point: this, then the tag."""
    return (
        f"{base_url}/studies/{instance.study_uid}/series/{instance.series_uid}"
        f"/instances/{instance.sop_uid}/bulkdata"
    )


def bulkdata(instance: Instance, tag: int, *, multipart: bool) -> Body | None:
    """A value header_json gave as a BulkDataURI, as stored: single part
    (application/octet-stream) or one part of multipart/related; None if there is none."""
    found = bulk_value(instance, tag)
    if found is None:
        return None
    start, length = found
    if not multipart:
        headers = [("content-type", "application/octet-stream")]
        headers.append(("content-length", str(length)))
        return Body(headers, file_chunks(instance, start, length), lambda: length)
    boundary = f"dlstudy-{secrets.token_hex(16)}"
    head = (
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    closing = f"\r\n--{boundary}--\r\n".encode()

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield head
        async with aclosing(file_chunks(instance, start, length)) as values:
            async for chunk in values:
                yield chunk
        yield closing

    content_type = f'multipart/related; type="application/octet-stream"; boundary="{boundary}"'
    return Body(
        [("content-type", content_type)], chunks(), lambda: len(head) + length + len(closing)
    )


def _header_unless_changed(instance: Instance, base_url: str) -> Json | None:
    try:
        return header_json(instance, bulkdata_url(instance, base_url))
    except ChangedSinceIndexed as exc:
        log.warning("left out of metadata: %s", exc)
        return None
