"""Options of the catalog commands, and `--from-catalog` / `--catalog` of download and sync:
declared here, apart from the commands, so that those modules only import what they use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..dicomweb.cohort import CohortItem
from ..errors import DlstudyError, ExitStatus
from ..http.urls import is_valid_uid
from .common import fail, fail_usage
from .configured import FROM_CONFIG
from .connection import PANELS, envvar_for

# The catalog's own options: how --help shows their values, and where it groups them.
_METAVARS = {
    "--db": "FILE", "--from-catalog": "FILE", "--catalog": "FILE", "--where": "SQL",
    "--sql": "SQL", "--level": "study|series", "--walk": "auto|split", "--recent": "DAYS",
    "--page-size": "N", "--to": "FILE", "--table": "NAME", "--state": "STATE",
    "--output": "DIR",
}  # fmt: skip
_PANELS = {
    "--db": "Catalog", "--from-catalog": "What to fetch", "--catalog": "What to fetch",
    "--where": "What to fetch", "--sql": "Output", "--level": "Catalog", "--walk": "Catalog",
    "--recent": "Catalog", "--full": "Catalog", "--page-size": "Catalog", "--to": "Output",
    "--table": "Output", "--state": "What to fetch", "--archive-moved": "Catalog",
}  # fmt: skip


def catalog_option(*names: str, help: str) -> Any:
    long_name = next(name for name in names if name.startswith("--"))
    return typer.Option(
        *names,
        help=help,
        envvar=envvar_for(long_name),
        metavar=_METAVARS.get(long_name),
        rich_help_panel=_PANELS.get(long_name) or PANELS.get(long_name),
    )


WhereOpt = Annotated[
    str | None,
    catalog_option(
        "--where", help='SQL condition over the catalog\'s studies, e.g. "instances > 100".'
    ),
]
FromCatalogOpt = Annotated[
    Path | None,
    catalog_option("--from-catalog", help="Download the catalog's studies (with --where: some)."),
]
SyncCatalogOpt = Annotated[
    Path | None,
    catalog_option(
        "--catalog", help="Take the studies from this catalog instead of searching the server."
    ),
]


def catalog_uids(path: Path, where: str | None, url: str | None) -> list[str | CohortItem]:
    """`download --from-catalog FILE [--where SQL]`: the study UIDs it selects (a catalog of
    another archive than `url`'s is refused). The catalog
    holds what the server sent: a UID that is no UID comes as an item that fails alone in the
    run (jobs/download.py), not as a usage error stopping it."""
    from ..catalog.query import study_uids

    try:
        uids = study_uids(path, None, where, url)
    except DlstudyError as exc:
        fail(str(exc), int(exc.exit_status))
    if not uids:
        fail(f"no study of the catalog {path} matched", int(ExitStatus.NOTHING_MATCHED))
    return [
        uid if is_valid_uid(uid) else CohortItem(study_uid=uid, listed_by="the catalog")
        for uid in uids
    ]


def check_file(value: Path | None, name: str) -> None:
    """A catalog file option given empty (`--catalog "$CATALOG"` with the variable unset), which
    Path makes the current folder: one line naming the option, not DuckDB's "Is a directory"
    on `.`."""
    if value is not None and value == Path(""):
        fail_usage(f"{name} is empty: give a file")


def check_where(ctx: typer.Context, where: str | None, catalog: Path | None, needs: str) -> None:
    """`--where` selects from a catalog: given without one, a usage error. One the config file
    gives (kept in `[defaults]` for `catalog query` and `status`) waits for a catalog."""
    check_file(catalog, needs)
    filled = ctx.meta.get(FROM_CONFIG)
    from_config = filled is not None and "where" in filled.params
    if where is not None and catalog is None and not from_config:
        fail_usage(f"--where selects from a catalog: give {needs} too")
