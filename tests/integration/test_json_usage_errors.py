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


# Usage errors found while the settings are built, after the log is open.
IN_SETTINGS = [
    ("sync", ["--filter", "PatientSex="], "--filter PatientSex= is empty"),
    ("download", ["1.2.3", "--ca-bundle", "{work}/none.pem"], "--ca-bundle"),
    ("download", ["1.2.3", "--token", "a\nb"], "--token has a control character"),
]


@pytest.mark.parametrize(
    ("command", "args", "said"),
    [case for case in CASES if "--log-file" not in case[1]] + IN_SETTINGS,
)
def test_a_usage_error_ends_the_log_file(
    tmp_path: Path, command: str, args: list[str], said: str
) -> None:
    """A usage error found once --log-file was open left it empty (0 bytes): a cron job's log
    showed nothing for a night that failed. It ends the log now, once, as a fatal error of
    the run does (`--series 1.x`, an output folder that cannot be written)."""
    named = {name: str(path) for name, path in lists(tmp_path).items()}
    filled = [arg.format(work=tmp_path, **named) for arg in args]
    log = tmp_path / "run.log"
    args = [*filled, "--url", CLOSED, "-o", str(tmp_path / "out"), "--log-file", str(log)]
    result = run_installed(command, *args)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    error = result.stderr.removeprefix("dlstudy: error: ").rstrip("\n")
    lines = log.read_text().splitlines()
    assert lines[-1].endswith(f" ERROR dlstudy.outcome: {error}"), lines
    assert [line for line in lines if "dlstudy.outcome" in line] == lines[-1:]


@pytest.mark.parametrize(
    ("command", "args", "last"),
    [
        ("download", ["1.2.x"], {"level": "error", "logger": "dlstudy.outcome"}),
        ("sync", ["--study-date", ""], {"event": "run_summary", "exit_status": 2}),
    ],
)
def test_a_usage_error_ends_the_json_log_file(
    tmp_path: Path, command: str, args: list[str], last: dict[str, object]
) -> None:
    """In a JSON log as in a text one: download's ends with the error as a dlstudy.outcome
    record, sync's with its run_summary event, the error in it (as for a fatal error)."""
    log = tmp_path / "run.jsonl"
    args = [*args, "--url", CLOSED, "-o", str(tmp_path / "out"), "--log-format", "json"]
    result = run_installed(command, *args, "--log-file", str(log), "--json")
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)["error"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {key: records[-1].get(key) for key in last} == last, records
    assert records[-1].get("message", records[-1].get("error")) == error
    assert [r for r in records if error in json.dumps(r)] == records[-1:]


def test_an_empty_list_names_the_list_not_the_missing_arguments(tmp_path: Path) -> None:
    result = run_installed("download", "--from-file", "-", "--url", CLOSED)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "dlstudy: error: --from-file - names no study, series or instance\n"
