"""Scan a folder of DICOM files into an in-memory study -> series -> instance index.

Headers only (`stop_before_pixels`), so indexing a folder of whole-slide images reads kilobytes
per file. Real-world folders hold files without a preamble or file meta, odd transfer syntaxes and
things that are not DICOM at all: whatever lacks the three UIDs is skipped with a log line, and
so is anything that is not a regular file (a named pipe would block the open forever) and a link
to a file outside the folder (the folder is all a server over it may ever send). Folders and files
that cannot be read (no permission) are skipped too, and one warning counts them and names the
first: their studies are missing from every search.

Each instance keeps its file's identity (device, inode, size, modification time): a request opens
the file and sends it only while it is still that file, so one removed, rewritten or swapped for a
link to /etc/shadow after indexing is never sent (ChangedSinceIndexed).
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from .attributes import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, Json, entries, texts

log = logging.getLogger("dlstudy.server")

# Values above this size are not read while indexing: a non-DICOM file read with `force=True`
# can announce a gigabyte-long element, and nothing the index keeps is that large.
_DEFER_SIZE = 64 * 1024

# Binary values above this size are given in metadata as a BulkDataURI, not inline.
BULK_SIZE = 1024 * 1024
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Deflated (offsets are in the inflated stream) and big endian (OW would need swapping).
_NOT_AS_SENT = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})

# Transfer syntax of a file without file meta, from how pydicom found it encoded.
_ENCODINGS: dict[tuple[bool | None, bool | None], str] = {
    (True, True): "1.2.840.10008.1.2",  # implicit VR little endian
    (False, True): "1.2.840.10008.1.2.1",  # explicit VR little endian
    (False, False): "1.2.840.10008.1.2.2",  # explicit VR big endian
}


class ChangedSinceIndexed(OSError):
    """An instance's file is not the one indexed: removed, rewritten, replaced or unreadable."""


@dataclass(frozen=True, slots=True)
class Instance:
    path: Path
    size: int
    stamp: tuple[int, int, int]  # the file's device, inode and modification time (ns)
    study_uid: str
    series_uid: str
    sop_uid: str
    transfer_syntax: str
    number: int | None
    attrs: Json  # instance-level DICOM JSON entries


@dataclass(slots=True)
class Series:
    uid: str
    study_uid: str
    number: int | None
    attrs: Json
    instances: list[Instance] = field(default_factory=list)
    by_uid: dict[str, Instance] = field(default_factory=dict)

    @property
    def modality(self) -> str | None:
        values = texts(self.attrs.get("00080060"))
        return values[0] if values else None


@dataclass(slots=True)
class Study:
    uid: str
    attrs: Json
    series: list[Series] = field(default_factory=list)
    by_uid: dict[str, Series] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)
    instance_count: int = 0


