"""Throughput of dlstudy's multipart parser, against requests-toolbelt and a `bytes.find` floor.

    /work/venv/bin/python benchmarks/bench_multipart.py            # full run, ~3 minutes
    /work/venv/bin/python benchmarks/bench_multipart.py --quick    # small bodies, seconds

Throughput. Bodies are built in memory (Orthanc-style parts of random bytes, with
Content-Length) and fed in chunks of 1 KiB, 64 KiB and 1 MiB, as a network read loop would. For
each implementation the median of several runs is reported in MB/s (10^6 bytes per second of
body):

* dlstudy: `MultipartParser.feed()` per chunk (`bytes`, like httpx yields), then `close()`;
  consuming every event.
* requests-toolbelt: `MultipartDecoder` needs the whole body, so its time includes joining the
  chunks (what a caller must do to use it).
* bytes.find: each chunk searched for every CRLF--boundary and nothing else (delimiters that
  straddle chunks are missed). No parser that looks at every byte can beat it by much.

Linearity. One part of 10^6 bytes against one part of 10^9 bytes (10^8 with --quick), each
fed at the same three chunk sizes. The part is one random 1 MiB block repeated (checked not to
contain the delimiter, also across the seam between two copies), built by a single join, and
fed as `memoryview` slices of that one `bytes` object, so the benchmark copies nothing. Note
that dlstudy's parser copies non-`bytes` input into its buffer (its documented rule, so events
never alias caller memory): this section times that path, ~10-20 % slower than the `bytes`
path above. Both sizes are timed in the same run, interleaved (each large run followed by
several small ones), with the garbage collector off during runs as timeit does; the table gives
the medians, the ratio time(large)/time(small) (equal to the size ratio, ×1000, when time is
linear in part size; the 1 MB part stays in the CPU caches, so a little above is expected) and
ns per byte. The ratio of the fastest runs is given too: on a shared machine a 0.2 s run
absorbs other load that 0.1 ms runs mostly dodge, which inflates the ratio of medians.
requests-toolbelt is timed on the small part only: on 10^9 bytes it needs the joined body plus
its split copies (>3 GB) and minutes, so that cell says "skipped". The bytes.find floor scans
the same body in the same windows (`find(delim, start, end)`, no copies).

A last, untimed pass measures peak Python memory allocated while parsing (tracemalloc) with
1 MiB chunks, including the 10^9-byte part. Results go to a table on stdout and to
benchmarks/results/bench_multipart.json.
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

from dlstudy.dicomweb.multipart import MultipartParser, PartData, PartEnded

KIB = 1024
MIB = 1024 * KIB
BOUNDARY = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-00000000-0000-0000-0000-000000000007"[:70]
DELIMITER = b"\r\n--" + BOUNDARY.encode()
CONTENT_TYPE = f"multipart/related; type=application/dicom; boundary={BOUNDARY}"
CHUNK_SIZES = [KIB, 64 * KIB, MIB]
RESULTS = Path(__file__).parent / "results" / "bench_multipart.json"

FULL_CASES = [(1, 256 * MIB), (2000, 16 * KIB), (1000, 512 * KIB)]
QUICK_CASES = [(1, 16 * MIB), (200, 16 * KIB), (40, 512 * KIB)]
# Linearity: (small part, large part) in bytes, and how many small runs follow each large one.
FULL_LINEAR = (10**6, 10**9)
QUICK_LINEAR = (10**6, 10**8)
SMALL_PER_LARGE = 15

Impl = Callable[[list[bytes]], tuple[int, int]]  # chunks -> (parts, data bytes)
Streamed = Callable[[bytes, int], tuple[int, int]]  # (body, chunk size) -> (parts, data bytes)


def random_block() -> bytes:
    """1 MiB of random bytes that cannot hold a delimiter, even repeated back to back."""
    block = random.Random(0).randbytes(MIB)
    assert DELIMITER not in block + block
    return block


def part_head(size: int) -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        f"\r\nContent-Length: {size}\r\nMIME-Version: 1.0\r\n\r\n"
    ).encode()


def build_body(count: int, size: int) -> bytes:
    """`count` parts of `size` random bytes each, framed like Orthanc frames them."""
    seed = random_block()
    pool = seed * (size // MIB + 2)
    out = []
    for index in range(count):
        start = (index * 7919) % MIB
        out += [part_head(size), pool[start : start + size], b"\r\n"]
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def build_one_part(size: int, block: bytes) -> bytes:
    """One part of `size` bytes: `block` repeated, joined once (peak memory = the body)."""
    whole, rest = divmod(size, len(block))
    pieces = [part_head(size), *([block] * whole), block[:rest], f"\r\n--{BOUNDARY}--\r\n".encode()]
    return b"".join(pieces)


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
    found = 0
    for chunk in chunks:
        i = chunk.find(DELIMITER)
        while i >= 0:
            found += 1
            i = chunk.find(DELIMITER, i + 1)
    return found, -1


IMPLS: dict[str, Impl] = {
    "dlstudy": run_dlstudy,
    "requests-toolbelt": run_toolbelt,
    "bytes.find": run_find,
}


# The same three, fed memoryview windows of one body (no copy made by the benchmark).


def stream_dlstudy(body: bytes, chunk_size: int) -> tuple[int, int]:
    parser = MultipartParser(BOUNDARY)
    parts = size = 0
    with memoryview(body) as view:
        for start in range(0, len(body), chunk_size):
            for event in parser.feed(view[start : start + chunk_size]):
                if type(event) is PartData:
                    size += len(event.data)
                elif type(event) is PartEnded:
                    parts += 1
    parser.close()
    return parts, size


def stream_toolbelt(body: bytes, chunk_size: int) -> tuple[int, int]:
    with memoryview(body) as view:
        joined = b"".join([view[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
    decoded = MultipartDecoder(joined, CONTENT_TYPE)
    return len(decoded.parts), sum(len(part.content) for part in decoded.parts)


def stream_find(body: bytes, chunk_size: int) -> tuple[int, int]:
    found = 0
    for start in range(0, len(body), chunk_size):
        end = start + chunk_size
        i = body.find(DELIMITER, start, end)
        while i >= 0:
            found += 1
            i = body.find(DELIMITER, i + 1, end)
    return found, -1


STREAMED: dict[str, Streamed] = {
    "dlstudy": stream_dlstudy,
    "requests-toolbelt": stream_toolbelt,
    "bytes.find": stream_find,
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


def time_once(impl: Streamed, body: bytes, chunk_size: int, part: int) -> float:
    """One timed run; the caller collects garbage and disables the collector beforehand."""
    start = time.perf_counter()
    parts, data = impl(body, chunk_size)
    seconds = time.perf_counter() - start
    if impl is not stream_find:
        assert (parts, data) == (1, part), (impl.__name__, parts, data)
    return seconds


def peak_memory(run: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run()
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
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def size_label(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def decimal_label(n: int) -> str:
    return f"{n // 10**9} GB" if n >= 10**9 else f"{n // 10**6} MB"


def throughput(
    repeats: int, cases: list[tuple[int, int]], memory: list[dict[str, object]]
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
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
                runs, (parts, data) = timed(impl, chunks, repeats)
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
                    peak = peak_memory(lambda impl=IMPLS[name], c=chunks: impl(c))
                    memory.append({"case": case, "impl": name, "peak_bytes": peak})
            del chunks
        del body
    return results


def linearity(
    repeats: int, small: int, large: int, memory: list[dict[str, object]]
) -> list[dict[str, object]]:
    block = random_block()
    bodies = {small: build_one_part(small, block), large: build_one_part(large, block)}
    expected = large / small
    names = (decimal_label(small), decimal_label(large))
    print(
        f"\nLinearity: one part of {small:,} vs {large:,} bytes, fed as memoryview slices "
        f"(medians of {repeats} large / {repeats * SMALL_PER_LARGE} small runs, interleaved)"
    )
    header = (
        f"{'chunk':>7}  {'impl':<18}{names[0] + ' s':>12}{names[1] + ' s':>12}"
        f"{'ratio':>9}{'÷size':>8}{'min÷size':>10}{'ns/B ' + names[0]:>13}"
        f"{'ns/B ' + names[1]:>13}{'MB/s ' + names[1]:>14}"
    )
    print(header)
    print("-" * len(header))
    results: list[dict[str, object]] = []
    for chunk_size in CHUNK_SIZES:
        for name, impl in STREAMED.items():
            runs: dict[int, list[float]] = {small: [], large: []}
            skip_large = name == "requests-toolbelt"
            for _ in range(repeats):
                # Like timeit: no collection inside a run. A collection before every small run
                # would also evict its 1 MB from the CPU caches and time that instead.
                gc.collect()
                gc.disable()
                try:
                    if not skip_large:
                        runs[large].append(time_once(impl, bodies[large], chunk_size, large))
                    gc.collect()
                    for _ in range(SMALL_PER_LARGE):
                        runs[small].append(time_once(impl, bodies[small], chunk_size, small))
                finally:
                    gc.enable()
            t_small = statistics.median(runs[small])
            row: dict[str, object] = {
                "chunk_bytes": chunk_size,
                "impl": name,
                "feed": "memoryview",
                "small_part_bytes": small,
                "large_part_bytes": large,
                "small_median_s": round(t_small, 7),
                "small_runs_s": [round(r, 7) for r in runs[small]],
                "small_ns_per_byte": round(t_small / small * 1e9, 4),
            }
            cells = f"{chunk_size // KIB:>4} KiB  {name:<18}{t_small:>12.6f}"
            if skip_large:
                row["large"] = "skipped: needs >3 GB of RAM and minutes on the large part"
                cells += f"{'skipped (see below)':>39}{t_small / small * 1e9:>13.3f}"
            else:
                t_large = statistics.median(runs[large])
                ratio = t_large / t_small
                min_ratio = min(runs[large]) / min(runs[small])
                row |= {
                    "large_median_s": round(t_large, 6),
                    "large_runs_s": [round(r, 6) for r in runs[large]],
                    "large_ns_per_byte": round(t_large / large * 1e9, 4),
                    "large_mb_per_s": round(large / t_large / 1e6, 1),
                    "time_ratio": round(ratio, 1),
                    "time_ratio_over_size_ratio": round(ratio / expected, 3),
                    "min_time_ratio_over_size_ratio": round(min_ratio / expected, 3),
                }
                cells += (
                    f"{t_large:>12.4f}{ratio:>9,.0f}{ratio / expected:>8.2f}"
                    f"{min_ratio / expected:>10.2f}"
                    f"{t_small / small * 1e9:>13.3f}{t_large / large * 1e9:>13.3f}"
                    f"{large / t_large / 1e6:>14,.0f}"
                )
            print(cells)
            results.append(row)
    print(
        f"ratio = median time({names[1]}) / median time({names[0]}); ÷size = ratio / "
        f"{expected:,.0f} (1.00 = linear); min÷size: the same with the fastest runs (least "
        "disturbed by other load on the machine).\nrequests-toolbelt skipped on the large "
        "part: it needs the whole body joined plus a copy of every part (>3 GB RAM at 1 GB) "
        "and minutes."
    )
    peak = peak_memory(lambda: stream_dlstudy(bodies[large], MIB))
    memory.append({"case": f"1 × {names[1]} (memoryview)", "impl": "dlstudy", "peak_bytes": peak})
    return results


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--quick", action="store_true", help="small bodies (a smoke test)")
    options.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    options.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = options.parse_args()

    memory: list[dict[str, object]] = []
    results = throughput(args.repeats, QUICK_CASES if args.quick else FULL_CASES, memory)
    small, large = QUICK_LINEAR if args.quick else FULL_LINEAR
    linear = linearity(args.repeats, small, large, memory)
    print("\nPeak memory allocated while parsing (1 MiB chunks, tracemalloc):")
    for entry in memory:
        print(f"  {entry['case']:<28}{entry['impl']:<20}{entry['peak_bytes'] / MIB:>10,.2f} MiB")  # type: ignore[operator]

    report = {
        "benchmark": "multipart",
        "quick": args.quick,
        "repeats": args.repeats,
        "unit": "MB/s = 10^6 body bytes per second (median of repeats)",
        "machine": machine(),
        "results": results,
        "linearity": {
            "method": (
                "one part of small vs large bytes, fed as memoryview slices of one bytes object; "
                f"{args.repeats} large runs, each followed by {SMALL_PER_LARGE} small runs; "
                "medians; time_ratio = median(large)/median(small), linear when it equals "
                "large/small"
            ),
            "size_ratio": large / small,
            "results": linear,
        },
        "peak_memory": memory,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temp = args.output.with_name(args.output.name + ".tmp")
    temp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    os.replace(temp, args.output)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
