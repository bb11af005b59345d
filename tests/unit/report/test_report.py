"""`--report` files (dlstudy/report/landed.py): format by extension, whole or absent."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from dlstudy.errors import OutputError, UsageError
from dlstudy.report.landed import COLUMNS, ReportWriter, report_format


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name", ["r.txt", "r", "r.json", "r.csv.gz"])
def test_only_csv_and_jsonl_names_are_accepted(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match=r"must end in \.csv or \.jsonl"):
        report_format(tmp_path / name)
    assert report_format(tmp_path / "R.CSV") == "csv"


def test_csv_rows_appear_under_the_name_only_on_commit(tmp_path: Path) -> None:
    path = tmp_path / "landed.csv"
    writer = ReportWriter(path)
    writer.row("downloaded", "1.2", "1.2.3", "1.2.3.4", path=Path("a/b.dcm"), size=5,
               digest="blake3:ab")  # fmt: skip
    writer.row("failed", None, "1.2.9", None, reason='said "no", twice\nreally')
    assert not path.exists() and len(hidden(tmp_path)) == 1
    writer.commit()
    assert hidden(tmp_path) == []
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines(keepends=True)))
    assert rows[0] == list(COLUMNS)
    assert rows[1] == ["downloaded", "1.2", "1.2.3", "1.2.3.4",
                       os.path.abspath("a/b.dcm"), "5", "blake3:ab", ""]  # fmt: skip
    # A line break a server sent is escaped, as on stderr: one row, one line (quotes quoted).
    assert rows[2] == ["failed", "", "1.2.9", "", "", "", "", 'said "no", twice\\x0areally']
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_jsonl_rows_have_every_column_with_nulls(tmp_path: Path) -> None:
    path = tmp_path / "landed.jsonl"
    writer = ReportWriter(path)
    writer.row("present", "1.2", "1.2.3", "1.2.3.4", path=tmp_path / "x.dcm", size=7,
               digest="sha256:cd")  # fmt: skip
    writer.row("failed", "1.2", None, None, reason="study 1.2 not found on the server")
    writer.commit()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert list(first) == list(COLUMNS)
    assert first["path"] == str(tmp_path / "x.dcm") and first["size"] == 7
    assert second == {"status": "failed", "study": "1.2", "series": None, "sop": None,
                      "path": None, "size": None, "digest": None,
                      "reason": "study 1.2 not found on the server"}  # fmt: skip


def test_an_earlier_report_goes_at_start_and_a_discarded_run_leaves_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "landed.csv"
    path.write_text("status\ndownloaded\n")
    writer = ReportWriter(path)
    assert not path.exists()
    writer.row("downloaded", "1.2", "1.2.3", "1.2.3.4")
    writer.discard()
    writer.discard()  # twice is harmless
    assert list(tmp_path.iterdir()) == []


def test_a_report_in_a_missing_folder_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write --report"):
        ReportWriter(tmp_path / "no" / "such" / "landed.csv")
