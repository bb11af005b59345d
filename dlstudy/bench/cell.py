"""One run of one bench cell: its requests timed and counted, bodies dropped or kept.

A gauge around every request counts how many are in flight (the bench proves it never exceeds
the cell's concurrency); TimedTransport records each QIDO request's latency; CellRun sends the
retrieve requests of the cell and reads their bodies, single-part or multipart.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from ..dicomweb.completeness import BodyWalk, check_complete_in
from ..dicomweb.media import MULTIPART_RELATED, parse_media_type
from ..dicomweb.multipart import Event, PartData, PartEnded, PartStarted
from ..dicomweb.negotiate import Retrieval
from ..dicomweb.verify import (
    VERIFY_HEAD_LENGTH,
    check_start,
    read_header,
    read_header_in,
)
from ..engine.fetch import check_identity_encoding, content_length, status_error
from ..engine.parts import pour_parts
from ..errors import (
    IntegrityError,
)
from ..http.client import Transport, unframed
from ..http.failures import check_auth
from ..http.transfer import pour_body
from ..http.urls import is_valid_uid
from ..settings import Settings
from ..store.files import TempFile
from ..store.safe_files import open_binary
from .report import (
    CellResult,
)


class Gauge:
    """Requests in flight right now, and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            self.now -= 1


class TimedTransport(Transport):
    """A Transport whose `get` (QIDO only) is timed and counted in flight."""

    def __init__(
        self,
        settings: Settings,
        *,
        auth: httpx.Auth | None,
        gauge: Gauge,
        latencies: list[float],
        answered: bool = False,
    ) -> None:
        super().__init__(settings, auth=auth, answered=answered)
        self.gauge = gauge
        self.latencies = latencies

    async def get(
        self, url: str, headers: dict[str, str] | None = None, params: object = None
    ) -> httpx.Response:
        with self.gauge.hold():
            sent = time.perf_counter()
            response = await super().get(url, headers, params)
            self.latencies.append(time.perf_counter() - sent)
        return response


@dataclass
class CellRun:
    """The requests of one run of one cell, and what they brought."""

    transport: Transport
    gauge: Gauge
    result: CellResult
    keep: Path | None

    async def request(
        self,
        url: str,
        form: Retrieval,
        what: str,
        expected: int,
        sop_uid: str | None,
        *,
        stop: bool = False,
    ) -> None:
        """GET `url` as `form`; count (or keep) every instance; `stop` after `expected` parts."""
        headers = {"Accept": form.accept, "Accept-Encoding": "identity"}
        self.result.requests += 1
        got = 0
        with self.gauge.hold():
            sent = time.perf_counter()
            async with self.transport.stream(url, headers) as response:
                headers_at = time.perf_counter()
                check_auth(response)
                if response.status_code != 200:
                    raise status_error(response, what)
                check_identity_encoding(response, what)  # compressed: not the instance
                self.result.ttfb.append(headers_at - sent)
                media = parse_media_type(response.headers.get("content-type", ""))
                if media.mime == MULTIPART_RELATED:
                    got, extra = await self._parts(response, sop_uid, what, expected, stop)
                    if extra:
                        raise IntegrityError(
                            f"{what}: {got + extra} instances arrived where {expected} were "
                            f"asked (the rest not counted)"
                        )
                else:
                    check_whole = unframed(response)
                    with self._output(sop_uid, check_whole, what) as output:
                        output.announced = content_length(response)
                        await pour_body(response, output.write)
                    got = 1
        if got < expected:
            raise IntegrityError(f"{what}: {got} of {expected} instances arrived", retryable=True)

    async def _parts(
        self, response: httpx.Response, sop_uid: str | None, what: str, expected: int, stop: bool
    ) -> tuple[int, int]:
        """Read the parts; (parts counted, parts beyond the `expected` ones, not counted: a
        series answered with the whole study must not pass for a fast series)."""
        got = extra = 0
        output: Output | None = None

        def on_event(event: Event) -> None:
            nonlocal got, extra, output
            if isinstance(event, PartData):
                assert output is not None
                output.write(event.data)
            elif isinstance(event, PartStarted):
                keep = self.keep if got < expected else None
                output = Output(keep, sop_uid, self.result, what=f"{what}, part {got + extra + 1}")
                output.announced = event.content_length  # the parser holds the part to it
            elif isinstance(event, PartEnded):
                assert output is not None
                if got < expected:
                    output.finish()
                    got += 1
                else:
                    extra += 1
                output = None
                if stop and got >= expected:
                    raise Enough()  # --limit: the rest of the response is not wanted

        try:
            await pour_parts(response, on_event)
        except Enough:
            pass
        finally:
            if output is not None:
                output.abandon()
        return got, extra

    @contextmanager
    def _output(self, sop_uid: str | None, check_whole: bool, what: str) -> Iterator[Output]:
        output = Output(self.keep, sop_uid, self.result, check_whole=check_whole, what=what)
        try:
            yield output
        except BaseException:
            output.abandon()
            raise
        output.finish()


