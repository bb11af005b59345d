"""The floor: the least a Python client can do to fetch every instance, for scale.

HTTP/1.1 GETs over C keep-alive connections (TLS by ALPN http/1.1 for https://), one asyncio
BufferedProtocol per connection, each body written straight to its file. Nothing else: no QIDO
(URLs come from the manifest, as for curl), no hashing, no DICOM check, no temp file and rename,
no retries, no progress, and it trusts nginx's Content-Length. dlstudy does all of those, so
this row shows how much of the gap to curl is Python itself on this machine, not dlstudy.

    python floor_client.py --manifest data/ct/manifest.json \
        --url https://127.0.0.1:8443/ct/dicomweb --out /dev/shm/out -c 16 [--ca-bundle ca.pem]

Prints one JSON line: {"instances": N, "seconds": S}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

BUFFER = 1024 * 1024


class Fetch(asyncio.BufferedProtocol):
    """One connection; `get()` one path at a time into one file."""

    def __init__(self) -> None:
        self.buffer = memoryview(bytearray(BUFFER))
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.head = b""
        self.remaining = -1  # -1: reading the head
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        if self.remaining < 0:
            self.head += bytes(data)
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.head[:end].decode("latin-1")
            if not head.startswith("HTTP/1.1 200"):
                self._finish(RuntimeError(head.splitlines()[0]))
                return
            length = next(
                int(line.split(":", 1)[1])
                for line in head.split("\r\n")[1:]
                if line.lower().startswith("content-length:")
            )
            data = memoryview(self.head)[end + 4 :]
            self.head = b""
            self.remaining = length
        if len(data):
            os.write(self.fd, data)
            self.remaining -= len(data)
        if self.remaining == 0:
            self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        self.remaining = -1
        if self.done is not None and not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionError("server closed the connection"))

    async def get(self, host: str, path: str, target: Path) -> None:
        assert self.transport is not None
        target.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.done = asyncio.get_running_loop().create_future()
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/dicom\r\n\r\n"
            self.transport.write(request.encode())
            await self.done
        finally:
            os.close(self.fd)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--url", required=True, help="DICOMweb base URL")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--ca-bundle")
    args = parser.parse_args()
    started = time.monotonic()
    manifest = json.loads(args.manifest.read_text())
    base = urlsplit(args.url)
    context = None
    if base.scheme == "https":
        context = ssl.create_default_context(cafile=args.ca_bundle)
        context.set_alpn_protocols(["http/1.1"])
    todo = [
        (f"{base.path}/studies/{i['study']}/series/{i['series']}/instances/{i['sop']}", i["rel"])
        for i in manifest["instances"]
    ]
    todo.reverse()
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        transport, fetch = await loop.create_connection(
            Fetch,
            base.hostname,
            base.port,
            ssl=context,
            server_hostname=base.hostname if context else None,
        )
        try:
            while todo:
                path, rel = todo.pop()
                await fetch.get(base.netloc, path, args.out / rel)
        finally:
            transport.close()

    count = len(todo)
    await asyncio.gather(*(worker() for _ in range(min(args.concurrency, count))))
    print(json.dumps({"instances": count, "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    asyncio.run(main())
