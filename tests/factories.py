"""Builders for test inputs: DICOM JSON for QIDO answers and small Part 10 files."""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def series_json(series_uid: str, modality: str = "CT", count: int | None = None) -> dict[str, Any]:
    item = {"0020000E": element("UI", series_uid), "00080060": element("CS", modality)}
    if count is not None:
        item["00201209"] = element("IS", count)
    return item


def instance_json(sop_uid: str) -> dict[str, Any]:
    return {"00080018": element("UI", sop_uid), "00080016": element("UI", CT_IMAGE_STORAGE)}


# Encodings other than explicit VR little endian that part10 writes: its `form`.
FORMS = {"big endian": ExplicitVRBigEndian, "deflated": DeflatedExplicitVRLittleEndian}


def part10(
    study: str,
    series: str,
    sop: str,
    *,
    payload: bytes = b"\0" * 256,
    preamble: bool = True,
    form: str | None = None,
) -> bytes:
    """A tiny but valid DICOM Part 10 file with the given UIDs. `form`: one of FORMS, or
    "bare" (the dataset alone, implicit VR little endian, with no preamble or file meta, as
    some archives store and serve it)."""
    if form == "bare":
        data = part10(study, series, sop, payload=payload, form="implicit")
        return data[132 + 12 + int.from_bytes(data[140:144], "little") :]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = {**FORMS, "implicit": ImplicitVRLittleEndian}.get(
        form or "", ExplicitVRLittleEndian
    )
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.PatientName = "Test^Patient"
    ds.add_new(0x7FE00010, "OB", payload)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[128:]


def multipart_body(
    parts: list[bytes], boundary: str = "b0undary", *, content_length: bool = True
) -> bytes:
    """A multipart/related body of application/dicom parts, as DICOMweb servers send it."""
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax=*\r\n".encode()
        if content_length:
            out += f"Content-Length: {len(part)}\r\n".encode()
        out += b"\r\n" + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
