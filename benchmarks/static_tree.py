"""Datasets and the static DICOMweb tree that nginx serves for `benchmarks/compare.py`.

A dataset is what `dlstudy synth` writes (`src/<study>/<series>/<sop>.dcm`) plus, beside it, what
a static DICOMweb server needs (`www/`):

    www/qido/studies.json                     QIDO  /studies
    www/qido/<st>/series.json                 QIDO  /studies/<st>/series
    www/qido/<st>/instances.json              QIDO  /studies/<st>/instances
    www/qido/<st>/<se>/instances.json         QIDO  /studies/<st>/series/<se>/instances
    www/mp-study/<st>.mp                      WADO  /studies/<st>, multipart/related (all parts)
    www/mp-series/<st>/<se>.mp                WADO  /studies/<st>/series/<se>, the same per series
    www/mp-instance/<st>/<se>/<sop>.mp        WADO  /studies/<st>/series/<se>/instances/<sop>,
                                                     multipart/related with one part

Single-part instance answers are the synth files themselves (`application/dicom`). The QIDO
files are DICOM JSON built from the headers; the multipart files are prebuilt so nginx serves
every answer from a file with sendfile. `manifest.json` lists every instance with its size and
SHA-256: the reference every client's output is compared with. A dataset is built once and
reused while its synth arguments are unchanged.

`nginx_conf()` writes the server: one nginx, three server blocks (HTTP/1.1, h2c, TLS with h2 by
ALPN), each serving every dataset under `/<dataset>/dicomweb`. Instance URLs answer single-part
unless the Accept header mentions `multipart`; query strings are ignored (as by any static
server), so a QIDO page with `offset` returns the same list again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TREE_VERSION = 2  # bump when the layout of www/ changes: datasets are rebuilt
BOUNDARY = "dlstudy-bench-5d1c0b7e9a4f4e0f8f3a2b61c7d94e25"
MULTIPART_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
WSI_FRAME = 256 * 256 * 3

# dlstudy synth arguments per dataset; `--quick` uses the small variants.
DATASETS: dict[str, list[str]] = {
    "ct": ["--preset", "ct"],  # 4 series x 250 x 512 KiB
    "many": ["--preset", "many"],  # 1 series x 2,000 x 16 KiB
    "wsi": ["--preset", "wsi"],  # 1 instance of 1.5 GiB (8,192 frames)
}
QUICK_DATASETS: dict[str, list[str]] = {
    "ct": ["--preset", "ct", "--series", "2", "--instances", "25"],
    "many": ["--preset", "many", "--instances", "300"],
    "wsi": ["--preset", "wsi", "--frames", "256", "--size", str(256 * WSI_FRAME + 2048)],
}

TAGS = {
    "study": "0020000D",
    "series": "0020000E",
    "sop": "00080018",
    "sop_class": "00080016",
    "modality": "00080060",
    "number": "00200013",
    "series_number": "00200011",
    "n_series_instances": "00201209",
    "n_study_instances": "00201208",
    "n_study_series": "00201206",
    "patient_id": "00100020",
    "study_date": "00080020",
}


def _attr(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def build_dataset(
    root: Path, name: str, synth_args: list[str], *, multipart: bool, log: Any = print
) -> dict[str, Any]:
    """Build (or reuse) dataset `name` under `root/name`; return its manifest."""
    folder = root / name
    src = folder / "src"
    manifest_path = folder / "manifest.json"
    old: dict[str, Any] = {}
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if (
            old.get("synth_args") == synth_args
            and old.get("tree_version") == TREE_VERSION
            and (old.get("multipart") or not multipart)
        ):
            log(f"dataset {name}: reusing {folder}")
            return old
    manifest_path.unlink(missing_ok=True)
    if old.get("synth_args") == synth_args and src.is_dir():
        log(f"dataset {name}: reusing the synth files, rebuilding the DICOMweb tree")
        instances = old["instances"]
    else:
        if folder.exists():
            shutil.rmtree(folder)
        log(f"dataset {name}: dlstudy synth {' '.join(synth_args)}")
        cmd = [sys.executable, "-m", "dlstudy", "synth", str(src), *synth_args]
        subprocess.run(cmd, check=True, timeout=900, stdout=subprocess.DEVNULL)
        instances = _index(src)
    shutil.rmtree(folder / "www", ignore_errors=True)
    _write_qido(folder / "www" / "qido", instances)
    if multipart:
        log(f"dataset {name}: writing multipart answers")
        _write_multipart(folder / "www", src, instances)
    manifest = {
        "name": name,
        "tree_version": TREE_VERSION,
        "synth_args": synth_args,
        "multipart": multipart,
        "studies": sorted({i["study"] for i in instances}),
        "instances": instances,
        "bytes": sum(i["size"] for i in instances),
    }
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def _index(src: Path) -> list[dict[str, Any]]:
    import pydicom  # imported here: only the data build needs it

    instances = []
    for path in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instances.append(
            {
                "rel": path.relative_to(src).as_posix(),
                "study": str(ds.StudyInstanceUID),
                "series": str(ds.SeriesInstanceUID),
                "sop": str(ds.SOPInstanceUID),
                "sop_class": str(ds.SOPClassUID),
                "modality": str(ds.get("Modality", "")),
                "number": int(ds.get("InstanceNumber", 0) or 0),
                "series_number": int(ds.get("SeriesNumber", 0) or 0),
                "patient_id": str(ds.get("PatientID", "")),
                "study_date": str(ds.get("StudyDate", "")),
                "size": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        )
        expected = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        if instances[-1]["rel"] != expected:
            raise SystemExit(f"unexpected synth layout: {path}")
    instances.sort(key=lambda i: (i["study"], i["series_number"], i["series"], i["number"]))
    return instances


def _instance_json(i: dict[str, Any]) -> dict[str, Any]:
    return {
        TAGS["sop_class"]: _attr("UI", i["sop_class"]),
        TAGS["sop"]: _attr("UI", i["sop"]),
        TAGS["study"]: _attr("UI", i["study"]),
        TAGS["series"]: _attr("UI", i["series"]),
        TAGS["modality"]: _attr("CS", i["modality"]),
        TAGS["number"]: _attr("IS", i["number"]),
    }


def _write_qido(qido: Path, instances: list[dict[str, Any]]) -> None:
    studies: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i in instances:
        studies.setdefault(i["study"], {}).setdefault(i["series"], []).append(i)
    study_items = []
    for st, series in studies.items():
        first = next(iter(series.values()))[0]
        study_items.append(
            {
                TAGS["study"]: _attr("UI", st),
                TAGS["patient_id"]: _attr("LO", first["patient_id"]),
                TAGS["study_date"]: _attr("DA", first["study_date"]),
                TAGS["n_study_series"]: _attr("IS", len(series)),
                TAGS["n_study_instances"]: _attr("IS", sum(map(len, series.values()))),
            }
        )
        series_items = []
        for se, members in series.items():
            series_items.append(
                {
                    TAGS["study"]: _attr("UI", st),
                    TAGS["series"]: _attr("UI", se),
                    TAGS["modality"]: _attr("CS", members[0]["modality"]),
                    TAGS["series_number"]: _attr("IS", members[0]["series_number"]),
                    TAGS["n_series_instances"]: _attr("IS", len(members)),
                }
            )
            (qido / st / se).mkdir(parents=True, exist_ok=True)
            body = json.dumps([_instance_json(i) for i in members])
            (qido / st / se / "instances.json").write_text(body)
        (qido / st / "series.json").write_text(json.dumps(series_items))
        every = [_instance_json(i) for members in series.values() for i in members]
        (qido / st / "instances.json").write_text(json.dumps(every))
    (qido / "studies.json").write_text(json.dumps(study_items))


def _part_header(size: int) -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\nContent-Length: {size}\r\n\r\n"
    ).encode()


def _copy_into(out: Any, path: Path) -> None:
    with path.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)


def _write_multipart(www: Path, src: Path, instances: list[dict[str, Any]]) -> None:
    """Study-, series- and instance-level multipart/related bodies (CRLF before a delimiter)."""
    close = f"\r\n--{BOUNDARY}--\r\n".encode()
    by_study: dict[str, list[dict[str, Any]]] = {}
    by_series: dict[str, list[dict[str, Any]]] = {}
    for i in instances:
        by_study.setdefault(i["study"], []).append(i)
        by_series.setdefault(f"{i['study']}/{i['series']}", []).append(i)
    groups = [(f"mp-study/{st}.mp", m) for st, m in by_study.items()]
    groups += [(f"mp-series/{key}.mp", m) for key, m in by_series.items()]
    for rel, members in groups:
        (www / rel).parent.mkdir(parents=True, exist_ok=True)
        with (www / rel).open("wb") as out:
            for n, i in enumerate(members):
                out.write((b"\r\n" if n else b"") + _part_header(i["size"]))
                _copy_into(out, src / i["rel"])
            out.write(close)
    for i in instances:
        target = www / "mp-instance" / (i["rel"].removesuffix(".dcm") + ".mp")
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            out.write(_part_header(i["size"]))
            _copy_into(out, src / i["rel"])
            out.write(close)


# -- nginx ---------------------------------------------------------------------------------------


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI); (ca, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    quiet = {"check": True, "timeout": 60, "capture_output": True}
    subprocess.run(
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "7"]
        + ["-subj", "/CN=dlstudy benchmark CA"]
        + ["-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        **quiet,  # type: ignore[call-overload]
    )
    subprocess.run(
        ["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        **quiet,  # type: ignore[call-overload]
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key]
        + ["-CAcreateserial", "-out", cert, "-days", "7", "-extfile", ext],
        **quiet,  # type: ignore[call-overload]
    )
    return ca, cert, key


def nginx_conf(
    prefix: Path,
    data_root: Path,
    ports: dict[str, int],
    cert: Path,
    key: Path,
    workers: str,
) -> Path:
    """Write `prefix/nginx.conf` serving every dataset under data_root; return its path."""
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    d = data_root.resolve().as_posix()
    ds = r"(?<ds>[A-Za-z0-9_-]+)"
    uid = r"[0-9.]+"
    dicom_json = "types { } default_type application/dicom+json;"
    series = rf"/{ds}/dicomweb/studies/(?<st>{uid})/series/(?<se>{uid})"
    locations = f"""
        # QIDO-RS: fixed JSON files (query strings are ignored, as by any static server)
        location ~ ^/{ds}/dicomweb/studies$ {{
            {dicom_json} alias {d}/$ds/www/qido/studies.json;
        }}
        location ~ ^/{ds}/dicomweb/studies/(?<st>{uid})/series$ {{
            {dicom_json} alias {d}/$ds/www/qido/$st/series.json;
        }}
        location ~ ^/{ds}/dicomweb/studies/(?<st>{uid})/instances$ {{
            {dicom_json} alias {d}/$ds/www/qido/$st/instances.json;
        }}
        location ~ ^{series}/instances$ {{
            {dicom_json} alias {d}/$ds/www/qido/$st/$se/instances.json;
        }}
        # WADO-RS study and series: multipart/related with every instance
        location ~ ^/{ds}/dicomweb/studies/(?<st>{uid})$ {{
            types {{ }} default_type '{MULTIPART_TYPE}';
            alias {d}/$ds/www/mp-study/$st.mp;
        }}
        location ~ ^{series}$ {{
            types {{ }} default_type '{MULTIPART_TYPE}';
            alias {d}/$ds/www/mp-series/$st/$se.mp;
        }}
        # WADO-RS instance: single-part (the stored file), multipart if Accept asks for it
        location ~ ^{series}/instances/(?<sop>{uid})$ {{
            if ($http_accept ~* "multipart") {{
                rewrite ^ /_multipart/$ds/$st/$se/$sop last;
            }}
            types {{ }} default_type application/dicom;
            alias {d}/$ds/src/$st/$se/$sop.dcm;
        }}
        location ~ ^/_multipart/{ds}/(?<path>[0-9./]+)$ {{
            internal;
            types {{ }} default_type '{MULTIPART_TYPE}';
            alias {d}/$ds/www/mp-instance/$path.mp;
        }}
    """
    p = prefix.resolve().as_posix()
    user = "user root;" if os.geteuid() == 0 else ""
    # nginx as deployed: Debian's nginx.conf defaults (sendfile, tcp_nopush) and nginx's own for
    # the rest: 8 KiB HTTP/2 DATA frames (http2_chunk_size), 1,000 requests a connection, no
    # open-file cache. Only the `tls-tuned` server differs: 1 MiB frames, which favour a client
    # that pays per frame; it gives a second row, never the headline.
    conf = f"""
{user}
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {cert.resolve().as_posix()};
    ssl_certificate_key {key.resolve().as_posix()};
    server {{ listen 127.0.0.1:{ports["h1"]} backlog=1024; {locations} }}
    server {{ listen 127.0.0.1:{ports["h2c"]} http2 backlog=1024; {locations} }}
    server {{ listen 127.0.0.1:{ports["tls"]} ssl http2 backlog=1024; {locations} }}
    server {{
        listen 127.0.0.1:{ports["tls-tuned"]} ssl http2 backlog=1024;
        http2_chunk_size 1m;  # frames are min(this, the client's SETTINGS_MAX_FRAME_SIZE)
        {locations}
    }}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path
