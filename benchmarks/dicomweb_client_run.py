"""Download one study with dicomweb-client (the incumbent), as `benchmarks/compare.py` runs it.

    python benchmarks/dicomweb_client_run.py --url URL --study UID --out DIR \
        --mode study|instance|threads [--ca-bundle PEM] [--threads 16]

* `study`     `DICOMwebClient.retrieve_study(uid)`: one multipart/related response; the client
              returns a list of pydicom Datasets (the whole study in memory).
* `instance`  `search_for_instances(study)` then `retrieve_instance(...)` for each, one after
              the other: how the library is used per instance (it has no concurrency).
* `threads`   the same per-instance retrieval from a pool of `--threads` threads, each with its
              own client (requests sessions are not shared between threads). Not something the
              library offers; a labelled extra, to show what concurrency alone buys it.

Each Dataset is written with `Dataset.save_as(OUT/<study>/<series>/<sop>.dcm)`: dicomweb-client
hands back parsed datasets, not the bytes received, so the files are pydicom's re-encoding (the
comparison checks bytes first and, if they differ, SOP Instance UID and pixel data). Transport
is requests, i.e. HTTP/1.1 (over TLS too). Prints one JSON line: instances and seconds.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient

SOP, SERIES = "00080018", "0020000E"


def make_client(url: str, ca_bundle: str | None) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment beats `verify`
    if ca_bundle:
        session.verify = ca_bundle
    return DICOMwebClient(url, session=session)


def save(out: Path, study: str, ds: Any) -> None:
    path = out / study / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


def first(item: dict[str, Any], tag: str) -> str:
    return str(item[tag]["Value"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--mode", choices=["study", "instance", "threads"], required=True)
    parser.add_argument("--ca-bundle")
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    started = time.monotonic()
    client = make_client(args.url, args.ca_bundle)
    count = 0
    if args.mode == "study":
        for ds in client.retrieve_study(args.study):
            save(args.out, args.study, ds)
            count += 1
    else:
        found = client.search_for_instances(study_instance_uid=args.study)
        refs = [(first(i, SERIES), first(i, SOP)) for i in found]
        if args.mode == "instance":
            for series, sop in refs:
                save(args.out, args.study, client.retrieve_instance(args.study, series, sop))
                count += 1
        else:
            local = threading.local()

            def fetch(ref: tuple[str, str]) -> None:
                if not hasattr(local, "client"):
                    local.client = make_client(args.url, args.ca_bundle)
                ds = local.client.retrieve_instance(args.study, ref[0], ref[1])
                save(args.out, args.study, ds)

            with ThreadPoolExecutor(args.threads) as pool:
                for _ in pool.map(fetch, refs):
                    count += 1
    print(json.dumps({"instances": count, "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
