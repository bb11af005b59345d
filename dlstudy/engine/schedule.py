"""Decide what a run must fetch: what is on disk, complete and verified is skipped.

A file under its final name got there only after verification (store/files.py), and the manifest
records its size and digest. A file the manifest does not know (a crash between rename and
record, or a folder filled by another tool) is adopted after a header check and the
completeness walk; a file whose size disagrees with the manifest (or, with --verify, whose hash
does, or whose structure stops short of its end: a file an older version kept short) is
fetched again. With --verify a file whose digest the manifest did not take of the server's
bytes (unknown to it, or adopted) has nothing to be checked against: it is fetched again too,
and the new file replaces it as it commits (a failure leaves it, and is reported); the run
counts it present if the server's bytes were the file's, repaired if not.

What a file was asked as is part of its being present: one the manifest records fetched with
another --transfer-syntax than the run's (`*` or a UID, compared as given, not the syntax the
server chose) is fetched again, and replaced as it commits.

An instance the index holds under another study (one SOP Instance UID in two studies, or an
instance the server moved) is neither fetched nor adopted here: the plan sets it apart
(`elsewhere`), and the run asks the server whether the recorded one is still listed
(jobs/listing.py): a duplicate then, kept where the index has it; else a move, fetched.

A study a run recorded complete (store/completion.py) is taken from the index before anything
is asked of the server: a rerun of it costs one folder listing per series, no request.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..dicomweb.cohort import CohortItem
from ..dicomweb.completeness import check_complete
from ..dicomweb.verify import check_identity, read_header
from ..errors import IntegrityError
from ..model import Failure, InstanceRef, Instances
from ..settings import Settings
from ..store.completion import complete_from_index
from ..store.files import Store
from ..store.manifest import Entry, Manifest, digest_of

log = logging.getLogger(__name__)

# What the plan makes of a file on disk.
GOOD, BAD, UNVERIFIED, UNREADABLE = "good", "bad", "unverified", "unreadable"
ASKED_OTHERWISE = "asked otherwise"  # fetched with another --transfer-syntax
ELSEWHERE = "elsewhere"  # the index holds its SOP Instance UID under another study


@dataclass
class Plan:
    todo: Instances = field(default_factory=Instances)
    skipped: int = 0  # moved ones included
    moved: int = 0  # found where another --layout put them, moved where this one puts them
    repaired: list[str] = field(default_factory=list)  # SOP UIDs whose file was bad
    unverifiable: int = 0  # --verify: files without a digest of the server's bytes
    asked_otherwise: int = 0  # files fetched with another --transfer-syntax than this run's
    # --verify: SOP UID -> the digest of each such file as found, which the server's bytes
    # fetched again are compared with (the same: it was present; else it was repaired)
    unverified: dict[str, str] = field(default_factory=dict)
    # instances the index holds under another study, with that entry: neither fetched nor
    # adopted before the server says whether they moved
    elsewhere: list[tuple[InstanceRef, Entry]] = field(default_factory=list)


def entry_for(
    store: Store, ref: InstanceRef, path: Path, size: int, digest: str, syntax: str
) -> Entry:
    """The entry of a file committed (or adopted) by a run asking for `syntax`."""
    relative = store.relative(path)
    return Entry(ref.study_uid, ref.series_uid, ref.sop_uid, relative, size, digest, syntax)


def names_whole_study(item: CohortItem) -> bool:
    """A study UID, or a plain list's UID (which may be one: the index knows)."""
    return item.level in ("study", "unknown")


def trusts_index(settings: Settings) -> bool:
    """Whether a study the index records complete may be taken without asking the server:
    not with --recheck or --verify, nor with filters (the record is of the whole study)."""
    return not (settings.recheck or settings.verify or settings.series or settings.modalities)


def complete_in_index(
    items: Sequence[CohortItem], store: Store, manifest: Manifest, syntax: str
) -> tuple[list[CohortItem], dict[str, int]]:
    """The items still to resolve, and the studies (-> instances) the index records complete
    with every file in place, fetched asking for `syntax`."""
    rest: list[CohortItem] = []
    complete: dict[str, int] = {}
    for item in items:
        whole = names_whole_study(item)
        count = complete_from_index(manifest, store, item.uid, syntax) if whole else None
        if count is None:
            rest.append(item)
        else:
            complete[item.uid] = count
    return rest, complete


