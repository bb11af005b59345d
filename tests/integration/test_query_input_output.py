"""What `query` (and `sync`) make of their options and of the server's answers, through the
installed CLI: which output format wins, filters given twice or empty, and server values with
control characters on a terminal or in a pipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..cli_helpers import run_installed
from ..fixtures.embedded_server import StartServer, SynthStudy

pytestmark = pytest.mark.integration


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def form_of(stdout: str) -> str:
    """Which format `query` printed one study in."""
    first = stdout.splitlines()[0]
    if first.startswith("{"):
        json.loads(first)
        return "json"
    if first.startswith("study_uid,"):
        return "csv"
    if first.startswith("study_uid\t"):
        return "tsv"
    assert "," not in first and "\t" not in first, stdout
    return "uids"


@pytest.mark.parametrize(
    ("args", "env", "config", "expected"),
    [
        (["--json"], {"DLSTUDY_UIDS": "1"}, "", "json"),
        (["--csv"], {"DLSTUDY_UIDS": "1"}, "", "csv"),
        (["--json"], {}, "[defaults]\nuids = true\n", "json"),
        (["--uids"], {"DLSTUDY_JSON": "1"}, "[defaults]\ncsv = true\n", "uids"),
        ([], {"DLSTUDY_CSV": "1"}, "[defaults]\nuids = true\n", "csv"),
        ([], {}, "[defaults]\nuids = true\n", "uids"),
        ([], {}, "server = 'here'\n[defaults]\nuids = true\n[servers.here]\njson = true\n", "json"),
    ],
)
def test_a_format_given_at_a_higher_level_wins(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    args: list[str],
    env: dict[str, str],
    config: str,
    expected: str,
) -> None:
    """Command line > environment > config profile > [defaults], as for every option."""
    url = embedded_server(synth_study.root)
    conf = write(tmp_path / "c.toml", config)
    result = run_installed("query", "--url", url, "--config", str(conf), *args, env=env)
    assert result.returncode == 0, result.stderr
    assert form_of(result.stdout) == expected
    assert synth_study.study_uid in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "config", "message"),
    [
        (["--json", "--uids"], {}, "", "--json and --uids given on the command line"),
        ([], {"DLSTUDY_JSON": "1", "DLSTUDY_CSV": "1"}, "", "--json and --csv given in the env"),
        ([], {}, "[defaults]\ncsv = true\nuids = true\n", "--csv and --uids given in the config"),
    ],
)
def test_two_formats_at_the_same_level_are_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], config: str, message: str
) -> None:
    conf = write(tmp_path / "c.toml", config)
    result = run_installed(
        "query", "--url", "http://127.0.0.1:9/x", "--config", str(conf), *args, env=env
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "choose one of --json, --csv, --uids" in result.stderr


def test_catalog_query_lets_the_command_line_format_win_too(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    url = embedded_server(synth_study.root)
    db = str(tmp_path / "c.duckdb")
    pulled = run_installed("catalog", "pull", "--url", url, "--db", db, "--quiet")
    assert pulled.returncode == 0, pulled.stderr
    result = run_installed("catalog", "query", "--db", db, "--json", env={"DLSTUDY_UIDS": "1"})
    assert result.returncode == 0, result.stderr
    assert form_of(result.stdout) == "json"


CLOSED = "http://127.0.0.1:9/dicomweb"  # nothing listens: a run that got that far exits 3


def output_of(command: str, tmp_path: Path) -> list[str]:
    return ["-o", str(tmp_path / "o")] if command == "sync" else []


@pytest.mark.parametrize("command", ["query", "sync"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--study-date", "20260101", "--filter", "StudyDate=20250601"],
            "--study-date and --filter StudyDate=... both set StudyDate",
        ),
        (
            ["--modality", "CT", "--filter", "ModalitiesInStudy=MR"],
            "--modality and --filter ModalitiesInStudy=... both set ModalitiesInStudy",
        ),
        (
            ["--patient-id", "P1", "--filter", "(0010,0020)=P2"],
            "--patient-id and --filter PatientID=... both set PatientID",
        ),
    ],
)
def test_a_key_set_by_an_option_and_by_filter_is_a_usage_error(
    tmp_path: Path, command: str, args: list[str], message: str
) -> None:
    result = run_installed(command, "--url", CLOSED, *output_of(command, tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("command", ["query", "sync"])
@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["--study-date", ""], "", "--study-date is empty"),
        (["--patient-name", " "], "", "--patient-name is empty"),
        (["--patient-id", ""], "", "--patient-id is empty"),
        (["--accession", ""], "", "--accession is empty"),
        (["--modality", "CT", "--modality", ""], "", "--modality is empty"),
        (["--filter", "PatientSex="], "", "--filter PatientSex= is empty"),
        ([], "[defaults]\nstudy-date = ''\n", "--study-date is empty"),
    ],
)
def test_an_empty_filter_is_a_usage_error_not_every_study(
    tmp_path: Path, command: str, args: list[str], config: str, message: str
) -> None:
    """`sync --study-date "$DAY"` with DAY unset must not mirror the whole archive."""
    conf = write(tmp_path / "c.toml", config)
    result = run_installed(
        command, "--url", CLOSED, *output_of(command, tmp_path), "--config", str(conf), *args
    )
    assert result.returncode == 2, result.stderr
    assert f"dlstudy: error: {message}" in result.stderr


def test_an_empty_modality_of_download_is_a_usage_error(tmp_path: Path) -> None:
    result = run_installed("download", "1.2.3", "--url", CLOSED, "--modality", "")
    assert result.returncode == 2, result.stderr
    assert "dlstudy: error: --modality is empty" in result.stderr
