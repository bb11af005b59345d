"""The ASGI app: routes DICOMweb paths to QIDO and WADO, applies the profile and the test knobs.

Routes under `/dicomweb` (GET and HEAD):
    /studies  /series  /instances                                   QIDO-RS search
    /studies/{st}/series  /studies/{st}/instances                   QIDO-RS search
    /studies/{st}/series/{se}/instances                             QIDO-RS search
    /studies/{st}[/series/{se}[/instances/{sop}]]                   WADO-RS retrieve
    ... the same followed by /metadata                              WADO-RS metadata
    /studies/{st}/series/{se}/instances/{sop}/bulkdata/{tag}        a BulkDataURI of metadata

Knobs (all off by default): latency per request, bearer token with expiry, WADO faults
(503/429 + Retry-After) and WADO bodies cut after N bytes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    MutableMapping,
    Sequence,
)
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from . import attributes, negotiate, qido, wado
from .archive import Archive, open_archive
from .attributes import Json
from .index import ChangedSinceIndexed
from .options import ServerOptions

log = logging.getLogger("dlstudy.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROOT = "/dicomweb"
STOPPING = "dlstudy.stopping"  # lifespan state key: the server's Stopping
DICOM_JSON = "application/dicom+json"


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: wado.Body | None = None  # a WADO retrieve body, streamed (and cut by the drop knob)


def create_app(options: ServerOptions) -> ASGIApp:
    """The ASGI app over `options.root` (indexed now, once) or `options.virtual`."""
    return DicomwebApp(options, open_archive(options))


class Stopping:
    """Shutdown as the app sees it. Once set, every response still being sent stops at once
    (see _unless_gone and _until_stopped), so every connection ends within hypercorn's graceful
    timeout and none is cancelled."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._guards: set[asyncio.Timeout] = set()

    def set(self) -> None:
        self.event.set()
        for guard in self._guards:
            guard.reschedule(asyncio.get_running_loop().time())

    @contextmanager
    def guarding(self, guard: asyncio.Timeout) -> Iterator[None]:
        """`guard` (a timeout around a response) expires when the server stops."""
        if self.event.is_set():
            guard.reschedule(asyncio.get_running_loop().time())
        self._guards.add(guard)
        try:
            yield
        finally:
            self._guards.discard(guard)