class Enough(Exception):
    """Raised from inside a body's sink to stop reading it."""


class Output:
    """One instance's bytes: counted, and with --keep written to DIR/<SOP Instance UID>.dcm."""

    def __init__(
        self,
        keep: Path | None,
        sop_uid: str | None,
        result: CellResult,
        *,
        check_whole: bool = False,
        what: str = "",
    ) -> None:
        """`what`: the request's subject, naming the body in messages ("series 1.2.3")."""
        self.result = result
        self.sop_uid = sop_uid
        self.what = what or f"instance {sop_uid}"
        self.size = 0
        self.temp = TempFile(keep / f"{sop_uid or 'part'}.dcm").__enter__() if keep else None
        # A body whose end HTTP cannot prove is kept (in the --keep file, or a temp file) to be
        # judged as download judges it: a cut one is no instance. One HTTP says is whole is
        # walked as it arrives: the server's file may itself be cut (or not DICOM at all).
        self.check_whole = check_whole
        # The Content-Length of the response or part: when the body brought all of it, a file
        # the walk finds short is the server's own, not one cut on the way.
        self.announced: int | None = None
        self.head = b""
        self.spool: BinaryIO | None = None
        self.walk = None if check_whole else BodyWalk()
        if check_whole and self.temp is None:
            self.spool = tempfile.TemporaryFile(prefix="dlstudy-bench-")  # gone with us

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.head) < VERIFY_HEAD_LENGTH:
            self.head += chunk[: VERIFY_HEAD_LENGTH - len(self.head)]
        if self.walk is not None:
            self.walk.feed(chunk)
        if self.temp is not None:
            self.temp.write(chunk)
        if self.spool is not None:
            self.spool.write(chunk)

    def finish(self) -> None:
        if self.size == 0:
            self.abandon()
            raise IntegrityError("an instance arrived with an empty body")
        try:
            if self.check_whole:
                self._check_whole()
            else:
                self._check_walked()
        except BaseException:
            self.abandon()
            raise
        temp, self.temp = self.temp, None
        if temp is not None:
            self._commit(temp)
        # Counted once whole (and kept, with --keep): the bytes of a cut body, or of a part
        # that could not be kept, are no throughput, whatever the strategy.
        self.result.bytes += self.size
        self.result.instances += 1

    def _commit(self, temp: TempFile) -> None:
        """Rename the --keep file to its final name (a part's, from its header)."""
        try:
            temp.close()
            if self.sop_uid is None:  # a part of a series or study: its header names it
                sop_uid = read_header(temp.path, label="part").sop_uid
                if not is_valid_uid(sop_uid):
                    raise IntegrityError(f"a part names an invalid SOP Instance UID {sop_uid!r}")
                temp.final = temp.final.with_name(f"{sop_uid}.dcm")
            temp.commit()
        except BaseException:
            temp.discard()
            raise

    def _check_whole(self) -> None:
        """Raise IntegrityError unless the body is whole, judged by download's own checks: its
        header read (pydicom when the fast parser gives up, as on a cut header), then its
        elements walked to its end (dicomweb/completeness.py)."""
        if self.spool is not None:
            spool, self.spool = self.spool, None
            with spool:
                self._judge(spool)
        elif self.temp is not None:
            self.temp.close()
            with open_binary(self.temp.path) as kept:
                self._judge(kept)

    def _check_walked(self) -> None:
        """Raise IntegrityError unless the body is DICOM (not an error page) and its elements,
        walked as it arrived, end where it does."""
        assert self.walk is not None
        check_start(self.head, label=self.what, sop_uid=self.sop_uid)
        self.walk.end(self.what, announced=self.announced == self.size)

    def _judge(self, fp: BinaryIO) -> None:
        label = self.what
        info = read_header_in(fp, label=label, head=self.head, size=self.size)
        check_complete_in(fp, transfer_syntax=info.transfer_syntax, size=self.size, label=label)

    def abandon(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        if self.temp is not None:
            self.temp.discard()
            self.temp = None
