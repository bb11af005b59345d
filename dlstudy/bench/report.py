"""What `dlstudy bench` measured: one result per run of a matrix cell, rows over the repeats.

A *cell* is one strategy x concurrency x HTTP version; it runs `repeat` times. Each run gives a
`CellResult` (wall time, payload bytes, instances, every request's time to first byte, every
QIDO request's latency, the most requests seen in flight at once). A `Row` gathers the runs of
one cell: medians with min and max, percentiles over all the requests of all its runs.

Units: MB are 10^6 bytes of DICOM payload (part bodies; multipart framing not counted) of the
instances that arrived whole; times in the report are milliseconds.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ExitStatus

STRATEGIES = ("single-part", "multipart-instance", "series", "study")
HTTP_VERSIONS = ("1.1", "2")  # the default; HTTP/3 when asked (--http 3)
HTTP_NAMES = {"1.1": "HTTP/1.1", "2": "HTTP/2", "3": "HTTP/3"}  # every version bench takes
# The matrix defaults; here rather than in dlstudy.bench so the CLI's help needs only this module.
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_REPEAT = 3
# Each run resolves the study again and keeps every request's timings: a bound keeps a typo
# (`--repeat 1000000000`) from filling the memory before the first request.
MAX_REPEAT = 1000
PERCENTILES = (0.5, 0.9, 0.99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms_percentiles(seconds: Sequence[float]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for q in PERCENTILES:
        value = percentile(seconds, q)
        result[f"p{round(q * 100)}"] = None if value is None else round(value * 1000, 3)
    return result


def _rounded(value: float, digits: int = 3) -> float:
    """`value` to `digits` decimals, with three significant ones at least: a run of small
    instances behind a slow server makes 0.0004 MB/s, which is no 0.0."""
    if 0 < abs(value) < 1:
        digits = max(digits, 2 - math.floor(math.log10(abs(value))))
    return round(value, digits)


def _spread(values: Sequence[float], digits: int = 3) -> dict[str, float | None]:
    import statistics  # not at every start-up of the CLI

    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": _rounded(statistics.median(values), digits),
        "min": _rounded(min(values), digits),
        "max": _rounded(max(values), digits),
    }


@dataclass
class CellResult:
    """One run of one matrix cell."""

    strategy: str
    concurrency: int
    http: str
    repeat: int  # 0-based
    seconds: float = 0.0  # wall time of the transfers (QIDO excluded)
    bytes: int = 0  # payload of the instances that arrived whole (a cut one counts nothing)
    instances: int = 0
    requests: int = 0
    asked: int = 0  # what the run fetched: instances, or series / study responses
    failures: int = 0  # of `asked`
    failure: str | None = None  # the first failure's reason
    ttfb: list[float] = field(default_factory=list)  # seconds, one per successful request
    qido: list[float] = field(default_factory=list)  # seconds, one per QIDO request
    http_version: str | None = None  # as the server answered
    max_in_flight: int = 0
    accept: str | None = None
    unsupported: str | None = None  # "unsupported (HTTP 400)": the server refuses this cell
    ran: bool = True  # False: not run again, a previous run found it unsupported

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.strategy, self.concurrency, self.http)

    @property
    def measured(self) -> bool:
        """A speed was measured: not when every request of the run failed (no "0 MB/s")."""
        return self.ran and self.unsupported is None and self.seconds > 0 and self.instances > 0

    @property
    def complete(self) -> bool:
        """A speed comparable with the others: every request of the run succeeded. A run with
        failures fetched less than the cell asked (a server shedding load with fast 429s looks
        as fast as one serving everything), so it is no sample of the cell's speed."""
        return self.measured and self.failures == 0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds > 0 else 0.0

    def fail(self, reason: str) -> None:
        self.failures += 1
        if self.failure is None:
            self.failure = reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "repeat": self.repeat + 1,
            "ran": self.ran,
            "seconds": round(self.seconds, 6),
            "bytes": self.bytes,
            "instances": self.instances,
            "requests": self.requests,
            "failures": self.failures,
            # None, not 0, for a run that measured no speed (every request failed, unsupported,
            # not run): as in its row, no "0 MB/s" to be averaged with the others.
            "complete": self.complete,
            "mb_per_s": _rounded(self.mb_per_s) if self.measured else None,
            "instances_per_s": _rounded(self.instances_per_s) if self.measured else None,
            "http_version": self.http_version,
            "max_in_flight": self.max_in_flight,
        }


