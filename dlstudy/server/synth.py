"""Synthetic DICOM studies: valid Part 10 files with realistic headers and cheap pixel data.

Each series builds one pydicom header template; per instance only the instance attributes change
and the header is serialised once. The pixel data element is written by hand (tag, VR, length)
followed by a deterministic byte pattern in chunks, so a 1.5 GiB whole-slide image never sits in
memory and the ``ct`` preset takes a few seconds. UIDs derive from the seed (``2.25.`` + hash),
so the same spec always produces the same UIDs and bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import random
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

__all__ = ["PRESETS", "SynthInstance", "SynthSpec", "generate"]

_MODALITY = re.compile(r"[A-Z0-9]{1,16}")
CHUNK = 1024 * 1024  # pixel bytes written per call: bounds memory for any instance size
_MAX_NATIVE_LENGTH = 0xFFFF_FFFE  # a native (defined-length) element's 32-bit length, kept even


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: `instances` is per series, `size` the approximate bytes per instance."""

    studies: int = 1
    series: int = 3
    instances: int = 20
    size: int = 64 * 1024
    frames: int = 1
    modality: str = "CT"
    seed: int = 0
    # Study dates: None for one a day from 2026-01-05; else (first, last) as YYYYMMDD, the
    # studies spread evenly over that range.
    study_dates: tuple[str, str] | None = None


PRESETS: dict[str, SynthSpec] = {
    "small": SynthSpec(),
    "ct": SynthSpec(series=4, instances=250, size=512 * 1024),
    "mr": SynthSpec(series=6, instances=60, size=128 * 1024, modality="MR"),
    "many": SynthSpec(series=1, instances=2000, size=16 * 1024),
    # One tiled whole-slide image: 8192 frames of 256x256 RGB = 1.5 GiB of pixel data.
    "wsi": SynthSpec(series=1, instances=1, size=3 * 2**29 + 2048, frames=8192, modality="SM"),
}


