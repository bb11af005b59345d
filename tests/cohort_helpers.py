"""Shared by the cohort-list tests: read a --report file, check it against disk and source."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import blake3

from dlstudy.server import VirtualArchive


def read_report(path: Path) -> list[dict[str, Any]]:
    """The rows of a --report file, CSV or JSON lines, with sizes as ints (None when empty)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        rows: list[dict[str, Any]] = list(csv.DictReader(text.splitlines()))
        for row in rows:
            for name, value in row.items():
                row[name] = None if value == "" else value
            row["size"] = int(row["size"]) if row["size"] is not None else None
        return rows
    return [json.loads(line) for line in text.splitlines()]


def files_under(out: Path) -> set[Path]:
    return {p.resolve() for p in out.rglob("*") if p.is_file() and ".dlstudy" not in p.parts}


def assert_report_is_exact(
    rows: list[dict[str, Any]], out: Path, source: Mapping[str, bytes], *, status: str
) -> None:
    """Every row neither failed nor a repeated line's is one file written under `out`, and every
    file under `out` has a row: size and BLAKE3 digest as on disk, bytes identical to the source
    instance, and the path the default layout gives for its UIDs."""
    landed = [row for row in rows if row["status"] not in ("failed", "repeat")]
    assert all(row["status"] == status for row in landed), {r["status"] for r in landed}
    assert len({row["sop"] for row in landed}) == len(landed), "an instance listed twice"
    assert {Path(row["path"]) for row in landed} == files_under(out)
    for row in landed:
        path = Path(row["path"])
        assert path.is_absolute()
        assert path == (out / row["study"] / row["series"] / f"{row['sop']}.dcm").resolve()
        data = path.read_bytes()
        assert row["size"] == len(data)
        assert row["digest"] == "blake3:" + blake3.blake3(data).hexdigest()
        assert data == source[row["sop"]], row["sop"]
        assert row["reason"] is None


def assert_byte_exact(archive: VirtualArchive, studies: list[str], out: Path) -> int:
    """Every instance of `studies` is under `out` with the virtual archive's bytes, and nothing
    else is; returns how many."""
    expected = [uids for study in studies for uids in archive.instances_of(study)]
    for st, se, sop in expected:
        assert (out / st / se / f"{sop}.dcm").read_bytes() == archive.expected_bytes(st, se, sop)
    files = [p for p in out.rglob("*.dcm") if ".dlstudy" not in p.parts]
    assert len(files) == len(expected)
    return len(expected)
