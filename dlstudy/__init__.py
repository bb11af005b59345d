"""dlstudy: pull whole DICOM studies out of DICOMweb servers, fast, resumable, byte-exact."""

from .cohort import CohortItem, read_cohort
from .download import download, download_async
from .errors import DlstudyError, ExitStatus
from .settings import Settings
from .store import InstanceRef
from .summary import Failure, Summary

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
]
__version__ = "0.1.0"
