"""What the manifest keeps of one committed file, and the digests it is verified by.

The manifest records what was verified when it was written (size and a BLAKE3 digest of the
bytes); `--verify` re-checks files against it.

BLAKE3, not SHA-256 (which older manifests hold, and which is still checked where an entry has
it): as strong a 256-bit cryptographic digest, several times faster; SHA-256 of every byte was
a visible part of a fast download's wall time (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from .safe_files import open_binary

DIGEST = "blake3"  # what new entries record
_HASH_CHUNK = 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


_DIGESTS: dict[str, Callable[[], Hasher]] = {  # what entries may hold
    "blake3": blake3.blake3,
    "sha256": hashlib.sha256,
}


class Digest:
    """The running digest of one file's bytes, labelled as entries keep it: "blake3:<hex>"."""

    __slots__ = ("algorithm", "_hasher")

    def __init__(self, algorithm: str = DIGEST) -> None:
        self.algorithm = algorithm
        self._hasher = _DIGESTS[algorithm]()

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def labelled(self) -> str:
        return f"{self.algorithm}:{self._hasher.hexdigest()}"


def digest_of(path: Path, algorithm: str = DIGEST) -> str:
    """The labelled digest of the file at `path`."""
    digest = Digest(algorithm)
    with open_binary(path) as fp:
        while chunk := fp.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.labelled()


@dataclass(frozen=True)
class Entry:
    study: str
    series: str
    sop: str
    path: str  # relative to OUT, with forward slashes
    size: int
    digest: str  # labelled: "blake3:<hex>" (or "sha256:<hex>" from older manifests)
    # The --transfer-syntax it was fetched with, as asked ("*" or a UID): a rerun asking
    # another fetches it again. Older manifests did not keep it: "*", the default.
    syntax: str = "*"

    @property
    def algorithm(self) -> str:
        return self.digest.partition(":")[0]

    def line(self) -> str:
        """The JSON line, the digest under its algorithm's name (by hand: dataclasses.asdict
        deep-copies every field)."""
        algorithm, _, hexdigest = self.digest.partition(":")
        return json.dumps(
            {
                "study": self.study,
                "series": self.series,
                "sop": self.sop,
                "path": self.path,
                "size": self.size,
                algorithm: hexdigest,
                "syntax": self.syntax,
            }
        )

    @classmethod
    def from_line(cls, line: str) -> Entry:
        """ValueError or TypeError for a torn line, or one with no digest dlstudy knows."""
        fields = json.loads(line)
        known = [name for name in _DIGESTS if name in fields]
        if len(known) != 1:
            raise ValueError("no digest, or more than one")
        algorithm = known[0]
        hexdigest = fields.pop(algorithm)
        if not isinstance(hexdigest, str):
            raise TypeError("digest is not text")
        return cls(**fields, digest=f"{algorithm}:{hexdigest}")
