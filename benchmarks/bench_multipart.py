"""Throughput of dlstudy's multipart parser, against requests-toolbelt and a `bytes.find` floor.

    /work/venv/bin/python benchmarks/bench_multipart.py            # full run, ~2 minutes
    /work/venv/bin/python benchmarks/bench_multipart.py --quick    # small bodies, seconds

Bodies are built in memory (Orthanc-style parts of random bytes, with Content-Length) and fed
in chunks of 16 KiB, 64 KiB and 1 MiB, as a network read loop would. For each implementation
the median of several runs is reported in MB/s (10^6 bytes per second of body):

* dlstudy: `MultipartParser.feed()` per chunk, then `close()`; consuming every event.
* requests-toolbelt: `MultipartDecoder` needs the whole body, so its time includes joining the
  chunks (what a caller must do to use it).
* bytes.find: each chunk searched for every CRLF--boundary and nothing else (delimiters that
  straddle chunks are missed). No parser that looks at every byte can beat it by much.

A second, untimed pass measures peak Python memory allocated while parsing (tracemalloc) with
1 MiB chunks. Results go to a table on stdout and to benchmarks/results/bench_multipart.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from requests_toolbelt import MultipartDecoder

from dlstudy.multipart import MultipartParser, PartData, PartEnded

KIB = 1024
MIB = 1024 * KIB
BOUNDARY = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-00000000-0000-0000-0000-000000000007"[:70]
CONTENT_TYPE = f"multipart/related; type=application/dicom; boundary={BOUNDARY}"
CHUNK_SIZES = [16 * KIB, 64 * KIB, MIB]
RESULTS = Path(__file__).parent / "results" / "bench_multipart.json"

FULL_CASES = [(1, 256 * MIB), (2000, 16 * KIB), (1000, 512 * KIB)]
QUICK_CASES = [(1, 16 * MIB), (200, 16 * KIB), (40, 512 * KIB)]

Impl = Callable[[list[bytes]], tuple[int, int]]  # chunks -> (parts, data bytes)


def build_body(count: int, size: int) -> bytes:
    """`count` parts of `size` random bytes each, framed like Orthanc frames them."""
    seed = random.Random(0).randbytes(MIB)
    assert b"\r\n--" + BOUNDARY.encode() not in seed + seed
    pool = seed * (size // MIB + 2)
    out = []
    for index in range(count):
        start = (index * 7919) % MIB
        head = (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
            f"\r\nContent-Length: {size}\r\nMIME-Version: 1.0\r\n\r\n"
        )
        out += [head.encode(), pool[start : start + size], b"\r\n"]
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def run_dlstudy(chunks: list[bytes]) -> tuple[int, int]:
    parser = MultipartParser(BOUNDARY)
    parts = size = 0
    for chunk in chunks:
        for event in parser.feed(chunk):
            if type(event) is PartData:
                size += len(event.data)
            elif type(event) is PartEnded:
                parts += 1
    parser.close()
    return parts, size


def run_toolbelt(chunks: list[bytes]) -> tuple[int, int]:
    decoded = MultipartDecoder(b"".join(chunks), CONTENT_TYPE)
    return len(decoded.parts), sum(len(part.content) for part in decoded.parts)


def run_find(chunks: list[bytes]) -> tuple[int, int]:
    delimiter = b"\r\n--" + BOUNDARY.encode()
    found = 0
    for chunk in chunks:
        i = chunk.find(delimiter)
        while i >= 0:
            found += 1
            i = chunk.find(delimiter, i + 1)
    return found, -1


IMPLS: dict[str, Impl] = {
    "dlstudy": run_dlstudy,
    "requests-toolbelt": run_toolbelt,
    "bytes.find": run_find,
}


def timed(impl: Impl, chunks: list[bytes], repeats: int) -> tuple[list[float], tuple[int, int]]:
    runs = []
    result = (0, 0)
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = impl(chunks)
        runs.append(time.perf_counter() - start)
    return runs, result


def peak_memory(impl: Impl, chunks: list[bytes]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        impl(chunks)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def machine() -> dict[str, object]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def size_label(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--quick", action="store_true", help="small bodies (a smoke test)")
    options.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    options.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = options.parse_args()

    cases = QUICK_CASES if args.quick else FULL_CASES
    results: list[dict[str, object]] = []
    memory: list[tuple[str, str, int]] = []
    header = f"{'body':<18}{'chunk':>8}  " + "".join(f"{name:>19}" for name in IMPLS)
    print(header + f"{'vs toolbelt':>13}")
    print("-" * (len(header) + 13))
    for count, size in cases:
        body = build_body(count, size)
        case = f"{count:,} × {size_label(size)}"
        for chunk_size in CHUNK_SIZES:
            chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
            speeds = {}
            for name, impl in IMPLS.items():
                runs, (parts, data) = timed(impl, chunks, args.repeats)
                if name != "bytes.find":
                    assert (parts, data) == (count, count * size), (name, parts, data)
                median = statistics.median(runs)
                speeds[name] = len(body) / median / 1e6
                results.append(
                    {
                        "case": case,
                        "parts": count,
                        "part_bytes": size,
                        "body_bytes": len(body),
                        "chunk_bytes": chunk_size,
                        "impl": name,
                        "median_s": round(median, 6),
                        "runs_s": [round(r, 6) for r in runs],
                        "mb_per_s": round(speeds[name], 1),
                    }
                )
            ratio = speeds["dlstudy"] / speeds["requests-toolbelt"]
            cells = "".join(f"{speeds[name]:>14,.0f} MB/s" for name in IMPLS)
            print(f"{case:<18}{size_label(chunk_size):>8}  {cells}{ratio:>12.1f}×")
            if chunk_size == MIB:
                for name in ("dlstudy", "requests-toolbelt"):
                    peak = peak_memory(IMPLS[name], chunks)
                    memory.append((case, name, peak))
            del chunks
        del body
    print("\nPeak memory allocated while parsing (1 MiB chunks, tracemalloc):")
    for case, name, peak in memory:
        print(f"  {case:<18}{name:<20}{peak / MIB:>10,.2f} MiB")

    report = {
        "benchmark": "multipart",
        "quick": args.quick,
        "repeats": args.repeats,
        "unit": "MB/s = 10^6 body bytes per second (median of repeats)",
        "machine": machine(),
        "results": results,
        "peak_memory": [{"case": c, "impl": i, "peak_bytes": p} for c, i, p in memory],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temp = args.output.with_name(args.output.name + ".tmp")
    temp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    os.replace(temp, args.output)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
