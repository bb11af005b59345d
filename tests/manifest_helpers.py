"""The manifest index of an output folder as tests read and plant it: its rows as dicts, and
an older dlstudy's JSONL manifest in its place."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

FIELDS = ("study", "series", "sop", "path", "size", "digest")


def index_of(out: Path) -> Path:
    return out / ".dlstudy" / "manifest.sqlite"


def manifest_rows(out: Path) -> list[dict[str, Any]]:
    """Every entry of OUT's index (read with the sqlite3 module, not dlstudy's code)."""
    db = sqlite3.connect(index_of(out))
    try:
        rows = db.execute(f"SELECT {', '.join(FIELDS)} FROM entries ORDER BY sop").fetchall()
    finally:
        db.close()
    return [dict(zip(FIELDS, row, strict=True)) for row in rows]


def legacy_line(row: dict[str, Any]) -> str:
    """The JSONL line an older dlstudy wrote for `row` (its digest under the algorithm's name)."""
    algorithm, _, hexdigest = row["digest"].partition(":")
    fields = {k: v for k, v in row.items() if k != "digest"}
    return json.dumps({**fields, algorithm: hexdigest})


def replace_with_legacy(out: Path, rows: list[dict[str, Any]], tail: str = "") -> Path:
    """OUT as an older dlstudy left it: no index, a manifest.jsonl of `rows` (then `tail`)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index_of(out)}{suffix}").unlink(missing_ok=True)
    legacy = out / ".dlstudy" / "manifest.jsonl"
    legacy.write_text("".join(legacy_line(row) + "\n" for row in rows) + tail)
    return legacy
