"""Shared pytest setup: fixtures live in tests/fixtures/, one module per kind of server."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.embedded_server",
    "tests.fixtures.orthanc",
    "tests.fixtures.proxies",
    "tests.fixtures.scripted_routes",
    "tests.fixtures.slurm",
]


@pytest.fixture(autouse=True)
def _isolated_configuration(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the developer's config file or DLSTUDY_* variables (every option has one)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "no-user-config"))
    for name in list(os.environ):
        if name.startswith("DLSTUDY_"):
            monkeypatch.delenv(name)
