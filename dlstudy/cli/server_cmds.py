"""`dlstudy serve` and `dlstudy synth` (owned by the embedded-server work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `serve` and `synth` commands to the app."""