class Index:
    """All studies of a folder, each list in a stable order (UID; series and instance number)."""

    def __init__(self, studies: list[Study]) -> None:
        self.studies = sorted(studies, key=lambda s: s.uid)
        self.by_uid = {study.uid: study for study in self.studies}
        for study in self.studies:
            study.series.sort(key=lambda s: (s.number is None, s.number or 0, s.uid))
            for series in study.series:
                series.instances.sort(key=lambda i: (i.number is None, i.number or 0, i.sop_uid))
            study.modalities = sorted({s.modality for s in study.series if s.modality})
            study.instance_count = sum(len(s.instances) for s in study.series)

    @classmethod
    def scan(cls, root: Path) -> Index:
        studies: dict[str, Study] = {}
        count = skipped = 0
        real_root = os.path.realpath(root)
        unreadable = _Unreadable()
        # SOP Instance UID -> its series and the files not served for it: said once walked
        duplicates: dict[str, tuple[Series, list[Instance]]] = {}
        for path in _walk(root, unreadable):
            found = _servable_file(path, real_root, unreadable)
            if found is None:
                skipped += 1
                continue
            with _quiet(path):  # the file read, and its values: both may make pydicom complain
                instance, ds = _read(path, found, unreadable)
                if instance is None or ds is None:
                    skipped += 1
                    continue
                study = studies.get(instance.study_uid)
                if study is None:
                    study = studies[instance.study_uid] = Study(
                        instance.study_uid, entries(ds, STUDY_TAGS)
                    )
                series = study.by_uid.get(instance.series_uid)
                if series is None:
                    series = Series(
                        instance.series_uid,
                        instance.study_uid,
                        _int(ds, "SeriesNumber"),
                        entries(ds, SERIES_TAGS),
                    )
                    study.by_uid[series.uid] = series
                    study.series.append(series)
            first = series.by_uid.get(instance.sop_uid)
            if first is not None:  # only duplicates pay for choosing
                kept, dropped = _larger(first, instance)
                series.by_uid[instance.sop_uid] = kept
                duplicates.setdefault(instance.sop_uid, (series, []))[1].append(dropped)
                skipped += 1
                continue
            series.by_uid[instance.sop_uid] = instance
            count += 1
        for study in studies.values():  # each series' instances: the one kept of each UID
            for series in study.series:
                series.instances = list(series.by_uid.values())
        for sop_uid, (series, others) in duplicates.items():
            _say_duplicates(series.by_uid[sop_uid], others)
        unreadable.warn(root)
        if skipped:  # a folder's files missing from its searches, unless this says why
            log.warning(
                "skipped %d of the %d files under %s: not DICOM instances, not regular files, "
                "links out of the folder, unreadable or duplicates (--verbose names each)",
                skipped,
                count + skipped,
                root,
            )
        if count:
            log.info("indexed %d instances in %d studies under %s", count, len(studies), root)
        else:
            log.warning("no DICOM instances under %s: every search will answer 204", root)
        return cls(list(studies.values()))

    def series(self, study_uid: str, series_uid: str) -> Series | None:
        study = self.by_uid.get(study_uid)
        return study.by_uid.get(series_uid) if study else None

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Instance | None:
        series = self.series(study_uid, series_uid)
        return series.by_uid.get(sop_uid) if series else None

    def all_series(self) -> Iterator[tuple[Study, Series]]:
        for study in self.studies:
            for series in study.series:
                yield study, series


def read_header(file: BinaryIO, path: Path) -> Dataset:
    """The data set of a file without its pixel data (read within Index.scan's `_quiet`,
    which sends pydicom's complaints to the log)."""
    ds = pydicom.dcmread(file, stop_before_pixels=True, force=True, defer_size=_DEFER_SIZE)
    ds.filename = str(path)  # where a deferred value is read from, not the closed descriptor
    return ds


def header_json(instance: Instance, bulk_url: str) -> Json:
    """The DICOM JSON of an instance's data set without pixel data: binary values inline, but
    those of the top level above BULK_SIZE as `{bulk_url}/{tag}` (a BulkDataURI, PS3.18 F.2.6),
    never read: inline, a 200 MB value took 800 MB to answer."""
    with _quiet(instance.path), os.fdopen(open_indexed(instance), "rb") as file:
        ds = _header_with_bulk_deferred(file, instance)
        bulk = {}
        for tag in list(ds.keys()):
            raw = ds.get_item(tag, keep_deferred=True)
            if _is_bulk(raw):
                bulk[f"{tag:08X}"] = {"vr": raw.VR, "BulkDataURI": f"{bulk_url}/{tag:08X}"}
                del ds[tag]  # to_json_dict would read it
        result: Json = ds.to_json_dict(suppress_invalid_tags=True)
    return dict(sorted({**result, **bulk}.items())) if bulk else result


def bulk_value(instance: Instance, tag: int) -> tuple[int, int] | None:
    """Where in the file the value that header_json gives as a BulkDataURI is: (offset,
    length); None if the tag has no such value."""
    with _quiet(instance.path), os.fdopen(open_indexed(instance), "rb") as file:
        ds = _header_with_bulk_deferred(file, instance)
        raw = ds.get_item(tag, keep_deferred=True) if tag in ds else None
        if not _is_bulk(raw):
            return None
        assert isinstance(raw, RawDataElement)
        return raw.value_tell, raw.length


