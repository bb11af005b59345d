"""The plain data that crosses the layers: what to fetch, what landed, what failed.

No behaviour and no imports from the rest of dlstudy: QIDO produces InstanceRefs, the engine
turns them into Committed files or Failures, the store, reports and summaries read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One unit of work: an instance as QIDO described it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str = ""


@dataclass(frozen=True)
class Committed:
    """A file now under its final name, as verified."""

    path: Path
    size: int
    digest: str  # labelled, as the manifest keeps it


@dataclass
class Failure:
    study_uid: str | None  # None: a listed series or instance the server does not have
    series_uid: str | None
    sop_instance_uid: str | None
    reason: str
    status_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "study": self.study_uid,
            "series": self.series_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "reason": self.reason,
            "status_code": self.status_code,
        }
