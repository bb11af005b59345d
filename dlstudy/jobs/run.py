"""One download run after setup: list the items (jobs/listing.py), plan what is missing, fetch it.

`Run` owns the results: every instance that commits or fails goes through `record_done` or
`record_failure`, whichever path fetched it (the per-instance pool, series/study multipart
responses, worker processes), so the manifest, the progress display and the summary always
agree.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..dicomweb.cohort import CohortItem
from ..dicomweb.negotiate import Negotiator, candidates
from ..engine import strategy, workers
from ..engine.bulk import BulkFetcher
from ..engine.fetch import InstanceFetcher
from ..engine.schedule import completed_studies, entry_for, plan
from ..errors import NothingMatchedError, TransferError
from ..flow.pool import first_error, run_pool
from ..flow.retry import RetryPolicy
from ..flow.throttle import Throttle
from ..http.client import Transport
from ..http.urls import series_url, study_url
from ..model import Committed, Failure, InstanceRef, Instances
from ..report.events import EventSink
from ..report.landed import DOWNLOADED, FAILED, PRESENT, ReportWriter
from ..report.progress import Listed, ProgressSink
from ..report.summary import Summary
from ..settings import Settings, concurrency_for, processes_for
from ..store.files import Store
from ..store.manifest import Manifest
from .listing import Lister, Listing
from .parts import EarlierParts, parts_of

log = logging.getLogger(__name__)


def instance_negotiator(settings: Settings) -> Negotiator:
    """How a run asks for instances: settled by the server's first answers (Run), or, for a
    run that fetched none, what it would have asked first (the summary's `retrieval`)."""
    return Negotiator(candidates(settings.transfer_syntax or None, single_part=True))


class Run:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        manifest: Manifest,
        transport: Transport,
        progress: ProgressSink,
        summary: Summary,
        report: ReportWriter | None = None,
    ) -> None:
        self.settings = settings
        self.report = report
        self.store = store
        self.manifest = manifest
        self.transport = transport
        self.progress = progress
        self.summary = summary
        self.policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
        self.throttle = Throttle(settings.concurrency)
        self.negotiator = instance_negotiator(settings)
        self.fetcher = InstanceFetcher(
            transport, store, self.negotiator, policy=self.policy, throttle=self.throttle
        )
        summary.throttle = self.throttle
        summary.retries = self.policy.tally
        summary.retrieval = self.negotiator
        self.listed: Counter[tuple[str, str]] = Counter()  # instances per (study, series)
        self.whole: dict[str, int] = {}  # studies listed whole, with their instance counts
        # --verify: files found without a digest of the server's bytes, fetched again to be
        # judged by them (SOP UID -> the digest of the file as found)
        self.unverified: dict[str, str] = {}
        self.lister = Lister(
            settings, transport, self.policy, store, manifest, progress, summary, report
        )
        # Items that failed before any listing (a catalogued UID that is no UID): with them, a
        # run that finds nothing else has failed (exit 1), not matched nothing (exit 4).
        self.failed_unlisted = bool(summary.failures)

    async def execute(self, items: list[CohortItem], *, counted: Iterable[str] = ()) -> None:
        """Resolve the items, fetch what is not on disk, record the studies completed. A long
        list goes in parts (jobs/parts.py): each part is resolved while the one before it
        downloads. `counted`: studies already counted whole (complete in the index), whose
        instances an item may list again (a series of one)."""
        parts = parts_of(items)
        counted = list(counted)
        earlier = EarlierParts() if len(parts) > 1 or counted else None
        if earlier is not None:
            earlier.add(counted, ())
        lister = self.lister
        resolved = [await lister.resolve(parts[0], earlier, last=len(parts) == 1)]
        # The server has answered: the protocol is known, and with it --concurrency 0's value.
        concurrency = concurrency_for(self.settings, self.transport.http_version)
        self.settings = replace(self.settings, concurrency=concurrency)
        self.throttle.resize(concurrency)
        self.summary.concurrency = concurrency
        # What the progress display's totals cover so far, of the list as given: the studies
        # complete in the index were decided without a listing.
        entries_resolved, entries = len(counted), len(items) + len(counted)
        for number, part in enumerate(parts, start=1):
            entries_resolved += len(part)
            listed = (entries_resolved, entries) if len(parts) > 1 else None
            following = parts[number] if number < len(parts) else None
            following_is_last = number + 1 == len(parts)
            # A StorageError (disk full, permissions) escapes the workers and stops them all:
            # nothing else would succeed either; what was committed is kept.
            with first_error():
                async with anyio.create_task_group() as tg:
                    if following is not None:
                        tg.start_soon(
                            lister.resolve_into, resolved, following, earlier, following_is_last
                        )
                    # (popped before the task above first runs: this part's listing is
                    # referenced from fetch_part only, which lets it go once planned)
                    await self.fetch_part(part, resolved.pop(0), listed)
        if self.summary.total:  # (with none at all, the run matched nothing: exit 4)
            lister.series_not_found()
        if self.summary.total == 0:
            # A shard whose lines all turned out to be other shards' has nothing to do: a
            # success, as for a shard the command line gave no line at all.
            nothing_here = lister.elsewhere and not self.summary.failures
            if not lister.incomplete and not nothing_here and not self.failed_unlisted:
                raise NothingMatchedError(lister.nothing_matched_message(items))
            self.progress.start(0, 0)

    async def fetch_part(
        self, items: Sequence[CohortItem], listing: Listing, listed: Listed | None
    ) -> None:
        """Fetch what the listing of `items` has that is not on disk; then record the studies
        they name whole complete, if every instance is in place. `listed`: how much of a long
        list the listings so far cover (for the progress display)."""
        refs, whole = listing
        del listing
        settings = self.settings
        work = plan(
            refs, self.store, self.manifest, verify=settings.verify, syntax=settings.transfer_syntax
        )
        if work.elsewhere:
            work.todo.extend(await self.lister.held_elsewhere(work.elsewhere))
        self.listed = Counter()  # what a series-mode resume weighs
        if self.settings.mode in ("auto", "series", "study"):
            self.listed.update(refs.series_counts())
        self.whole = whole
        self.summary.skipped += work.skipped
        self.summary.moved += work.moved
        self.summary.repaired.extend(work.repaired)
        self.unverified.update(work.unverified)
        if self.report is not None:
            self.report_present(refs, work.todo)
        del refs  # what is left to fetch is work.todo
        if self.summary.total:
            self.progress.start(self.summary.total, self.summary.skipped, listed)
        await self.fetch(work.todo)
        if not (self.settings.series or self.settings.modalities):  # whole studies only
            for study, count in completed_studies(items, whole, self.summary.failures).items():
                self.manifest.record_complete(study, count, self.store.layout)

    # --- results ---------------------------------------------------------------------------

    def record_done(self, ref: InstanceRef, committed: Committed) -> None:
        syntax = self.settings.transfer_syntax
        self.manifest.record(
            entry_for(self.store, ref, committed.path, committed.size, committed.digest, syntax)
        )
        present = bool(self.unverified) and self._was_present(ref.sop_uid, committed.digest)
        if present:
            self.summary.skipped += 1
        else:  # counted before a report row may fail (a full disk)
            self.summary.downloaded += 1
        self.summary.bytes += committed.size
        if present and isinstance(self.progress, EventSink):  # its events count downloads
            self.progress.instance_present(ref, committed.size)
        else:
            self.progress.instance_done(ref, committed.size)
        if self.report is not None:
            self.report.row(
                PRESENT if present else DOWNLOADED,
                *(ref.study_uid, ref.series_uid, ref.sop_uid),
                path=committed.path,
                size=committed.size,
                digest=committed.digest,
            )

    def _was_present(self, sop_uid: str, digest: str) -> bool:
        """Whether the file --verify fetched again to check it was the server's bytes (else
        it is counted repaired); False for any other instance."""
        found = self.unverified.pop(sop_uid, None)
        if found is None:
            return False
        if found == digest:
            return True
        self.summary.repaired.append(sop_uid)
        return False

    def record_failure(self, ref: InstanceRef, reason: str, status_code: int | None) -> None:
        where = self.lister.named.get(ref.sop_uid)
        if where is not None:
            reason = f"{where}: {reason}"
        if self.report is not None:
            self.report.row(FAILED, ref.study_uid, ref.series_uid, ref.sop_uid, reason=reason)
        self.summary.failures.append(
            Failure(ref.study_uid, ref.series_uid, ref.sop_uid, reason, status_code)
        )
        self.progress.instance_failed(ref, reason)

    def report_present(self, refs: Instances, todo: Instances) -> None:
        """A row for each instance the plan found on disk, complete and verified (it recorded
        every one of them in the manifest)."""
        assert self.report is not None
        fetching = set(todo.sop_uids())
        for ref in refs:
            entry = self.manifest.get(ref.sop_uid)
            if ref.sop_uid in fetching or entry is None or entry.study != ref.study_uid:
                continue  # (held under another study: a duplicate, failed)
            self.report.row(
                PRESENT,
                *(ref.study_uid, ref.series_uid, ref.sop_uid),
                path=self.store.root / entry.path,
                size=entry.size,
                digest=entry.digest,
            )

    # --- fetch -----------------------------------------------------------------------------

    async def fetch(self, todo: Instances) -> None:
        mode = self.settings.mode
        if todo and mode in ("series", "study"):
            bulk = self.bulk_fetcher()
            self.summary.retrieval = bulk.negotiator  # what the bulk responses were asked as
            todo = await self.fetch_in_bulk([todo], mode, bulk)
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

    async def fetch_per_instance(self, todo: Instances) -> None:
        async def one(ref: InstanceRef) -> None:
            await self.fetch_one(ref)

        processes = workers.worker_count(processes_for(self.settings), len(todo))
        if processes <= 1:
            await run_pool(todo, one, self.settings.concurrency)
            return
        workers.warm_up()  # its imports overlap the first transfers

        async def local(share: Iterable[InstanceRef], limiter: anyio.CapacityLimiter) -> None:
            await run_pool(share, one, self.settings.concurrency, limiter)

        if not self.negotiator.settled:  # (auto mode's probe has usually settled it)
            await self.fetch_one(todo[0])  # settles the retrieval form the workers will use
            todo = todo[1:]
        send, receive = anyio.create_memory_object_stream[workers.Result](math.inf)
        rate = self.transport.rate_limit

        def running(count: int) -> None:
            self.summary.count_processes(count)
            if rate is not None:  # --max-rate is shared once the workers run: each its part
                rate.set_rate(workers.rate_share(self.settings.max_rate, count))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.record_results, receive)
                with send:  # closed when the workers are done: the recorder then ends
                    await workers.run_in_processes(
                        todo,
                        replace(self.settings, http=self.transport.settled_http),  # no h2c probe
                        self.negotiator.current if self.negotiator.settled else None,
                        processes,
                        answered=self.transport.http_version is not None,
                        adaptive=self.settings.workers == 0,
                        near=workers.is_near(self.transport.quickest_reply),
                        local=local,
                        results=send,
                        running=running,
                        said=self.transport.said,
                    )
        finally:
            if rate is not None:
                rate.set_rate(self.settings.max_rate)
            with receive:
                self.record_arrived(receive)  # after a fatal error too: nothing committed is lost

    async def record_results(self, results: MemoryObjectReceiveStream[workers.Result]) -> None:
        """The workers' results as they arrive (a batch per message: one wake-up each)."""
        async for result in results:
            self.record_result(result)
            self.record_arrived(results)

    def record_arrived(self, results: MemoryObjectReceiveStream[workers.Result]) -> None:
        while True:
            try:
                result = results.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self.record_result(result)

    def record_result(self, result: workers.Result) -> None:
        if isinstance(result, workers.Moved):
            self.progress.advance(result.nbytes)
        elif isinstance(result, workers.Done):
            self.record_done(result.ref, result.committed)
        elif isinstance(result, workers.Failed):
            self.record_failure(result.ref, result.reason, result.status_code)
        else:  # the summary counts every process's
            self.throttle.signals += result.throttled
            self.policy.tally.retried += result.retried

    def bulk_fetcher(self) -> BulkFetcher:
        forms = candidates(self.settings.transfer_syntax or None, single_part=False)
        return BulkFetcher(
            self.transport,
            self.store,
            Negotiator(forms, remember_refusal=True),
        )

    async def choose_and_fetch_bulk(self, todo: Instances) -> Instances:
        """--mode auto: choose per study (strategy.py), fetch the series-mode studies in bulk;
        return what is left for the per-instance pool."""
        per_instance = Instances()
        in_bulk: list[Instances] = []  # a study each
        for study_uid, refs in todo.split(lambda study, _series: study).items():
            probe_size = None
            if strategy.needs_probe(len(refs)):
                committed = await self.fetch_one(refs[0])
                probe_size = committed.size if committed else None
                refs = refs[1:]
            choice = strategy.choose(study_uid, len(refs) + (probe_size is not None), probe_size)
            self.summary.strategy.append(choice)
            if choice.mode == "series":
                in_bulk.append(refs)
            else:
                per_instance.extend(refs)
        if in_bulk:
            bulk = self.bulk_fetcher()
            per_instance.extend(await self.fetch_in_bulk(in_bulk, "series", bulk))
            if bulk.refused is not None:
                self.summary.strategy = [
                    strategy.Choice(
                        c.study_uid,
                        "instance",
                        f"{c.why}; but the server refused it ({bulk.refused}): per instance",
                    )
                    if c.mode == "series"
                    else c
                    for c in self.summary.strategy
                ]
        return per_instance

    def whole_studies(self, todo: list[Instances]) -> set[str]:
        """The studies of `todo` whose every instance is wanted and missing: only those are
        worth a study response. Another study (narrowed by --series, --modality or a cohort
        line naming its series, or mostly on disk) goes series by series, or a study response
        would bring instances only to drop them."""
        if self.settings.series or self.settings.modalities:
            return set()
        wanted: Counter[str] = Counter()
        for part in todo:
            for (study_uid, _series_uid), count in part.series_counts().items():
                wanted[study_uid] += count
        return {uid for uid, count in wanted.items() if self.whole.get(uid) == count}

    async def fetch_in_bulk(self, todo: list[Instances], mode: str, bulk: BulkFetcher) -> Instances:
        """One multipart response per series (or, in study mode, per study wanted whole) of
        `todo` (a study in each item, or any instances in one); return the instances still
        missing. A series of which at most half is missing (a resumed run) is not streamed
        again: its missing instances are returned, to be fetched one by one."""
        base = self.transport.base_url
        by_study = self.whole_studies(todo) if mode == "study" else set()

        def url_of(study_uid: str, series_uid: str) -> str:
            if study_uid in by_study:
                return study_url(base, study_uid)
            return series_url(base, study_uid, series_uid)

        groups: dict[str, Instances] = {}
        for part in todo:
            for url, refs in part.split(url_of).items():
                if url in groups:  # (items of other studies never share a URL)
                    joined = groups[url] = Instances(groups[url])
                    joined.extend(refs)
                else:
                    groups[url] = refs
        one_by_one = Instances()
        for url, refs in list(groups.items()):
            if refs[0].study_uid in by_study:
                continue
            listed = self.listed[(refs[0].study_uid, refs[0].series_uid)]
            if len(refs) <= listed // 2:  # mostly on disk: stream only what is missing
                one_by_one.extend(groups.pop(url))
        if one_by_one:
            log.info("%d instances of partly present series: one by one", len(one_by_one))
        left: dict[str, Instances] = {}  # url -> what its response lacked

        async def one_group(item: tuple[str, Instances]) -> None:
            url, refs = item
            left[url] = await bulk.fetch(url, refs, self.progress.advance, self.record_done)

        await run_pool(list(groups.items()), one_group, self.settings.concurrency)
        missing = Instances()
        for url in groups:
            missing.extend(left.get(url, ()))
        if missing:
            log.info("%d instances missing from bulk responses; fetching one by one", len(missing))
        one_by_one.extend(missing)
        return one_by_one