def _header_with_bulk_deferred(file: BinaryIO, instance: Instance) -> Dataset:
    """The data set without pixel data, its binary values above BULK_SIZE left unread where
    the file holds them as they are sent (little endian, not deflated). Another value left
    unread is read, if asked for, from `file` (the data set's buffer), not by its name."""
    sent_as_stored = instance.transfer_syntax not in _NOT_AS_SENT
    defer = BULK_SIZE if sent_as_stored else None
    return pydicom.dcmread(file, stop_before_pixels=True, force=True, defer_size=defer)


def _is_bulk(raw: object) -> bool:
    """Whether an element is a binary value left unread (its length above BULK_SIZE)."""
    return (
        isinstance(raw, RawDataElement)
        and raw.value is None
        and raw.VR in _BINARY_VRS
        and raw.length != 0xFFFFFFFF
    )


def open_indexed(instance: Instance) -> int:
    """A descriptor of the instance's file, if it is still the file indexed; else
    ChangedSinceIndexed, naming the file."""
    return _open_same(instance.path, instance.stamp, instance.size)


def still_indexed(instance: Instance) -> bool:
    """Whether the instance's path still leads to the file indexed (checked again on open)."""
    try:
        found = os.stat(instance.path)
    except OSError:
        return False
    return _same_file(found, instance.stamp, instance.size)


def _open_same(path: Path, stamp: tuple[int, int, int], size: int) -> int:
    # Opened first, then checked through the descriptor: whatever the path leads to by then
    # (a link, a folder swapped for a link), the bytes read are the checked file's.
    # O_NONBLOCK: a path replaced by a named pipe must not block the open.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ChangedSinceIndexed(f"{path}: {exc.strerror}") from exc
    if not _same_file(os.fstat(fd), stamp, size):
        os.close(fd)
        raise ChangedSinceIndexed(f"{path} is not the file indexed: changed since")
    return fd


def _stamp(found: os.stat_result) -> tuple[int, int, int]:
    return found.st_dev, found.st_ino, found.st_mtime_ns


def _same_file(found: os.stat_result, stamp: tuple[int, int, int], size: int) -> bool:
    return _stamp(found) == stamp and found.st_size == size


@contextmanager
def _quiet(path: Path) -> Iterator[None]:
    # Real-world files make pydicom warn (invalid VR values, implicit VR in an explicit file);
    # that is the file's business, not the request's: log, never raise (pytest turns warnings
    # into errors, also in the server's thread).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.debug("%s: %s", path, warning.message)


@dataclass
class _Unreadable:
    """The folders and files the scan could not read: without a word, the studies in them were
    just missing from the searches (os.walk passes over a folder it cannot list)."""

    folders: int = 0
    files: int = 0
    first: str | None = None  # "path: reason" of the first one met

    def add(self, path: str | Path, exc: OSError, *, folder: bool) -> None:
        if folder:
            self.folders += 1
        else:
            self.files += 1
        if self.first is None:
            self.first = f"{path}: {exc.strerror or exc}"

    def warn(self, root: Path) -> None:
        if self.first is None:
            return
        kinds = [(self.folders, "folder"), (self.files, "file")]
        counts = " and ".join(f"{n} {kind}{'s' if n > 1 else ''}" for n, kind in kinds if n)
        log.warning(
            "could not read %s under %s (the first: %s): the instances in them are not served",
            counts,
            root,
            self.first,
        )


def _walk(root: Path, unreadable: _Unreadable) -> Iterator[Path]:
    # Sorted, and hidden entries skipped (e.g. a download tool's `.dlstudy/` state folder).
    def cannot_list(exc: OSError) -> None:
        log.info("skipped %s: %s", exc.filename, exc.strerror)
        unreadable.add(exc.filename, exc, folder=True)

    for dirpath, dirnames, filenames in os.walk(root, onerror=cannot_list):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name)