class DicomwebApp:
    def __init__(self, options: ServerOptions, archive: Archive) -> None:
        self.options = options
        self.archive = archive
        self._faults = random.Random(options.seed)  # one seeded stream: reproducible runs
        self._token_uses: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            try:
                response = await self._handle(scope)
            except qido.QueryError as exc:
                response = _text(400, str(exc))
            stopping = scope.get("state", {}).get(STOPPING)
            responding = self._send(scope, send, response)
            if response.stream is None or response.stream.data is not None:
                await _until_stopped(stopping, responding)
            else:
                await _unless_gone(receive, stopping, responding)

    async def _handle(self, scope: Scope) -> Response:
        if self.options.latency:
            await asyncio.sleep(self.options.latency)
        denied = self._authorize(scope)
        if denied is not None:
            return denied
        if scope["method"] not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD", [("allow", "GET, HEAD")])
        path = scope["path"].rstrip("/")
        if path != ROOT and not path.startswith(ROOT + "/"):
            return _text(404, "not a DICOMweb path; the service root is /dicomweb")
        parts = path[len(ROOT) :].split("/")[1:]
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        headers = _headers(scope)
        accept = next((v for k, v in params if k == "accept"), None) or headers.get("accept")
        base_url = f"{scope['scheme']}://{headers.get('host', 'localhost')}{ROOT}"
        http1 = scope.get("http_version", "1.1") in ("1.0", "1.1")
        ctx = _Request(parts, params, accept, base_url, headers.get("host", "dlstudy"), http1)

        metadata = bool(parts) and parts[-1] == "metadata"
        bulk = len(parts) == 8 and parts[6] == "bulkdata"  # .../instances/{sop}/bulkdata/{tag}
        uids = _resource_uids(parts[:-1] if metadata else parts[:6] if bulk else parts)
        if uids:
            instances = self.archive.select(uids)
            if not instances:
                return _text(404, "no such study, series or instance")
            if self._fault():
                return _text(
                    self.options.fault_status,
                    "injected fault",
                    [("retry-after", str(self.options.retry_after))],
                )
            instances = await self.archive.still_there(instances)
            if not instances:
                return _text(410, _GONE)
            if metadata:
                return await self._metadata(ctx, instances)
            if bulk:
                return await self._bulkdata(ctx, instances[0], parts[7])
            return self._retrieve(ctx, instances, instance_level=len(uids) == 3)
        match parts:
            case ["studies"] | ["series"] | ["instances"]:
                return await self._search(ctx, parts[0], None, None)
            case ["studies", st, "series" | "instances" as level]:
                return await self._search(ctx, level, st, None)
            case ["studies", st, "series", se, "instances"]:
                return await self._search(ctx, "instances", st, se)
        return _text(404, "unknown DICOMweb resource")

    async def _search(
        self, ctx: _Request, level: str, study_uid: str | None, series_uid: str | None
    ) -> Response:
        if not negotiate.accepts_json(ctx.accept):
            return _text(406, "QIDO-RS answers application/dicom+json")
        query = qido.parse_query(ctx.params, _LEVELS[level])
        search = functools.partial(
            self.archive.search,
            query,
            study_uid=study_uid,
            series_uid=series_uid,
            base_url=ctx.base_url,
            max_page_size=self.options.max_page_size,
            ignore_offset=self.options.ignore_offset,
        )
        # includefield may read files: keep the loop free
        page = await asyncio.to_thread(search) if self.archive.search_reads_files else search()
        warnings = []
        if page.unsupported:
            names = ", ".join(page.unsupported)
            warnings.append(f"299 {ctx.host}: The following attributes were not supported: {names}")
        if page.truncated and not self.options.silent_cap:
            warnings.append(
                f"299 {ctx.host}: There are {page.remaining} additional results that can be"
                " requested"
            )
        headers = [("warning", w) for w in warnings]
        if not page.results:
            return Response(204, headers)
        if self.options.no_counts:
            for result in page.results:
                for tag in _COUNTS:
                    result.pop(tag, None)
        body = _json_bytes(page.results)
        return Response(200, [("content-type", DICOM_JSON), *headers], body)

    async def _metadata(self, ctx: _Request, instances: Sequence[wado.Retrievable]) -> Response:
        if not negotiate.accepts_json(ctx.accept):
            return _text(406, "metadata is application/dicom+json")
        body = await self.archive.metadata(instances, ctx.base_url)
        return Response(200, [("content-type", DICOM_JSON)], body)

    async def _bulkdata(self, ctx: _Request, instance: wado.Retrievable, tag: str) -> Response:
        try:
            multipart = negotiate.bulkdata_multipart(ctx.accept)
        except negotiate.NotAcceptable as exc:
            return _text(exc.status, str(exc))
        body = None
        if len(tag) == 8 and all(c in "0123456789abcdefABCDEF" for c in tag):
            try:
                body = await self.archive.bulkdata(instance, int(tag, 16), multipart=multipart)
            except ChangedSinceIndexed:  # since still_there() looked
                return _text(410, _GONE)
        if body is None:
            return _text(404, "no bulk data at this tag (metadata names the ones there are)")
        return Response(200, stream=body)

    def _retrieve(
        self, ctx: _Request, instances: Sequence[wado.Retrievable], *, instance_level: bool
    ) -> Response:
        try:
            rendering = negotiate.choose_retrieve(
                ctx.accept,
                instance_level=instance_level,
                stored=self.archive.transfer_syntaxes(instances),
                profile=self.options.profile,
            )
        except negotiate.NotAcceptable as exc:
            return _text(exc.status, str(exc))
        if not rendering.multipart:
            return Response(200, stream=wado.single_part(instances[0]))
        body = wado.multipart(instances, profile=self.options.profile, base_url=ctx.base_url)
        headers = []
        if self.options.profile == "orthanc" and not instance_level and ctx.http1:
            headers.append(("connection", "close"))  # as Orthanc ends series/study responses
        return Response(200, headers, stream=body)

    def _authorize(self, scope: Scope) -> Response | None:
        token = self.options.token
        if token is None:
            return None
        scheme, _, presented = _headers(scope).get("authorization", "").partition(" ")
        presented = presented.strip()
        valid = scheme.lower() == "bearer" and (
            presented == token or presented.startswith(token + "-")
        )
        if valid:
            self._token_uses[presented] += 1
            limit = self.options.token_expires_after
            if limit is None or self._token_uses[presented] <= limit:
                return None
            reason = "The access token expired"
        else:
            reason = "Missing or invalid bearer token"
        challenge = f'Bearer error="invalid_token", error_description="{reason}"'
        return _text(401, reason, [("www-authenticate", challenge)])

    def _fault(self) -> bool:
        rate = self.options.fault_rate
        return rate > 0 and self._faults.random() < rate

    async def _send(self, scope: Scope, send: Send, response: Response) -> None:
        body = response.stream
        headers = list(response.headers)
        if body is None:
            headers.append(("content-length", str(len(response.body))))
            await send(_start(response.status, headers))
            await _send_whole(send, response.body)
            return
        headers.extend(body.headers)
        cut = self._cut_at(body)
        http2 = scope.get("http_version") == "2"
        if cut is not None and http2 and not any(k == "content-length" for k, _ in headers):
            # h2 has no "close the connection mid-body" from ASGI: announce the full length and
            # end the stream short, which an HTTP/2 client must treat as an error.
            headers.append(("content-length", str(body.length)))
        await send(_start(response.status, headers))
        await _send_body(send, body, cut, http2=http2, head=scope["method"] == "HEAD")

    def _cut_at(self, body: wado.Body) -> int | None:
        after = self.options.drop_after_bytes
        if after is None or after >= body.length:
            return None
        if self.options.drop_rate < 1 and self._faults.random() >= self.options.drop_rate:
            return None
        return after


