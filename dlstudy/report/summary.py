"""What a run did, as one object: counted while it runs, rendered as JSON at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DlstudyError, ExitStatus, how_stopped
from ..model import Failure
from .words import counted

# --json keeps at most this many entries of each list (study UIDs, repaired files, strategy
# choices, failures), so a run of any size prints a summary under 1 MB; "omitted" counts the
# rest, and --report has every instance.
LIST_LIMIT = 1000


def not_asked() -> dict[str, Any]:
    """`retrieval` of a run that ended before its options were read (a usage error): no
    form chosen, none asked; still the object a script reads `retrieval.warnings` from."""
    return {"form": None, "transfer_syntax": None, "accept": None, "settled": False,
            "rejected": [], "warnings": []}  # fmt: skip


@dataclass
class Summary:
    url: str  # redacted
    output: str
    studies: list[str] = field(default_factory=list)
    total: int = 0
    downloaded: int = 0
    skipped: int = 0
    moved: int = 0  # of the skipped: moved from where another --layout had put them
    from_index: int = 0  # studies taken as complete from the manifest, with no QIDO request
    bytes: int = 0
    seconds: float = 0.0
    http_version: str | None = None
    mode: str = "auto"
    processes: int = 1  # that shared the per-instance pool (--workers)
    concurrency: int = 0  # transfers in flight at most (--concurrency, or as chosen for 0)
    retrieval: Any = None  # a Negotiator: what the server accepted (has .as_dict())
    throttle: Any = None  # a Throttle: how often the server asked us to slow down
    retries: Any = None  # a RetryTally: how many attempts failed and were tried again
    repaired: list[str] = field(default_factory=list)  # files found bad on disk, fetched again
    strategy: list[Any] = field(default_factory=list)  # strategy.Choice per study (--mode auto)
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None
    exit_status: ExitStatus = ExitStatus.OK

    @property
    def failed(self) -> int:
        return sum(1 for f in self.failures if f.sop_instance_uid is not None)

    @property
    def study_count(self) -> int:
        """The run's studies; a summary may keep fewer of their UIDs (SyncSummary)."""
        return len(self.studies)

    @property
    def retried(self) -> int:
        return self.retries.retried if self.retries is not None else 0

    def count_processes(self, running: int) -> None:
        self.processes = max(self.processes, running)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def ended_by(self, exc: BaseException) -> bool:
        """The error or the stop (Ctrl-C, SIGTERM, SIGHUP) that ended the run, in `error` and
        `exit_status` as `--json` gives them; False for anything else (a bug, a library
        caller's exception), which is said as `stopped by <its type>`, exit 1."""
        if isinstance(exc, DlstudyError):
            self.error, self.exit_status = str(exc), exc.exit_status
        elif isinstance(exc, KeyboardInterrupt):
            self.error, self.exit_status = how_stopped(exc)
        else:  # a library caller's progress sink that raised, a bug: no success either
            self.error = f"stopped by {type(exc).__name__}"
            self.exit_status = ExitStatus.SOME_FAILED
            return False
        return True

    def finish(self) -> ExitStatus:
        """Settle the exit status from the counts (fatal errors set it before)."""
        if self.exit_status == ExitStatus.OK and self.failures:
            self.exit_status = ExitStatus.SOME_FAILED
        return self.exit_status

    def as_dict(self) -> dict[str, Any]:
        omitted: dict[str, int] = {}

        def capped(name: str, items: list[Any], count: int | None = None) -> list[Any]:
            count = len(items) if count is None else count  # what `items` stands for
            if count > LIST_LIMIT:
                omitted[name] = count - LIST_LIMIT
                return items[:LIST_LIMIT]
            return items

        data = {
            "url": self.url,
            "output": self.output,
            "studies": self.study_count,
            "study_uids": capped("study_uids", self.studies, self.study_count),
            "instances": {
                "total": self.total,
                "downloaded": self.downloaded,
                "skipped": self.skipped,
                "moved": self.moved,
                "failed": self.failed,
            },
            "studies_complete_in_manifest": self.from_index,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 2),
            "http_version": self.http_version,
            "mode": self.mode,
            "processes": self.processes,
            "concurrency": self.concurrency,
            "retrieval": self.retrieval.as_dict() if self.retrieval is not None else not_asked(),
            "throttled": self.throttle.signals if self.throttle is not None else 0,
            "retried": self.retried,
            "repaired": capped("repaired", self.repaired),
            "strategy": [choice.as_dict() for choice in capped("strategy", self.strategy)],
            "failures": [f.as_dict() for f in capped("failures", self.failures)],
            "error": self.error,
            "exit_status": int(self.exit_status),
        }
        if omitted:
            data["omitted"] = omitted
        return data

    def one_line(self) -> str:
        text = (
            f"{self.downloaded} downloaded, {self.skipped} already present, "
            + (f"{self.moved} of them moved to this --layout, " if self.moved else "")
            + f"{self.failed} failed of {counted(self.total, 'instance')} in "
            + counted(self.study_count, "study", "studies")
            + (f" ({self.from_index} complete in the manifest)" if self.from_index else "")
            + f"; {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s)"
        )
        if self.http_version:
            text += f" over {self.http_version}"
        if self.retried:
            text += f"; {self.retried} {'retry' if self.retried == 1 else 'retries'}"
        return text
