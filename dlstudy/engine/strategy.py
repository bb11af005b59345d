"""`--mode auto`: per study, one request per instance or one multipart response per series.

Measured (issue "Performance", DOMAIN.md): for small instances the cost per request dominates,
and one streamed multipart response per series moves many times more instances per second than
any per-instance pool; for large instances the parallel pool wins (and one huge response on a
single HTTP/2 stream is capped by flow control at high RTT). So a study with many instances is
probed with its first instance, fetched the normal way: if that one is small, the rest of the
study comes series by series (several series at once, up to --concurrency), and whatever those
responses lack is fetched one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Below this many instances a study is quick either way; the probe would not pay for itself.
AUTO_BULK_MIN_INSTANCES = 100
# At and below this size, per-request overhead outweighs moving the bytes: a part of a
# multipart response costs the client a fraction of a request (docs/decisions.md).
SMALL_INSTANCE_BYTES = 128 * 1024


@dataclass(frozen=True, slots=True)
class Choice:
    study_uid: str
    mode: str  # "instance" or "series"
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"study": self.study_uid, "mode": self.mode, "why": self.why}


# One reason string per count, shared by every small study (a list of 100,000 studies of 1-4
# instances would otherwise hold 100,000 copies of four sentences).
_TOO_FEW = [
    f"{n} instance{'' if n == 1 else 's'}: too few to be worth a probe"
    for n in range(AUTO_BULK_MIN_INSTANCES)
]


def needs_probe(count: int) -> bool:
    return count >= AUTO_BULK_MIN_INSTANCES


def choose(study_uid: str, count: int, probe_size: int | None) -> Choice:
    """Decide for a study of `count` instances to fetch, given its first instance's size."""
    if count < AUTO_BULK_MIN_INSTANCES:
        return Choice(study_uid, "instance", _TOO_FEW[count])
    if probe_size is None:
        return Choice(study_uid, "instance", "the probe instance failed; staying per instance")
    kib = probe_size / 1024
    if probe_size <= SMALL_INSTANCE_BYTES:
        return Choice(
            study_uid,
            "series",
            f"{count} instances of ~{kib:.0f} KiB: per-request cost dominates, "
            "one multipart response per series",
        )
    return Choice(
        study_uid,
        "instance",
        f"instances of ~{kib:.0f} KiB: the parallel per-instance pool moves them fastest",
    )
