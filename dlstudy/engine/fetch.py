"""Fetch one instance into the store: stream, hash, check, commit; retry what is worth it.

The body may come single-part (the bytes of the Part 10 file) or as a multipart/related
response with one part (servers that only speak multipart); either way it is streamed chunk by
chunk into a temp file beside the final name and never held in memory.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx

from ..dicomweb.completeness import check_complete
from ..dicomweb.media import ANY_TRANSFER_SYNTAX, MULTIPART_RELATED, parse_media_type
from ..dicomweb.multipart import Event, PartData, PartEnded, PartStarted
from ..dicomweb.negotiate import Negotiator, Retrieval
from ..dicomweb.verify import check_identity, keep_head, read_header
from ..errors import HttpStatusError, IntegrityError, TransferError
from ..flow.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after, with_retries
from ..flow.throttle import Throttle
from ..http.client import Transport
from ..http.curl import proxy_note
from ..http.failures import check_auth
from ..http.transfer import pour_body
from ..http.urls import instance_url, redact_url
from ..model import Committed, InstanceRef
from ..store.files import Store, TempFile
from ..store.manifest import Digest
from .parts import pour_parts
from .refusals import REFUSALS_FOR_UNSUPPORTED, Refusals

log = logging.getLogger(__name__)

ByteCounter = Callable[[int], None]
# From this size on, the file is closed (its last pages flushed to the kernel) and checked on a
# worker thread rather than on the event loop.
LARGE_BODY = 1024 * 1024
# A server that cannot transcode an instance to the transfer syntax asked for answers 500 at
# every request (Orthanc: JPEG 2000, or 16-bit images asked as JPEG baseline; its body only says
# "Error encountered within the plugin engine"). Asked in an explicit syntax, a 500 is tried this
# many times in all, not --retries + 1: a hiccup passes, a transcode that cannot be done fails
# in well under a second instead of after every backoff.
TRANSCODE_ATTEMPTS = 3


def status_error(response: httpx.Response, what: str) -> HttpStatusError:
    status = response.status_code
    shown = redact_url(str(response.url))
    if status == 404:
        message = f"{what}: not found on the server (HTTP 404)"
    else:
        message = f"{what}: HTTP {status} {response.reason_phrase or ''}".rstrip()
    return HttpStatusError(
        message + proxy_note(response),
        status_code=status,
        url=shown,
        retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


class BodyWriter:
    """Streams one instance's bytes into a temp file: DICM check, hash, progress.

    `write` is a sink (dlstudy/http/curl.py): libcurl calls it with each chunk as it arrives, on
    the event loop's thread, and waits for it, which holds the server back when the disk is
    slow. The first VERIFY_HEAD_LENGTH bytes stay in memory for the header check.
    """

    def __init__(self, temp: TempFile, ref: InstanceRef, on_bytes: ByteCounter) -> None:
        self.temp = temp
        self.ref = ref
        self.on_bytes = on_bytes
        self.digest = Digest()
        self._head = b""
        self.size = 0
        # HTTP brought every byte a Content-Length announced (the response's or the part's):
        # a file that is still short is so on the server, not cut on the way.
        self.announced = False

    def write(self, chunk: bytes) -> None:
        self._head = keep_head(self._head, chunk, sop_uid=self.ref.sop_uid)
        self.temp.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)
        self.on_bytes(len(chunk))

    def check_length(self, expected: int | None, source: str) -> None:
        if expected is not None and self.size != expected:
            raise IntegrityError(
                f"got {self.size} bytes, {source} said {expected}",
                sop_instance_uid=self.ref.sop_uid,
                retryable=True,
            )
        self.announced = expected is not None

    async def verify_and_commit(self) -> Committed:
        if self.size < LARGE_BODY:  # closing and renaming a small file: cheaper than a thread
            return self._verify_and_commit()
        return await anyio.to_thread.run_sync(self._verify_and_commit)

    def _check_complete(self, transfer_syntax: str, label: str) -> None:
        check_complete(
            self.temp.path,
            transfer_syntax=transfer_syntax,
            size=self.size,
            label=label,
            head=self._head,
            announced=self.announced,
        )

    def _verify_and_commit(self) -> Committed:
        self.temp.close()
        ref, label = self.ref, f"instance {self.ref.sop_uid}"
        info = read_header(self.temp.path, label=label, head=self._head, size=self.size)
        if not (info.study_uid and info.series_uid and info.sop_uid):
            # A body cut short before the UIDs: the walk says it is incomplete, rather than
            # the file be taken for one without them.
            self._check_complete(info.transfer_syntax, label)
        check_identity(
            info, study_uid=ref.study_uid, series_uid=ref.series_uid, sop_uid=ref.sop_uid
        )
        self._check_complete(info.transfer_syntax, label)
        self.temp.commit()
        return Committed(self.temp.final, self.temp.size, self.digest.labelled())


class InstanceFetcher:
    """Retrieves one instance per request, in whatever form the negotiator settled on."""

    def __init__(
        self,
        transport: Transport,
        store: Store,
        negotiator: Negotiator,
        *,
        policy: RetryPolicy,
        throttle: Throttle,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.store = store
        self.negotiator = negotiator
        self.policy = policy
        self.throttle = throttle
        self.rng = rng or random.Random()
        # Instances the server answered 500 in the explicit transfer syntax asked for, until
        # one came in it: the same verdict as for series/study retrieval (engine/refusals.py).
        self.transcoding = Refusals()

    async def fetch(self, ref: InstanceRef, on_bytes: ByteCounter) -> Committed:
        """Download `ref` to its final path. Raises TransferError."""
        final = self.store.final_path(ref)
        untranscoded = 0  # 500s to this instance asked in an explicit transfer syntax
        attempts = min(TRANSCODE_ATTEMPTS, self.policy.retries + 1)
        short_at_source = False  # the server sent a file that is not whole, as announced

        async def once(form: Retrieval) -> Committed:
            nonlocal untranscoded, short_at_source
            syntax = explicit_syntax(form)
            if syntax is not None and self.transcoding.verdict is not None:
                raise _not_transcoded(ref, syntax, self.transcoding.verdict, asked=False)
            try:
                return await self._fetch_once(ref, final, on_bytes, form)
            except IntegrityError as exc:
                if exc.at_source and not short_at_source:
                    short_at_source = exc.retryable = True  # once: it may have been written
                raise
            except HttpStatusError as exc:
                if syntax is None or exc.status_code != 500:
                    raise
                untranscoded += 1
                if untranscoded < attempts:
                    raise  # retried: it may be a hiccup
                if self.transcoding.refused(exc.message):
                    self._say_verdict(syntax)
                raise _not_transcoded(ref, syntax, exc.message, asked=True) from exc

        async def attempt() -> Committed:
            try:
                return await self.negotiator.run(once)
            except HttpStatusError as exc:
                # Every form refused: in the syntax asked for, and in the server's default.
                syntax = explicit_syntax(self.negotiator.wanted)
                if syntax is None or exc.status_code != 406:
                    raise
                raise _not_transcoded(ref, syntax, exc.message, asked=True, status=406) from exc

        try:
            return await with_retries(
                attempt,
                what=f"instance {ref.sop_uid}",
                policy=self.policy,
                throttle=self.throttle,
                rng=self.rng,
            )
        except TransferError as exc:
            exc.sop_instance_uid = ref.sop_uid
            raise

    def _say_verdict(self, syntax: str) -> None:
        if self.transcoding.count == REFUSALS_FOR_UNSUPPORTED:  # once, as the verdict comes
            log.warning(
                "the server answered HTTP 500 to %d instances asked in transfer syntax %s and "
                "sent none in it: the others are not asked; %s",
                REFUSALS_FOR_UNSUPPORTED,
                syntax,
                TRANSCODE_HINT,
            )

    async def _fetch_once(
        self, ref: InstanceRef, final: Path, on_bytes: ByteCounter, form: Retrieval
    ) -> Committed:
        url = instance_url(self.transport.base_url, ref.study_uid, ref.series_uid, ref.sop_uid)
        # identity: DICOM barely compresses, and decoding would cost client CPU per byte.
        headers = {"Accept": form.accept, "Accept-Encoding": "identity"}
        async with self.transport.stream(url, headers) as response:
            check_auth(response)
            if response.status_code != 200:
                raise status_error(response, f"instance {ref.sop_uid}")
            if explicit_syntax(form) is not None:
                self.transcoding.success()  # the server can send instances in that syntax
            check_identity_encoding(response, f"instance {ref.sop_uid}")
            media = parse_media_type(response.headers.get("content-type", ""))
            with self.store.open_temp(final) as temp:
                writer = BodyWriter(temp, ref, on_bytes)
                if media.mime == MULTIPART_RELATED:
                    await _write_single_part_of_multipart(response, writer)
                else:
                    await pour_body(response, writer.write)
                    writer.check_length(content_length(response), "Content-Length")
                return await writer.verify_and_commit()


TRANSCODE_HINT = "ask for --transfer-syntax '*' (as stored) or another one"


def explicit_syntax(form: Retrieval) -> str | None:
    """The transfer syntax `form` asks the server to transcode to, if it names one."""
    syntax = form.transfer_syntax
    return None if syntax in (None, ANY_TRANSFER_SYNTAX) else syntax


def _not_transcoded(
    ref: InstanceRef, syntax: str, answer: str, *, asked: bool, status: int = 500
) -> HttpStatusError:
    """The failure of an instance the server cannot send in `syntax` (it answered `status`):
    no retry brings it."""
    if asked:
        why = f"the server could not send it in transfer syntax {syntax} ({_status_of(answer)})"
    else:
        why = (
            f"not asked: the server could not send {REFUSALS_FOR_UNSUPPORTED} instances in "
            f"transfer syntax {syntax} ({_status_of(answer)}) and sent none in it"
        )
    return HttpStatusError(
        f"instance {ref.sop_uid}: {why}; {TRANSCODE_HINT}",
        status_code=status,
        sop_instance_uid=ref.sop_uid,
        retryable=False,
    )


def _status_of(message: str) -> str:
    """`HTTP 500 Internal Server Error` out of a status error's message."""
    return message[message.rfind("HTTP ") :] if "HTTP " in message else message


async def _write_single_part_of_multipart(response: httpx.Response, writer: BodyWriter) -> None:
    parts = 0
    declared: int | None = None
    complete = False

    def on_event(event: Event) -> None:
        nonlocal parts, declared, complete
        if isinstance(event, PartData):
            writer.write(event.data)
        elif isinstance(event, PartStarted):
            parts += 1
            if parts > 1:
                raise IntegrityError(
                    "multipart answer for one instance has more than one part",
                    sop_instance_uid=writer.ref.sop_uid,
                )
            declared = event.content_length
        elif isinstance(event, PartEnded):
            writer.check_length(declared, "the part's Content-Length")
            complete = True

    await pour_parts(response, on_event, lone_file=True)
    if not complete:
        raise IntegrityError(
            "multipart answer has no complete part",
            sop_instance_uid=writer.ref.sop_uid,
            retryable=True,
        )


def check_identity_encoding(response: httpx.Response, what: str) -> None:
    """Instances are asked for without compression and stored as sent: a body the server
    compressed anyway is refused, not decoded (it could expand without bound)."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise TransferError(
            f"{what}: the server sent a {encoding}-encoded body, though identity was asked for",
            url=redact_url(str(response.url)),
        )


def content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None
