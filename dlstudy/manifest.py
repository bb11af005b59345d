"""Resume state beside the data: OUT/.dlstudy/manifest.jsonl, one JSON line per committed file.

Append-only and flushed line by line, so a crash can at worst leave a torn last line, which
reading skips. Later lines win. The manifest records what was verified when it was written
(size and SHA-256); `--verify` re-checks files against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import OutputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    study: str
    series: str
    sop: str
    path: str  # relative to OUT, with forward slashes
    size: int
    sha256: str

    def line(self) -> str:
        """The JSON line (dataclasses.asdict deep-copies every field: ~20 µs an entry)."""
        return json.dumps(
            {
                "study": self.study,
                "series": self.series,
                "sop": self.sop,
                "path": self.path,
                "size": self.size,
                "sha256": self.sha256,
            }
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest:
    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root = root
        self.path = state_dir / MANIFEST_NAME
        self.entries: dict[str, Entry] = {}
        self._file: IO[str] | None = None
        lines = self._load()
        if lines > 2 * len(self.entries) + 1000:
            self._compact()  # many reruns rewrote the same entries: keep the file small

    def _load(self) -> int:
        if not self.path.exists():
            return 0
        lines = 0
        with self.path.open(encoding="utf-8", errors="replace") as fp:
            for line in fp:
                lines += 1
                try:
                    entry = Entry(**json.loads(line))
                except (ValueError, TypeError):
                    log.info("skipping a torn or foreign line in %s", self.path)
                    continue
                self.entries[entry.sop] = entry
        return lines

    def _compact(self) -> None:
        temp = self.path.with_suffix(".compact.tmp")
        with temp.open("w", encoding="utf-8") as fp:
            for entry in self.entries.values():
                fp.write(entry.line() + "\n")
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(temp, self.path)

    def get(self, sop: str) -> Entry | None:
        return self.entries.get(sop)

    def record(self, entry: Entry) -> None:
        if self._file is None:
            try:
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise OutputError(
                    f"cannot write {str(self.path)!r}: {exc.strerror or exc}", path=str(self.path)
                ) from exc
        self._file.write(entry.line() + "\n")
        self._file.flush()
        self.entries[entry.sop] = entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
