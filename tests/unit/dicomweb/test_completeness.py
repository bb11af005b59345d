"""The Part 10 completeness walk: whole files pass, cut ones fail wherever they are cut, files
it cannot judge pass. Files are written by pydicom, in every form the walk reads."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from dlstudy.dicomweb.completeness import BodyWalk, check_complete
from dlstudy.errors import IntegrityError

CT = "1.2.840.10008.5.1.4.1.1.2"


def part10(transfer_syntax: str, *, undefined: bool, encapsulated: bool = False) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    inner = Dataset()
    inner.ReferencedSOPClassUID = CT
    inner.ReferencedSOPInstanceUID = "1.2.3.9"
    nested = Dataset()
    nested.CodeValue = "X"
    inner.ConceptNameCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([inner, inner])
    if undefined:
        ds["ReferencedImageSequence"].is_undefined_length = True
        inner["ConceptNameCodeSequence"].is_undefined_length = True
        inner.is_undefined_length_sequence_item = True
        nested.is_undefined_length_sequence_item = True
    ds.add_new(0x00091001, "OB", b"\1" * 3001)
    if encapsulated:
        ds.add_new(0x7FE00010, "OB", encapsulate([b"\xff\xd8" + b"f" * 999, b"g" * 4000]))
        ds["PixelData"].is_undefined_length = True
    else:
        ds.add_new(0x7FE00010, "OW", b"\0" * 20000)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


FORMS = {
    "explicit": (ExplicitVRLittleEndian, False, False),
    "explicit, undefined lengths": (ExplicitVRLittleEndian, True, False),
    "implicit": (ImplicitVRLittleEndian, False, False),
    "implicit, undefined lengths": (ImplicitVRLittleEndian, True, False),
    "encapsulated pixel data": (JPEGBaseline8Bit, True, True),
}


def check(tmp_path: Path, data: bytes, transfer_syntax: str, *, body: bool = True) -> None:
    """The file's walk, and the same from memory (a download's head that holds the whole file,
    as small instances do) or from a head that holds part of it (the file read only past it):
    all must say the same. With `body`, so must the walk of the
    bytes as they arrive (bench), in pieces of several sizes: it reads the transfer syntax
    from the file meta, which must then be `transfer_syntax`."""
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    outcomes = []
    for head in (None, data, data[:150], data[: len(data) // 2]):
        try:
            check_complete(
                path, transfer_syntax=transfer_syntax, size=len(data), label="x", head=head
            )
            outcomes.append(None)
        except IntegrityError as exc:
            outcomes.append(str(exc))
    assert outcomes[1:] == [outcomes[0]] * 3, outcomes
    for piece in (4096, len(data) or 1) if body else ():
        assert (walk_body(data, piece) is None) == (outcomes[0] is None), piece
    if outcomes[0] is not None:
        raise IntegrityError(outcomes[0], retryable=True)


def walk_body(data: bytes, piece: int) -> str | None:
    """What BodyWalk says of `data` fed `piece` bytes at a time: None when whole."""
    walk = BodyWalk()
    for at in range(0, len(data), piece):
        walk.feed(data[at : at + piece])
    try:
        walk.end("x")
    except IntegrityError as exc:
        assert exc.retryable
        assert "the file is incomplete" in str(exc) or "something was appended" in str(exc)
        return str(exc)
    return None


@pytest.mark.parametrize("form", list(FORMS))
def test_a_whole_file_passes_and_a_cut_one_fails_wherever_it_is_cut(
    tmp_path: Path, form: str
) -> None:
    transfer_syntax, undefined, encapsulated = FORMS[form]
    data = part10(transfer_syntax, undefined=undefined, encapsulated=encapsulated)
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == "1.2.3.4"  # a real file
    check(tmp_path, data, transfer_syntax)
    # Every cut inside the sequence and inside the pixel data (the last element) fails.
    sequence = data.index(b"\x08\x00\x40\x11")  # (0008,1140) Referenced Image Sequence
    pixels = data.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    private = data.index(b"\x09\x00\x01\x10")  # (0009,1001), the element after the sequence
    for cut in [*range(sequence + 1, private), *range(pixels + 1, len(data))]:
        with pytest.raises(IntegrityError, match="incomplete") as caught:
            check(tmp_path, data[:cut], transfer_syntax)
        assert caught.value.retryable, cut
    # Nor anything after the end: fewer bytes than an element header (a CRLF too many, as
    # some multipart writers add), NUL padding apart.
    with pytest.raises(IntegrityError, match="2 bytes after the pixel data.*appended"):
        check(tmp_path, data + b"\r\n", transfer_syntax)
    check(tmp_path, data + b"\0" * 5, transfer_syntax)
    # Anywhere else, only a cut exactly between two top-level elements goes unseen: the file
    # is then a shorter, well-formed file (the limit of what a structure can tell).
    for cut in range(133, len(data), 7):
        try:
            check(tmp_path, data[:cut], transfer_syntax)
        except IntegrityError:
            continue
        assert cut <= pixels, cut  # never inside or after the pixel data's header


def test_a_big_endian_file_is_walked_with_its_file_meta_little_endian(tmp_path: Path) -> None:
    """Explicit VR big endian (retired, still in archives): the dataset's tags and lengths
    read big endian, its file meta little endian. Whole, it passes; cut inside the sequence or
    the pixel data, or followed by a CRLF, it fails (it was let through unread)."""
    data = part10(ExplicitVRBigEndian, undefined=True)
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == "1.2.3.4"
    check(tmp_path, data, ExplicitVRBigEndian)
    sequence = data.index(b"\x00\x08\x11\x40")  # (0008,1140), big endian
    private = data.index(b"\x00\x09\x10\x01")
    pixels = data.rindex(b"\x7f\xe0\x00\x10")
    for cut in [*range(sequence + 1, private, 5), *range(pixels + 1, len(data), 97)]:
        with pytest.raises(IntegrityError, match="incomplete"):
            check(tmp_path, data[:cut], ExplicitVRBigEndian)
    with pytest.raises(IntegrityError, match="2 bytes after the pixel data.*appended"):
        check(tmp_path, data + b"\r\n", ExplicitVRBigEndian)


def test_a_deflated_dataset_is_whole_when_its_deflate_stream_ends(tmp_path: Path) -> None:
    """A deflated dataset: every cut of its deflate stream fails, as do bytes after it; NUL
    padding passes. A stream zlib cannot read is let through."""
    data = part10(DeflatedExplicitVRLittleEndian, undefined=True)
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == "1.2.3.4"
    check(tmp_path, data, DeflatedExplicitVRLittleEndian)
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # past the file meta group
    for cut in range(meta_end + 1, len(data)):
        said = "deflated dataset stops before its last" if cut >= meta_end + 8 else "incomplete"
        with pytest.raises(IntegrityError, match=said):
            check(tmp_path, data[:cut], DeflatedExplicitVRLittleEndian, body=cut % 50 == 0)
    with pytest.raises(IntegrityError, match="after the deflated dataset.*appended"):
        check(tmp_path, data + b"\r\n" * 5, DeflatedExplicitVRLittleEndian)
    check(tmp_path, data + b"\0" * 7, DeflatedExplicitVRLittleEndian)
    # The trailer of what was inflated, as some writers leave it: gzip's (CRC-32 and length,
    # as pydicom's image_dfl.dcm has it) or zlib's (Adler-32), NUL padding after it.
    dataset = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    gzip = struct.pack("<LL", zlib.crc32(dataset), len(dataset))
    adler = struct.pack(">L", zlib.adler32(dataset))
    for trailer in (gzip, adler, gzip + b"\0\0", adler + b"\0"):
        check(tmp_path, data + trailer, DeflatedExplicitVRLittleEndian)
    # Anything else after the stream was appended: a CRLF, another file's trailer.
    for appended in (b"\r\n", b"\n", b"N\xd0XE\x1a\x02\x04\x00", gzip[:4], gzip + b"\r\n"):
        with pytest.raises(IntegrityError, match="after the deflated dataset.*appended"):
            check(tmp_path, data + appended, DeflatedExplicitVRLittleEndian)
    explicit = part10(ExplicitVRLittleEndian, undefined=False)  # not deflated at all
    check(tmp_path, explicit[:-100], DeflatedExplicitVRLittleEndian, body=False)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_bare_dataset_is_walked_in_the_encoding_its_first_element_shows(
    tmp_path: Path, transfer_syntax: str
) -> None:
    """No preamble, no file meta (some archives store and serve them so): explicit VR when a
    VR follows the first tag, implicit otherwise. Cut inside its pixel data, it fails."""
    data = part10(transfer_syntax, undefined=True)
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    bare = data[meta_end:]
    check(tmp_path, bare, "")  # what the header check reports for it: no transfer syntax
    pixels = bare.rindex(b"\xe0\x7f\x10\x00")
    for cut in range(pixels + 1, len(bare), 61):
        with pytest.raises(IntegrityError, match="incomplete"):
            check(tmp_path, bare[:cut], "")


def test_what_the_walk_cannot_judge_passes(tmp_path: Path) -> None:
    """A bare dataset that starts with no usual group read little endian (big endian, or no
    DICOM: what the header check judges), a VR the walk does not know: never refused."""
    data = part10(ExplicitVRBigEndian, undefined=False)
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    check(tmp_path, data[meta_end:-100], "")
    check(tmp_path, b"not DICOM at all, " * 20, "")
    explicit = part10(ExplicitVRLittleEndian, undefined=False)
    unknown = explicit.replace(b"OW", b"ZZ")  # the pixel data's VR, made up
    check(tmp_path, unknown, ExplicitVRLittleEndian)


@pytest.mark.parametrize("form", list(FORMS))
def test_a_body_walked_as_it_arrives_byte_by_byte_says_what_the_file_walk_says(
    tmp_path: Path, form: str
) -> None:
    """Pieces of one byte: every read of the walk waits for bytes still to come. Whole, cut
    inside the pixel data, cut inside the sequence, one byte too many."""
    transfer_syntax, undefined, encapsulated = FORMS[form]
    data = part10(transfer_syntax, undefined=undefined, encapsulated=encapsulated)
    sequence = data.index(b"\x08\x00\x40\x11")
    assert walk_body(data, 1) is None
    for cut in (sequence + 9, len(data) - 3, len(data) + 1):
        cut_data = (data + b"\r")[:cut]  # (a NUL byte too many: padding)
        said = walk_body(cut_data, 1)
        assert said is not None and said == walk_body(cut_data, 4096), cut
    with pytest.raises(IntegrityError, match="incomplete"):
        check(tmp_path, data[: sequence + 9], transfer_syntax)


def test_a_body_too_short_for_the_prefix_or_without_a_transfer_syntax_is_let_through() -> None:
    """Not Part 10 (too short, no DICM, no Transfer Syntax UID in its file meta): what the
    header check judges, not this walk."""
    data = part10(ExplicitVRLittleEndian, undefined=False)
    assert walk_body(data[:100], 7) is None
    no_syntax = data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x11\x00UI", 1)
    assert no_syntax != data
    assert walk_body(no_syntax[:-100], 4096) is None


@pytest.mark.parametrize("form", list(FORMS))
def test_bytes_appended_after_the_pixel_data_fail_and_nul_padding_passes(
    tmp_path: Path, form: str
) -> None:
    """What follows the pixel data must be elements (in ascending order): a second file, or
    the next part of a multipart response whose delimiter lacked its CRLF, is refused; NUL
    padding, and elements that may follow the pixel data, are not."""
    transfer_syntax, undefined, encapsulated = FORMS[form]
    data = part10(transfer_syntax, undefined=undefined, encapsulated=encapsulated)
    appended = {
        "a second file": data,
        "the next part": b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + data,
        "an element that goes back": b"\x08\x00\x18\x00UI\x08\x001.2.3.4\0",
    }
    for what, tail in appended.items():
        with pytest.raises(IntegrityError, match="something was appended") as caught:
            check(tmp_path, data + tail, transfer_syntax)
        assert f"{len(tail)} bytes after the pixel data, from byte {len(data)}" in str(caught.value)
        assert caught.value.retryable, what
    check(tmp_path, data + b"\0" * 4096, transfer_syntax)
    trailing_padding = b"\xfc\xff\xfc\xffOB\0\0\x04\0\0\0\0\0\0\0"  # (FFFC,FFFC) OB, 4 bytes
    if transfer_syntax == ImplicitVRLittleEndian:
        trailing_padding = b"\xfc\xff\xfc\xff\x04\0\0\0\0\0\0\0"
    check(tmp_path, data + trailing_padding, transfer_syntax)