@dataclass(frozen=True)
class SynthInstance:
    """One written file and its identity."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    size: int


@dataclass(frozen=True)
class _Kind:
    """Per-modality header facts: SOP classes (single-/multi-frame) and pixel layout."""

    sop_class: str
    multiframe_sop_class: str
    samples: int  # samples per pixel: 1 (MONOCHROME2, 16-bit) or 3 (RGB, 8-bit)
    body_part: str
    description: str


_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_KINDS = {
    "CT": _Kind("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", 1, "CHEST", "CT CHEST"),
    "MR": _Kind("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", 1, "BRAIN", "MR BRAIN"),
    "SM": _Kind(
        "1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.840.10008.5.1.4.1.1.77.1.6", 3, "", "SLIDE SCAN"
    ),
}
_FAMILY = ["MILLER", "GARCIA", "NGUYEN", "SMITH", "KOWALSKI", "OKAFOR", "TANAKA", "SILVA"]
_GIVEN = ["ANNA", "BEN", "CHLOE", "DAVID", "EMMA", "FARID", "GRACE", "HUGO"]
_BASE_DATE = dt.date(2026, 1, 5)


def generate(out: Path, spec: SynthSpec) -> list[SynthInstance]:
    """Write `spec` as `out/<study>/<series>/<sop>.dcm`; return what was written, in order."""
    _check(spec)
    written: list[SynthInstance] = []
    for study in range(spec.studies):
        study_ds = _study_attributes(spec, study)
        for series in range(spec.series):
            written.extend(_write_series(out, spec, study, series, study_ds))
    return written


_MAX_BYTES_PER_PIXEL = 3  # RGB; grayscale is 2


def _check(spec: SynthSpec) -> None:
    for name in ("studies", "series", "instances", "frames", "size"):
        if getattr(spec, name) < 1:
            raise ValueError(f"SynthSpec.{name} must be at least 1")
    if spec.size > _MAX_NATIVE_LENGTH:
        raise ValueError("size must be below 4 GiB (native pixel data has a 32-bit length)")
    if spec.frames > spec.size // _MAX_BYTES_PER_PIXEL:
        # Every frame has at least one pixel: more frames would outgrow --size (by far).
        raise ValueError(
            f"{spec.frames} frames do not fit in {spec.size} bytes: at most one frame per "
            f"{_MAX_BYTES_PER_PIXEL} bytes (raise the size)"
        )
    if _MODALITY.fullmatch(spec.modality) is None:  # a CS value: upper case ASCII, <= 16
        raise ValueError(
            f"not a modality code: {spec.modality!r} (upper case letters and digits, as CT, MR, SM)"
        )
    if spec.study_dates is not None:
        first, last = spec.study_dates
        if not first or not last or first > last:
            raise ValueError("study dates need a first and a last date, in order")


def _study_date(spec: SynthSpec, study: int) -> dt.date:
    if spec.study_dates is None:
        return _BASE_DATE + dt.timedelta(days=study)
    first, last = (dt.datetime.strptime(d, "%Y%m%d").date() for d in spec.study_dates)
    span = (last - first).days
    return first + dt.timedelta(days=span * study // max(1, spec.studies - 1))


def _uid(spec: SynthSpec, *parts: object) -> str:
    # `2.25.` + a 128-bit integer (PS3.5 B.2), here a hash of seed and position rather than a
    # random UUID: the same spec always yields the same UIDs, another seed other ones.
    # (pydicom's generate_uid ignores its entropy sources when the prefix is 2.25.)
    # The shape is part of it: another preset (or size) into the same folder is another study,
    # never an overwrite of the first.
    shape = f"{spec.modality}/{spec.series}x{spec.instances}x{spec.size}x{spec.frames}"
    text = "/".join(["dlstudy-synth", str(spec.seed), shape, *map(str, parts)])
    return f"2.25.{int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], 'big')}"


def _study_attributes(spec: SynthSpec, study: int) -> Dataset:
    rng = random.Random(f"{spec.seed}/{study}")
    date = _study_date(spec, study).strftime("%Y%m%d")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = date
    ds.StudyTime = f"{8 + study % 10:02d}{rng.randrange(60):02d}00"
    accession = f"ACC{spec.seed:04d}{study:05d}"
    if len(accession) > 16:  # an SH value: a large seed or study number, hashed to fit
        accession = "A" + hashlib.sha256(accession.encode()).hexdigest()[:15].upper()
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}^^DR"
    ds.StudyDescription = _KINDS.get(spec.modality, _KINDS["CT"]).description
    ds.PatientName = f"{rng.choice(_FAMILY)}^{rng.choice(_GIVEN)}"
    ds.PatientID = f"DLS{spec.seed:04d}{study:05d}"
    ds.PatientBirthDate = f"{1940 + rng.randrange(60)}{1 + rng.randrange(12):02d}15"
    ds.PatientSex = rng.choice(["F", "M"])
    ds.StudyInstanceUID = _uid(spec, "study", study)
    ds.StudyID = str(study + 1)
    return ds


def _write_series(
    out: Path, spec: SynthSpec, study: int, series: int, study_ds: Dataset
) -> Iterator[SynthInstance]:
    ds = _series_template(spec, study, series, study_ds)
    bytes_per_pixel = 2 if ds.SamplesPerPixel == 1 else 3
    directory = out / ds.StudyInstanceUID / ds.SeriesInstanceUID
    directory.mkdir(parents=True, exist_ok=True)
    pattern = random.Random(f"{spec.seed}/{study}/{series}").randbytes(CHUNK)
    header_len = len(_Header(ds).encode(_varying(ds, "9" * 64, spec.instances, spec)))
    budget = max(bytes_per_pixel, spec.size - header_len - 12) // spec.frames // bytes_per_pixel
    ds.Columns = max(1, round(math.sqrt(budget)))
    ds.Rows = max(1, round(budget / ds.Columns))
    if spec.modality == "SM":
        across = math.ceil(math.sqrt(spec.frames))
        ds.TotalPixelMatrixColumns = ds.Columns * across
        ds.TotalPixelMatrixRows = ds.Rows * math.ceil(spec.frames / across)
    pixel_len = ds.Rows * ds.Columns * bytes_per_pixel * spec.frames
    pixel_len += pixel_len % 2  # element values have even length
    pixel_tag = struct.pack(
        "<HH2s2xI", 0x7FE0, 0x0010, b"OW" if bytes_per_pixel == 2 else b"OB", pixel_len
    )
    header = _Header(ds)
    for index in range(spec.instances):
        sop_uid = _uid(spec, "instance", study, series, index)
        path = directory / f"{sop_uid}.dcm"
        # Under a temp name until whole: a run stopped part way leaves no short file that a
        # `serve` of the folder would index as an instance.
        temp = directory / f".{sop_uid}.dcm.part"
        try:
            with temp.open("wb") as f:
                f.write(header.encode(_varying(ds, sop_uid, index, spec)))
                f.write(pixel_tag)
                _write_pattern(f, pattern, pixel_len, offset=index * 4099)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        yield SynthInstance(
            path, ds.StudyInstanceUID, ds.SeriesInstanceUID, sop_uid, path.stat().st_size
        )


def _varying(template: Dataset, sop_uid: str, index: int, spec: SynthSpec) -> Dataset:
    """The attributes that differ between the instances of one series."""
    ds = Dataset()
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = index + 1
    if spec.modality != "SM":
        z = 0.0 - 1.25 * index  # 0.0 - 0.0 is 0.0, not the odd-looking -0.0
        ds.ImagePositionPatient = [-250.0, -250.0, z]
        ds.SliceLocation = z
    return ds


class _Header:
    """Encodes a series' header once; per instance only the varying elements are encoded.

    Running pydicom's writer over the whole data set per instance made ``many`` (2,000 files)
    take ~3 s; encoding each element once and splicing keeps it well under a second.
    """

    def __init__(self, template: Dataset) -> None:
        varying = {0x00080018, 0x00200013, 0x00200032, 0x00201041}
        self._fixed = [
            (int(elem.tag), _encode(elem)) for elem in template if int(elem.tag) not in varying
        ]
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\0\1"
        meta.MediaStorageSOPClassUID = template.SOPClassUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "DLSTUDY_SYNTH"
        self._meta = [(int(elem.tag), _encode(elem)) for elem in meta]

    def encode(self, varying: Dataset) -> bytes:
        """Preamble, file meta and data set up to (not including) the pixel data element."""
        sop = Dataset()
        sop.MediaStorageSOPInstanceUID = varying.SOPInstanceUID
        meta = b"".join(b for _, b in sorted([*self._meta, (0x00020003, _encode(sop[0x00020003]))]))
        group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta))
        body = sorted([*self._fixed, *((int(e.tag), _encode(e)) for e in varying)])
        return b"".join([b"\0" * 128, b"DICM", group_length, meta, *(b for _, b in body)])


def _encode(elem: DataElement) -> bytes:
    """One element, explicit VR little endian (the only transfer syntax synth writes)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    ds = Dataset()
    ds.add(elem)
    write_dataset(fp, ds)
    return fp.getvalue()


