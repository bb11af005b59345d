"""Shared pytest setup: fixtures live in tests/fixtures/, one module per kind of server."""

pytest_plugins = [
    "tests.fixtures.embedded_server",
    "tests.fixtures.orthanc",
]
