"""verify.read_header: its fast path agrees with pydicom's read_partial, still the fallback."""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from dlstudy import verify
from dlstudy.errors import IntegrityError
from dlstudy.verify import HeaderInfo, read_header, verify_instance

from .factories import CT_IMAGE_STORAGE, STUDY, part10

SERIES = f"{STUDY}.7"
SOP = f"{SERIES}.1"  # odd length: pydicom pads it with a NUL
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def explicit(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element, written as is (no padding added)."""
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    if vr in LONG_VRS:
        return head + struct.pack("<HL", 0, len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def implicit(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def dataset(sop: bytes = SOP.encode() + b"\0", vr: str = "UI", *, before: bytes = b"") -> bytes:
    """Explicit VR elements: SOP Class/Instance, Modality, Study/Series; `before` goes first."""
    return (
        before
        + explicit(0x00080016, "UI", CT_IMAGE_STORAGE.encode() + b"\0")
        + explicit(0x00080018, vr, sop)
        + explicit(0x00080060, "CS", b"CT")
        + explicit(0x0020000D, "UI", STUDY.encode())
        + explicit(0x0020000E, "UI", SERIES.encode() + b"\0")
        + explicit(0x00200013, "IS", b"1 ")
    )


def file_meta(
    transfer_syntax: str = ExplicitVRLittleEndian, media_sop: str = SOP, group_length: int = 0
) -> bytes:
    """The file meta group; `group_length` is added to the right value (to make it wrong)."""
    meta = (
        explicit(0x00020001, "OB", b"\0\1")
        + explicit(0x00020002, "UI", CT_IMAGE_STORAGE.encode() + b"\0")
        + explicit(0x00020003, "UI", media_sop.encode() + b"\0" * (len(media_sop) % 2))
        + explicit(0x00020010, "UI", transfer_syntax.encode() + b"\0" * (len(transfer_syntax) % 2))
    )
    return explicit(0x00020000, "UL", struct.pack("<L", len(meta) + group_length)) + meta


def raw_part10(body: bytes, **meta: Any) -> bytes:
    return b"\0" * 128 + b"DICM" + file_meta(**meta) + body


def written(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """`ds` as pydicom writes it, with a file meta naming SOP and `transfer_syntax`."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def plain_dataset(**extra: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = SOP
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.Modality = "CT"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.add(record.getMessage())


Outcome = tuple[object, set[str], set[str]]


def outcome(read: Callable[[], HeaderInfo]) -> Outcome:
    """What reading gives (the HeaderInfo or the error raised), the warnings it emits and what
    pydicom logs at INFO and above."""
    logger, handler = logging.getLogger("pydicom"), _Messages()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result: object = read()
            except Exception as exc:
                result = (type(exc), str(exc))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return result, {str(w.message) for w in caught}, handler.messages


def both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Outcome, Outcome]:
    """read_header's outcome as it is now and with the fast path switched off (as before)."""
    now = outcome(lambda: read_header(path, label="instance x"))
    with monkeypatch.context() as m:
        m.setattr(verify, "_read_header_fast", lambda fp: None)
        before = outcome(lambda: read_header(path, label="instance x"))
    return now, before


@pytest.fixture
def read_partial_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Counts the calls to pydicom's read_partial, the fallback."""
    calls: list[object] = []
    real = pydicom.filereader.read_partial

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify, "read_partial", spy)
    return calls


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_plain_files_take_the_fast_path(
    tmp_path: Path, read_partial_calls: list[object], transfer_syntax: str
) -> None:
    ds = plain_dataset(SpecificCharacterSet="ISO_IR 100", PatientName="Fast^Path")
    ds.add_new(0x7FE00010, "OB", b"\0" * 512 * 1024)
    path = write(tmp_path, written(ds, transfer_syntax))

    info = read_header(path, label="instance x")

    assert info == HeaderInfo(STUDY, SERIES, SOP, SOP, transfer_syntax, has_preamble=True)
    assert verify_instance(path, study_uid=STUDY, series_uid=SERIES, sop_uid=SOP) == (
        transfer_syntax
    )
    assert read_partial_calls == []


