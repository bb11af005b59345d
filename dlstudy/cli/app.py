"""The `dlstudy` Typer app: each command lives in its own module and registers itself here."""

from __future__ import annotations

import typer

from . import bench_cmd, demo_cmd, download_cmd, query_cmd, server_cmds, sync_cmd

app = typer.Typer(
    name="dlstudy",
    help="Pull whole DICOM studies out of DICOMweb servers: fast, resumable, byte-exact.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
download_cmd.register(app)
query_cmd.register(app)
sync_cmd.register(app)
server_cmds.register(app)
demo_cmd.register(app)
bench_cmd.register(app)


def main() -> None:
    app()