def _servable_file(path: Path, real_root: str, unreadable: _Unreadable) -> os.stat_result | None:
    """The status of a regular file in the folder; None (and a -v line) for anything else."""
    # Checked without opening: opening a FIFO waits for a writer, a device may be endless.
    try:
        found = path.stat()
    except OSError as exc:  # a dangling link, a file removed meanwhile, a folder not searchable
        log.info("skipped %s: %s", path, exc.strerror)
        if not isinstance(exc, FileNotFoundError):
            unreadable.add(path, exc, folder=False)
        return None
    if not stat.S_ISREG(found.st_mode):
        log.info("skipped %s: not a regular file", path)
        return None
    # os.walk enters no linked folder; a linked file must stay inside too.
    if path.is_symlink():
        target = os.path.realpath(path)
        if os.path.commonpath([real_root, target]) != real_root:
            log.info("skipped %s: a link to %s, outside the folder", path, target)
            return None
    return found


def _larger(first: Instance, other: Instance) -> tuple[Instance, Instance]:
    """Of two files with the same SOP Instance UID, the larger (kept) and the other: a copy
    cut short is smaller than the whole file, and which came first in the walk must not
    decide what is served."""
    return (other, first) if other.size > first.size else (first, other)


def _say_duplicates(kept: Instance, dropped: list[Instance]) -> None:
    """One warning naming the file served for a SOP Instance UID and every other file of it,
    when their sizes differ; -v lines when all are the same size."""
    if all(other.size == kept.size for other in dropped):
        for other in dropped:
            log.info("skipped %s: duplicate SOP Instance UID %s", other.path, kept.sop_uid)
        return
    others = ", ".join(f"{other.path} ({other.size} bytes)" for other in dropped[:5])
    more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
    log.warning(
        "SOP Instance UID %s is in %d files of different sizes: serving the largest %s "
        "(%d bytes), not %s%s",
        kept.sop_uid, len(dropped) + 1, kept.path, kept.size, others, more,
    )  # fmt: skip


def _read(
    path: Path, found: os.stat_result, unreadable: _Unreadable
) -> tuple[Instance | None, Dataset | None]:
    try:
        fd = _open_same(path, _stamp(found), found.st_size)
    except ChangedSinceIndexed as exc:
        cause = exc.__cause__  # set when the open itself failed, not when the file changed
        if isinstance(cause, OSError) and not isinstance(cause, FileNotFoundError):
            unreadable.add(path, cause, folder=False)
        log.info("skipped %s: %s", path, cause.strerror if isinstance(cause, OSError) else exc)
        return None, None
    try:
        with os.fdopen(fd, "rb") as file:
            ds = read_header(file, path)
        uids = [str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID")]
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        if not sop and "MediaStorageSOPInstanceUID" in ds.file_meta:
            sop = str(ds.file_meta.MediaStorageSOPInstanceUID).strip()
        if not all(uids) or not sop:
            log.info("skipped %s: no Study, Series or SOP Instance UID", path)
            return None, None
        ts = ds.file_meta.get("TransferSyntaxUID") or _ENCODINGS.get(ds.original_encoding)
        if not ts:
            log.info("skipped %s: unknown transfer syntax", path)
            return None, None
        instance = Instance(
            path=path,
            size=found.st_size,
            stamp=_stamp(found),
            study_uid=uids[0],
            series_uid=uids[1],
            sop_uid=sop,
            transfer_syntax=str(ts),
            number=_int(ds, "InstanceNumber"),
            attrs=entries(ds, INSTANCE_TAGS),
        )
    except Exception as exc:  # anything pydicom cannot make sense of is not served
        log.info("skipped %s: %s: %s", path, type(exc).__name__, exc)
        return None, None
    return instance, ds


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
