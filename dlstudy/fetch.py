"""Fetch one instance into the store: stream, check, commit; retry what is worth retrying."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx

from .errors import HttpStatusError, IntegrityError, TransferError
from .media import single_part_accept
from .retry import RETRYABLE_STATUS, backoff_delay, parse_retry_after
from .store import InstanceRef, Store
from .transport import Transport, check_auth
from .urls import instance_url, redact_url
from .verify import HEADER_PREFIX_LENGTH, check_prefix, verify_instance

log = logging.getLogger(__name__)

ByteCounter = Callable[[int], None]


def status_error(response: httpx.Response, ref: InstanceRef) -> HttpStatusError:
    status = response.status_code
    shown = redact_url(str(response.url))
    reason = response.reason_phrase or ""
    if status == 404:
        message = f"instance {ref.sop_uid}: not found on the server (HTTP 404)"
    else:
        message = f"instance {ref.sop_uid}: HTTP {status} {reason}".rstrip()
    return HttpStatusError(
        message,
        status_code=status,
        url=shown,
        sop_instance_uid=ref.sop_uid,
        retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


class InstanceFetcher:
    """Single-part retrieval (`Accept: application/dicom`) of one instance at a time."""

    def __init__(
        self,
        transport: Transport,
        store: Store,
        *,
        transfer_syntax: str | None,
        retries: int,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.store = store
        self.accept = single_part_accept(transfer_syntax)
        self.retries = retries
        self.rng = rng or random.Random()

    async def fetch(self, ref: InstanceRef, on_bytes: ByteCounter) -> int:
        """Download `ref` to its final path; return its size. Raises TransferError."""
        final = self.store.final_path(ref)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._fetch_once(ref, final, on_bytes)
            except TransferError as exc:
                if exc.sop_instance_uid is None:
                    exc.sop_instance_uid = ref.sop_uid
                    exc.message = f"instance {ref.sop_uid}: {exc.message}"
                if not exc.retryable or attempt > self.retries:
                    if attempt > 1:
                        exc.message = f"{exc.message} (after {attempt} attempts)"
                    raise
                delay = backoff_delay(attempt, self.rng)
                if isinstance(exc, HttpStatusError) and exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                log.info("retrying %s in %.2fs: %s", ref.sop_uid, delay, exc)
                await anyio.sleep(delay)

    async def _fetch_once(self, ref: InstanceRef, final: Path, on_bytes: ByteCounter) -> int:
        url = instance_url(self.transport.base_url, ref.study_uid, ref.series_uid, ref.sop_uid)
        # identity: DICOM barely compresses, and decoding would cost client CPU per byte.
        headers = {"Accept": self.accept, "Accept-Encoding": "identity"}
        async with self.transport.stream(url, headers) as response:
            check_auth(response)
            if response.status_code != 200:
                raise status_error(response, ref)
            expected = _content_length(response)
            with self.store.open_temp(final) as temp:
                prefix = b""
                # Writes are synchronous on purpose: the page cache absorbs them in microseconds,
                # far less than a thread hop per chunk would cost.
                async for chunk in response.aiter_bytes():
                    if len(prefix) < HEADER_PREFIX_LENGTH:
                        prefix += chunk[:HEADER_PREFIX_LENGTH]
                        check_prefix(prefix, sop_uid=ref.sop_uid)
                    temp.write(chunk)
                    on_bytes(len(chunk))
                temp.close()
                if expected is not None and temp.size != expected:
                    raise IntegrityError(
                        f"instance {ref.sop_uid}: got {temp.size} bytes, "
                        f"Content-Length said {expected}",
                        sop_instance_uid=ref.sop_uid,
                        retryable=True,
                    )
                verify_instance(
                    temp.path,
                    study_uid=ref.study_uid,
                    series_uid=ref.series_uid,
                    sop_uid=ref.sop_uid,
                )
                temp.commit()
                return temp.size


def _content_length(response: httpx.Response) -> int | None:
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        return None  # the length is of the encoded body
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None
