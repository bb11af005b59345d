#!/usr/bin/env bash
# Install everything the test suite needs and run all of it: lint, types, unit and integration
# tests (the embedded server over HTTP/1.1, h2c and TLS h2, a real Orthanc from Debian, nginx,
# HTTP and SOCKS5 proxies, and a one-node SLURM cluster).
# This is the README's test command and what .ci/run calls. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-deps.sh   # the Debian packages missing of its PACKAGES list
if [ ! -x .venv/bin/python ]; then  # a venv of its own; one already there is used as it is
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet -e ".[test]"

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