def completed_studies(
    items: Sequence[CohortItem], listed: Mapping[str, int], failures: Sequence[Failure]
) -> dict[str, int]:
    """The studies of a finished run to record complete (-> instances): named whole by an
    item, listed whole (`listed`: study -> its instances), and no failure names them
    (every listed instance committed or present).

    A plain list's item whose listing broke has no study to its failure: then none is
    recorded, rather than one whose listing may be part of it.
    """
    if any(f.study_uid is None and f.status_code is None for f in failures):
        return {}
    failed = {f.study_uid for f in failures}
    named = {item.uid for item in items if names_whole_study(item)}
    return {s: n for s, n in listed.items() if s in named and s not in failed}


def plan(
    refs: Iterable[InstanceRef], store: Store, manifest: Manifest, *, verify: bool, syntax: str
) -> Plan:
    """What of `refs` to fetch, for a run asking for transfer syntax `syntax`."""
    result = Plan()
    # The names in the folder of the instances at hand: refs come series by series, so one
    # listing is kept at a time (a folder met again is listed again), and as hashes: about half
    # of what the names take in a folder of a million files. A hash shared by another name only
    # costs the lstat below.
    folder_listed: Path | None = None
    names: frozenset[int] | None = frozenset()
    relocate = _Relocation(store, manifest)
    held_anywhere = not manifest.is_empty()  # else no lookup per instance (a first run)
    for ref in refs:
        final = store.final_path(ref)
        folder = final.parent
        if folder != folder_listed:
            # Nothing is read through a link out of OUT: its instances are fetched, and their
            # commit reports the link.
            folder_listed = folder
            if store.leads_outside(folder):
                names = frozenset()
            elif verify:
                names = None  # every file present is read anyway: a listing saves nothing
            else:
                names = _names(folder)
        # One listing per folder instead of a stat() per instance:
        status = None if names is not None and hash(final.name) not in names else _lstat(final)
        if status is None and relocate.moved(ref, final):
            result.moved += 1  # and checked below like any file in place
            status = _lstat(final)
        if status is None:
            held = _held_elsewhere(ref, manifest) if held_anywhere else None
            if held is None:
                result.todo.append(ref)
            else:
                result.elsewhere.append((ref, held))
            continue
        if not stat.S_ISREG(status.st_mode):  # a folder, link or pipe in the way: never read
            result.todo.append(ref)  # the commit replaces it, or reports a folder
            continue
        try:
            verdict = _judge(ref, final, status.st_size, store, manifest, verify, syntax)
            if verdict == UNVERIFIED:
                result.unverified[ref.sop_uid] = digest_of(final)
        except OSError as exc:  # another user's file, made unreadable on a shared disk
            log.warning("cannot read %s (%s); fetching it again", final, exc.strerror or exc)
            verdict = UNREADABLE
        if verdict == GOOD:
            result.skipped += 1
        elif verdict == ELSEWHERE:  # a second copy on disk (an older dlstudy): left there
            held = _held_elsewhere(ref, manifest)
            assert held is not None
            result.elsewhere.append((ref, held))
        elif verdict in (UNVERIFIED, UNREADABLE, ASKED_OTHERWISE):  # kept until replaced
            result.unverifiable += verdict == UNVERIFIED
            result.asked_otherwise += verdict == ASKED_OTHERWISE
            result.todo.append(ref)
        else:
            final.unlink(missing_ok=True)
            result.repaired.append(ref.sop_uid)
            result.todo.append(ref)
    if result.unverifiable:
        log.warning(
            "%d files on disk have no digest of the server's bytes in the manifest (found there, "
            "not recorded as downloaded: a lost or moved-aside index?): fetching them again to "
            "verify them",
            result.unverifiable,
        )
    if result.asked_otherwise:
        log.warning(
            "%d files on disk were fetched asking for another --transfer-syntax than %r: "
            "fetching them again",
            result.asked_otherwise,
            syntax,
        )
    return result


def _lstat(path: Path) -> os.stat_result | None:
    """None when nothing is at `path`, or it cannot be looked at (a folder this user may not
    search, on a shared disk): it is fetched, and writing it says why it cannot be."""
    try:
        return path.lstat()
    except OSError:
        return None


