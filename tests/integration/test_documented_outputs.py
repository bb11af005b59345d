"""What the docs say the machine-readable outputs hold is what the installed CLI prints: the
keys of each `--json` object and the fields of each `--log-format json` event, checked against
real runs on the embedded server (the usage page's summary lacked two keys a run prints)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ..cli_helpers import installed_download, run_installed
from ..fixtures.embedded_server import StartServer, SynthStudy

DOCS = Path(__file__).resolve().parents[2] / "docs"
USAGE = (DOCS / "usage.md").read_text(encoding="utf-8")
# What every JSON log record carries besides its event's own fields.
RECORD = {"time", "level", "event"}


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _named(text: str) -> set[str]:
    """The `names` a sentence lists, leaving out what it says of them in parentheses."""
    while (shorter := re.sub(r"\([^()]*\)", "", text)) != text:
        text = shorter
    return set(re.findall(r"`(\w+)`", text))


def _row(page: str, start: str) -> str:
    (row,) = [line for line in page.splitlines() if line.startswith(start)]
    return row


def _same_keys(documented: Any, printed: Any, where: str = "summary") -> None:
    """The same keys at every level: in objects, and in the first object of a list."""
    if isinstance(documented, dict):
        assert isinstance(printed, dict), where
        assert set(documented) == set(printed), where
        for key, value in documented.items():
            _same_keys(value, printed[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and printed:
        _same_keys(documented[0], printed[0], f"{where}[0]")


@pytest.mark.integration
def test_the_download_summary_has_the_keys_of_the_documented_one(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    documented = json.loads(_between(USAGE, "The `--json` summary:\n\n```json\n", "\n```"))
    url = embedded_server(synth_study.root)
    status, summary, _ = installed_download(url, synth_study.study_uid, tmp_path / "out")
    assert status == 0
    _same_keys(documented, summary)


@pytest.mark.integration
def test_query_lines_have_the_documented_fields(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    documented = _named(_between(_row(USAGE, "| `--json` (query)"), "a line:", "|"))
    result = run_installed("query", "--url", embedded_server(synth_study.root), "--json")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert set(json.loads(line)) == documented


def _events(lines: list[str]) -> dict[str, set[str]]:
    """Each event's fields, from JSON log lines."""
    events: dict[str, set[str]] = {}
    for line in lines:
        if line.startswith("{"):
            record = json.loads(line)
            events.setdefault(record["event"], set()).update(set(record) - RECORD)
    return events


def _documented_events() -> dict[str, set[str]]:
    table = _between(USAGE, "| event | fields |\n|---|---|\n", "\n\n")
    rows = [re.fullmatch(r"\| `(\w+)` \| (.*) \|", line) for line in table.splitlines()]
    return {row.group(1): _named(row.group(2)) for row in rows if row is not None}


@pytest.mark.integration
def test_sync_summary_and_log_events_have_the_documented_fields(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    out, log = tmp_path / "mirror", tmp_path / "sync.jsonl"
    args = ("sync", "--url", url, "-o", str(out), "--json", "--log-format", "json")
    first = run_installed(*args, "--log-file", str(log))
    assert first.returncode == 0, first.stderr
    documented = _named(_between(USAGE, "gets a `sync` object:", ";"))
    assert set(json.loads(first.stdout)["sync"]) == documented
    seen = _events(log.read_text().splitlines())
    again = run_installed(*args, "-v")  # nothing new: the complete study, at debug level
    assert again.returncode == 0, again.stderr
    seen |= _events(again.stderr.splitlines())
    broken = embedded_server(synth_study.root, fault_rate=1.0, fault_status=404)
    failed = run_installed(
        "sync", "--url", broken, "-o", str(tmp_path / "other"), "-q", "--log-format", "json",
        "--log-file", str(tmp_path / "failed.jsonl"),
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    seen |= _events((tmp_path / "failed.jsonl").read_text().splitlines())
    for event, fields in _documented_events().items():
        assert seen.get(event) == fields, event


@pytest.mark.integration
def test_catalog_pull_summary_has_the_documented_keys(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    page = (DOCS / "catalog.md").read_text(encoding="utf-8")
    row = _row(page, "| `--json` (catalog pull)")
    documented = _named(_between(row, "however the pull ends:", ". A pull that stops"))
    url = embedded_server(synth_study.root)
    result = run_installed(
        "catalog", "pull", "--url", url, "--db", str(tmp_path / "c.duckdb"), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == documented


@pytest.mark.integration
def test_the_bench_object_and_its_rows_have_the_documented_keys(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    text = " ".join((DOCS / "bench.md").read_text(encoding="utf-8").split())
    paragraph = _between(text, "The `--json` object:", "The chart is written whole")
    top, rows = paragraph.split(", and `rows`, one per cell:")
    result = run_installed(
        "bench", "--url", embedded_server(synth_study.root), synth_study.study_uid,
        "--strategy", "single-part", "-c", "1", "--http", "1.1", "--repeat", "1",
        "--limit", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert set(printed) == _named(top) | {"rows"}
    assert set(printed["rows"][0]) == _named(rows)
