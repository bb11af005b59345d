"""Config values of the wrong TOML type are usage errors naming the key and the type wanted,
never values sent as Python's rendering of a list or table."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cli_helpers import run_installed
from ..fixtures.scripted_routes import Routes
from .test_credentials import query


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ('token = ["x-secret"]', "token in {path} must be a string, not a list"),
        ("user = 12", "user in {path} must be a string, not an integer"),
        (
            'header = [{a = "x-secret"}]',
            "header in {path} must be a string or a list of them, not a list holding a table",
        ),
        ("insecure = 1", "insecure in {path} must be true or false, not an integer"),
        ("timeout = true", "timeout in {path} must be a number, not true/false"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_usage_error(
    scripted: Routes, tmp_path: Path, line: str, said: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"[servers.pacs]\nurl = {scripted.base!r}\n{line}\n".replace("'", '"'))
    result, requests = query(scripted, "--config", str(config), "--server", "pacs")
    assert result.returncode == 2 and not requests
    assert result.stderr == f"dlstudy: error: {said.format(path=config)}\n"


def test_an_integer_option_refuses_a_flag(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[defaults]\nconcurrency = true\n")
    result = run_installed(
        "download", "1.2.3", "--config", str(config), "--url", "http://127.0.0.1:9/x",
        "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"dlstudy: error: concurrency in {config} must be an integer, not true/false\n"
    )


def test_values_of_the_right_type_are_taken(scripted: Routes, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[defaults]\nurl = "{scripted.base}"\ntoken = "tok"\ntimeout = 5\n'
        'header = "X-Tenant: radiology"\ninsecure = false\n'
    )
    result, requests = query(scripted, "--config", str(config), url=None)
    assert result.returncode == 0, result.stderr
    assert requests[0].headers["authorization"] == "Bearer tok"
    assert requests[0].headers["x-tenant"] == "radiology"
