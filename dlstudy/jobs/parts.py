"""A long list in parts: each part is listed while the part before it downloads.

Listing a list of small studies keeps the server busy and the client waiting; fetching keeps
the client busy. Resolving part k+1 while part k downloads overlaps the two, and the run holds
the listings of two parts at a time instead of the whole list's (docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from ..model import InstanceRef

# Items a part: small enough that a part's listing is a few MB, large enough that its
# start-up (the first part is listed before anything downloads) and its tail (the last
# transfers of a part finish before the next part's start) stay small.
PART_ITEMS = 5_000

T = TypeVar("T")


def parts_of(items: Sequence[T], size: int | None = None) -> list[Sequence[T]]:
    """`items` in consecutive parts of `size` (default PART_ITEMS); one part for an empty
    list."""
    size = size or PART_ITEMS
    return [items[at : at + size] for at in range(0, len(items), size)] or [items]


class EarlierParts:
    """What the run's earlier parts listed, so that each instance is fetched and counted once
    across parts (a study named on one line, one of its series thousands of lines later): the
    studies listed whole, and the instances of whatever was listed in part (a series, an
    instance, a plain UID found some other way than as a study).

    An instance of a study listed whole before is not new: that listing had all of the study's
    instances (under the run's filters, which are the same for every part)."""

    def __init__(self) -> None:
        self.whole: set[str] = set()  # study UIDs
        self.partly: set[str] = set()  # SOP Instance UIDs

    def listed(self, ref: InstanceRef) -> bool:
        return ref.study_uid in self.whole or ref.sop_uid in self.partly

    def add(self, whole: Iterable[str], partly: Iterable[InstanceRef]) -> None:
        self.whole.update(whole)
        self.partly.update(ref.sop_uid for ref in partly)
