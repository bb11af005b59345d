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

from dlstudy.dicomweb import header_fast, verify
from dlstudy.dicomweb.verify import HeaderInfo, read_header
from dlstudy.errors import IntegrityError

from ...factories import CT_IMAGE_STORAGE, STUDY, part10
from ...verify_helpers import verify_instance

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


def outcome(read: Callable[[], object]) -> Outcome:
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
        m.setattr(verify, "read_header_fast", lambda fp: None)
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

    monkeypatch.setattr(pydicom.filereader, "read_partial", spy)
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
            m.setattr(verify, "read_header_fast", lambda fp: None)
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
    size: int,
    *,
    sequence: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixels: int = 64 * 1024,
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
        ds["ReferencedImageSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True
    ds.add_new(0x7FE00010, "OB", b"\0" * pixels)
    return written(ds, transfer_syntax)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_header_across_the_first_chunk_is_read_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfer_syntax: str
) -> None:
    # The end of the first chunk falls on every byte of the elements up to the Series UID.
    base = _padded(0, transfer_syntax=transfer_syntax)
    series_end = base.index(SERIES.encode()) + len(SERIES) + 1
    first = verify.HEADER_PREFIX_LENGTH + header_fast.HEADER_CHUNK - series_end
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
    monkeypatch.setattr(verify, "open_binary", lambda path: _FailingReader(io.FileIO(path, "rb")))
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
    item = b"\xfe\xff\xdd\xe0\0\0\0\0" + fake + b"\0" * header_fast.HEADER_CHUNK
    value = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(item)) + item + b"\xfe\xff\xdd\xe0\0\0\0\0"
    private = struct.pack("<HH2sHL", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFFF) + value
    path = write(tmp_path, raw_part10(dataset(before=private)))
    now, before = both_ways(path, monkeypatch)
    assert now == before
    assert now[0] == HeaderInfo(STUDY, SERIES, SOP, SOP, ExplicitVRLittleEndian)


