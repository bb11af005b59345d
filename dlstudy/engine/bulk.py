"""Series- and study-level retrieval: one streamed multipart response for many instances.

Each part streams into its own temp file under OUT/.dlstudy/incoming and is committed under its
SOP Instance UID the moment its closing delimiter arrives, so a response cut in the middle keeps
every part that completed. Whatever the response lacked (or a failure cut off) is left to the
caller, which fetches those instances one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..dicomweb.completeness import check_complete
from ..dicomweb.multipart import Event, PartData, PartEnded, PartStarted
from ..dicomweb.negotiate import Negotiator, Retrieval
from ..dicomweb.verify import check_identity, keep_head, read_header
from ..errors import HttpStatusError, IntegrityError, TransferError
from ..http.client import Transport
from ..http.failures import check_auth
from ..model import Committed, InstanceRef, Instances
from ..store.files import Store, TempFile
from ..store.manifest import Digest
from .fetch import ByteCounter, check_identity_encoding, status_error
from .parts import pour_parts
from .refusals import Refusals

log = logging.getLogger(__name__)

InstanceDone = Callable[[InstanceRef, Committed], None]
# What is still wanted of a response: SOP Instance UID -> (study, series, modality), a tuple
# each series shares (Instances.by_sop).
Wanted = dict[str, tuple[str, str, str]]


class BulkFetcher:
    def __init__(self, transport: Transport, store: Store, negotiator: Negotiator) -> None:
        self.transport = transport
        self.store = store
        self.negotiator = negotiator
        self.refusals = Refusals()  # a bulk response answered 200: the server does them

    async def fetch(
        self,
        url: str,
        refs: Instances,
        on_bytes: ByteCounter,
        on_done: InstanceDone,
    ) -> Instances:
        """Retrieve `url` (a series or study) and commit the parts that belong to `refs`.

        Returns the refs not committed. Failures are logged, not raised: the caller retrieves
        what is missing instance by instance. Only auth errors propagate.
        """
        if self.refusals.verdict is not None:  # the server will not do bulk retrieval
            return refs
        # What is still wanted: each committed part leaves it, so nothing else has to remember
        # a series' committed instances (a million strings in a million-instance series).
        wanted = refs.by_sop()
        try:
            await self.negotiator.run(
                lambda form: self._fetch_once(url, form, wanted, on_bytes, on_done)
            )
        except HttpStatusError as exc:
            self._refused(exc)
        except TransferError as exc:
            log.warning("bulk retrieval stopped after %d parts: %s", len(refs) - len(wanted), exc)
        left = Instances()
        for sop_uid, (study_uid, series_uid, modality) in wanted.items():
            left.add(study_uid, series_uid, sop_uid, modality)
        return left

    @property
    def refused(self) -> str | None:
        """Why bulk retrieval was refused, if no bulk response of the run succeeded."""
        return None if self.refusals.succeeded else self.refusals.last

    def _refused(self, exc: HttpStatusError) -> None:
        """A definitive no from static servers (403/404 for every series URL) stops the asking;
        from a server that does bulk retrieval, it is about this series or study alone (gone
        since it was listed, or stored twice: Orthanc), whose instances are asked one by one."""
        if exc.retryable:
            log.warning("bulk retrieval refused: %s", exc)
            return
        if not self.refusals.refused(str(exc)):
            log.info("bulk retrieval refused (its instances one by one): %s", exc)
            return
        log.warning("bulk retrieval refused: %s", exc)

    async def _fetch_once(
        self,
        url: str,
        form: Retrieval,
        wanted: Wanted,
        on_bytes: ByteCounter,
        on_done: InstanceDone,
    ) -> None:
        headers = {"Accept": form.accept, "Accept-Encoding": "identity"}
        async with self.transport.stream(url, headers) as response:
            if response.status_code == 401:
                check_auth(response)  # the credentials are wrong for every request
            if response.status_code != 200:
                # 403 here may be a policy on series/study retrieval, not on us:
                # per-instance retrieval is tried before anything is called fatal.
                raise status_error(response, "bulk retrieval")
            check_identity_encoding(response, "bulk retrieval")
            self.refusals.success()
            sink = _PartSink(self.store, wanted, on_bytes, on_done)

            def on_event(event: Event) -> None:
                if isinstance(event, PartData):
                    sink.data(event.data)
                elif isinstance(event, PartStarted):
                    sink.start(event)
                elif isinstance(event, PartEnded):
                    sink.end()

            try:
                await pour_parts(response, on_event, lone_file=True)
            finally:
                sink.abandon()


class _PartSink:
    """Receives one part at a time; the current part's temp file is never under a final name."""

    def __init__(
        self,
        store: Store,
        wanted: Wanted,
        on_bytes: ByteCounter,
        on_done: InstanceDone,
    ) -> None:
        self.store = store
        self.wanted = wanted  # what is not committed yet
        self.on_bytes = on_bytes
        self.on_done = on_done
        self.count = 0
        self.temp: TempFile | None = None
        self.declared: int | None = None
        self.head = b""
        self.digest = Digest()

    def start(self, event: PartStarted) -> None:
        self.count += 1
        self.temp = self.store.open_incoming().__enter__()
        self.declared = event.content_length
        self.head = b""
        self.digest = Digest()

    def data(self, chunk: bytes) -> None:
        assert self.temp is not None
        # Which instance a part holds is known only from its header, read at its end.
        self.head = keep_head(self.head, chunk, sop_uid=None, label=f"part {self.count}")
        self.temp.write(chunk)
        self.digest.update(chunk)
        self.on_bytes(len(chunk))

    def end(self) -> None:
        temp, self.temp = self.temp, None
        assert temp is not None
        try:
            temp.close()
            if self.declared is not None and temp.size != self.declared:
                raise IntegrityError(
                    f"part {self.count}: got {temp.size} bytes, its Content-Length said "
                    f"{self.declared}",
                    retryable=True,
                )
            info = read_header(
                temp.path, label=f"part {self.count}", head=self.head, size=temp.size
            )
            where = self.wanted.get(info.sop_uid)
            if where is None:  # not asked for, or committed already (a part sent twice)
                log.info("part %d (%s) was not asked for; dropped", self.count, info.sop_uid)
                temp.discard()
                return
            study_uid, series_uid, modality = where
            ref = InstanceRef(study_uid, series_uid, info.sop_uid, modality)
            check_identity(
                info, study_uid=ref.study_uid, series_uid=ref.series_uid, sop_uid=ref.sop_uid
            )
            check_complete(
                temp.path,
                transfer_syntax=info.transfer_syntax,
                size=temp.size,
                label=f"instance {ref.sop_uid}",
                head=self.head,
                announced=self.declared is not None,  # and matched, above
            )
            temp.final = self.store.final_path(ref)
            temp.commit()
        except BaseException:
            temp.discard()
            raise
        del self.wanted[ref.sop_uid]
        self.on_done(ref, Committed(temp.final, temp.size, self.digest.labelled()))

    def abandon(self) -> None:
        if self.temp is not None:
            self.temp.discard()
            self.temp = None
