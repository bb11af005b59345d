"""dlstudy: pull whole DICOM studies out of DICOMweb servers, fast, resumable, byte-exact.

The public API. `sync`, `search_async` and their types are imported when first used: the
command line imports this package first, and a download never needs them.
"""

from typing import TYPE_CHECKING, Any

from .dicomweb.cohort import CohortItem, read_cohort
from .errors import DlstudyError, ExitStatus
from .jobs.download import download, download_async
from .model import Failure, InstanceRef
from .report.summary import Summary
from .settings import Settings

if TYPE_CHECKING:  # what the lazy names are, for type checkers
    from .dicomweb.search import StudyQuery, StudyRecord, search_async
    from .dicomweb.shard import Shard
    from .jobs.sync import sync, sync_async
    from .report.progress import ProgressSink

__all__ = [
    "CohortItem",
    "DlstudyError",
    "ExitStatus",
    "Failure",
    "InstanceRef",
    "Settings",
    "Summary",
    "download",
    "download_async",
    "read_cohort",
    "ProgressSink",
    "Shard",
    "StudyQuery",
    "StudyRecord",
    "search_async",
    "sync",
    "sync_async",
]

_LAZY = {
    "ProgressSink": "report.progress",
    "Shard": "dicomweb.shard",
    "StudyQuery": "dicomweb.search",
    "StudyRecord": "dicomweb.search",
    "search_async": "dicomweb.search",
    "sync": "jobs.sync",
    "sync_async": "jobs.sync",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, for dir() and help()."""
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
