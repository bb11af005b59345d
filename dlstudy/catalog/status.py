"""The catalog against an output folder: which studies are complete, partial or missing.

A study is complete as `sync` counts it (dlstudy/sync.py: the manifest lists at least as many
of its instances, still on disk, as the catalog's NumberOfStudyRelatedInstances), partial when
some of its instances are there, missing when none is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings import DEFAULT_LAYOUT
from ..store.completion import is_complete, manifest_paths
from ..store.files import Store
from ..store.safe_files import is_regular_file
from .query import select_studies
from .store import connect

if TYPE_CHECKING:
    from ..dicomweb.search import StudyQuery, StudyRecord

STATES = ("complete", "partial", "missing")


@dataclass(frozen=True)
class StudyState:
    record: StudyRecord
    on_disk: int  # instances the manifest lists whose file is there
    state: str  # complete | partial | missing


def study_states(
    db_path: Path, output: Path, query: StudyQuery | None = None, where: str | None = None
) -> Iterator[StudyState]:
    """Each matching catalogued study with its state in `output` (read-only: nothing is
    created, locked or changed there)."""
    store = Store(output, DEFAULT_LAYOUT)
    manifest = store.state_dir / "manifest.jsonl"
    paths = manifest_paths(store) if manifest.is_file() else {}
    db = connect(db_path, read_only=True)
    try:
        for record in select_studies(db, query, where):
            listed = paths.get(record.study_uid, [])
            if is_complete(record.study_uid, record.instances, store, paths):
                yield StudyState(record, len(listed), "complete")
                continue
            there = sum(1 for path in listed if is_regular_file(store.root / path))
            yield StudyState(record, there, "partial" if there else "missing")
    finally:
        db.close()


def tally(states: Iterator[StudyState]) -> dict[str, dict[str, int]]:
    """Studies and instances (catalogued; on disk) per state."""
    studies: Counter[str] = Counter()
    instances: Counter[str] = Counter()
    on_disk: Counter[str] = Counter()
    for s in states:
        studies[s.state] += 1
        instances[s.state] += s.record.instances or 0
        on_disk[s.state] += s.on_disk
    return {
        state: {
            "studies": studies[state],
            "instances": instances[state],
            "on_disk": on_disk[state],
        }
        for state in STATES
    }
