"""A list's items -> the instances they name, through QIDO: many items at once, each instance
once, an item the server does not have (or cannot list completely) a failure of its own.

`Lister.resolve` serves a whole list or one part of a long one (jobs/parts.py); jobs/run.py
plans and fetches what it lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from ..dicomweb.cohort import CohortItem
from ..dicomweb.locate import InAnotherShard, Locator, NotFound
from ..dicomweb.resolve import Resolver
from ..dicomweb.shard import Shard
from ..engine.schedule import names_whole_study
from ..errors import IncompleteListingError
from ..flow.pool import run_pool
from ..flow.retry import RetryPolicy
from ..http.client import Transport
from ..http.urls import is_valid_uid
from ..model import Failure, InstanceRef, Instances
from ..report.landed import FAILED, REPEAT, ReportWriter
from ..report.printable import printable
from ..report.progress import ProgressSink
from ..report.summary import Summary
from ..report.words import counted
from ..settings import Settings
from ..store.files import Store
from ..store.manifest import Entry, Manifest
from .parts import EarlierParts

log = logging.getLogger(__name__)

# Items of a list being resolved at once (a study lists its series QIDO_CONCURRENCY at a time
# when it cannot be listed in one request): a list of 100,000 small studies is round trips.
RESOLVING_AT_ONCE = 32


class Listing(NamedTuple):
    """What the items of a list (or a part of it) name: every instance, each once, and the
    studies listed whole with their instance counts."""

    refs: Instances
    whole: dict[str, int]


class Lister:
    """Lists items for one run; the run's summary gets each study, the total and the failures
    of listing (and the --report its rows)."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        policy: RetryPolicy,
        store: Store,
        manifest: Manifest,
        progress: ProgressSink,
        summary: Summary,
        report: ReportWriter | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.manifest = manifest
        self.progress = progress
        self.summary = summary
        self.report = report
        # One resolver for every part: what it learns of the server (whether it lists many
        # studies to a search) holds for the whole run.
        self.resolver = Resolver(
            transport,
            page_size=settings.qido_page_size,
            policy=policy,
            series_filter=settings.series,
            modality_filter=settings.modalities,
        )
        self.named: dict[str, str] = {}  # SOP UID -> the list line that named the instance
        # The summary's studies as a set, kept across parts (the index's are in it already).
        self._studies = set(summary.studies)
        self.incomplete = False  # an item's listing could not be completed
        self.elsewhere = 0  # items another --shard downloads (found in a study it owns)
        # Repeats of lines naming no study (a sharded run): reported by the shard that takes
        # the line once it is looked up, as every other repeat is by the line's shard.
        self._repeats_later: dict[int, list[int]] = {}
        self._repeats_label = ""

    def repeats_later(self, label: str, later: dict[int, list[int]]) -> None:
        """The repeats of lines naming no study (line -> its repeats' lines), to report once
        this shard takes their line (its study found in this shard, or the line failing here)."""
        self._repeats_label, self._repeats_later = label, later

    async def resolve_into(
        self,
        listings: list[Listing],
        items: Sequence[CohortItem],
        earlier: EarlierParts | None,
        last: bool,
    ) -> None:
        listings.append(await self.resolve(items, earlier, last=last))

    async def resolve(
        self, items: Sequence[CohortItem], earlier: EarlierParts | None = None, *, last: bool = True
    ) -> Listing:
        """Every instance the items name, each once, in list order (and none an earlier part
        of the list had: `earlier`, which learns this part's unless it is the `last`), and how
        many each study listed whole has. Items are resolved RESOLVING_AT_ONCE at a time: a
        list of 100,000 small studies is round trips, not bytes."""
        resolver = self.resolver
        shard = Shard(*self.settings.in_shard) if self.settings.in_shard else None
        if shard is not None:  # (the CLI has routed what it could; a library caller not)
            kept = [item for item in items if looked_up(item) or shard.owns(item.shard_key)]
            self.elsewhere += len(items) - len(kept)
            items = kept
        locator = Locator(resolver, shard.owns if shard else None)
        found = [Instances() for _ in items]
        # Items resolve concurrently; their failures are reported in list order afterwards.
        failed: dict[int, tuple[str, int | None]] = {}

        async def one(index: int) -> None:
            item = items[index]
            try:
                found[index] = await locator.instances(item)
            except InAnotherShard:
                self.elsewhere += 1
            except NotFound as exc:
                if shard is None or item.level == "unknown" or shard.owns(item.shard_key):
                    failed[index] = (str(exc), 404)  # said once: by the shard of its UID
            except IncompleteListingError as exc:  # this item fails; the others go on
                failed[index] = (str(exc), None)

        for item in items:
            if item.level == "study":
                self._note_study(item.uid)

        # Studies (and plain UIDs, which are studies more often than not) many to a search
        # where the server proves each answer complete; the rest are resolved one by one.
        listed_together = await resolver.studies_in_batches(
            [item.uid for item in items if item.level in ("study", "unknown")]
        )

        async def resolve_one(index: int) -> None:
            item = items[index]
            if item.level == "study":
                self.progress.resolving(item.uid)
            refs = listed_together.get(item.uid) if item.level in ("study", "unknown") else None
            if refs is None:
                await one(index)
            else:
                found[index] = refs

        await run_pool(range(len(items)), resolve_one, RESOLVING_AT_ONCE)
        listed_together.clear()
        failed.update(await self._mismatched_rows(items, found, locator))
        if shard is not None and shard.count > 1:  # (one shard has all of them: no other)
            _warn_routed_by_own_uid(items, found)
        for item, group in zip(items, found, strict=True):
            if item.where and item.level == "instance" and group:
                self.named.setdefault(item.uid, item.where)  # a failed fetch names the line
        for index in sorted(failed):
            reason, status = failed[index]
            self.missing(items[index], reason, status=status)
        if self._repeats_later:
            self._report_repeats_taken(items, found, failed)
        self.incomplete |= any(status is None for _, status in failed.values())
        # A study's count for its completion record is its whole listing's, instances an
        # earlier part listed included.
        whole = {
            item.uid: len(group)
            for item, group in zip(items, found, strict=True)
            if names_whole_study(item) and group and group[0].study_uid == item.uid
        }
        refs = self.unique_valid(found, earlier)
        if earlier is not None and not last:
            partly = (
                ref
                for item, group in zip(items, found, strict=True)
                if item.uid not in whole
                for ref in group
            )
            earlier.add(whole, partly)
        return Listing(refs, whole)

    def _report_repeats_taken(
        self,
        items: Sequence[CohortItem],
        found: list[Instances],
        failed: dict[int, tuple[str, int | None]],
    ) -> None:
        for index, item in enumerate(items):
            if self.report is not None and (found[index] or index in failed):
                for line in self._repeats_later.pop(item.line, ()):
                    report_repeat(self.report, self._repeats_label, item, line)

    async def _mismatched_rows(
        self, items: Sequence[CohortItem], found: list[Instances], locator: Locator
    ) -> dict[int, tuple[str, int | None]]:
        """The rows naming study, series and instance whose UIDs do not belong together, with
        their reasons; their instances are taken out of `found`.

        Such a row is fetched as named, unasked; it would take its SOP Instance UID from a
        right row (or a listing) naming the same instance, and then fail as not found. So
        where two rows give one SOP Instance UID different parents, or a listing has it
        elsewhere, the server's answer (the listing's, or one lookup) decides: the rows that
        agree with it are kept, the others fail as what they are, the list's mistake."""
        rows: dict[str, list[int]] = {}  # SOP UID -> the rows naming study, series and it
        for index, item in enumerate(items):
            if item.sop_uid is not None and _named_fully(item):
                rows.setdefault(item.sop_uid, []).append(index)
        if not rows:
            return {}
        where: dict[str, set[tuple[str, str]]] = {}  # SOP UID -> its study and series, listed
        for index, group in enumerate(found):
            if not _named_fully(items[index]):  # what the server listed
                for ref in group:
                    if ref.sop_uid in rows:
                        where.setdefault(ref.sop_uid, set()).add((ref.study_uid, ref.series_uid))
        mismatched: dict[int, tuple[str, int | None]] = {}
        for sop_uid, indexes in rows.items():
            given = {(items[i].study_uid, items[i].series_uid) for i in indexes}
            if sop_uid not in where:
                if len(given) == 1:
                    continue  # one place for it: fetched as named
                try:
                    where[sop_uid] = {
                        (r.study_uid, r.series_uid) for r in await locator.where_is(sop_uid)
                    }
                except IncompleteListingError:
                    continue  # not known better: fetched as named
            for index in indexes:
                item = items[index]
                if (item.study_uid, item.series_uid) not in where[sop_uid]:
                    mismatched[index] = (_mismatch(item, where[sop_uid]), 404)
                    found[index] = Instances()
        return mismatched

    def missing(self, item: CohortItem, reason: str, *, status: int | None = 404) -> None:
        """An item the server does not have (or could not list): a failure of its own, the
        rest goes on."""
        if item.where:
            reason = f"{item.where}: {reason}"
        study = item.study_uid or (item.uid if item.level == "study" else None)
        if item.level == "unknown" and status == 404:
            # Found at no level: under the level asked first, so the row names the UID its
            # line gave. (One whose listing broke keeps none: see completed_studies.)
            study = item.uid
        failure = Failure(study, item.series_uid, None, reason, status)
        self.summary.failures.append(failure)
        if self.report is not None:
            self.report.row(FAILED, study, item.series_uid, item.sop_uid, reason=reason)

    def series_not_found(self) -> None:
        """Each --series value no study of the run has: a failure of its own, or a typo among
        right values passes unseen (exit 0). Not said by a shard (another shard's studies may
        have it), nor when a listing was cut short (the series may be in what was not read)."""
        if self.incomplete or (self.settings.in_shard and self.settings.in_shard[1] > 1):
            return
        for uid in self.settings.series:
            if uid not in self.resolver.series_found:
                reason = f"--series {uid}: none of the studies asked for has this series"
                self.summary.failures.append(Failure(None, uid, None, reason, 404))
                if self.report is not None:
                    self.report.row(FAILED, None, uid, None, reason=reason)

    def unique_valid(self, found: list[Instances], earlier: EarlierParts | None) -> Instances:
        """Each instance once; of two under one SOP Instance UID, the one the index holds
        (else the first listed), whichever order the run lists them in."""
        refs = Instances()
        seen: dict[str, tuple[str, str]] = {}  # SOP Instance UID -> its study and series
        yielded: set[tuple[str, str, str]] = set()  # (SOP, study, series) kept, then not
        for ref in (ref for group in found for ref in group):
            where = seen.get(ref.sop_uid)
            if where == (ref.study_uid, ref.series_uid) or (
                earlier is not None and earlier.listed(ref)
            ):
                continue  # listed twice (a study and one of its series): fetched once
            if where is not None and self._holds(ref):  # the one kept so far yields to it
                self._duplicate(InstanceRef(*where, ref.sop_uid), (ref.study_uid, ref.series_uid))
                yielded.add((ref.sop_uid, *where))
                seen[ref.sop_uid] = (ref.study_uid, ref.series_uid)
                refs.append(ref)  # (counted as the other was)
                continue
            if where is not None:  # one UID for two instances: a broken archive
                self._duplicate(ref, where)
                continue
            seen[ref.sop_uid] = (ref.study_uid, ref.series_uid)
            self.summary.total += 1
            self._note_study(ref.study_uid)
            if self.store.is_valid(ref):
                refs.append(ref)
            else:
                self._invalid(ref)
        if yielded:
            refs = Instances(
                r for r in refs if (r.sop_uid, r.study_uid, r.series_uid) not in yielded
            )
        return refs

    def _holds(self, ref: InstanceRef) -> bool:
        """Whether the index holds `ref`'s SOP Instance UID in its study and series."""
        entry = self.manifest.get(ref.sop_uid)
        return entry is not None and (entry.study, entry.series) == (ref.study_uid, ref.series_uid)

    async def held_elsewhere(self, held: list[tuple[InstanceRef, Entry]]) -> Instances:
        """Of listed instances the index holds under another study (`held`: each with that
        entry), those to fetch: moved on the server, no longer listed where the index has
        them. One listing per series the index names. The others are duplicates, kept where
        the index has them (a listing that fails keeps them too, and fails them)."""
        locator = Locator(self.resolver)
        still: dict[tuple[str, str], set[str] | str] = {}  # series -> its SOPs, or a failure
        for _, entry in held:
            place = (entry.study, entry.series)
            if place not in still:
                try:
                    listed = await locator.instances(CohortItem(*place))
                    still[place] = set(listed.sop_uids())
                except NotFound:
                    still[place] = set()
                except IncompleteListingError as exc:
                    still[place] = str(exc)
        moved = Instances()
        for ref, entry in held:
            there = still[(entry.study, entry.series)]
            if isinstance(there, str):
                where = f"series {entry.series} of study {entry.study}"
                reason = (
                    f"instance {ref.sop_uid} of series {ref.series_uid}: the index has it in "
                    f"{where}, which could not be listed to tell whether it moved: {there}"
                )
                self._fail_listed(ref, reason)
            elif ref.sop_uid in there:
                self._duplicate(ref, (entry.study, entry.series), in_total=True)
            else:
                moved.append(ref)
        if moved:
            ref, entry = next((r, e) for r, e in held if r.sop_uid == moved[0].sop_uid)
            log.warning(
                "%s changed study on the server (instance %s, now in study %s, was in study "
                "%s): fetched under the new one; the old %s left in place, out of the index "
                "(%s%s)",
                counted(len(moved), "instance", "instances"),
                ref.sop_uid,
                ref.study_uid,
                entry.study,
                "file is" if len(moved) == 1 else "files are",
                "" if len(moved) == 1 else "the first: ",
                self.store.root / entry.path,
            )
        return moved

    def _invalid(self, ref: InstanceRef) -> None:
        """An instance the server lists under a UID that is no UID (never a file name): it
        fails, counted and reported like any other."""
        named = (("study", ref.study_uid), ("series", ref.series_uid), ("instance", ref.sop_uid))
        bad = next((what, uid) for what, uid in named if not is_valid_uid(uid))
        reason = (
            f"instance {ref.sop_uid[:80]!r}: the server lists it with an invalid {bad[0]} UID "
            f"{bad[1][:80]!r} (a UID is digits and dots, at most 64 characters): not downloaded"
        )
        self.summary.failures.append(
            Failure(ref.study_uid, ref.series_uid, ref.sop_uid, reason, None)
        )
        if self.report is not None:
            self.report.row(FAILED, ref.study_uid, ref.series_uid, ref.sop_uid, reason=reason)

    def _duplicate(
        self, ref: InstanceRef, where: tuple[str, str], *, in_total: bool = False
    ) -> None:
        """A second instance under a SOP Instance UID already listed elsewhere (or held there
        by the index): it cannot be stored and recorded beside the first, so it fails (the run
        does not end as if whole). `in_total`: already counted in the run's total."""
        study, series = where
        place = f"series {series}" if study == ref.study_uid else f"study {study}"
        reason = (
            f"instance {ref.sop_uid} of series {ref.series_uid}: the server lists the same "
            f"SOP Instance UID in {place} too; only that one is downloaded"
        )
        self._fail_listed(ref, reason, in_total=in_total)

    def _fail_listed(self, ref: InstanceRef, reason: str, *, in_total: bool = True) -> None:
        if not in_total:
            self.summary.total += 1
        self.summary.failures.append(
            Failure(ref.study_uid, ref.series_uid, ref.sop_uid, reason, None)
        )
        if self.report is not None:
            self.report.row(FAILED, ref.study_uid, ref.series_uid, ref.sop_uid, reason=reason)

    def _note_study(self, study_uid: str) -> None:
        if study_uid not in self._studies:
            self._studies.add(study_uid)
            self.summary.studies.append(study_uid)

    def nothing_matched_message(self, items: Sequence[CohortItem]) -> str:
        missing = [f for f in self.summary.failures if f.sop_instance_uid is None]
        if len(items) == 1 and missing:
            return missing[0].reason
        if len(missing) == len(items):
            if all(item.level == "study" for item in items):
                return f"none of the {len(items)} studies was found on the server"
            return f"none of the {len(items)} listed items was found on the server"
        if self.settings.series or self.settings.modalities:
            filters = [("--series", self.settings.series), ("--modality", self.settings.modalities)]
            given = " and ".join(f"{flag} {_listed(values)}" for flag, values in filters if values)
            return f"no instance matched {given}"
        return "the requested studies have no instances"


