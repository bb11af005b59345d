"""dlstudy: pull whole DICOM studies out of DICOMweb servers, fast, resumable, byte-exact.

The public API. Each name is imported when first used: the command line imports this package
first, and each command needs only some of it (`dlstudy query` no download engine).
"""

from __future__ import annotations

# Not typing's: until the console script's entry runs (cli/entry.py) a Ctrl-C ends as a
# traceback, and typing, with the re and collections it imports, would be most of that window.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .dicomweb.cohort import CohortItem, read_cohort
    from .dicomweb.search import StudyQuery, StudyRecord
    from .dicomweb.shard import Shard
    from .errors import DlstudyError, ExitStatus
    from .jobs.download import download, download_async
    from .jobs.search import search_async
    from .jobs.sync import sync, sync_async
    from .model import Failure, InstanceRef
    from .report.progress import ProgressSink
    from .report.summary import Summary
    from .settings import Settings

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

_MODULE_OF = {
    "CohortItem": "dicomweb.cohort",
    "read_cohort": "dicomweb.cohort",
    "DlstudyError": "errors",
    "ExitStatus": "errors",
    "download": "jobs.download",
    "download_async": "jobs.download",
    "Failure": "model",
    "InstanceRef": "model",
    "Summary": "report.summary",
    "Settings": "settings",
    "ProgressSink": "report.progress",
    "Shard": "dicomweb.shard",
    "StudyQuery": "dicomweb.search",
    "StudyRecord": "dicomweb.search",
    "search_async": "jobs.search",
    "sync": "jobs.sync",
    "sync_async": "jobs.sync",
}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, for dir() and help()."""
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
