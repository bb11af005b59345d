"""What a virtual archive (virtual.py) holds: its spec, the kinds of studies each mix draws
from, and per modality its SOP class and pixel matrix."""

from __future__ import annotations

from dataclasses import dataclass

MIXES = ("hospital", "mimic")
MODALITIES = ("CR", "DX", "CT", "MR", "SEG", "SR")
# Its index is built in memory at start (~50 bytes a study: 3 million took 149 MB and 40 s):
# more would end in a MemoryError, long after the server said nothing. (UIDs would hold 2**32.)
MAX_STUDIES = 20_000_000
MAX_INSTANCES = 2**26  # per series

SOP_CLASSES = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "SEG": "1.2.840.10008.5.1.4.1.1.66.4",
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
}
# Pixel matrix per modality (rows = columns, 16 bits; SEG 1 bit); SR has no pixels.
MATRIX = {"CR": 32, "DX": 32, "CT": 16, "MR": 16, "SEG": 16}


@dataclass(frozen=True)
class StudyKind:
    """One kind of study a mix draws (`weight`: how often, against the mix's other kinds)."""

    description: str
    body_part: str
    weight: int
    # (modality, fewest series, most series, fewest instances, most instances) per part
    series: tuple[tuple[str, int, int, int, int], ...]


KINDS: dict[str, tuple[StudyKind, ...]] = {
    "hospital": (
        StudyKind("CR CHEST", "CHEST", 15, (("CR", 1, 1, 1, 2),)),
        StudyKind("DX CHEST 2 VIEWS", "CHEST", 20, (("DX", 1, 2, 1, 1),)),
        StudyKind("DX CHEST WITH REPORT", "CHEST", 5, (("DX", 1, 1, 1, 2), ("SR", 1, 1, 1, 1))),
        StudyKind("CT CHEST ABDOMEN", "ABDOMEN", 18, (("CT", 2, 4, 80, 400),)),
        StudyKind(
            "CT CHEST WITH SEGMENTATION", "CHEST", 5, (("CT", 1, 2, 100, 300), ("SEG", 1, 1, 1, 1))
        ),
        StudyKind("CT HEAD WITH REPORT", "HEAD", 4, (("CT", 2, 3, 80, 300), ("SR", 1, 1, 1, 1))),
        StudyKind("MR BRAIN", "BRAIN", 20, (("MR", 3, 7, 20, 200),)),
        StudyKind("MR KNEE WITH REPORT", "KNEE", 5, (("MR", 3, 6, 20, 160), ("SR", 1, 1, 1, 1))),
    ),
    "mimic": (StudyKind("CHEST (PA AND LAT)", "CHEST", 1, (("DX", 1, 2, 1, 2),)),),
}


@dataclass(frozen=True)
class VirtualSpec:
    """What to generate: `studies` from `seed`, drawn from `mix` (or all of `study_size`)."""

    studies: int
    seed: int = 0
    mix: str = "hospital"
    study_size: int | None = None  # every study: one CT series of exactly this many instances

    def __post_init__(self) -> None:
        if not 1 <= self.studies <= MAX_STUDIES:
            raise ValueError(
                f"a virtual archive has 1 to {MAX_STUDIES:,} studies (its index is kept in "
                "memory, ~50 bytes a study)"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError("the seed of a virtual archive is 0 to 4294967295")
        if self.mix not in MIXES:
            raise ValueError(f"unknown mix {self.mix!r}; choose one of {', '.join(MIXES)}")
        if self.study_size is not None and not 1 <= self.study_size <= MAX_INSTANCES:
            raise ValueError(f"a virtual study has 1 to {MAX_INSTANCES} instances")