def _series_template(spec: SynthSpec, study: int, series: int, study_ds: Dataset) -> Dataset:
    kind = _KINDS.get(spec.modality)
    ds = Dataset()
    ds.update(study_ds)
    multiframe = spec.frames > 1
    if kind is None:
        sop_class = _SECONDARY_CAPTURE
        kind = _Kind(sop_class, sop_class, 1, "", f"{spec.modality} STUDY")
    else:
        sop_class = kind.multiframe_sop_class if multiframe else kind.sop_class
    date = ds.StudyDate
    ds.SOPClassUID = sop_class
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        if spec.modality == "SM"
        else [
            "ORIGINAL",
            "PRIMARY",
            "AXIAL",
        ]
    )
    ds.SeriesDate = ds.ContentDate = date
    ds.SeriesTime = ds.ContentTime = f"{ds.StudyTime[:2]}{series:02d}00"
    ds.Modality = spec.modality
    ds.Manufacturer = "dlstudy"
    ds.InstitutionName = "dlstudy synthetic hospital"
    ds.SeriesDescription = f"{kind.description} series {series + 1}"
    if kind.body_part:
        ds.BodyPartExamined = kind.body_part
    ds.SeriesInstanceUID = _uid(spec, "series", study, series)
    ds.SeriesNumber = series + 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = _uid(spec, "frame-of-reference", study)
    ds.PositionReferenceIndicator = ""
    if spec.modality == "SM":
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.ImagedVolumeWidth = 15.0
        ds.ImagedVolumeHeight = 15.0
        ds.ImagedVolumeDepth = 0.01
    else:
        ds.SliceThickness = 1.25
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.75, 0.75]
    ds.SamplesPerPixel = kind.samples
    if kind.samples == 3:
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    if multiframe:
        ds.NumberOfFrames = spec.frames
    ds.Rows = ds.Columns = 1  # sized once the header length is known
    ds.PixelRepresentation = 0
    if spec.modality == "CT":
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    return ds


def _write_pattern(f: BinaryIO, pattern: bytes, length: int, *, offset: int) -> None:
    """Write `length` bytes cycling through `pattern` from `offset`, one chunk at a time."""
    view = memoryview(pattern)
    pos = offset % len(pattern)
    while length > 0:
        piece = view[pos : pos + min(length, len(pattern) - pos)]
        f.write(piece)
        length -= len(piece)
        pos = 0
