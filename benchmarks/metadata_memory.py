"""Peak memory of `dlstudy serve` answering WADO-RS metadata of an instance with a large
binary value that is not pixel data (a private OB element), then sending that value.

One instance: pydicom's CT_small.dcm plus a private OB value of `--value-mib` MiB. The server
runs as a subprocess; its peak RSS comes from wait4()'s rusage (ru_maxrss) of that process. The
metadata is fetched with curl; so is the value, from its BulkDataURI when metadata gives one.

    python benchmarks/metadata_memory.py                  # a 200 MiB value
    python benchmarks/metadata_memory.py --value-mib 20   # a quick run

Prints a table and writes benchmarks/results/metadata_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
import pydicom.data
from server_memory import curl_stream, rss_mib, start_server

RESULTS = Path(__file__).parent / "results" / "metadata_memory.json"


def write_instance(folder: Path, value_mib: int) -> str:
    """The instance with its large value, written by another process: a server started from
    this one would inherit its peak RSS (Linux keeps it across exec); the JSON key of that
    value."""
    cmd = [sys.executable, __file__, "--write-into", str(folder), "--value-mib", str(value_mib)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def _write(folder: Path, value_mib: int) -> str:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    block = ds.private_block(0x0041, "DLSTUDY BENCH", create=True)
    block.add_new(0x10, "OB", b"\x01" * (value_mib * 2**20))
    ds.save_as(folder / "large-value.dcm")
    return f"{block.get_tag(0x10):08X}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--value-mib", type=int, default=200, help="size of the value (MiB)")
    parser.add_argument("--write-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_into is not None:  # the writer process of write_instance
        print(_write(args.write_into, args.value_mib))
        return

    with tempfile.TemporaryDirectory(prefix="dlstudy-bench-") as tmp:
        folder = Path(tmp)
        key = write_instance(folder, args.value_mib)
        proc, base = start_server(folder)
        idle = rss_mib(proc.pid)
        listing = subprocess.run(["curl", "-sS", f"{base}/instances"], capture_output=True)
        instance_url = json.loads(listing.stdout)[0]["00081190"]["Value"][0]
        metadata = curl_stream(f"{instance_url}/metadata", "application/dicom+json")
        fetched = subprocess.run(
            ["curl", "-sS", f"{instance_url}/metadata"], capture_output=True, check=True
        )
        entry = json.loads(fetched.stdout)[0][key]
        value = None
        if "BulkDataURI" in entry:
            value = curl_stream(entry["BulkDataURI"], "application/octet-stream")
        proc.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        assert proc.stderr is not None
        proc.stderr.close()
        peak = usage.ru_maxrss / 1024

    report = {
        "value_mib": args.value_mib,
        "value_given_as": "BulkDataURI" if value else "InlineBinary",
        "server": {"idle_rss_mib": round(idle, 1), "peak_rss_mib": round(peak, 1)},
        "metadata": metadata,
        "bulkdata": value,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    print(f"value: {args.value_mib} MiB, given as {report['value_given_as']}")
    print(f"{'serve (idle after indexing)':40} {idle:8.1f} MiB")
    print(f"{'serve (peak: metadata, then the value)':40} {peak:8.1f} MiB")
    print(f"{'metadata body':40} {metadata['bytes']:8} bytes")
    if value is not None:
        print(f"{'value from its BulkDataURI':40} {value['bytes']:8} bytes")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
