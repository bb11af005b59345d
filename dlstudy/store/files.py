"""Where instances land: the output layout, temp files beside their final name, atomic commit.

A file only ever appears under its final name complete and verified (write to a hidden temp
file in the same folder, check it, `os.replace`). So "the final file exists" means "done", which
is what lets a rerun skip it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import secrets
import stat
import string
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Self

from ..errors import IntegrityError, OutputError, StorageError, UsageError
from ..http.urls import is_valid_uid
from ..model import InstanceRef
from .lock import LOCK_NAME
from .manifest import JOURNALS, MANIFEST_NAME
from .safe_files import leads_outside

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"
# HTTP/2 delivers bodies in 8-16 KiB frames; a 256 KiB buffer turns those into few write calls
# (and stays small: one per instance in flight).
WRITE_BUFFER = 256 * 1024
STATE_DIR = ".dlstudy"
# Folders whose Path and checks are kept; past this the caches start again. Instances come
# series by series, so a few suffice, and 100,000 studies no longer keep 100,000 of each.
FOLDERS_REMEMBERED = 4096
# Temp names: the process id keeps concurrent processes (--workers) apart, the counter the
# transfers of one process; an interrupted run's leftovers are removed under the output lock.
_temp_numbers = itertools.count()
_TEMP_NAME = re.compile(r"\..+\.[0-9]+-[0-9]+" + re.escape(TEMP_SUFFIX))
_FIELDS = ("study", "series", "sop", "modality")


def check_layout(layout: str) -> None:
    """Reject templates that could escape the output folder, put two instances under one
    name (no {sop} field, or a field cut by an index or a format), name files the way
    dlstudy names its temp files (which a rerun removes), or put them in a state folder."""
    fields = ", ".join("{" + f + "}" for f in _FIELDS)
    try:
        parts = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise UsageError(f"--layout {layout!r} is not a valid template (fields: {fields})") from exc
    used = [(name, spec, conversion) for _, name, spec, conversion in parts if name is not None]
    if any(name not in _FIELDS or spec or conversion for name, spec, conversion in used):
        raise UsageError(
            f"--layout {layout!r} may only use the fields {fields}, each whole "
            "(no index, conversion or format)"
        )
    path = Path(layout.format(**{name: "1.2" for name in _FIELDS}))
    if path.is_absolute() or ".." in path.parts or "sop" not in {name for name, _, _ in used}:
        raise UsageError(f"--layout {layout!r} must be a relative path containing {{sop}}")
    if path.name.endswith(TEMP_SUFFIX):
        raise UsageError(
            f"--layout {layout!r}: file names ending in {TEMP_SUFFIX} are dlstudy's temp files"
        )
    if STATE_DIR in path.parent.parts:  # (a folder holding one is another run's output)
        raise UsageError(
            f"--layout {layout!r}: a folder named {STATE_DIR} holds dlstudy's state, not instances"
        )


# SQLite's unix layer opens no path longer than 512 bytes, a journal's name included: the
# index at OUT/.dlstudy/manifest.sqlite opens under an OUT this long at most (links resolved).
MAX_OUTPUT_PATH = 479


class Store:
    """The output folder of a run."""

    def __init__(self, root: Path, layout: str) -> None:
        check_layout(layout)
        self.root = root
        self.layout = layout
        self._folders = Folders(root)
        # final_path runs twice per instance: the folders' Paths and the checked series once.
        self._folder_paths: dict[str, Path] = {}
        self._valid_series: set[tuple[str, str]] = set()
        # Per instance a Path join or relative_to() is a visible share of a small part's
        # Python work in a multipart response (docs/decisions.md): these are computed once.
        self._root_prefix = os.path.join(root, "")
        self._incoming = root / STATE_DIR / "incoming" / "part.dcm"
        # What prepare() made: the folders (OUT first, then those above it), and whether
        # the state folder too (remove_if_unused).
        self._made: list[Path] = []
        self._made_state = False

    def prepare(self) -> None:
        """Create the output folder and prove we can write there, before any network work."""
        state_dir = self.root / STATE_DIR
        try:
            resolved = len(os.fsencode(os.path.realpath(self.root)))
        except OSError:  # (a deleted working folder: said just below)
            resolved = 0
        if resolved > MAX_OUTPUT_PATH:
            raise OutputError(
                f"output folder {str(self.root)!r} is {resolved} bytes long as a full path: "
                f"its index (SQLite) opens only under at most {MAX_OUTPUT_PATH}; give a "
                "shorter path",
                path=str(self.root),
            )
        try:
            missing = _missing_folders(self.root)
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # (exist_ok: something there that is no folder)
                raise OutputError(
                    f"output folder {_why_no_folder(self.root)}", path=str(self.root)
                ) from None
            self._made = missing
            try:
                state_dir.mkdir()
            except FileExistsError:  # judged just below
                pass
            else:
                self._made_state = True
            if state_dir.is_symlink() or not state_dir.is_dir():
                raise OutputError(
                    f"cannot use {str(state_dir)!r}: it is not a folder of its own "
                    "(a symbolic link?); move it away",
                    path=str(state_dir),
                )
            _write_test(self.root / f".dlstudy-write-test-{secrets.token_hex(4)}")
        except OSError as exc:
            why = f"is not writable: {exc.strerror or exc}"
            if not self.root.is_absolute() and _working_folder_gone():
                why = "cannot be made: the current folder no longer exists (give an absolute path)"
            raise OutputError(
                f"output folder {str(self.root)!r} {why}", path=str(self.root)
            ) from exc
        try:  # (the index's journal is made there: a read-only folder makes it read-only)
            _write_test(state_dir / f"write-test-{secrets.token_hex(4)}")
        except OSError as exc:
            raise OutputError(
                f"cannot write in {str(state_dir)!r}: {exc.strerror or exc}", path=str(state_dir)
            ) from exc

    def remove_if_unused(self) -> None:
        """Remove the output folder, and the folders above it, that prepare() made, when
        nothing but this run's own state is in them: a run that wrote nothing (the server
        unreachable, nothing found, stopped at once) leaves no empty folder where cron would
        look for a study. Never a folder that was there before, nor one holding an earlier
        run's state. Only under the output lock, once the manifest is closed."""
        if not self._made or not self._made_state:
            return
        state_dir = self.state_dir
        try:
            own = os.listdir(state_dir)
            if os.listdir(self.root) != [STATE_DIR] or not set(own) <= _RUN_STATE:
                return
            for name in own:
                if name == "incoming":
                    os.rmdir(state_dir / name)
                else:
                    os.unlink(state_dir / name)
            state_dir.rmdir()
            for folder in self._made:
                folder.rmdir()
        except OSError:  # something came in meanwhile, or is not this run's to remove: kept
            return

    @staticmethod
    def is_valid(ref: InstanceRef) -> bool:
        """UIDs come from the server; only digits and dots may ever become path parts."""
        return all(is_valid_uid(uid) for uid in (ref.study_uid, ref.series_uid, ref.sop_uid))

    def final_path(self, ref: InstanceRef) -> Path:
        series = (ref.study_uid, ref.series_uid)
        if series not in self._valid_series or not is_valid_uid(ref.sop_uid):
            if not self.is_valid(ref):
                raise ValueError(f"refusing to build a path from invalid UIDs: {ref!r}"[:300])
            self._valid_series.add(series)
        modality = "".join(c for c in ref.modality if c.isalnum())[:16] or "OT"
        relative = self.layout.format(
            study=ref.study_uid, series=ref.series_uid, sop=ref.sop_uid, modality=modality
        )
        folder, _, name = relative.rpartition("/")
        base = self._folder_paths.get(folder)
        if base is None:
            if len(self._folder_paths) >= FOLDERS_REMEMBERED:
                self._folder_paths.clear()
                self._valid_series.clear()
            base = self._folder_paths[folder] = self.root / folder
        return base / name

    def leads_outside(self, folder: Path) -> bool:
        """Whether writing in `folder` would land outside OUT (through a symbolic link)."""
        return self._folders.leads_outside(folder)

    def move_in(self, relative: str, final: Path, size: int) -> bool:
        """Move the file at `relative` (under OUT, as the manifest records it) to `final`, if
        it is a regular file of `size` bytes inside OUT; whether it was moved. Folders it
        leaves empty are removed."""
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or {"..", STATE_DIR} & {*parts}:
            return False
        old = self.root.joinpath(*parts)
        if self.leads_outside(old.parent):
            return False
        try:
            status = os.lstat(old)
            if not stat.S_ISREG(status.st_mode) or status.st_size != size:
                return False
            self._folders.make(final.parent)
            os.rename(old, final)
        except (OSError, IntegrityError):
            return False  # fetched instead
        self._remove_empty(old.parent)
        return True

    def _remove_empty(self, folder: Path) -> None:
        while folder != self.root and self._folders.under_root(folder):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or not ours to remove): the folders above are not either
            self._folders.forget(folder)
            folder = folder.parent

    def open_temp(self, final: Path) -> TempFile:
        return TempFile(final, self._folders)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def relative(self, path: Path) -> str:
        text = str(path)
        if os.sep == "/" and text.startswith(self._root_prefix):  # a path made by final_path
            return text[len(self._root_prefix) :]
        return path.relative_to(self.root).as_posix()

    def remove_stale_temp_files(self) -> int:
        """Delete temp files an interrupted run left behind; only safe under the output lock."""
        removed = 0
        for folder, dirs, files in os.walk(self.root):
            # A folder with a state folder of its own is another run's output (its own lock):
            # its temp files may be that run's, being written.
            dirs[:] = [d for d in dirs if not os.path.isdir(os.path.join(folder, d, STATE_DIR))]
            for name in files:
                if _TEMP_NAME.fullmatch(name):  # only what TempFile names: a user's .x.part stays
                    removed += _remove_temp(Path(folder, name))
        return removed

    def open_incoming(self) -> TempFile:
        """A temp file for a part whose instance is not known until its header is read."""
        return TempFile(self._incoming, self._folders)


