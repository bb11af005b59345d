"""Which attributes the server knows at each QIDO level, and DICOM JSON entries for them.

Only these are kept in memory per study, series and instance (a handful each), so the index of a
large folder stays small; anything else (`includefield`, metadata) is read from the file again.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

log = logging.getLogger("dlstudy.server")

Json = dict[str, Any]  # one DICOM JSON object: {"0020000D": {"vr": "UI", "Value": [...]}}

# Stored attributes per level (PS3.18 Table 10.6.3-3/4/5, the ones a folder of files can answer).
STUDY_TAGS = (
    0x00080005,  # SpecificCharacterSet
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080090,  # ReferringPhysicianName
    0x00080201,  # TimezoneOffsetFromUTC
    0x00081030,  # StudyDescription
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    0x0020000D,  # StudyInstanceUID
    0x00200010,  # StudyID
)
SERIES_TAGS = (
    0x00080021,  # SeriesDate
    0x00080031,  # SeriesTime
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    0x00180015,  # BodyPartExamined
    0x0020000E,  # SeriesInstanceUID
    0x00200011,  # SeriesNumber
    0x00400244,  # PerformedProcedureStepStartDate
    0x00400245,  # PerformedProcedureStepStartTime
)
INSTANCE_TAGS = (
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00200013,  # InstanceNumber
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
)

# Computed per level, not read from files.
MODALITIES_IN_STUDY = 0x00080061
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
RETRIEVE_URL = 0x00081190
AVAILABLE_TRANSFER_SYNTAX = 0x00083002
INSTANCE_AVAILABILITY = 0x00080056

LEVEL_TAGS = {
    "study": frozenset(STUDY_TAGS) | {MODALITIES_IN_STUDY},
    "series": frozenset(SERIES_TAGS),
    "instance": frozenset(INSTANCE_TAGS),
}


def key(tag: int) -> str:
    """The DICOM JSON key of a tag: eight upper-case hex digits."""
    return f"{tag:08X}"


def resolve(name: str) -> int | None:
    """A query key as a tag: a keyword (`PatientID`) or eight hex digits (`00100020`)."""
    if len(name) == 8:
        try:
            return int(name, 16)
        except ValueError:
            pass
    return tag_for_keyword(name)


def entries(ds: Dataset, tags: tuple[int, ...]) -> Json:
    """DICOM JSON entries for those `tags` present in `ds`; unreadable values are left out."""
    out: Json = {}
    for tag in tags:
        entry = element(ds, tag)
        if entry is not None:
            out[key(tag)] = entry
    return out


def element(ds: Dataset, tag: int) -> Json | None:
    if tag not in ds:
        return None
    try:
        entry: Json = ds[tag].to_json_dict(None, 1024)
    except Exception as exc:  # a malformed value in a real-world file: leave the attribute out
        log.debug("attribute %08X unreadable: %s", tag, exc)
        return None
    return entry


def computed(vr: str, *values: Any) -> Json:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def texts(entry: Json | None) -> list[str]:
    """The values of an entry as strings (person names by their alphabetic group)."""
    if entry is None:
        return []
    out = []
    for value in entry.get("Value", []):
        if isinstance(value, dict):
            out.append(str(value.get("Alphabetic", "")))
        else:
            out.append(str(value))
    return out
