"""Numeric options out of range are usage errors wherever they come from (command line,
DLSTUDY_* variable, config file), before any request: the installed CLI, against a closed port
(a run that got as far as the network would exit 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cli_helpers import run_installed

CLOSED = "http://127.0.0.1:9/dicomweb"


def command_line(command: str, work: Path) -> list[str]:
    """The command, with where it would write (in the test's folder) and the closed URL."""
    return {
        "download": ["download", "1.2.3", "-o", str(work / "o")],
        "sync": ["sync", "-o", str(work / "o")],
        "query": ["query"],
        "catalog pull": ["catalog", "pull", "--db", str(work / "c.duckdb")],
    }[command] + ["--url", CLOSED]


# (option, bad value, what the error says, commands that take the option)
BAD = [
    ("timeout", "0", "must be a number of seconds above 0", ("download", "sync", "query")),
    ("timeout", "-5", "must be a number of seconds above 0", ("download", "query", "catalog pull")),
    ("timeout", "nan", "must be a number of seconds above 0", ("download", "sync")),
    ("timeout", "inf", "must be a number of seconds above 0", ("download",)),
    ("retry-budget", "-1", "must be a number of seconds 0 or more", ("download", "sync")),
    ("retry-budget", "nan", "must be a number of seconds 0 or more", ("download",)),
    ("retries", "-1", "greater than or equal to 0", ("download", "sync", "catalog pull")),
    ("concurrency", "257", "less than or equal to 256", ("download", "sync")),
    ("concurrency", "-1", "greater than or equal to 0", ("download",)),
    ("workers", "-1", "greater than or equal to 0", ("download", "sync")),
    ("workers", "65", "less than or equal to 64", ("download",)),
]
CASES = [
    pytest.param(command, name, value, said, id=f"{command}-{name}={value}")
    for name, value, said, commands in BAD
    for command in commands
]


@pytest.mark.parametrize(("command", "name", "value", "said"), CASES)
def test_out_of_range_on_the_command_line(
    tmp_path: Path, command: str, name: str, value: str, said: str
) -> None:
    result = run_installed(*command_line(command, tmp_path), f"--{name}", value)
    assert result.returncode == 2, result.stderr
    assert f"'--{name}'" in result.stderr and said in result.stderr


@pytest.mark.parametrize("command", ["download", "sync", "query"])
def test_out_of_range_in_the_environment_and_the_config_file(tmp_path: Path, command: str) -> None:
    from_env = run_installed(*command_line(command, tmp_path), env={"DLSTUDY_TIMEOUT": "-5"})
    assert from_env.returncode == 2, from_env.stderr
    assert "DLSTUDY_TIMEOUT" in from_env.stderr
    assert "must be a number of seconds above 0, got '-5'" in from_env.stderr

    config = tmp_path / "c.toml"
    config.write_text("[defaults]\ntimeout = -5\n")
    from_file = run_installed(*command_line(command, tmp_path), "--config", str(config))
    assert from_file.returncode == 2, from_file.stderr
    assert f"timeout = -5 in {config}: must be a number of seconds above 0" in from_file.stderr


def test_values_in_range_still_run(tmp_path: Path) -> None:
    """The bounds themselves are accepted: the run goes on to the (closed) server."""
    result = run_installed(
        "download", "1.2.3", "--url", CLOSED, "-o", str(tmp_path / "o"),
        "--timeout", "0.5", "--retries", "0", "--retry-budget", "0",
        "--concurrency", "256", "--workers", "64",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "connection refused" in result.stderr


TRANSFER_SYNTAX_SAID = "must be * or a transfer syntax UID (digits and dots, at most 64 characters)"


@pytest.mark.parametrize("value", ["jpeg", "", "1.2.840.10008.1.2.1 ", "1.2..840", "1" * 65])
@pytest.mark.parametrize("command", ["download", "sync"])
def test_a_transfer_syntax_that_is_no_uid_is_a_usage_error(
    tmp_path: Path, command: str, value: str
) -> None:
    """Sent as it is, a stray space fails every retrieval as a network error (HTTP/2 refuses
    the header), and a name or nothing asks for something else: exit 2, the value shown."""
    result = run_installed(*command_line(command, tmp_path), "--transfer-syntax", value)
    assert result.returncode == 2, result.stderr
    assert "'--transfer-syntax'" in result.stderr
    assert f"{TRANSFER_SYNTAX_SAID}, got {value!r}" in result.stderr


def test_a_transfer_syntax_from_the_environment_or_config_file_is_checked(tmp_path: Path) -> None:
    spaced = "1.2.840.10008.1.2.1 "
    from_env = run_installed(
        *command_line("download", tmp_path), env={"DLSTUDY_TRANSFER_SYNTAX": spaced}
    )
    assert from_env.returncode == 2, from_env.stderr
    assert "DLSTUDY_TRANSFER_SYNTAX" in from_env.stderr and repr(spaced) in from_env.stderr

    config = tmp_path / "c.toml"
    config.write_text('[defaults]\ntransfer-syntax = "jpeg"\n')
    from_file = run_installed(*command_line("download", tmp_path), "--config", str(config))
    assert from_file.returncode == 2, from_file.stderr
    assert f"in {config}: {TRANSFER_SYNTAX_SAID}, got 'jpeg'" in from_file.stderr


@pytest.mark.parametrize("value", ["*", "1.2.840.10008.1.2.4.50"])
def test_a_transfer_syntax_uid_or_star_still_runs(tmp_path: Path, value: str) -> None:
    result = run_installed(*command_line("download", tmp_path), "--transfer-syntax", value)
    assert result.returncode == 3, result.stderr
    assert "connection refused" in result.stderr