def test_mismatches_fail_with_the_same_messages(
    tmp_path: Path, read_partial_calls: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, part10(STUDY, SERIES, SOP))
    asked = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP}
    messages = {}
    for field in asked:
        args = {**asked, field: "1.2.3"}
        with pytest.raises(IntegrityError) as fast:
            verify_instance(path, **args)
        with monkeypatch.context() as m:
            m.setattr(verify, "_read_header_fast", lambda fp: None)
            with pytest.raises(IntegrityError) as slow:
                verify_instance(path, **args)
        assert str(fast.value) == str(slow.value)
        assert fast.value.retryable and fast.value.sop_instance_uid == args["sop_uid"]
        messages[field] = str(fast.value)
    assert messages["series_uid"] == (
        f"instance {SOP}: Series Instance UID in the file is {SERIES}, expected 1.2.3"
    )
    assert len(read_partial_calls) == len(asked)  # only the forced ones


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(raw_part10(dataset()), id="plain"),
        pytest.param(raw_part10(dataset(), media_sop="1.2.3"), id="stale-file-meta"),
        pytest.param(raw_part10(dataset(sop=SOP.encode() + b" ")), id="space-padded"),
        pytest.param(raw_part10(dataset(sop=b"")), id="empty-sop-uses-file-meta"),
        pytest.param(
            raw_part10(
                implicit(0x00080018, SOP.encode() + b"\0")
                + implicit(0x0020000D, STUDY.encode())
                + implicit(0x0020000E, SERIES.encode() + b"\0"),
                transfer_syntax=ImplicitVRLittleEndian,
            ),
            id="implicit",
        ),
        pytest.param(raw_part10(dataset(), transfer_syntax=JPEG2000Lossless), id="jpeg2000"),
    ],
)
def test_fast_path_gives_what_read_partial_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_partial_calls: list[object], data: bytes
) -> None:
    now, before = both_ways(write(tmp_path, data), monkeypatch)
    assert now == before
    assert isinstance(now[0], HeaderInfo) and now[1:] == (set(), set())
    assert len(read_partial_calls) == 1  # only the forced one


UNUSUAL = [
    pytest.param(raw_part10(dataset(sop=b"1.2.03")), id="invalid-uid"),
    pytest.param(raw_part10(dataset(sop=b"1.2.3\\1.2.4")), id="two-uids"),
    pytest.param(raw_part10(dataset(sop=b"1." + b"1" * 70)), id="uid-too-long"),
    pytest.param(raw_part10(dataset(sop=b" 1.2.3")), id="leading-space"),
    pytest.param(raw_part10(dataset(vr="UN")), id="sop-as-UN"),
    pytest.param(raw_part10(dataset(vr="LO")), id="sop-as-LO"),
    pytest.param(raw_part10(dataset(vr="OB")), id="sop-as-OB"),
    pytest.param(raw_part10(dataset(), group_length=2), id="wrong-group-length"),
    pytest.param(raw_part10(dataset(), transfer_syntax="1.2.840.10008.1.2.01"), id="invalid-ts"),
    pytest.param(raw_part10(dataset(), transfer_syntax=""), id="empty-ts"),
    pytest.param(
        raw_part10(dataset(), transfer_syntax=ImplicitVRLittleEndian), id="ts-says-implicit"
    ),
    pytest.param(b"\0" * 128 + b"DICM" + file_meta()[12:] + dataset(), id="no-group-length"),
    pytest.param(b"\0" * 128 + b"DICM" + dataset(), id="no-file-meta"),
    pytest.param(
        raw_part10(implicit(0x00000000, struct.pack("<L", 0)) + dataset()), id="command-set"
    ),
    pytest.param(  # pydicom reads the command set, then sees an explicit VR dataset
        raw_part10(
            implicit(0x00000000, struct.pack("<L", 0)) + dataset(),
            transfer_syntax=ImplicitVRLittleEndian,
        ),
        id="command-set-implicit",
    ),
    pytest.param(raw_part10(b""), id="meta-only"),
    pytest.param(raw_part10(b"\x08\x00"), id="two-bytes-after-meta"),
    pytest.param(raw_part10(dataset()[:40]), id="truncated-before-uids"),
    pytest.param(raw_part10(dataset()[:-30]), id="truncated-in-series-uid"),
    pytest.param(raw_part10(dataset() + b"\x28\x00\x10\x00US"), id="truncated-after"),
    pytest.param(raw_part10(explicit(0x00080018, "OB", b"") + dataset()), id="duplicate-sop"),
    pytest.param(raw_part10(dataset()[:-8]), id="truncated-last-element"),
    pytest.param(bytes(range(256)) * 4, id="binary-garbage"),
]


@pytest.mark.parametrize("data", UNUSUAL)
def test_unusual_files_get_exactly_the_old_handling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    now, before = both_ways(write(tmp_path, data), monkeypatch)
    assert now == before


@pytest.mark.parametrize("transfer_syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_syntaxes_pydicom_decodes_go_to_read_partial(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read_partial_calls: list[object],
    transfer_syntax: str,
) -> None:
    path = write(tmp_path, written(plain_dataset(), transfer_syntax))
    now, before = both_ways(path, monkeypatch)
    assert now == before
    assert now[0] == HeaderInfo(STUDY, SERIES, SOP, SOP, transfer_syntax)
    assert len(read_partial_calls) == 2


def test_bare_dataset_goes_to_read_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_partial_calls: list[object]
) -> None:
    buffer = io.BytesIO()
    plain_dataset(ImageComments="x" * 200).save_as(
        buffer, implicit_vr=True, little_endian=True, enforce_file_format=False
    )
    now, before = both_ways(write(tmp_path, buffer.getvalue()), monkeypatch)
    assert now == before
    assert now[0] == HeaderInfo(STUDY, SERIES, SOP, "", "", has_preamble=False)
    assert len(read_partial_calls) == 2