def _spy_parses(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The kind of file object each _parse_plain call gets: BytesIO for the first chunk."""
    kinds: list[type] = []
    real = header_fast._parse_plain

    def spy(fp: Any) -> Any:
        kinds.append(type(fp))
        return real(fp)

    monkeypatch.setattr(header_fast, "_parse_plain", spy)
    return kinds


@pytest.mark.parametrize("size", [0, 20 * 1024])
def test_an_undefined_length_before_the_uids_has_the_file_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_partial_calls: list[object], size: int
) -> None:
    # _parse_head leaves undefined lengths to pydicom, whose walk of a chunk is not trusted past
    # one (its search for the end of a value may stop at a stray delimiter): the file is parsed
    # again, still without read_partial.
    kinds = _spy_parses(monkeypatch)
    path = write(tmp_path, _padded(size, sequence=True, transfer_syntax=ImplicitVRLittleEndian))
    info = read_header(path, label="instance x")
    assert info == HeaderInfo(STUDY, SERIES, SOP, SOP, ImplicitVRLittleEndian)
    assert kinds == [io.BytesIO, io.BufferedReader]
    assert read_partial_calls == []


def test_an_undefined_length_in_a_small_file_is_parsed_once_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_partial_calls: list[object]
) -> None:
    kinds = _spy_parses(monkeypatch)
    data = _padded(0, sequence=True, transfer_syntax=ImplicitVRLittleEndian, pixels=0)
    assert read_header(write(tmp_path, data), label="instance x").sop_uid == SOP
    assert kinds == [io.BytesIO]
    assert read_partial_calls == []


def test_a_small_file_is_parsed_whole_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_partial_calls: list[object]
) -> None:
    kinds = _spy_parses(monkeypatch)
    path = write(tmp_path, part10(STUDY, SERIES, SOP))
    assert read_header(path, label="instance x").sop_uid == SOP
    assert kinds == []  # _parse_head was enough: pydicom's walk is not needed
    assert read_partial_calls == []


def ordered(*extra: tuple[int, bytes], implicit_vr: bool = False) -> bytes:
    """The elements of `dataset()` and `extra` ((tag, encoded element) pairs), in tag order."""
    uids = [
        (0x00080016, "UI", CT_IMAGE_STORAGE.encode() + b"\0"),
        (0x00080018, "UI", SOP.encode() + b"\0"),
        (0x00080060, "CS", b"CT"),
        (0x0020000D, "UI", STUDY.encode()),
        (0x0020000E, "UI", SERIES.encode() + b"\0"),
        (0x00200013, "IS", b"1 "),
    ]
    elements = [
        (tag, implicit(tag, value) if implicit_vr else explicit(tag, vr, value))
        for tag, vr, value in uids
    ]
    return b"".join(encoded for _, encoded in sorted([*elements, *extra]))


def item(body: bytes) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body


def undefined_sequence(tag: int, *items: bytes, delimiter_length: int = 0) -> tuple[int, bytes]:
    """(tag, element) of an explicit VR sequence of undefined length holding `items`."""
    head = struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
    end = struct.pack("<HHL", 0xFFFE, 0xE0DD, delimiter_length)
    return tag, head + b"".join(items) + end


def undefined_item(body: bytes) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body + b"\xfe\xff\x0d\xe0\0\0\0\0"


# Referenced Image Sequence as scanners write it: items of undefined length, one holding a
# nested sequence of undefined length with an item of defined length, and an empty sequence.
NESTED = ordered(
    undefined_sequence(
        0x00081140,
        undefined_item(
            explicit(0x00081150, "UI", CT_IMAGE_STORAGE.encode() + b"\0")
            + explicit(0x00081155, "UI", b"1.2.3.4\0")
            + undefined_sequence(0x00089215, item(explicit(0x00080100, "SH", b"121139")))[1]
        ),
        item(explicit(0x00081155, "UI", b"1.2.3.5\0")),
    ),
    undefined_sequence(0x00082112),
)


def charset(value: bytes) -> tuple[int, bytes]:
    return 0x00080005, explicit(0x00080005, "CS", value)


# (file, whether _parse_head reads it alone, without pydicom)
HEAD_CASES = [
    pytest.param(raw_part10(ordered(charset(b"ISO_IR 192"))), True, id="utf8"),
    pytest.param(raw_part10(ordered(charset(b""))), True, id="empty-charset"),
    pytest.param(
        raw_part10(
            ordered((0x00080005, implicit(0x00080005, b"ISO_IR 100")), implicit_vr=True),
            transfer_syntax=ImplicitVRLittleEndian,
        ),
        True,
        id="implicit-latin1",
    ),
    pytest.param(raw_part10(ordered(charset(b"ISO-IR 100"))), False, id="misspelled-charset"),
    pytest.param(raw_part10(ordered(charset(b"ISO_IR 999"))), False, id="unknown-charset"),
    pytest.param(raw_part10(ordered(charset(b"\\ISO 2022 IR 87"))), False, id="code-extensions"),
    pytest.param(
        raw_part10(ordered(charset(b"ISO_IR 192\\ISO 2022 IR 87"))), False, id="bad-extensions"
    ),
    pytest.param(
        raw_part10(ordered((0x00081140, explicit(0x00081140, "SQ", item(dataset()) * 2)))),
        True,
        id="defined-length-sequence",
    ),
    pytest.param(
        raw_part10(
            ordered(
                (
                    0x00081140,
                    struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
                    + item(explicit(0x00081150, "UI", b"1.2\0"))
                    + b"\xfe\xff\xdd\xe0\0\0\0\0",
                )
            )
        ),
        True,
        id="undefined-length-sequence",
    ),
    pytest.param(raw_part10(NESTED), True, id="nested-undefined-lengths"),
    pytest.param(
        raw_part10(ordered(undefined_sequence(0x00081140, delimiter_length=4))),
        False,
        id="sequence-delimiter-with-a-length",
    ),
    pytest.param(
        raw_part10(ordered(undefined_sequence(0x00081140, explicit(0x00081155, "UI", b"1.2\0")))),
        False,
        id="sequence-without-items",
    ),
    pytest.param(
        raw_part10(
            ordered(
                undefined_sequence(
                    0x00081140,
                    undefined_item(struct.pack("<HH2sHL", 9, 0x1001, b"UN", 0, 2**32 - 1)),
                )
            )
        ),
        False,
        id="undefined-UN-in-an-item",
    ),
    pytest.param(
        raw_part10(dataset(before=undefined_sequence(0x00080018, item(b""))[1])),
        False,
        id="a-UID-as-a-sequence",
    ),
    pytest.param(
        raw_part10(ordered((0x00091001, explicit(0x00091001, "UN", b"\1" * 10)))),
        True,
        id="private-UN",
    ),
    pytest.param(
        raw_part10(ordered((0x00080008, explicit(0x00080008, "ZZ", b"AB")))),
        False,
        id="unknown-VR",
    ),
    pytest.param(
        raw_part10(dataset(before=explicit(0x00080060, "CS", b"MR"))), False, id="out-of-order"
    ),
    pytest.param(raw_part10(dataset()[:-10]), True, id="ends-after-series-uid"),
    pytest.param(raw_part10(dataset()[:-10] + b"\x28" * 7), True, id="7-bytes-after"),
    pytest.param(raw_part10(dataset()[:-10] + b"\xe0\x7f\x10\x00OB\0\0"), False, id="cut-OB"),
    pytest.param(
        raw_part10(dataset()[:-10] + b"\xe0\x7f\x10\x00OB\0\0\0\0\0\0"), True, id="OB-header"
    ),
    pytest.param(raw_part10(dataset()[:-10] + b"\xe0\x7f\x10\x00US\0\0"), True, id="short-US"),
]


@pytest.mark.parametrize(("data", "alone"), HEAD_CASES)
def test_parse_head_reads_plain_files_alone_and_leaves_the_rest_to_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, alone: bool
) -> None:
    now, before = both_ways(write(tmp_path, data), monkeypatch)
    assert now == before
    head = header_fast.parse_head(data[verify.HEADER_PREFIX_LENGTH :], whole=True)
    assert (head is not None) == alone
    if alone:
        assert head == now[0] and now[1:] == (set(), set())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(raw_part10(ordered(charset(b"ISO_IR 100"))), id="explicit"),
        pytest.param(
            raw_part10(ordered(implicit_vr=True), transfer_syntax=ImplicitVRLittleEndian),
            id="implicit",
        ),
        pytest.param(raw_part10(NESTED), id="nested-undefined-lengths"),
    ],
)
def test_parse_head_cut_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    # A chunk cut anywhere gives the file's header or None (read on); a file cut anywhere gives
    # what read_partial gives.
    body = data[verify.HEADER_PREFIX_LENGTH :]
    full = header_fast.parse_head(body, whole=True)
    assert full == HeaderInfo(STUDY, SERIES, SOP, SOP, full.transfer_syntax if full else "")
    assert header_fast.parse_head(body, whole=False) == full  # it sees the element after the UIDs
    for cut in range(len(body)):
        assert header_fast.parse_head(body[:cut], whole=False) in (None, full), cut
        now, before = both_ways(
            write(tmp_path, data[: verify.HEADER_PREFIX_LENGTH + cut]), monkeypatch
        )
        assert now == before, cut


def test_parse_head_knows_the_vrs_and_character_sets_pydicom_knows() -> None:
    from pydicom.charset import python_encoding
    from pydicom.filereader import ENCODED_VR
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    both = header_fast._SHORT_VRS | header_fast._LONG_VRS
    assert both == {vr for vr in ENCODED_VR if len(vr) == 2}
    assert header_fast._LONG_VRS == {vr.encode() for vr in EXPLICIT_VR_LENGTH_32}
    assert header_fast._PLAIN_CHARSETS <= python_encoding.keys()
    for value in header_fast._PLAIN_CHARSETS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pydicom.charset.convert_encodings(value)


def test_a_registered_private_syntax_goes_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    private = "1.2.826.0.1.3680043.8.498.99"
    data = raw_part10(ordered(), transfer_syntax=private)
    assert header_fast.parse_head(data[verify.HEADER_PREFIX_LENGTH :], whole=True) is not None
    monkeypatch.setattr(pydicom.uid, "PrivateTransferSyntaxes", [pydicom.uid.UID(private)])
    assert header_fast.parse_head(data[verify.HEADER_PREFIX_LENGTH :], whole=True) is None


# verify_instance(head=..., size=...): from memory when the head is enough, else the file.

MEMORY_CASES = [
    *(p.values[0] for p in UNUSUAL),
    *(p.values[0] for p in HEAD_CASES),
    raw_part10(dataset()),
    raw_part10(dataset(), media_sop="1.2.3"),
    raw_part10(dataset(sop=b"")),
    part10(STUDY, SERIES, SOP),
    part10(STUDY, SERIES, SOP, preamble=False),
    part10(STUDY, SERIES, "1.2.3"),
    b"<html><body>" + b"x" * 200 + b"</body></html>",
    b"\0" * 100,
]


ASKED = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP}


@pytest.mark.parametrize("data", MEMORY_CASES)
@pytest.mark.parametrize("known_size", [True, False])
def test_verify_from_memory_gives_what_the_file_gives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, known_size: bool
) -> None:
    path = write(tmp_path, data)
    head, size = data[: verify.VERIFY_HEAD_LENGTH], len(data) if known_size else None
    from_file = outcome(lambda: verify_instance(path, **ASKED))
    notes = [record.getMessage() for record in caplog.records]
    caplog.clear()
    in_memory = outcome(lambda: verify_instance(path, **ASKED, head=head, size=size))
    assert in_memory == from_file
    assert [record.getMessage() for record in caplog.records] == notes


def _spy_file_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files opened for reading from now on."""
    paths: list[Path] = []
    real = verify.open_binary

    def spy(path: Path) -> Any:
        paths.append(path)
        return real(path)

    monkeypatch.setattr(verify, "open_binary", spy)
    return paths


def test_a_plain_file_is_verified_from_memory_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = part10(STUDY, SERIES, SOP, payload=b"\0" * 100_000)
    head = data[: verify.VERIFY_HEAD_LENGTH]
    path = tmp_path / "not-written-yet.dcm"
    reads = _spy_file_reads(monkeypatch)
    assert verify_instance(path, **ASKED, head=head) == ExplicitVRLittleEndian
    with pytest.raises(IntegrityError) as in_memory:
        verify_instance(path, **{**ASKED, "series_uid": "1.2.3"}, head=head)
    assert reads == []
    write(tmp_path, data).rename(path)
    with pytest.raises(IntegrityError) as from_file:
        verify_instance(path, **{**ASKED, "series_uid": "1.2.3"})
    assert str(in_memory.value) == str(from_file.value)
    assert in_memory.value.retryable and from_file.value.retryable
    assert reads == [path]


ENDS_AFTER_SERIES = raw_part10(dataset()[:-10])


@pytest.mark.parametrize(
    ("data", "head_length", "known_size", "read"),
    [
        pytest.param(_padded(20 * 1024), verify.VERIFY_HEAD_LENGTH, True, True, id="long-header"),
        pytest.param(part10(STUDY, SERIES, SOP), 300, True, True, id="head-too-short"),
        pytest.param(part10(STUDY, SERIES, SOP), 132, False, True, id="prefix-only"),
        pytest.param(ENDS_AFTER_SERIES, len(ENDS_AFTER_SERIES), False, True, id="size-unknown"),
        pytest.param(ENDS_AFTER_SERIES, len(ENDS_AFTER_SERIES), True, False, id="whole-file"),
        pytest.param(part10(STUDY, SERIES, SOP), 1000, False, False, id="header-in-head"),
    ],
)
def test_the_file_is_read_only_when_the_head_is_not_enough(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
    head_length: int,
    known_size: bool,
    read: bool,
) -> None:
    path = write(tmp_path, data)
    reads = _spy_file_reads(monkeypatch)
    size = len(data) if known_size else None
    transfer_syntax = verify_instance(path, **ASKED, head=data[:head_length], size=size)
    assert transfer_syntax == ExplicitVRLittleEndian
    assert reads == ([path] if read else [])
