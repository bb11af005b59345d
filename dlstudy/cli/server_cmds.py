"""`dlstudy serve` and `dlstudy synth`: the embedded DICOMweb server and the study generator."""

from __future__ import annotations

import dataclasses
import enum
import errno
import importlib.util
import logging
import socket
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ..report.printable import printable
from .command import Command
from .common import PrintableFormatter, error_line, exit_on_interrupt, fail_usage, output_failed
from .options import fraction, seconds

DEFAULT_PORT = 8043  # one above Orthanc's 8042, so both can run side by side

# server.virtual_spec's limits of a virtual archive, as the options' ranges (that package is
# imported only once `serve` runs: it loads the HTTP/2 server; a test keeps the two equal).
MAX_VIRTUAL_STUDIES = 20_000_000
MAX_VIRTUAL_STUDY_SIZE = 2**26


class Profile(enum.StrEnum):
    standard = "standard"
    orthanc = "orthanc"
    dcm4chee = "dcm4chee"


class Mix(enum.StrEnum):
    hospital = "hospital"
    mimic = "mimic"


class Preset(enum.StrEnum):
    small = "small"
    ct = "ct"
    mr = "mr"
    many = "many"
    wsi = "wsi"


class ServeLines(logging.Formatter):
    """Warnings in the form every command prints them (`dlstudy: warning: ...`); the other lines
    (--verbose's line for each file, the access log) as the log they are: `LEVEL message`."""

    warning = PrintableFormatter("dlstudy: warning: %(message)s")
    other = PrintableFormatter("%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return (self.warning if record.levelno == logging.WARNING else self.other).format(record)


def register(app: typer.Typer) -> None:
    """Add the `serve` and `synth` commands to the app."""
    app.command("serve", cls=Command)(serve)
    app.command("synth", cls=Command)(synth)


def serve(
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="Folder of DICOM files, indexed recursively (or --virtual N).",
            metavar="DIRECTORY",
            exists=True,
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    virtual: Annotated[
        int | None,
        typer.Option(
            help="Serve a generated archive of N studies instead of a folder.",
            min=1,
            max=MAX_VIRTUAL_STUDIES,  # (its index is kept in memory, ~50 bytes a study)
        ),
    ] = None,
    mix: Annotated[
        Mix, typer.Option(help="--virtual: hospital (CR/DX/CT/MR/SEG/SR) or mimic (1-4 DX).")
    ] = Mix.hospital,
    study_size: Annotated[
        int | None,
        typer.Option(
            help="--virtual: every study one CT series of exactly N instances.",
            min=1,
            max=MAX_VIRTUAL_STUDY_SIZE,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(help=f"Port (default {DEFAULT_PORT}; 0 = any free port).", min=0, max=65535),
    ] = DEFAULT_PORT,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="PEM certificate: serve HTTPS (h2 via ALPN).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            help="PEM private key for --tls-cert.", exists=True, dir_okay=False, readable=True
        ),
    ] = None,
    http3: Annotated[
        bool,
        typer.Option(
            "--http3",
            # Help texts are rich markup: a bracket that is text is escaped.
            help="Serve HTTP/3 too (QUIC, UDP on the same port); needs --tls-cert and aioquic "
            "(pip install 'dlstudy\\[http3]').",
        ),
    ] = False,
    profile: Annotated[
        Profile, typer.Option(help="Mimic a server's retrieve quirks.")
    ] = Profile.standard,
    max_page_size: Annotated[
        int | None,
        typer.Option(
            "--max-page-size",
            "--page-cap",
            help="Cap QIDO pages (Warning: 299 when truncated).",
            min=1,
        ),
    ] = None,
    ignore_offset: Annotated[
        bool, typer.Option("--ignore-offset", help="Ignore QIDO offset, like static DICOMweb.")
    ] = False,
    silent_cap: Annotated[
        bool,
        typer.Option(
            "--silent-cap",
            help="Cut pages at --page-cap without a Warning: 299, as some archives do.",
        ),
    ] = False,
    no_counts: Annotated[
        bool,
        typer.Option(
            "--no-counts", help="Leave the study and series instance counts out of QIDO answers."
        ),
    ] = False,
    latency: Annotated[
        float,
        typer.Option(help="Seconds added to every request.", parser=seconds(above_zero=False)),
    ] = 0.0,
    fault_rate: Annotated[
        float,
        typer.Option(
            help="Fraction of WADO requests answered --fault-status (0-1).", parser=fraction
        ),
    ] = 0.0,
    fault_status: Annotated[
        int,
        typer.Option(
            help="Status of injected faults: any error, 400-599 (503, 429, 500, 404...).",
            min=400,
            max=599,
        ),
    ] = 503,
    retry_after: Annotated[int, typer.Option(help="Retry-After seconds on faults.", min=0)] = 1,
    drop_after_bytes: Annotated[
        int | None,
        typer.Option(help="Cut WADO bodies after N bytes (connection dropped).", min=0),
    ] = None,
    drop_rate: Annotated[
        float,
        typer.Option(
            help="Fraction of WADO bodies --drop-after-bytes cuts (0-1).", parser=fraction
        ),
    ] = 1.0,
    token: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer TOKEN' (or TOKEN-suffix).")
    ] = None,
    token_expires_after: Annotated[
        int | None,
        typer.Option(help="Each token value is refused (401) after N requests.", min=0),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the fault injection and of the --virtual archive.")
    ] = 0,
    max_requests_per_connection: Annotated[
        int | None,
        typer.Option(help="Close connections after N requests (HTTP/2: GOAWAY mid-run).", min=0),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log skipped files and every request.")
    ] = False,
) -> None:
    """Serve a folder over DICOMweb (QIDO-RS, WADO-RS) until Ctrl-C.

    Prints the base URL on stderr when ready. HTTP/1.1 and h2c on one port; HTTPS: --tls-cert
    (with --http3, HTTP/3 too).
    With --virtual N, a generated archive of N studies (no files; same --seed, same archive).
    """
    with exit_on_interrupt(kept=""):  # loading the server takes a moment
        from dlstudy.server import ServerOptions, VirtualSpec, serve_forever
        from dlstudy.server.run import CannotListen

    if (directory is None) == (virtual is None):
        fail_usage("serve needs a DIR or --virtual N (not both)")
    if virtual is None and (study_size is not None or mix != Mix.hospital):
        fail_usage("--mix and --study-size go with --virtual N")
    if silent_cap and max_page_size is None:
        fail_usage("--silent-cap goes with --page-cap N")
    if tls_cert is not None and tls_key is not None:
        if (problem := _tls_problem(tls_cert, tls_key)) is not None:
            fail_usage(problem)
    if http3 and (problem := _http3_problem(tls_cert)) is not None:
        fail_usage(problem)
    # File names go into these lines: escaped, none can forge a line or drive the terminal.
    handler = logging.StreamHandler()
    handler.setFormatter(ServeLines())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    # pydicom's complaints about odd files name no file: --verbose shows them beside the
    # index's own line for each file it skips; otherwise the count of skipped files says it.
    logging.getLogger("pydicom").setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        spec = None
        if virtual is not None:
            spec = VirtualSpec(virtual, seed=seed, mix=mix.value, study_size=study_size)
        options = ServerOptions(
            root=directory,
            virtual=spec,
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            http3=http3,
            profile=profile.value,
            max_page_size=max_page_size,
            ignore_offset=ignore_offset,
            silent_cap=silent_cap,
            no_counts=no_counts,
            latency=latency,
            fault_rate=fault_rate,
            fault_status=fault_status,
            retry_after=retry_after,
            drop_after_bytes=drop_after_bytes,
            drop_rate=drop_rate,
            token=token,
            token_expires_after=token_expires_after,
            seed=seed,
            max_requests_per_connection=max_requests_per_connection,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    studies = "1 study" if virtual == 1 else f"{virtual} studies"
    what = directory if spec is None else f"a virtual archive of {studies}"

    def ready(url: str) -> None:
        line = f"serving {printable(str(what))} at {url} (Ctrl-C to stop)"
        print(line, file=sys.stderr, flush=True)

    try:
        # Ctrl-C or SIGTERM while the folder is indexed, before hypercorn handles them: the
        # line every command prints (it was `dlstudy: interrupted`, or nothing).
        with exit_on_interrupt(kept=""):
            serve_forever(options, on_ready=ready)
    except CannotListen as exc:
        error_line(f"serve: {exc.strerror}{_listen_hint(exc)}")
        raise typer.Exit(1) from exc
    except OSError as exc:  # a certificate that went missing since it was checked, ...
        error_line(f"serve: {exc.strerror or exc}")
        raise typer.Exit(1) from exc


def _listen_hint(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return " (choose another --port, or 0)"
    if exc.errno == errno.EACCES:
        return " (a port below 1024 needs privileges: choose another --port, or 0)"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc.__cause__, socket.gaierror):
        return " (--host must be an address or name of this machine)"
    return ""


class _Encrypted(Exception):
    """The key asks for a passphrase (OpenSSL would prompt for it on the terminal)."""


def _no_passphrase() -> str:
    raise _Encrypted


def _http3_problem(tls_cert: Path | None) -> str | None:
    """Why `serve --http3` cannot serve HTTP/3 here, if it cannot."""
    if tls_cert is None:
        return "--http3 runs over TLS (QUIC): give --tls-cert and --tls-key too"
    if importlib.util.find_spec("aioquic") is None:
        return "--http3 needs aioquic, which is not installed: pip install 'dlstudy[http3]'"
    return None


def _tls_problem(cert: Path, key: Path) -> str | None:
    """What the TLS server would stumble on, in one line naming the option, found before the
    folder is indexed and the URL printed (hypercorn loads them only as it starts: `serve`
    said it was serving, then failed with `No such file or directory` or `PEM lib`)."""
    from ..http.tls_files import PEM_CERTIFICATE, PEM_PRIVATE_KEY, pem_file_problem

    for option, path, block in (
        ("--tls-cert", cert, PEM_CERTIFICATE),
        ("--tls-key", key, PEM_PRIVATE_KEY),
    ):
        if (problem := pem_file_problem(path, block)) is not None:
            return f"{option} {path}: {problem}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        return f"--tls-key {key}: the key is encrypted; serve needs it without a passphrase"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return f"--tls-key {key} is not the key of the certificate in --tls-cert {cert}"
        return f"--tls-cert {cert} with --tls-key {key}: unusable ({exc.reason or exc})"
    return None


def _usable_output(out: Path) -> None:
    """A usage error (exit 2), as for `download`'s output folder, when `out` cannot be made
    or written to: a file in its place or above it, a read-only parent. (A file in its place
    was exit 2, a file above it exit 1 once the writing failed.)"""
    if out.exists() and not out.is_dir():
        fail_usage(f"synth: {out} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:
        fail_usage(f"synth: cannot write under {out}: {exc.strerror or exc}")


def _date_range(text: str) -> tuple[str, str]:
    from dlstudy.dicomweb.search import parse_study_date
    from dlstudy.errors import UsageError

    try:
        value = parse_study_date(text)
    except UsageError:
        fail_usage(
            f"--study-date must be YYYYMMDD or YYYY-MM-DD, a range of two such dates in order "
            f"(both ends given), today, yesterday or Nd; not {text[:40]!r}"
        )
    first, _, last = value.partition("-")
    if value.startswith("-") or value.endswith("-"):
        fail_usage(f"--study-date {text!r}: synth needs both ends of a range")
    return first, last or first


def synth(
    out: Annotated[
        Path, typer.Argument(help="Output folder (<study>/<series>/<sop>.dcm).", metavar="OUT")
    ],
    preset: Annotated[
        Preset, typer.Option(help="small 3x20x64KiB, ct 4x250x512KiB, mr, many, wsi 1.5 GiB.")
    ] = Preset.small,
    studies: Annotated[
        int | None, typer.Option(help="Studies (overrides the preset).", min=1)
    ] = None,
    series: Annotated[int | None, typer.Option(help="Series per study.", min=1)] = None,
    instances: Annotated[int | None, typer.Option(help="Instances per series.", min=1)] = None,
    size: Annotated[int | None, typer.Option(help="Approximate bytes per instance.", min=1)] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per instance.", min=1)] = None,
    modality: Annotated[str | None, typer.Option(help="Modality: CT, MR, SM, ...")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: same seed, same UIDs.")] = None,
    study_date: Annotated[
        str | None,
        typer.Option(
            help="Study date, or a range the studies spread over (as for query: YYYYMMDD, "
            "YYYY-MM-DD, A-B, today, Nd; no open ends).",
        ),
    ] = None,
) -> None:
    """Write a synthetic study (valid DICOM Part 10 files) and print a one-line summary."""
    from dlstudy.server.synth import PRESETS, generate

    overrides: dict[str, Any] = {
        "studies": studies,
        "series": series,
        "instances": instances,
        "size": size,
        "frames": frames,
        "modality": modality,
        "seed": seed,
        "study_dates": _date_range(study_date) if study_date else None,
    }
    spec = dataclasses.replace(
        PRESETS[preset.value], **{k: v for k, v in overrides.items() if v is not None}
    )
    _usable_output(out)
    try:
        with exit_on_interrupt(kept="the files written so far are whole"):
            written = generate(out, spec)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except OSError as exc:  # a full disk, part way
        error_line(f"synth: cannot write under {out}: {exc.strerror or exc}")
        raise typer.Exit(1) from exc
    study_uids = list(dict.fromkeys(i.study_uid for i in written))
    total = sum(i.size for i in written)
    studies_word = "study" if len(study_uids) == 1 else "studies"
    try:
        print(
            f"wrote {len(written)} files, {total} bytes ({total / 1e6:.1f} MB) "
            f"under {printable(str(out))}; "
            f"{len(study_uids)} {studies_word}: {' '.join(study_uids)}",
            flush=True,
        )
    except OSError as exc:
        output_failed(exc)