def _padded(
    size: int, *, sequence: bool = False, transfer_syntax: str = ExplicitVRLittleEndian
) -> bytes:
    """A file whose UIDs come after `size` bytes of private data (and a sequence, if asked)."""
    ds = plain_dataset()
    ds.add_new(0x00090010, "LO", "DLSTUDY TEST")
    ds.add_new(0x00091001, "OB", b"\1" * size)
    if sequence:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = "1.2.3"
        ds.ReferencedImageSequence = Sequence([item, item])
        ds.ReferencedImageSequence.is_undefined_length = True
        item.is_undefined_length_sequence_item = True
    ds.add_new(0x7FE00010, "OB", b"\0" * 64 * 1024)
    return written(ds, transfer_syntax)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_header_across_the_first_chunk_is_read_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfer_syntax: str
) -> None:
    # The end of the first chunk falls on every byte of the elements up to the Series UID.
    base = _padded(0, transfer_syntax=transfer_syntax)
    series_end = base.index(SERIES.encode()) + len(SERIES) + 1
    first = verify.HEADER_PREFIX_LENGTH + verify._HEADER_CHUNK - series_end
    for size in range(first - 2, first + 120, 2):
        path = write(tmp_path, _padded(size, transfer_syntax=transfer_syntax))
        now, before = both_ways(path, monkeypatch)
        assert now == before, size
        assert now[0] == HeaderInfo(STUDY, SERIES, SOP, SOP, transfer_syntax), size


class _FailingReader(io.BufferedReader):
    """A file whose reads fail past the Part 10 prefix, as on a disk error."""

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= verify.HEADER_PREFIX_LENGTH:
            raise OSError("Input/output error")
        return super().read(size)


def test_a_read_error_is_reported_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, part10(STUDY, SERIES, SOP))
    monkeypatch.setattr(Path, "open", lambda self, mode: _FailingReader(io.FileIO(self, mode)))
    now, before = both_ways(path, monkeypatch)
    assert now == before
    assert now[0] == (
        IntegrityError,
        "instance x: DICOM header cannot be parsed (Input/output error)",
    )


def test_a_stray_delimiter_cannot_cut_an_undefined_length_value_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An undefined length value (not a sequence) whose item runs past the first chunk: in the
    # chunk alone pydicom would end the value at the stray delimiter inside the item and take
    # the elements after it for the dataset's. Read from the file, the item is skipped whole.
    fake = (
        explicit(0x00080018, "UI", b"9.9\0")
        + explicit(0x0020000D, "UI", b"9.9\0")
        + explicit(0x0020000E, "UI", b"9.9\0")
        + explicit(0x00280010, "US", b"\0\2")
    )
    item = b"\xfe\xff\xdd\xe0\0\0\0\0" + fake + b"\0" * verify._HEADER_CHUNK
    value = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(item)) + item + b"\xfe\xff\xdd\xe0\0\0\0\0"
    private = struct.pack("<HH2sHL", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFFF) + value
    path = write(tmp_path, raw_part10(dataset(before=private)))
    now, before = both_ways(path, monkeypatch)
    assert now == before
    assert now[0] == HeaderInfo(STUDY, SERIES, SOP, SOP, ExplicitVRLittleEndian)


def _spy_parses(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The kind of file object each _parse_plain call gets: BytesIO for the first chunk."""
    kinds: list[type] = []
    real = verify._parse_plain

    def spy(fp: Any) -> Any:
        kinds.append(type(fp))
        return real(fp)

    monkeypatch.setattr(verify, "_parse_plain", spy)
    return kinds


@pytest.mark.parametrize(("size", "parses"), [(0, 1), (20 * 1024, 2)])
def test_undefined_length_before_the_uids_past_the_first_chunk_reads_the_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read_partial_calls: list[object],
    size: int,
    parses: int,
) -> None:
    # Within the chunk the walk is trusted; past its end, pydicom's search for the end of an
    # undefined length value may have stopped at a stray delimiter: the file is parsed again.
    kinds = _spy_parses(monkeypatch)
    path = write(tmp_path, _padded(size, sequence=True, transfer_syntax=ImplicitVRLittleEndian))
    info = read_header(path, label="instance x")
    assert info == HeaderInfo(STUDY, SERIES, SOP, SOP, ImplicitVRLittleEndian)
    assert kinds[0] is io.BytesIO and len(kinds) == parses
    assert read_partial_calls == []


def test_a_small_file_is_parsed_whole_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_partial_calls: list[object]
) -> None:
    kinds = _spy_parses(monkeypatch)
    path = write(tmp_path, part10(STUDY, SERIES, SOP))
    assert read_header(path, label="instance x").sop_uid == SOP
    assert kinds == [io.BytesIO]
    assert read_partial_calls == []
