"""`--shard K/N|auto` on the command line: parse it, keep this shard's studies."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ..dicomweb.cohort import CohortItem, Repeats, unique_wanted
from ..dicomweb.shard import Shard, parse_shard
from ..errors import DlstudyError
from ..http.urls import is_valid_uid, redact_url
from ..report.landed import run_report
from ..report.summary import Summary
from .common import fail_usage, finish
from .connection import option
from .strays import stray_words

ShardOpt = Annotated[
    str | None,
    option(
        "--shard",
        help="Only shard K of N (1-based, stable by study UID), or 'auto' from "
        "JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID.",
    ),
]


def shard_option(text: str | None) -> Shard | None:
    if text is not None and not text.strip():
        # `--shard "$SHARD"` with SHARD unset: every task would fetch the whole list.
        fail_usage("--shard is empty: give K/N or auto, or leave the option out for every study")
    try:
        return parse_shard(text, os.environ)
    except DlstudyError as exc:
        fail_usage(str(exc))


def select_shard(uids: Iterable[str], shard: Shard | None) -> list[str]:
    """The UIDs (each once, in order) this process should download.

    Every UID is checked first, so that all shards of one list agree on whether it is valid.
    """
    unique = list(dict.fromkeys(uids))
    strays = stray_words()
    for uid in unique:
        valid = is_valid_uid(uid)
        if (not_shown := strays.uid_not_shown(uid, valid=valid)) is not None:
            fail_usage(not_shown)
        if not valid:
            fail_usage(
                f"invalid study UID {uid[:80]!r}: a UID is digits and dots, at most 64 characters"
            )
    return unique if shard is None else shard.select(unique)


def select_shard_items(
    wanted: Iterable[str | CohortItem], shard: Shard | None, repeats: Repeats | None = None
) -> list[str | CohortItem]:
    """The study UIDs and cohort items (each once, in order) this process should download.
    An item goes by its study UID when its line names one; a series or instance named without
    its study is kept by every shard, each looking up its study and keeping it only for its
    own (so a study is never split across shards); a plain UID goes by itself, its level not
    known yet: a series or instance UID may then be fetched by its study's shard too (the run
    warns, jobs/listing.py). A repeated
    line is noted in `repeats`: the run reports it where its first line is downloaded."""
    unique = unique_wanted(wanted, repeats)
    select_shard((one for one in unique if isinstance(one, str)), None)  # checks each UID
    if shard is None:
        return unique
    return [one for one in unique if in_shard(one, shard)]


def in_shard(one: str | CohortItem, shard: Shard) -> bool:
    """Whether this shard keeps `one` now (see select_shard_items)."""
    return _routed_later(one) or shard.owns(_shard_key(one))


class ShardKeeper:
    """`keep` for read_cohort: an item of another shard is dropped as the list is read, so a
    shard of a long list holds its own part, not the whole list; `dropped` counts them."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.dropped = 0

    def __call__(self, item: CohortItem) -> bool:
        if in_shard(item, self.shard):
            return True
        self.dropped += 1
        return False


def _routed_later(one: str | CohortItem) -> bool:
    return isinstance(one, CohortItem) and one.study_uid is None and one.any_uid is None


def _shard_key(one: str | CohortItem) -> str:
    return one.shard_key if isinstance(one, CohortItem) else one


def finish_empty_shard(
    shard: Shard,
    given: int,
    *,
    url: str,
    output: Path,
    json_output: bool,
    quiet: bool,
    report: Path | None = None,
    what: str = "studies",
) -> NoReturn:
    """No study of the list falls in this shard: nothing to do, which is a success (exit 0).
    Its `--report` says so (no rows): an earlier run's would pass for this one's."""
    if not quiet and not json_output:
        typer.echo(f"dlstudy: shard {shard}: none of the {given} {what} is in this shard", err=True)
    error: DlstudyError | None = None
    if report is not None:
        try:
            with run_report(report):
                pass
        except DlstudyError as exc:
            error = exc
    summary = Summary(url=redact_url(url), output=str(output))
    finish(summary, error, json_output=json_output, quiet=quiet)
