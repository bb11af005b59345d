"""The command-line interface: one Typer app, one module per group of commands."""
