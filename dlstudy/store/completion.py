"""Whether a study is complete in the output folder, from the index alone: what a rerun, `sync`
and `catalog status` decide without asking the server for the study's instances.

Files are confirmed with an lstat each for the first few of a folder, then one listing of the
folder (os.scandir), not a stat per file: a study of a million instances in one series folder
is eight lstats and one listing. Only regular files count (a link at a file's name does not),
and a folder a link leads out of OUT counts as empty.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .files import Store
from .manifest import Manifest

# Files of one folder looked at one by one (an lstat each) before the folder is listed: a
# listing costs more than a few lstats (docs/decisions.md).
LOOKED_AT_ALONE = 8


class Folders:
    """The regular files of each folder of OUT: the first few looked at one by one, then the
    folder listed once and kept as hashes of its names (a million names as str would take ten
    times the memory; a false match is a 1 in 2^64 event per name)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._root = str(store.root)
        self._names: dict[str, set[int]] = {}
        self._looked_at: dict[str, int] = {}
        self._outside: dict[str, bool] = {}

    def has(self, path: str) -> bool:
        """Whether `path` (relative to OUT, forward slashes) is a regular file there."""
        folder, _, name = path.rpartition("/")
        names = self._names.get(folder)
        if names is None:
            looked_at = self._looked_at[folder] = self._looked_at.get(folder, 0) + 1
            if looked_at <= LOOKED_AT_ALONE:
                return self._is_file(folder, path)
            names = self._names[folder] = self._list(folder)
        return hash(name) in names

    def _is_file(self, folder: str, path: str) -> bool:
        if self._leads_outside(folder):
            return False
        try:  # lstat: a link at the file's name is no file of ours
            return stat.S_ISREG(os.lstat(os.path.join(self._root, path)).st_mode)
        except OSError:
            return False

    def _list(self, folder: str) -> set[int]:
        where = os.path.join(self._root, folder)
        if self._leads_outside(folder):
            return set()
        try:
            with os.scandir(where) as found:
                return {hash(e.name) for e in found if e.is_file(follow_symlinks=False)}
        except OSError:  # missing, not a folder, unreadable: nothing there can be trusted
            return set()

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


def present_files(manifest: Manifest, store: Store, study: str) -> tuple[int, int]:
    """(entries of the study, how many of their files are in place)."""
    folders = Folders(store)
    entries = there = 0
    for path in manifest.paths_of(study):
        entries += 1
        there += folders.has(path)
    return entries, there


def complete_from_index(manifest: Manifest, store: Store, study: str) -> int | None:
    """The instance count of a study a run recorded complete under the current layout, when
    every file the index lists for it is in place; None otherwise (ask the server)."""
    record = manifest.completion(study)
    if record is None or record.layout != store.layout:
        return None
    folders = Folders(store)
    entries = 0
    for path in manifest.paths_of(study):
        if not folders.has(path):
            return None
        entries += 1
    return entries if entries >= record.instances else None


def is_complete(manifest: Manifest, store: Store, study: str, instances: int | None) -> bool:
    """The server counts `instances` in the study, and the index lists at least that many of
    its files, all in place.

    Only the studies asked about are looked at, so a nightly run over a large mirror lists a
    handful of folders, not all of them.
    """
    if not instances:
        return False
    entries, there = present_files(manifest, store, study)
    return entries >= instances and there == entries
