"""`--json` is one summary object on stdout however `download` or `sync` ends: a usage error
dlstudy finds once the options are read (a bad UID, a list it cannot use, a log file it cannot
open, an empty filter) prints it too, with `error` and `exit_status` filled in. The installed
CLI, against a closed port: none of these gets as far as a request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..cli_helpers import run_installed

CLOSED = "http://127.0.0.1:9/dicomweb"


def lists(work: Path) -> dict[str, Path]:
    files = {
        "bad_uid": ("uids.txt", "1.2.3\n1.2.x\n"),
        "no_uid_column": ("cohort.csv", "PatientID,Modality\nP1,CT\n"),
        "empty": ("empty.txt", ""),
        "comments": ("comments.txt", "# nothing this week\n\n"),
    }
    for name, text in files.values():
        (work / name).write_text(text)
    return {key: work / name for key, (name, _) in files.items()}


CASES = [
    ("download", ["1.2.x"], "invalid study UID '1.2.x'"),
    ("download", ["--from-file", "{bad_uid}"], "line 2: invalid"),
    ("download", ["--from-file", "{no_uid_column}"], "a CSV needs a header row with a"),
    ("download", ["--from-file", "{empty}"], "names no study, series or instance"),
    ("download", ["--from-file", "{comments}"], "names no study, series or instance"),
    ("download", ["1.2.3", "--report", "{work}/r.txt"], "must end in .csv or .jsonl"),
    ("download", ["1.2.3", "--log-file", "{work}/no/such/dir/x.log"], "cannot open --log-file"),
    ("download", ["--from-catalog", "{work}/none.duckdb"], "no catalog at"),
    ("download", ["1.2.3", "--shard", "3/2"], "--shard 3/2"),
    ("sync", ["--study-date", ""], "--study-date is empty"),
    ("sync", ["--modality", "CT", "--filter", "ModalitiesInStudy=MR"], "both set"),
    ("sync", ["--shard", "0/2"], "--shard"),
    ("sync", ["--where", "instances > 3"], "--where selects from a catalog"),
]


@pytest.mark.parametrize(("command", "args", "said"), CASES)
def test_a_usage_error_prints_the_summary_with_the_error(
    tmp_path: Path, command: str, args: list[str], said: str
) -> None:
    named = {name: str(path) for name, path in lists(tmp_path).items()}
    filled = [arg.format(work=tmp_path, **named) for arg in args]
    out = str(tmp_path / "out")
    result = run_installed(command, *filled, "--url", CLOSED, "-o", out, "--json")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["exit_status"] == 2
    assert said in summary["error"]
    assert result.stderr == f"dlstudy: error: {summary['error']}\n"
    assert (summary["url"], summary["output"]) == (CLOSED, out)
    assert ("sync" in summary) == (command == "sync")

    plain = run_installed(command, *filled, "--url", CLOSED, "-o", out)
    assert plain.returncode == 2 and plain.stdout == "", plain.stdout
    assert said in plain.stderr


def test_an_empty_list_names_the_list_not_the_missing_arguments(tmp_path: Path) -> None:
    result = run_installed("download", "--from-file", "-", "--url", CLOSED)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "dlstudy: error: --from-file - names no study, series or instance\n"
