"""What one `catalog pull` did: counted while it runs, printed as a line or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ExitStatus


@dataclass
class PullSummary:
    pull: int | None = None  # None: the pull failed before it began (a lock, another scope)
    kind: str | None = None
    studies: int = 0  # in the catalog at the end
    new: int = 0
    changed: int = 0
    deleted: int = 0  # gone from the archive (a --full pull)
    requests: int = 0
    unreachable: int | None = 0
    series_cut: int = 0  # studies whose series could not be listed whole (--level series)
    seconds: float = 0.0
    resumed: bool = False
    notes: list[str] = field(default_factory=list)
    # How the pull ended: a fatal error's message and status, or an interruption's; a
    # stopped pull's counts are what it had recorded, which the next pull resumes from.
    error: str | None = None
    exit_status: ExitStatus = ExitStatus.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "pull": self.pull,
            "kind": self.kind,
            "resumed": self.resumed,
            "studies": self.studies,
            "new": self.new,
            "instances_changed": self.changed,
            "deleted": self.deleted,
            "requests": self.requests,
            "unreachable": self.unreachable,
            "series_cut": self.series_cut,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "error": self.error,
            "exit_status": int(self.exit_status),
        }

    @property
    def incomplete(self) -> bool:
        """Whether the catalog holds less than the archive has: exit 1."""
        return self.unreachable != 0 or self.series_cut > 0

    def one_line(self) -> str:
        if self.pull is None:
            return "catalog: no pull started"
        unreachable = (
            ""
            if self.unreachable == 0
            else "; some studies unreachable (count unknown)"
            if self.unreachable is None
            else f"; {self.unreachable} studies unreachable"
        )
        if self.series_cut:
            studies = "study" if self.series_cut == 1 else "studies"
            unreachable += f"; the series of {self.series_cut} {studies} could not be listed whole"
        deleted = f", {self.deleted} gone from the archive" if self.kind == "full" else ""
        stopped = ", stopped" if self.exit_status != ExitStatus.OK and self.error else ""
        return (
            f"catalog: pull {self.pull} ({self.kind}{', resumed' if self.resumed else ''}"
            f"{stopped}): {self.studies} studies, {self.new} new, {self.changed} with another "
            f"instance count{deleted}; {self.requests} requests in {self.seconds:.1f} s"
            f"{unreachable}"
        )
