"""One download run after setup: resolve the studies, schedule what is missing, fetch it.

`Run` owns the results: every instance that commits or fails goes through `record_done` or
`record_failure`, whichever path fetched it (the per-instance pool, series/study multipart
responses, worker processes), so the manifest, the progress display and the summary always
agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import anyio

from . import strategy, workers
from .bulk import BulkFetcher
from .errors import IncompleteListingError, NothingMatchedError, TransferError
from .fetch import Committed, InstanceFetcher
from .manifest import Manifest
from .negotiate import Negotiator, candidates
from .pool import first_error, run_pool
from .progress import ProgressSink
from .qido import Resolver
from .retry import RetryPolicy
from .schedule import entry_for, plan
from .settings import Settings, concurrency_for
from .store import InstanceRef, Store
from .summary import Failure, Summary
from .throttle import Throttle
from .transport import Transport
from .urls import series_url, study_url

log = logging.getLogger(__name__)


class Run:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        manifest: Manifest,
        transport: Transport,
        progress: ProgressSink,
        summary: Summary,
    ) -> None:
        self.settings = settings
        self.store = store
        self.manifest = manifest
        self.transport = transport
        self.progress = progress
        self.summary = summary
        self.policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
        self.throttle = Throttle(settings.concurrency)
        self.negotiator = Negotiator(candidates(settings.transfer_syntax or None, single_part=True))
        self.fetcher = InstanceFetcher(
            transport, store, self.negotiator, policy=self.policy, throttle=self.throttle
        )
        summary.throttle = self.throttle
        summary.retrieval = self.negotiator

    async def execute(self, study_uids: list[str]) -> None:
        refs = await self.resolve(study_uids)
        # The server has answered: the protocol is known, and with it --concurrency 0's value.
        concurrency = concurrency_for(self.settings.concurrency, self.transport.http_version)
        self.settings = replace(self.settings, concurrency=concurrency)
        self.throttle.resize(concurrency)
        self.summary.concurrency = concurrency
        work = plan(refs, self.store, self.manifest, verify=self.settings.verify)
        self.summary.skipped = work.skipped
        self.summary.repaired = work.repaired
        self.progress.start(self.summary.total, self.summary.skipped)
        # A StorageError (disk full, permissions) escapes the workers and stops them all:
        # nothing else would succeed either; what was committed is kept.
        with first_error():
            await self.fetch(work.todo)

    # --- resolve ---------------------------------------------------------------------------

    async def resolve(self, study_uids: list[str]) -> list[InstanceRef]:
        settings = self.settings
        resolver = Resolver(
            self.transport,
            page_size=settings.qido_page_size,
            policy=self.policy,
            series_filter=settings.series,
            modality_filter=settings.modalities,
        )
        refs: list[InstanceRef] = []
        incomplete = False
        for study_uid in study_uids:
            self.progress.resolving(study_uid)
            self.summary.studies.append(study_uid)
            try:
                found = await resolver.resolve(study_uid)
            except NothingMatchedError as exc:
                self.summary.failures.append(Failure(study_uid, None, None, str(exc), 404))
                continue
            except IncompleteListingError as exc:  # the study fails; the others go on
                self.summary.failures.append(Failure(study_uid, None, None, str(exc)))
                incomplete = True
                continue
            for ref in found:
                self.summary.total += 1
                if self.store.is_valid(ref):
                    refs.append(ref)
                else:
                    reason = f"server sent an invalid UID (refused as a file name) in {ref!r}"
                    self.summary.failures.append(Failure(study_uid, None, None, reason[:300]))
        if self.summary.total == 0 and not incomplete:
            raise NothingMatchedError(self._nothing_matched_message())
        return refs

    def _nothing_matched_message(self) -> str:
        summary = self.summary
        missing = [f for f in summary.failures if f.sop_instance_uid is None]
        if len(summary.studies) == 1 and missing:
            return missing[0].reason
        if len(missing) == len(summary.studies):
            return f"none of the {len(summary.studies)} studies was found on the server"
        if self.settings.series or self.settings.modalities:
            return "no instance matched the --series / --modality filters"
        return "the requested studies have no instances"

    # --- results ---------------------------------------------------------------------------

    def record_done(self, ref: InstanceRef, committed: Committed) -> None:
        self.manifest.record(
            entry_for(self.store, ref, committed.path, committed.size, committed.digest)
        )
        self.summary.downloaded += 1
        self.summary.bytes += committed.size
        self.progress.instance_done(ref, committed.size)

    def record_failure(self, ref: InstanceRef, reason: str, status_code: int | None) -> None:
        self.summary.failures.append(
            Failure(ref.study_uid, ref.series_uid, ref.sop_uid, reason, status_code)
        )
        self.progress.instance_failed(ref, reason)

    # --- fetch -----------------------------------------------------------------------------

    async def fetch(self, todo: list[InstanceRef]) -> None:
        mode = self.settings.mode
        if todo and mode in ("series", "study"):
            bulk = self.bulk_fetcher()
            self.summary.retrieval = bulk.negotiator  # what the bulk responses were asked as
            todo = await self.fetch_in_bulk(todo, mode, bulk)
        elif todo and mode == "auto":
            todo = await self.choose_and_fetch_bulk(todo)
        await self.fetch_per_instance(todo)

    async def fetch_one(self, ref: InstanceRef) -> Committed | None:
        try:
            committed = await self.fetcher.fetch(ref, self.progress.advance)
        except TransferError as exc:
            self.record_failure(ref, str(exc), getattr(exc, "status_code", None))
            return None
        self.record_done(ref, committed)
        return committed

    async def fetch_per_instance(self, todo: list[InstanceRef]) -> None:
        async def one(ref: InstanceRef) -> None:
            await self.fetch_one(ref)

        processes = workers.worker_count(self.settings.workers, len(todo))
        if processes <= 1:
            await run_pool(todo, one, self.settings.concurrency)
            return

        async def local(share: Iterable[InstanceRef], limiter: anyio.CapacityLimiter) -> None:
            await run_pool(share, one, self.settings.concurrency, limiter)

        if not self.negotiator.settled:  # (auto mode's probe has usually settled it)
            await self.fetch_one(todo[0])  # settles the retrieval form the workers will use
            todo = todo[1:]
        self.summary.processes = await workers.run_in_processes(
            todo,
            replace(self.settings, http=self.transport.settled_http),  # no second h2c probe
            self.negotiator.current if self.negotiator.settled else None,
            processes,
            adaptive=self.settings.workers == 0,
            near=workers.is_near(self.transport.quickest_reply),
            local=local,
            on_bytes=self.progress.advance,
            on_done=self.record_done,
            on_failed=lambda f: self.record_failure(f.ref, f.reason, f.status_code),
        )

    def bulk_fetcher(self) -> BulkFetcher:
        forms = candidates(self.settings.transfer_syntax or None, single_part=False)
        return BulkFetcher(
            self.transport,
            self.store,
            Negotiator(forms, remember_refusal=True),
        )

    async def choose_and_fetch_bulk(self, todo: list[InstanceRef]) -> list[InstanceRef]:
        """--mode auto: choose per study (strategy.py), fetch the series-mode studies in bulk;
        return what is left for the per-instance pool."""
        by_study: dict[str, list[InstanceRef]] = {}
        for ref in todo:
            by_study.setdefault(ref.study_uid, []).append(ref)
        per_instance: list[InstanceRef] = []
        in_bulk: list[InstanceRef] = []
        for study_uid, refs in by_study.items():
            probe_size = None
            if strategy.needs_probe(len(refs)):
                committed = await self.fetch_one(refs[0])
                probe_size = committed.size if committed else None
                refs = refs[1:]
            choice = strategy.choose(study_uid, len(refs) + (probe_size is not None), probe_size)
            self.summary.strategy.append(choice)
            (in_bulk if choice.mode == "series" else per_instance).extend(refs)
        if in_bulk:
            bulk = self.bulk_fetcher()
            per_instance += await self.fetch_in_bulk(in_bulk, "series", bulk)
            if bulk.unsupported is not None:
                self.summary.strategy = [
                    strategy.Choice(
                        c.study_uid,
                        "instance",
                        f"{c.why}; but the server refused it ({bulk.unsupported}): per instance",
                    )
                    if c.mode == "series"
                    else c
                    for c in self.summary.strategy
                ]
        return per_instance

    async def fetch_in_bulk(
        self, todo: list[InstanceRef], mode: str, bulk: BulkFetcher
    ) -> list[InstanceRef]:
        """One multipart response per series (or study); return the instances still missing."""
        base = self.transport.base_url
        groups: dict[str, list[InstanceRef]] = {}
        for ref in todo:
            if mode == "series":
                url = series_url(base, ref.study_uid, ref.series_uid)
            else:
                url = study_url(base, ref.study_uid)
            groups.setdefault(url, []).append(ref)
        committed: set[str] = set()

        async def one_group(item: tuple[str, list[InstanceRef]]) -> None:
            url, refs = item
            committed.update(await bulk.fetch(url, refs, self.progress.advance, self.record_done))

        await run_pool(list(groups.items()), one_group, self.settings.concurrency)
        missing = [ref for ref in todo if ref.sop_uid not in committed]
        if missing:
            log.info("%d instances missing from bulk responses; fetching one by one", len(missing))
        return missing