def _listed(values: Sequence[str], most: int = 3) -> str:
    """`values` as given, comma-separated, the first `most` of a long list, and how many more."""
    shown = ", ".join(printable(value[:80]) for value in values[:most])
    return shown + (f" (and {len(values) - most} more)" if len(values) > most else "")


def _mismatch(item: CohortItem, where: set[tuple[str, str]]) -> str:
    """Why a row naming study, series and instance is not fetched: its UIDs do not belong
    together, the server has the instance elsewhere (or nowhere)."""
    said = f"instance {item.sop_uid} is not in series {item.series_uid} of study {item.study_uid}"
    if not where:
        return f"{said}: the server has no instance {item.sop_uid}; not downloaded"
    study, series = sorted(where)[0]
    return (
        f"{said} (the row's UIDs do not belong together): the server has it in series "
        f"{series} of study {study}; this row is not downloaded"
    )


def _warn_routed_by_own_uid(items: Sequence[CohortItem], found: list[Instances]) -> None:
    """Say when a plain list's UID, which --shard routed by itself before its level was known,
    is a series or an instance: its study may be another shard's, and another line naming
    that study has that shard download the same instances."""
    lower = [
        item
        for item, group in zip(items, found, strict=True)
        if item.level == "unknown" and group and group[0].study_uid != item.uid
    ]
    if lower:
        label, _, _ = lower[0].where.rpartition(": line ")
        lines = ", ".join(str(item.line) for item in lower[:5])
        lines += ", ..." if len(lower) > 5 else ""
        where = lower[0].where if len(lower) == 1 or not label else f"{label}: lines {lines}"
        log.warning(
            "%s: %d plain UID%s a series or instance: --shard routed %s by its own UID, not its "
            "study's, so another shard may download the same instances; give series and "
            "instances in a CSV's SeriesInstanceUID / SOPInstanceUID column (routed by their "
            "study) to keep shards disjoint",
            where,
            len(lower),
            " is" if len(lower) == 1 else "s are each",
            "it" if len(lower) == 1 else "them",
        )


def _named_fully(item: CohortItem) -> bool:
    """A row naming study, series and instance: fetched as named, no listing asked."""
    return None not in (item.study_uid, item.series_uid, item.sop_uid)


def looked_up(item: CohortItem) -> bool:
    """A series or instance named without its study: its shard is known once it is found."""
    return item.study_uid is None and item.any_uid is None


def report_repeat(report: ReportWriter, label: str, item: CohortItem, line: int) -> None:
    """The `repeat` row of `line`, which names what `item`'s line named: with its UIDs."""
    where = f"{label}: line {line}" if label else f"line {line}"
    study = item.study_uid or item.any_uid  # a plain UID as its own failure has it
    reason = f"{where}: repeat of line {item.line}, fetched once"
    report.row(REPEAT, study, item.series_uid, item.sop_uid, reason=reason)
