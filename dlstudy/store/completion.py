"""Whether a study is complete in the output folder, from the index alone: what a rerun, `sync`
and `catalog status` decide without asking the server for the study's instances.

Each file the index lists is confirmed with one lstat: a regular file (a link at its name does
not count) of the size the index recorded, so a file cut short or emptied since is not taken as
done. A folder a link leads out of OUT counts as empty, and a row naming a file out of OUT
(through `..`, or from `/`: dlstudy never writes one) as missing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .files import Store
from .manifest import Manifest


class Folders:
    """Which files the index lists are in place in OUT (the link check kept per folder)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._root = str(store.root)
        self._outside: dict[str, bool] = {}

    def has(self, path: str, size: int) -> bool:
        """Whether `path` (relative to OUT, forward slashes) is a regular file of `size` bytes."""
        if path.startswith("/") or ".." in path.split("/"):  # a planted row: out of OUT
            return False
        if self._leads_outside(path.rpartition("/")[0]):
            return False
        try:  # lstat: a link at the file's name is no file of ours
            found = os.lstat(os.path.join(self._root, path))
        except OSError:
            return False
        return stat.S_ISREG(found.st_mode) and found.st_size == size

    def _leads_outside(self, folder: str) -> bool:
        """Whether a link leads `folder` (relative to OUT) out of OUT: an lstat per folder on
        the way, and the full resolution only where one of them is a link."""
        outside = self._outside.get(folder)
        if outside is None:
            parent = folder.rpartition("/")[0]
            where = os.path.join(self._root, folder)
            outside = bool(parent) and self._leads_outside(parent)
            if not outside:
                try:
                    link = stat.S_ISLNK(os.lstat(where).st_mode)
                except OSError:
                    link = False  # nothing there: nothing to read either
                outside = link and self.store.leads_outside(Path(where))
            self._outside[folder] = outside
        return outside


@dataclass(frozen=True, slots=True)
class Present:
    """What the index has of a study: its entries, how many of their files are in place,
    and how many series they are of."""

    entries: int
    there: int
    series: int

    def whole(self, instances: int, series: int | None) -> bool:
        """Every file in place, at least `instances` of them, of at least `series` series
        (when the server counts them: a study that lost an instance and gained one in a new
        series has its count of instances unchanged)."""
        enough = series is None or self.series >= series
        return self.entries >= instances and self.there == self.entries and enough


def present_files(manifest: Manifest, store: Store, study: str) -> Present:
    """What the index has of `study`, and how much of it is on disk."""
    folders = Folders(store)
    entries = there = 0
    series: set[str] = set()
    for path, size, series_uid in manifest.files_of(study):
        entries += 1
        there += folders.has(path, size)
        series.add(series_uid)
    return Present(entries, there, len(series))


def complete_from_index(manifest: Manifest, store: Store, study: str, syntax: str) -> int | None:
    """The instance count of a study a run recorded complete under the current layout, when
    every file the index lists for it is in place, fetched asking for transfer syntax `syntax`;
    None otherwise (ask the server)."""
    record = manifest.completion(study)
    if record is None or record.layout != store.layout:
        return None
    if manifest.asked_otherwise(study, syntax):
        return None
    folders = Folders(store)
    entries = 0
    for path, size, _ in manifest.files_of(study):
        if not folders.has(path, size):
            return None
        entries += 1
    return entries if entries >= record.instances else None


def is_complete(
    manifest: Manifest,
    store: Store,
    study: str,
    instances: int | None,
    series: int | None = None,
    *,
    syntax: str,
) -> bool:
    """The server counts `instances` in the study, and the index lists at least that many of
    its files, all in place, under the current layout as far as the study's completion record
    says (a run with another --layout moves them), of as many series as the server counts
    (`series`, when it does: Present.whole), and all fetched asking for transfer syntax
    `syntax`.

    Only the studies asked about are looked at, so a nightly run over a large mirror lists a
    handful of folders, not all of them.
    """
    if not instances:
        return False
    record = manifest.completion(study)
    if record is not None and record.layout != store.layout:
        return False
    if manifest.asked_otherwise(study, syntax):
        return False
    return present_files(manifest, store, study).whole(instances, series)