class _Relocation:
    """An instance the manifest records at another path (a run with another --layout put it
    there), under the same study and series, is moved where this layout puts it, not fetched
    again: the manifest keeps one path per instance, and a second copy would be one it does
    not know."""

    def __init__(self, store: Store, manifest: Manifest) -> None:
        self.store = store
        self.manifest = manifest
        self._known: dict[str, bool] = {}  # study -> whether the manifest has any of it

    def moved(self, ref: InstanceRef, final: Path) -> bool:
        study = ref.study_uid
        known = self._known.get(study)
        if known is None:
            if len(self._known) >= 4096:
                self._known.clear()
            known = self._known[study] = self.manifest.knows_study(study)
        if not known:
            return False  # a study never downloaded here: no lookup per instance
        entry = self.manifest.get(ref.sop_uid)
        relative = self.store.relative(final)
        if entry is None or entry.path == relative:
            return False
        if (entry.study, entry.series) != (ref.study_uid, ref.series_uid):
            # Not another layout: the server lists it in another series (or study) than the
            # file holds. Fetched again, its header is checked against the listing.
            return False
        if not self.store.move_in(entry.path, final, entry.size):
            return False
        self.manifest.record(
            replace(entry, path=relative), adopted=self.manifest.is_adopted(entry.sop)
        )
        return True


def _held_elsewhere(ref: InstanceRef, manifest: Manifest) -> Entry | None:
    """The entry of `ref`'s SOP Instance UID if the index holds it under another study."""
    entry = manifest.get(ref.sop_uid)
    return entry if entry is not None and entry.study != ref.study_uid else None


def _names(folder: Path) -> frozenset[int] | None:
    """The hashes of the names in `folder` (none if it does not exist); None if it cannot be
    listed, and each file is then looked at on its own."""
    try:
        with os.scandir(folder) as entries:
            return frozenset(hash(entry.name) for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    except OSError:
        return None


def _judge(
    ref: InstanceRef,
    final: Path,
    size: int,
    store: Store,
    manifest: Manifest,
    verify: bool,
    syntax: str,
) -> str:
    """GOOD: kept. BAD: to be removed and fetched again. UNVERIFIED (--verify only): whole,
    but the manifest has no digest of the server's bytes to check it against. ASKED_OTHERWISE:
    fetched asking for another transfer syntax than `syntax`, to be fetched again. ELSEWHERE:
    the manifest holds the SOP Instance UID under another study."""
    entry = manifest.get(ref.sop_uid)
    if entry is not None and entry.path == store.relative(final):
        if entry.syntax != syntax:
            return ASKED_OTHERWISE
        if entry.size != size:
            log.warning("%s: size %d, manifest says %d; fetching again", final, size, entry.size)
            return BAD
        if verify and manifest.is_adopted(ref.sop_uid):  # its digest is of itself
            return UNVERIFIED if _complete(ref, final, size) else BAD
        if verify and digest_of(final, entry.algorithm) != entry.digest:
            log.warning("%s: %s differs from the manifest; fetching again", final, entry.algorithm)
            return BAD
        # A file an older version kept short matches its own digest: --verify walks it too.
        return GOOD if not verify or _complete(ref, final, size) else BAD
    if entry is not None and entry.study != ref.study_uid:
        return ELSEWHERE  # not adopted: that would take the entry from the other study
    if not _is_instance(ref, final, size):
        return BAD
    if verify:
        return UNVERIFIED
    # What it was asked as is unknown: taken as this run's ask (--verify fetches it again).
    manifest.record(entry_for(store, ref, final, size, digest_of(final), syntax), adopted=True)
    return GOOD


def _is_instance(ref: InstanceRef, final: Path, size: int) -> bool:
    """Whether the file at `final` holds the instance `ref` names, whole."""
    try:
        info = read_header(final, label=f"instance {ref.sop_uid}")
        check_identity(
            info, study_uid=ref.study_uid, series_uid=ref.series_uid, sop_uid=ref.sop_uid
        )
    except IntegrityError as exc:
        log.warning("%s is not the instance it is named after (%s); fetching again", final, exc)
        return False
    return _complete(ref, final, size, info.transfer_syntax)


def _complete(ref: InstanceRef, final: Path, size: int, transfer_syntax: str | None = None) -> bool:
    """Whether the Part 10 structure ends where the file does (dicomweb/completeness.py)."""
    label = f"instance {ref.sop_uid}"
    try:
        if transfer_syntax is None:
            transfer_syntax = read_header(final, label=label).transfer_syntax
        check_complete(final, transfer_syntax=transfer_syntax, size=size, label=label)
    except IntegrityError as exc:
        log.warning("%s: %s; fetching again", final, exc)
        return False
    return True