@dataclass(frozen=True)
class _Request:
    parts: list[str]
    params: list[tuple[str, str]]
    accept: str | None
    base_url: str
    host: str
    http1: bool


def _resource_uids(parts: list[str]) -> list[str]:
    """[study, series, instance] UIDs of a WADO-RS resource path; [] for anything else."""
    names, uids = parts[0::2], parts[1::2]
    if len(parts) % 2 or names != ["studies", "series", "instances"][: len(names)]:
        return []
    return uids if all(uids) else []


_GONE = (
    "the file of this instance changed or was removed since the server indexed the folder"
    " (restart the server to index it again)"
)
_LEVELS: dict[str, qido.Level] = {"studies": "study", "series": "series", "instances": "instance"}
# What --no-counts leaves out.
_COUNTS = tuple(
    attributes.key(tag)
    for tag in (
        attributes.NUMBER_OF_STUDY_RELATED_SERIES,
        attributes.NUMBER_OF_STUDY_RELATED_INSTANCES,
        attributes.NUMBER_OF_SERIES_RELATED_INSTANCES,
    )
)


async def _send_body(
    send: Send, body: wado.Body, cut: int | None, *, http2: bool, head: bool
) -> None:
    if head:
        await body.chunks.aclose()
        await send({"type": "http.response.body", "body": b""})
        return
    if body.data is not None and cut is None:  # made already: the last message at once
        await body.chunks.aclose()
        await _send_whole(send, body.data)
        return
    # Cut on HTTP/1.x: returning before the last body message makes hypercorn drop the
    # connection, so the client sees a short body (Content-Length) or no last chunk.
    try:
        whole = await _stream(send, body.chunks, cut)
    except OSError as exc:  # a file changed (or failed) since the status line went out
        log.warning("cut a response short: %s", exc)
        whole = False
    if whole or http2:
        await send({"type": "http.response.body", "body": b""})


async def _until_stopped(stopping: Stopping | None, responding: Coroutine[Any, Any, None]) -> None:
    """Run `responding`, a body already in memory, in this task unless the server stops first.
    A client that goes away costs nothing here (hypercorn drops what is sent to a closed stream),
    so no task watches for it: _unless_gone's tasks were a noticeable share of the server's CPU
    per small instance (docs/decisions.md)."""
    if stopping is None:
        await responding
        return
    try:
        async with asyncio.timeout(None) as guard:
            with stopping.guarding(guard):
                await responding
    except TimeoutError:
        if not guard.expired():
            raise


async def _unless_gone(
    receive: Receive, stopping: Stopping | None, responding: Coroutine[Any, Any, None]
) -> None:
    """Run `responding` (a body read as it is sent) unless the client goes away or the server
    stops first.

    Without this a client that hangs up mid-body leaves the app reading the rest of the file
    into a dead HTTP/1.1 socket; and a response blocked at shutdown (a client that stopped
    reading an h2 stream but keeps the connection) gets its connection task cancelled after
    hypercorn's graceful timeout, which Python 3.11's asyncio logs as an error.
    """
    sending = asyncio.ensure_future(responding)
    watching: list[asyncio.Future[Any]] = [asyncio.ensure_future(_disconnected(receive))]
    if stopping is not None:
        watching.append(asyncio.ensure_future(stopping.event.wait()))
    try:
        await asyncio.wait({sending, *watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, *watching):
            task.cancel()
        await asyncio.gather(sending, *watching, return_exceptions=True)
    if not sending.cancelled():
        sending.result()  # re-raises a failure: hypercorn logs it


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _stream(send: Send, chunks: AsyncGenerator[bytes, None], cut: int | None) -> bool:
    """Send the chunks (more_body); False if `cut` bytes were sent and the rest withheld."""
    sent = 0
    async with aclosing(chunks):
        async for chunk in chunks:
            if cut is not None and sent + len(chunk) >= cut:
                if cut > sent:
                    await send(_body(chunk[: cut - sent]))
                return False
            await send(_body(chunk))
            sent += len(chunk)
    return True


def _json_bytes(results: list[Json]) -> bytes:
    """orjson (the quicker writer, docs/decisions.md); the stdlib for what orjson refuses (an
    integer beyond 64 bits in a real file's header)."""
    try:
        return orjson.dumps(results)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(results, separators=(",", ":")).encode()


async def _send_whole(send: Send, data: bytes) -> None:
    """A body made already, as the last message; a big one in chunks, as files are sent."""
    if len(data) > wado.CHUNK:
        view = memoryview(data)
        for start in range(0, len(data) - wado.CHUNK, wado.CHUNK):
            await send(_body(bytes(view[start : start + wado.CHUNK])))
        data = bytes(view[start + wado.CHUNK :])
    await send({"type": "http.response.body", "body": data})


def _body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


def _start(status: int, headers: list[tuple[str, str]]) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }


def _text(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(
        status,
        [("content-type", "text/plain; charset=utf-8"), *(headers or [])],
        (message + "\n").encode(),
    )


def _headers(scope: Scope) -> dict[str, str]:
    # Repeated headers (Accept may be split over lines) are joined as HTTP allows.
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