def _remove_temp(path: Path) -> bool:
    """Remove a temp file left behind; whether it was. One in a folder this user may not
    write in (another's, on a shared disk) stays: under no final name, it harms nothing."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s, left by an interrupted run: %s", path, exc.strerror or exc)
        return False
    return True


def _why_no_folder(root: Path) -> str:
    """Why `root` (or a folder above it) could not be made, after its name: a link to
    nothing (a share not mounted) is no folder to make, and is named as such."""
    blocking = next(
        (path for path in (root, *root.parents) if os.path.lexists(path) and not path.is_dir()),
        root,
    )
    named = repr(str(root)) if blocking == root else f"{str(root)!r}: {str(blocking)!r}"
    if (dangling := _link_to_nothing(blocking)) is not None:
        return f"{named} is {dangling}"
    return f"{named} exists and is not a folder"


def _in_the_way(folder: Path) -> str:
    if (dangling := _link_to_nothing(folder)) is not None:  # (one out of OUT: refused before)
        return f"it is {dangling}"
    return "a file is in the way"


def _link_to_nothing(path: Path) -> str | None:
    """'a symbolic link to TARGET, which does not exist' when `path` is one; else None."""
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    return None


def _missing_folders(root: Path) -> list[Path]:
    """`root` and the folders above it that do not exist, `root` first."""
    missing: list[Path] = []
    folder = root.absolute()
    while not os.path.lexists(folder) and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    return missing


# What a run keeps in a state folder it made: the lock, the index (and the journals SQLite
# keeps beside it), the folder for parts whose instance is not known yet. Anything else
# (sync's search catalog of a long listing) is worth keeping.
_RUN_STATE = {LOCK_NAME, MANIFEST_NAME, "incoming"} | {MANIFEST_NAME + j for j in JOURNALS}


def _write_test(probe: Path) -> None:
    with probe.open("xb"):
        pass
    probe.unlink()


class Folders:
    """The folders under OUT that files go into: each made and checked once a run, and never
    one that a symbolic link leads out of OUT (nothing is written outside it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_real: str | None = None
        self._ready: set[Path] = set()
        self._outside: dict[Path, bool] = {}
        self._root_text = str(root)
        self._root_prefix = os.path.join(self._root_text, "")

    def leads_outside(self, folder: Path) -> bool:
        outside = self._outside.get(folder)
        if outside is None:
            if len(self._outside) >= FOLDERS_REMEMBERED:
                self._outside.clear()
            outside = self._outside[folder] = self._leads_outside(folder)
        return outside

    def _leads_outside(self, folder: Path) -> bool:
        parent = folder.parent
        if self.under_root(parent) and not self.leads_outside(parent):
            try:  # the parent is known to stay inside: only `folder` itself could be a link
                if not stat.S_ISLNK(os.lstat(folder).st_mode):
                    return False
            except OSError:
                return False  # nothing there (yet): it is made inside its parent
        if self._root_real is None:
            self._root_real = os.path.realpath(self.root)
        return leads_outside(folder, self._root_real)

    def make(self, folder: Path) -> None:
        if folder in self._ready:
            return
        parent = folder.parent
        if self.under_root(parent):
            self.make(parent)  # checked (or made) first: then only `folder` itself can be a link
            if _made_real_folder(folder):
                self._remember(folder)
                return
        self._outside.pop(folder, None)  # a link may have appeared since it was looked at
        if self.leads_outside(folder):  # before mkdir, which would make folders out there
            raise IntegrityError(
                f"refusing to write in {str(folder)!r}: a symbolic link leads it out of "
                f"the output folder {str(self.root)!r}"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise IntegrityError(f"cannot create {str(folder)!r}: {_in_the_way(folder)}") from exc
        self._remember(folder)

    def under_root(self, folder: Path) -> bool:
        text = str(folder)  # (a Path keeps its str): cheaper than folder.parents
        return text == self._root_text or text.startswith(self._root_prefix)

    def _remember(self, folder: Path) -> None:
        if len(self._ready) >= FOLDERS_REMEMBERED:
            self._ready.clear()
        self._ready.add(folder)

    def forget(self, folder: Path) -> None:
        self._ready.discard(folder)


def _made_real_folder(folder: Path) -> bool:
    """Make `folder` (its parent exists); whether it is now a folder and not a link. False
    leaves the checks and the message to the careful path."""
    try:
        os.mkdir(folder)
        return True
    except FileExistsError:
        try:
            return stat.S_ISDIR(os.lstat(folder).st_mode)  # lstat: a link is not a folder
        except OSError:
            return False
    except OSError:
        return False


class TempFile:
    """A hidden file beside `final`; committed by atomic rename, removed on any failure."""

    def __init__(self, final: Path, folders: Folders | None = None) -> None:
        """`folders`: the run's folders (shared), to make and check each folder once."""
        self.final = final
        unique = f"{os.getpid()}-{next(_temp_numbers)}"
        self.path = final.with_name(f".{final.name}.{unique}{TEMP_SUFFIX}")
        self.size = 0
        self._committed = False
        self._file: BinaryIO | None = None
        self._folders = folders if folders is not None else Folders(final.parent)

    def __enter__(self) -> Self:
        try:
            try:
                self._file = self._open()
            except FileNotFoundError:
                self._folders.forget(self.path.parent)  # removed meanwhile: make it again
                self._file = self._open()
        except OSError as exc:
            raise StorageError(
                f"cannot write in {str(self.path.parent)!r}: {exc.strerror or exc}",
                path=str(self.path.parent),
            ) from exc
        return self

    def write(self, data: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(
                f"cannot write {str(self.final)!r}: {exc.strerror or exc}", path=str(self.final)
            ) from exc
        self.size += len(data)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()  # flushes: a full disk may only show up here
            except OSError as exc:
                raise StorageError(
                    f"cannot write {str(self.final)!r}: {exc.strerror or exc}",
                    path=str(self.final),
                ) from exc

    def commit(self) -> None:
        self.close()
        try:
            self._folders.make(self.final.parent)
            try:
                os.replace(self.path, self.final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_across()  # a part's file, and a study folder that is a mount point
            self._committed = True
        except IsADirectoryError as exc:  # a folder where this instance goes: only it fails
            raise IntegrityError(
                f"cannot create {str(self.final)!r}: a folder is in the way"
            ) from exc
        except OSError as exc:
            raise StorageError(
                f"cannot create {str(self.final)!r}: {exc.strerror or exc}", path=str(self.final)
            ) from exc

    def _copy_across(self) -> None:
        """Put the file under its final name from another file system: copied beside it
        first, then renamed, so the final name never holds part of it."""
        with TempFile(self.final, self._folders) as beside:
            with self.path.open("rb") as source:
                while chunk := source.read(WRITE_BUFFER):
                    beside.write(chunk)
            beside.commit()
        self.path.unlink(missing_ok=True)

    def _open(self) -> BinaryIO:
        self._folders.make(self.path.parent)
        return self.path.open("xb", buffering=WRITE_BUFFER)  # O_EXCL: never through a link

    def discard(self) -> None:
        """Remove the file. Called while another failure is raised (often the disk's): one
        that cannot be removed (a file system turned read-only) stays, under no final name,
        for the next run to remove, and that failure is the one said."""
        try:
            self.close()
        except StorageError:
            pass  # the file is going away anyway
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.info("cannot remove %s (%s); the next run will", self.path, exc.strerror or exc)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Anything short of an explicit commit leaves no trace.
        if not self._committed:
            self.discard()


def _working_folder_gone() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False
