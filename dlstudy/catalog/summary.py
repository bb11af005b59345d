"""What one `catalog pull` did: counted while it runs, printed as a line or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PullSummary:
    pull: int
    kind: str
    studies: int = 0  # in the catalog at the end
    new: int = 0
    changed: int = 0
    deleted: int = 0  # gone from the archive (a --full pull)
    requests: int = 0
    unreachable: int | None = 0
    seconds: float = 0.0
    resumed: bool = False
    notes: list[str] = field(default_factory=list)

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
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }

    def one_line(self) -> str:
        unreachable = (
            ""
            if self.unreachable == 0
            else "; some studies unreachable (count unknown)"
            if self.unreachable is None
            else f"; {self.unreachable} studies unreachable"
        )
        deleted = f", {self.deleted} gone from the archive" if self.kind == "full" else ""
        return (
            f"catalog: pull {self.pull} ({self.kind}{', resumed' if self.resumed else ''}): "
            f"{self.studies} studies, {self.new} new, {self.changed} with another instance "
            f"count{deleted}; {self.requests} requests in {self.seconds:.1f} s{unreachable}"
        )
