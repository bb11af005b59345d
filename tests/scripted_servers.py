"""Tiny scripted DICOMweb servers on 127.0.0.1 (stdlib http.server) for faults the embedded
server will not produce: redirects to another origin, hostile UIDs in QIDO answers."""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import ssl
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from .factories import STUDY, element, instance_json, multipart_body, part10, series_json

SERIES = f"{STUDY}.5"
DICOM_JSON = "application/dicom+json"
SOPS = [f"{SERIES}.{i}" for i in range(1, 4)]
# An OSC sequence retitling the terminal, a colour, rich markup that closes a tag never opened,
# and a backspace to hide what came before.
HOSTILE_REASON = "\x1b]0;owned\x07\x1b[31mred[/]\x08"


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def listing(self, path: str) -> bool:
        """Answer the QIDO listing of the one series of SOPS, if `path` asks for it."""
        if path.endswith("/series"):
            body = json.dumps([series_json(SERIES, count=len(SOPS))]).encode()
        elif path.endswith("/instances"):
            body = json.dumps([instance_json(s) for s in SOPS]).encode()
        else:
            return False
        self.reply(200, body, "application/dicom+json")
        return True

    def reply(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def reply_unframed(self, body: bytes, content_type: str, **headers: str) -> None:
        """A 200 without a Content-Length: `body` ends where the connection closes."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


def _serve(*servers: http.server.ThreadingHTTPServer) -> list[threading.Thread]:
    # Polled every 50 ms for shutdown (not 0.5 s): every test stops one.
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    return threads


def _stop(
    servers: tuple[http.server.ThreadingHTTPServer, ...], threads: list[threading.Thread]
) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join()


@contextmanager
def _one_server(
    handler: type[http.server.BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """A server of `handler` on a free port of 127.0.0.1; yields its DICOMweb base URL.
    With `tls`, over TLS; a connection is closed without close_notify (Python's
    SSLSocket.close never sends one)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threads = _serve(server)
    scheme = "https" if tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/dicomweb"
    finally:
        _stop((server,), threads)


@contextmanager
def hostile_uids() -> Iterator[tuple[str, str, list[str]]]:
    """QIDO lists two good instances and two whose UIDs try to climb out of the output folder.

    Yields (base URL, study UID, the good SOP UIDs); a third is a UID of 65 digits and dots."""
    evil = ["../../../../tmp/dlstudy-pwned", f"{SERIES}.9/../../../x", "1." + "2" * 63]

    class Hostile(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                body = json.dumps([series_json(SERIES)]).encode()
                self.reply(200, body, "application/dicom+json")
            elif path.endswith("/instances"):
                body = json.dumps([instance_json(s) for s in [*SOPS[:2], *evil]]).encode()
                self.reply(200, body, "application/dicom+json")
            else:
                sop = path.rsplit("/", 1)[1]
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    with _one_server(Hostile) as url:
        yield url, STUDY, SOPS[:2]


@contextmanager
def redirecting_pair(cookie: str = "") -> Iterator[tuple[str, str, list[dict[str, str]]]]:
    """An archive that lists one series itself and redirects each instance to another origin
    of the same host (another port), which records the headers it gets. With `cookie`, the
    archive's answers set it (a login session's cookie). Yields (base URL, study UID, the
    headers of each request the other origin got)."""
    seen: list[dict[str, str]] = []

    class Other(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            seen.append({k.lower(): v for k, v in self.headers.items()})
            sop = self.path.rsplit("/", 1)[1]
            self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    other_base = f"http://127.0.0.1:{other.server_address[1]}"

    class First(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if not self.listing(path):
                self.reply(302, b"", "text/plain", Location=f"{other_base}{path}")

        def reply(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
            if cookie:
                headers["Set-Cookie"] = cookie
            super().reply(status, body, content_type, **headers)

    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), First)
    threads = _serve(first, other)
    try:
        yield f"http://127.0.0.1:{first.server_address[1]}/dicomweb", STUDY, seen
    finally:
        _stop((first, other), threads)


@contextmanager
def moved_archive(
    new_origin: str, tls: tuple[str, str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """An archive that moved: every request is answered 301 to the same path and query at
    `new_origin` (`http://` to `https://`, an old host name). Over TLS with `tls`, the
    certificate and key files. Yields (base URL, the paths it was asked)."""
    asked: list[str] = []

    class Moved(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            self.reply(301, b"", "text/plain", Location=f"{new_origin}{self.path}")

    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
    with _one_server(Moved, context) as url:
        yield url, asked


PRESIGNED_CREDENTIAL = "AKIAEXAMPLECREDENTIAL"


@contextmanager
def presigned_pair(
    refused: int, status: int = 403
) -> Iterator[tuple[str, str, list[str], list[str]]]:
    """An archive that hands each instance out through a redirect to an object store, with a
    fresh presigned URL each time; the store refuses (`status`, "Request has expired") the
    first `refused` URLs of each instance.

    Yields (base URL, study UID, the archive's instance requests, the signatures issued)."""
    asked: list[str] = []
    signatures: list[str] = []
    presented: dict[str, int] = {}
    lock = threading.Lock()

    class Store(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            sop = self.path.split("?", 1)[0].rsplit("/", 1)[1]
            with lock:
                presented[sop] = presented.get(sop, 0) + 1
                expired = presented[sop] <= refused
            if expired:
                body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message>"
                self.reply(status, body + b"</Error>", "application/xml")
            else:
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    store = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    store_base = f"http://127.0.0.1:{store.server_address[1]}/bucket"

    class Archive(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if not self.listing(path):
                sop = path.rsplit("/", 1)[1]
                with lock:
                    asked.append(sop)
                    signature = f"5ec7e7516{len(signatures):04d}"
                    signatures.append(signature)
                location = (
                    f"{store_base}/{sop}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                    f"&X-Amz-Credential={PRESIGNED_CREDENTIAL}&X-Amz-Expires=300"
                    f"&X-Amz-Signature={signature}"
                )
                self.reply(307, b"", "text/plain", Location=location)

    archive = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    threads = _serve(archive, store)
    try:
        yield f"http://127.0.0.1:{archive.server_address[1]}/dicomweb", STUDY, asked, signatures
    finally:
        _stop((archive, store), threads)


@contextmanager
def static_like(count: int) -> Iterator[tuple[str, str, list[str]]]:
    """Like a static DICOMweb tree: single-part instances only; a series URL is a 403 folder."""
    sops = [f"{SERIES}.{i}" for i in range(1, count + 1)]

    class Static(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                body = json.dumps([series_json(SERIES, count=count)]).encode()
                self.reply(200, body, "application/dicom+json")
            elif path.endswith("/instances"):
                body = json.dumps([instance_json(s) for s in sops]).encode()
                self.reply(200, body, "application/dicom+json")
            elif "/instances/" in path:
                sop = path.rsplit("/", 1)[1]
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")
            else:
                self.reply(403, b"<html>Forbidden</html>", "text/html")

    with _one_server(Static) as url:
        yield url, STUDY, sops


@contextmanager
def busy_with_http_date(count: int, delay: float) -> Iterator[tuple[str, str, list[float]]]:
    """Answers each instance's first request, and the first study search, 503 with an
    HTTP-date Retry-After `delay` seconds ahead; yields (URL, study, the gaps the client
    actually waited before retrying)."""
    from email.utils import formatdate

    sops = [f"{SERIES}.{i}" for i in range(1, count + 1)]
    refused_at: dict[str, float] = {}
    waits: list[float] = []
    lock = threading.Lock()

    class Busy(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                self.reply(200, json.dumps([series_json(SERIES)]).encode(), "application/json")
            elif path.endswith("/instances"):
                body = json.dumps([instance_json(s) for s in sops]).encode()
                self.reply(200, body, "application/dicom+json")
            elif path.endswith("/studies") and "studies" in refused_at:
                body = json.dumps([{"0020000D": element("UI", STUDY)}]).encode()
                self.reply(200, body, "application/dicom+json")
            else:
                sop = path.rsplit("/", 1)[1]
                now = time.time()
                with lock:
                    first = sop not in refused_at
                    if first:
                        refused_at[sop] = now
                    else:
                        waits.append(now - refused_at[sop])
                if first:
                    # HTTP-dates have whole seconds: aim past the next second boundary.
                    self.reply(
                        503, b"", "text/plain", Retry_After=formatdate(now + delay, usegmt=True)
                    )
                else:
                    self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    with _one_server(Busy) as url:
        yield url, STUDY, waits


@contextmanager
def compressing() -> Iterator[tuple[str, str, list[str]]]:
    """Gzips every answer, asked for or not: QIDO JSON (which clients may ask compressed) and
    instances (which dlstudy asks for as identity, to store the server's bytes).

    Yields (base URL, study UID, the Accept-Encoding of each instance request)."""
    asked: list[str] = []

    class Gzipping(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                body, kind = json.dumps([series_json(SERIES, count=len(SOPS))]), DICOM_JSON
            elif path.endswith(("/instances", "/studies")):
                body, kind = json.dumps([instance_json(s) for s in SOPS]), DICOM_JSON
            else:
                asked.append(self.headers.get("Accept-Encoding", ""))
                sop = path.rsplit("/", 1)[1]
                self.reply(
                    200, gzip.compress(part10(STUDY, SERIES, sop)), "application/dicom",
                    Content_Encoding="gzip",
                )  # fmt: skip
                return
            self.reply(200, gzip.compress(body.encode()), kind, Content_Encoding="gzip")

    with _one_server(Gzipping) as url:
        yield url, STUDY, asked


@contextmanager
def misbehaving(how: str) -> Iterator[tuple[str, str]]:
    """A server that answers one way no DICOMweb server should:

    - `huge-count`: a series says it has 1e999 instances;
    - `deep-json`: the series list is an array nested 100,000 deep;
    - `redirect-loop`: every instance URL redirects to itself;
    - `redirect-to-file`: every instance URL redirects to file:///etc/passwd;
    - `redirect-without-slashes`: every instance URL redirects to itself written without the
      `//` after `http:`, which leaves it no host;
    - `huge-header`: every answer starts with a header line of 200 MB;
    - `hostile-reason`: every instance is refused (418) with HOSTILE_REASON as the reason
      phrase: terminal escapes, a backspace and rich markup.

    Yields (base URL, study UID)."""

    class Odd(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if how == "huge-header":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
                try:
                    for _ in range(200):
                        self.wfile.write(b"a" * (1 << 20))
                except OSError:
                    pass  # the client gave up on it: as it should
                self.close_connection = True
                return
            if path.endswith("/series"):
                if how == "deep-json":
                    body = b"[" * 100_000 + b"]" * 100_000
                else:
                    series = series_json(SERIES, count=len(SOPS))
                    if how == "huge-count":
                        series["00201209"] = {"vr": "IS", "Value": ["1e999"]}
                    body = json.dumps([series]).encode()
                self.reply(200, body, DICOM_JSON)
            elif path.endswith(("/instances", "/studies")):
                self.reply(200, json.dumps([instance_json(s) for s in SOPS]).encode(), DICOM_JSON)
            elif how == "redirect-loop":
                self.reply(302, b"", "text/plain", Location=path)
            elif how == "redirect-to-file":
                self.reply(302, b"", "text/plain", Location="file:///etc/passwd")
            elif how == "redirect-without-slashes":
                location = f"http:{self.headers['Host']}{self.path}"
                self.reply(302, b"", "text/plain", Location=location)
            elif how == "hostile-reason":
                self.send_response(418, HOSTILE_REASON)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                sop = path.rsplit("/", 1)[1]
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    with _one_server(Odd) as url:
        yield url, STUDY


@contextmanager
def cutting(
    cut_first: int,
    tls: ssl.SSLContext | None = None,
    *,
    cut_to: int | None = None,
    framed: str | None = None,
    form: str | None = None,
) -> Iterator[tuple[str, str, list[str]]]:
    """Instances answered without a Content-Length, the body ending when the connection
    closes: the first `cut_first` answers close halfway (or after `cut_to` bytes), so HTTP
    itself cannot tell them from whole ones. `form`: the files' encoding (factories.part10).
    With `tls`, over TLS, each connection closed without close_notify. `framed`: every answer
    has a Content-Length, and the first `cut_first` are the file cut as above (`cut`: the
    server's file itself is short), an HTML page (`html`), or the cut file as the one part of
    a multipart/related answer (`multipart`, the part's own Content-Length matching). Yields
    (base URL, study UID, the SOP UIDs)."""
    answers = [0]

    class Cutting(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                body = json.dumps([series_json(SERIES, count=len(SOPS))]).encode()
                self.reply(200, body, DICOM_JSON)
            elif path.endswith(("/instances", "/studies")):
                self.reply(200, json.dumps([instance_json(s) for s in SOPS]).encode(), DICOM_JSON)
            else:
                # 64 KiB of pixel data: a cut halfway lands in it, past every UID.
                sop = path.rsplit("/", 1)[1]
                data = part10(STUDY, SERIES, sop, payload=b"\1" * 65536, form=form)
                answers[0] += 1
                if answers[0] <= cut_first:
                    data = data[: len(data) // 2 if cut_to is None else cut_to]
                    if framed == "html":
                        data = b"<!DOCTYPE html><html><body>Internal error</body></html>" * 9
                if framed == "multipart":
                    media = 'multipart/related; type="application/dicom"; boundary=b0undary'
                    self.reply(200, multipart_body([data]), media)
                    return
                if framed is not None:
                    self.reply(200, data, "application/dicom")
                    return
                self.reply_unframed(data, "application/dicom")

    with _one_server(Cutting, tls) as url:
        yield url, STUDY, SOPS


@contextmanager
def cutting_searches(cut_first: int) -> Iterator[tuple[str, str, list[str]]]:
    """QIDO answers without a Content-Length, ending when the connection closes; the first
    `cut_first` of them close halfway, so HTTP cannot tell them from whole ones. Instances
    come whole. Yields (base URL, study UID, the SOP UIDs)."""
    answers = [0]

    class CuttingSearches(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                body = json.dumps([series_json(SERIES, count=len(SOPS))]).encode()
            elif path.endswith(("/instances", "/studies")):
                body = json.dumps([instance_json(s) for s in SOPS]).encode()
            else:
                data = part10(STUDY, SERIES, path.rsplit("/", 1)[1], payload=b"\1" * 4096)
                self.reply(200, data, "application/dicom")
                return
            answers[0] += 1
            if answers[0] <= cut_first:
                body = body[: len(body) // 2]
            self.reply_unframed(body, DICOM_JSON)

    with _one_server(CuttingSearches) as url:
        yield url, STUDY, SOPS


_BOMB: list[bytes] = []


def _gzip_bomb(decoded_mb: int = 512) -> bytes:
    """A gzip stream of a JSON list padded with `decoded_mb` MB of spaces (about 0.5 MB)."""
    if not _BOMB:
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        spaces = b" " * (1 << 20)
        parts = [packer.compress(b"[")]
        parts += [packer.compress(spaces) for _ in range(decoded_mb)]
        _BOMB.append(b"".join([*parts, packer.compress(b"]"), packer.flush()]))
    return _BOMB[0]


@contextmanager
def oversized_qido(how: str) -> Iterator[tuple[str, str]]:
    """Every QIDO answer is one a client must not take in whole:

    - `gzip-bomb`: 0.5 MB of gzip that decodes to 512 MB, asked for or not;
    - `huge-page`: a plain JSON list of 200 MB, sent as it is made;
    - `cut-gzip`: a gzip stream that stops halfway (the connection closes);
    - `brotli`: an answer in a content-coding that was not asked for.

    Yields (base URL, study UID)."""

    class Oversized(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            if "/series/" in self.path and "/instances" not in self.path:
                sop = self.path.split("?", 1)[0].rsplit("/", 1)[1]
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")
            elif how == "gzip-bomb":
                self.reply(200, _gzip_bomb(), DICOM_JSON, Content_Encoding="gzip")
            elif how == "brotli":
                self.reply(200, b"\x0b\x02\x80[]\x03", DICOM_JSON, Content_Encoding="br")
            elif how == "cut-gzip":
                body = gzip.compress(json.dumps([series_json(SERIES)] * 200).encode())
                self.reply_unframed(body[: len(body) // 2], DICOM_JSON, Content_Encoding="gzip")
            else:
                self._send_huge_page()

        def _send_huge_page(self) -> None:
            item = json.dumps(series_json(SERIES)).encode()
            self.send_response(200)
            self.send_header("Content-Type", DICOM_JSON)
            self.send_header("Connection", "close")
            self.end_headers()
            block = b",".join([item] * 1000) + b","
            try:
                self.wfile.write(b"[")
                for _ in range(200 * (1 << 20) // len(block)):
                    self.wfile.write(block)
                self.wfile.write(item + b"]")
            except OSError:
                pass  # the client stopped reading: as it should
            self.close_connection = True

    with _one_server(Oversized) as url:
        yield url, STUDY


@contextmanager
def stalling(count: int) -> Iterator[tuple[str, str, list[int]]]:
    """Lists `count` instances, then answers each instance's request with headers and no
    body byte (a hung archive). Yields (base URL, study UID, the largest number of instance
    requests it was holding at once, as a one-element list)."""
    sops = [f"{SERIES}.{i}" for i in range(1, count + 1)]
    closing = threading.Event()
    held = [0]
    peak = [0]
    lock = threading.Lock()

    class Stalling(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path.endswith("/series"):
                self.reply(200, json.dumps([series_json(SERIES, count=count)]).encode(), DICOM_JSON)
            elif path.endswith("/instances"):
                self.reply(200, json.dumps([instance_json(s) for s in sops]).encode(), DICOM_JSON)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.flush()
                with lock:
                    held[0] += 1
                    peak[0] = max(peak[0], held[0])
                # Until the client gives up on it (or the test ends).
                self.connection.settimeout(0.1)
                while not closing.is_set():
                    try:
                        if not self.connection.recv(1, 0):
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                with lock:
                    held[0] -= 1
                self.close_connection = True

    with _one_server(Stalling) as url:
        try:
            yield url, STUDY, peak
        finally:
            closing.set()  # before the server joins its threads


@contextmanager
def tls_port_that_resets(cert: str, key: str) -> Iterator[str]:
    """A Python `ssl` server: a client speaking plain HTTP to it fails the handshake, and the
    server drops the connection with the request unread, which sends a TCP reset (unlike
    servers that close it). Yields its base URL with http://, as a user who forgot https://
    would write it."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with _one_server(_Quiet, tls) as url:
        yield url.replace("https://", "http://")


class _AskingForAClientCertificate(http.server.ThreadingHTTPServer):
    """Over TLS, the handshake in the connection's thread; one that failed is closed once
    the client has closed its end (or after 5 s), as socat does. Closed at once with the
    client's request unread, the connection would be reset, and in TLS 1.3 the client
    would see the reset, not the alert sent before it (it sends its request right after its
    side of the handshake)."""

    tls: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        connection = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        with connection:
            try:
                connection.do_handshake()
            except OSError:  # the alert is sent
                connection.shutdown(socket.SHUT_WR)  # then plain TCP: drained unread
                connection.settimeout(5)
                with suppress(OSError):
                    while connection.recv(65536):
                        pass
                return
            super().finish_request(connection, client_address)


@contextmanager
def tls_port_asking_for_a_client_certificate(
    cert: str, key: str, ca: str, *, tls12: bool = False
) -> Iterator[str]:
    """A Python `ssl` server that requires a client certificate signed by `ca` and refuses
    the handshake with a TLS alert otherwise: TLS 1.3's `certificate required` (1.2's
    `handshake failure`) when none came, `unknown ca` for one from another CA. In TLS 1.3 the
    client sees the alert on its first read, after its side of the handshake. `tls12`: TLS
    1.2 at most, where the alert ends the handshake. Yields its base URL."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    tls.load_verify_locations(ca)
    tls.verify_mode = ssl.CERT_REQUIRED
    if tls12:
        tls.maximum_version = ssl.TLSVersion.TLSv1_2
    server = _AskingForAClientCertificate(("127.0.0.1", 0), _Quiet)
    server.tls = tls
    threads = _serve(server)
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dicomweb"
    finally:
        _stop((server,), threads)


@contextmanager
def closing_first(unanswered: int) -> Iterator[tuple[str, str, list[str]]]:
    """A plain HTTP/1.1 server that closes its first `unanswered` connections without a byte
    of answer (a restart, an overloaded balancer), then serves one series of SOPS. Yields
    (base URL, study UID, the SOP UIDs)."""
    seen = [0]
    lock = threading.Lock()

    class Closing(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                seen[0] += 1
                silent = seen[0] <= unanswered
            if silent:
                self.close_connection = True
                return
            path = self.path.split("?", 1)[0]
            if not self.listing(path):
                sop = path.rsplit("/", 1)[1]
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    with _one_server(Closing) as url:
        yield url, STUDY, SOPS


@contextmanager
def http1_only() -> Iterator[tuple[str, str, list[str], list[bytes]]]:
    """A plain HTTP/1.1 server (no h2c: it answers HTTP/2's preface with 505) serving one
    series of SOPS. Yields (base URL, study UID, the SOP UIDs, every request line it read)."""
    lines: list[bytes] = []

    class Http1(_Quiet):
        def parse_request(self) -> bool:
            lines.append(self.raw_requestline.rstrip())
            if self.raw_requestline.startswith(b"PRI "):
                self._read_the_rest()
            return super().parse_request()

        def _read_the_rest(self) -> None:
            """Read what follows the preface (HTTP/2 frames) before answering, as nginx's
            lingering close does: closed unread, it would reset the connection, and the
            client might never see the answer."""
            self.connection.settimeout(0.2)
            try:
                while self.rfile.read1(65536):
                    pass
            except OSError:  # (the pause)
                pass
            self.connection.settimeout(None)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if not self.listing(path):
                sop = path.rsplit("/", 1)[1]
                self.reply(200, part10(STUDY, SERIES, sop), "application/dicom")

    with _one_server(Http1) as url:
        yield url, STUDY, SOPS, lines


@contextmanager
def whole_study_for_series() -> Iterator[tuple[str, str, dict[str, list[str]]]]:
    """Two series of two instances; a series URL is answered with the whole study (all four
    parts), as a server ignoring the series in the path would. Yields (base URL, study UID,
    the SOP UIDs of each series)."""
    series = {f"{STUDY}.{n}": [f"{STUDY}.{n}.{i}" for i in (1, 2)] for n in (7, 8)}
    body = {
        sop: part10(STUDY, uid, sop, payload=b"\1" * 4096)
        for uid, sops in series.items()
        for sop in sops
    }

    class WholeStudy(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            parts = path.split("/")
            if path.endswith(("/studies", "/series")):
                listing = [series_json(uid, count=2) for uid in series]
                self.reply(200, json.dumps(listing).encode(), DICOM_JSON)
            elif path.endswith("/instances"):
                listing = [instance_json(sop) for sop in series[parts[-2]]]
                self.reply(200, json.dumps(listing).encode(), DICOM_JSON)
            elif "/instances/" in path:
                self.reply(200, body[parts[-1]], "application/dicom")
            else:  # the study, or any series: every instance of the study
                content_type = 'multipart/related; type="application/dicom"; boundary=b0undary'
                self.reply(200, multipart_body(list(body.values())), content_type)

    with _one_server(WholeStudy) as url:
        yield url, STUDY, series


@contextmanager
def study_with_a_misnamed_part() -> Iterator[tuple[str, str, list[str]]]:
    """One series of SOPS; the study is answered multipart, its second part naming an invalid
    SOP Instance UID (`../x`). Yields (base URL, study UID, the SOP UIDs of the good parts)."""
    names = [SOPS[0], "../x", SOPS[2]]
    with warnings.catch_warnings():  # pydicom's about the invalid UID: it is the point
        warnings.simplefilter("ignore")
        body = multipart_body([part10(STUDY, SERIES, sop, payload=b"\1" * 4096) for sop in names])

    class Misnamed(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if not self.listing(path):
                content_type = 'multipart/related; type="application/dicom"; boundary=b0undary'
                self.reply(200, body, content_type)

    with _one_server(Misnamed) as url:
        yield url, STUDY, [SOPS[0], SOPS[2]]


@contextmanager
def serving(answer: Callable[[str, str], tuple[bytes, str]]) -> Iterator[str]:
    """Lists one series of SOPS; every other request (an instance, the series, the study) is
    answered 200 with `answer(path, accept)`: (body, Content-Type), with a Content-Length.
    Yields the base URL."""

    class Serving(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if not self.listing(path):
                body, content_type = answer(path, self.headers.get("Accept", ""))
                self.reply(200, body, content_type)

    with _one_server(Serving) as url:
        yield url


@contextmanager
def refusing(status: int) -> Iterator[str]:
    """Lists one series of SOPS; every other request (an instance, the series, the study) is
    answered `status` with a line of text, in whatever form it was asked. Yields the base URL."""

    class Refusing(_Quiet):
        def do_GET(self) -> None:  # noqa: N802
            if not self.listing(self.path.split("?", 1)[0]):
                self.reply(status, b"no acceptable representation", "text/plain")

    with _one_server(Refusing) as url:
        yield url
