"""Whether a study is complete in the output folder, from the manifest alone: what `sync` and
`catalog status` decide without asking the server for the study's instances."""

from __future__ import annotations

from .files import Store
from .manifest import Manifest
from .safe_files import is_regular_file


def manifest_paths(store: Store) -> dict[str, list[str]]:
    """Study UID -> the paths (relative to OUT) of its instances the manifest lists."""
    manifest = Manifest(store.root, store.state_dir)
    try:
        paths: dict[str, list[str]] = {}
        for entry in manifest.entries.values():
            paths.setdefault(entry.study, []).append(entry.path)
        return paths
    finally:
        manifest.close()


def is_complete(
    study_uid: str, instances: int | None, store: Store, paths: dict[str, list[str]]
) -> bool:
    """The manifest lists as many of the study's instances as the server counts (`instances`),
    all on disk.

    Only the studies asked about are checked on disk, so a nightly run over a large mirror
    stats a handful of files, not all of them.
    """
    listed = paths.get(study_uid, [])
    if not instances or len(listed) < instances:
        return False
    return all(is_regular_file(store.root / path) for path in listed)
