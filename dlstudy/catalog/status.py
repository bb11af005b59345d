"""The catalog against an output folder: which studies are complete, partial or missing.

A study is complete as `sync` counts it (jobs/sync.py: the manifest index lists at least as many
of its instances, all still on disk, as the catalog's NumberOfStudyRelatedInstances, or, for a
study without that count, as a run recorded it complete with), partial when some of its
instances are there, missing when none is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputError
from ..settings import DEFAULT_LAYOUT
from ..store.completion import present_files
from ..store.files import Store
from ..store.manifest import Manifest
from .query import select_studies
from .store import check_pulled, connect

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
    if output.exists() and not output.is_dir():  # a mistyped -o: not "everything missing"
        raise OutputError(
            f"output folder {str(output)!r} exists and is not a folder", path=str(output)
        )
    store = Store(output, DEFAULT_LAYOUT)
    manifest = Manifest(store.root, store.state_dir, read_only=True)
    try:
        db = connect(db_path, read_only=True)
        try:
            check_pulled(db, db_path)
            for record in select_studies(db, db_path, query, where):
                present = present_files(manifest, store, record.study_uid)
                wanted = _instances(manifest, record)
                there = present.there
                if wanted and present.whole(wanted, record.series):
                    yield StudyState(record, there, "complete")
                else:
                    yield StudyState(record, there, "partial" if there else "missing")
        finally:
            db.close()
    finally:
        manifest.close()


def _instances(manifest: Manifest, record: StudyRecord) -> int | None:
    """The instances the study must have: the catalog's count, or, from a server that reports
    none, the count of the run that recorded it complete (as sync decides)."""
    if record.instances is not None:
        return record.instances
    done = manifest.completion(record.study_uid)
    return None if done is None else done.instances


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
