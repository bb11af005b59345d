"""dlstudy's HTTP engine alone: what libcurl under Python costs, without the rest of dlstudy.

The same engine a dlstudy download moves its bytes through (`dlstudy.http.curl.CurlTransport`,
libcurl's multi interface on the asyncio loop, bodies poured from libcurl's write callback into
a sink), with dlstudy's default concurrency (64 HTTP/2 streams, 16 HTTP/1.1 connections), one
process. Each body goes straight to its file. Nothing else: no QIDO (URLs come from the
manifest, as for curl), no hashing, no DICOM check, no temp file and rename, no retries, no
progress, no typer. Between this row and curl's is the engine (libcurl driven from Python);
between dlstudy's rows and this one is dlstudy's own work per instance.

    python engine_client.py --manifest data/ct/manifest.json --http 2 \
        --url https://127.0.0.1:8443/ct/dicomweb --out /dev/shm/out [--ca-bundle ca.pem]

Prints one JSON line: {"instances": N, "seconds": S, "http_version": "HTTP/2"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from dlstudy.http.curl import CurlTransport, TlsOptions
from dlstudy.http.proxy import Proxies
from dlstudy.http.transfer import pour_body
from dlstudy.settings import AUTO_CONCURRENCY_HTTP1, AUTO_CONCURRENCY_HTTP2


async def pour_into(response: httpx.Response, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(chunk: bytes) -> None:
        if os.write(fd, chunk) != len(chunk):
            raise OSError(f"{target}: short write")

    try:
        await pour_body(response, write)
    finally:
        os.close(fd)


async def fetch_all(args: argparse.Namespace) -> dict[str, object]:
    started = time.monotonic()
    manifest = json.loads(args.manifest.read_text())
    base = urlsplit(args.url)
    port = base.port or (443 if base.scheme == "https" else 80)
    http2 = args.http == "2"
    concurrency = AUTO_CONCURRENCY_HTTP2 if http2 else AUTO_CONCURRENCY_HTTP1
    transport = CurlTransport(
        http="2" if http2 else "1.1",
        max_connections=AUTO_CONCURRENCY_HTTP1 + 2,  # as dlstudy's client sets it
        tls=TlsOptions(ca_bundle=Path(args.ca_bundle) if args.ca_bundle else None),
        proxies=Proxies(),
    )
    headers = httpx.Headers({"Accept": "application/dicom; transfer-syntax=*"})
    todo = [
        (f"{args.url}/studies/{i['study']}/series/{i['series']}/instances/{i['sop']}", i["rel"])
        for i in manifest["instances"]
    ]
    todo.reverse()
    versions: set[str] = set()

    async def worker() -> None:
        while todo:
            url, rel = todo.pop()
            response = await transport.get(
                url,
                scheme=base.scheme,
                host=base.hostname or "",
                port=port,
                headers=headers,
                extensions={},
            )
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}")
            versions.add(response.http_version)
            await pour_into(response, args.out / rel)

    count = len(todo)
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    finally:
        await transport.aclose()
    return {
        "instances": count,
        "seconds": round(time.monotonic() - started, 3),
        "http_version": ",".join(sorted(versions)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--url", required=True, help="DICOMweb base URL")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--http", choices=("1.1", "2"), required=True)
    parser.add_argument("--ca-bundle")
    print(json.dumps(asyncio.run(fetch_all(parser.parse_args()))))


if __name__ == "__main__":
    main()
