"""Reading OUT/.dlstudy/manifest.jsonl, the manifest of dlstudy before the SQLite index.

One JSON line per committed file, later lines winning. A run killed mid-write left at worst a
torn last line, which is skipped; a line longer than any entry is skipped without being held.
The index imports such a file once (store/manifest.py) and renames it aside.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .entry import Entry
from .safe_files import open_binary

log = logging.getLogger(__name__)

LEGACY_NAME = "manifest.jsonl"
IMPORTED_SUFFIX = ".imported"  # manifest.jsonl, once imported, is renamed to this
MAX_LINE = 64 * 1024  # an entry is about 450 bytes: a longer line is not one


def read_entries(path: Path) -> Iterator[Entry]:
    """The entries of a JSONL manifest in file order, in flat memory (NotRegularFile for a
    link or pipe at `path`, FileNotFoundError when there is none)."""
    with open_binary(path) as fp:
        while line := fp.readline(MAX_LINE + 1):
            if not line.endswith(b"\n"):
                if len(line) <= MAX_LINE or not _skip_rest_of_line(fp):
                    return  # a torn last line
                log.info("skipping an overlong line in %s", path)
                continue
            try:
                yield Entry.from_line(line.decode("utf-8", "replace"))
            except (ValueError, TypeError):
                log.info("skipping a torn or foreign line in %s", path)


def _skip_rest_of_line(fp: IO[bytes]) -> bool:
    """Read past the end of the current line without keeping it; False at a torn end."""
    while chunk := fp.readline(MAX_LINE):
        if chunk.endswith(b"\n"):
            return True
    return False