@dataclass
class Row:
    """The runs of one cell, summarised."""

    strategy: str
    concurrency: int
    http: str
    runs: list[CellResult] = field(default_factory=list)

    @property
    def measured(self) -> list[CellResult]:
        """The runs where something arrived: their requests' times to first byte count."""
        return [run for run in self.runs if run.measured]

    @property
    def complete(self) -> list[CellResult]:
        """The runs the speeds are over: those whose every request succeeded."""
        return [run for run in self.runs if run.complete]

    @property
    def unsupported(self) -> str | None:
        return next((run.unsupported for run in self.runs if run.unsupported), None)

    @property
    def failures(self) -> int:
        return sum(run.failures for run in self.runs)

    @property
    def status(self) -> str:
        if self.unsupported:
            return self.unsupported
        if self.failures:
            first = next(run.failure for run in self.runs if run.failure)
            asked = sum(run.asked for run in self.runs)
            return f"{self.failures} of {asked} failed: {first}"
        answered = {run.http_version for run in self.runs if run.http_version}
        wanted = HTTP_NAMES.get(self.http, "HTTP/1.1")
        if answered and answered != {wanted}:
            return f"ok (answered {', '.join(sorted(answered))})"
        return "ok"

    def mb_per_s(self) -> dict[str, float | None]:
        return _spread([run.mb_per_s for run in self.complete])

    def instances_per_s(self) -> dict[str, float | None]:
        return _spread([run.instances_per_s for run in self.complete], digits=2)

    def totals(self) -> dict[str, int]:
        """Sums over every run of the cell that ran (each run's own are in `runs`)."""
        ran = [run for run in self.runs if run.ran]
        return {
            "runs": len(ran),
            "bytes": sum(run.bytes for run in ran),
            "instances": sum(run.instances for run in ran),
            "requests": sum(run.requests for run in ran),
            "failures": sum(run.failures for run in ran),
        }

    def ttfb_ms(self) -> dict[str, float | None]:
        return _ms_percentiles([t for run in self.measured for t in run.ttfb])

    def qido_ms(self) -> dict[str, float | None]:
        return _ms_percentiles([t for run in self.runs for t in run.qido])

    def as_dict(self) -> dict[str, Any]:
        complete = self.complete
        return {
            "strategy": self.strategy,
            "concurrency": self.concurrency,
            "http": self.http,
            "status": self.status,
            "accept": next((run.accept for run in self.runs if run.accept), None),
            "http_version": next((r.http_version for r in self.runs if r.http_version), None),
            "repeats": len(complete),
            "mb_per_s": self.mb_per_s(),
            "instances_per_s": self.instances_per_s(),
            "seconds": _spread([run.seconds for run in complete], digits=6),
            "totals": self.totals(),
            "ttfb_ms": self.ttfb_ms(),
            "qido_ms": self.qido_ms(),
            "max_in_flight": max((run.max_in_flight for run in self.runs), default=0),
            "runs": [run.as_dict() for run in self.runs],
        }


@dataclass
class BenchReport:
    """Everything one `dlstudy bench` run found; `as_dict()` is the `--json` output."""

    url: str  # redacted
    study_uid: str
    strategies: tuple[str, ...]
    concurrency: tuple[int, ...]
    http: tuple[str, ...]
    repeat: int
    limit: int | None
    keep: str | None = None
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    instances_in_study: int | None = None
    seconds: float = 0.0
    results: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. why an HTTP version is unsupported
    error: str | None = None

    @property
    def instances_measured(self) -> int | None:
        if self.instances_in_study is None:
            return None
        if self.limit is None:
            return self.instances_in_study
        return min(self.limit, self.instances_in_study)

    def rows(self) -> list[Row]:
        """One row per cell, ordered by HTTP version, strategy, then concurrency."""
        rows: dict[tuple[str, int, str], Row] = {}
        for result in self.results:
            row = rows.setdefault(result.key, Row(*result.key))
            row.runs.append(result)

        def order(row: Row) -> tuple[int, int, int]:
            return (
                _index(self.http, row.http),
                _index(self.strategies, row.strategy),
                row.concurrency,
            )

        return sorted(rows.values(), key=order)

    def qido_ms(self) -> dict[str, float | None]:
        return _ms_percentiles([t for result in self.results for t in result.qido])

    @property
    def qido_requests(self) -> int:
        return sum(len(result.qido) for result in self.results)

    @property
    def exit_status(self) -> ExitStatus:
        """1 when a request failed in a supported cell; an unsupported cell is a finding."""
        if any(row.failures and not row.unsupported for row in self.rows()):
            return ExitStatus.SOME_FAILED
        return ExitStatus.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "study_uid": self.study_uid,
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "instances_in_study": self.instances_in_study,
            "instances_measured": self.instances_measured,
            "matrix": {
                "strategy": list(self.strategies),
                "concurrency": list(self.concurrency),
                "http": list(self.http),
                "repeat": self.repeat,
                "limit": self.limit,
            },
            "keep": self.keep,
            "qido_ms": {**self.qido_ms(), "requests": self.qido_requests},
            "rows": [row.as_dict() for row in self.rows()],
            "notes": self.notes,
            "error": self.error,
            "exit_status": int(self.exit_status),
        }


def _index(values: Sequence[str], value: str) -> int:
    return values.index(value) if value in values else len(values)
