"""Settings checks the type of every field a script sets."""

from __future__ import annotations

from dataclasses import fields

from dlstudy.settings import TAKES, Settings

# headers: where they are sent (http/credentials.py); in_shard: made from --shard K/N
CHECKED_WHERE_USED = {"headers", "in_shard"}


def test_every_fields_type_is_checked() -> None:
    """A field added with a hint of its own gets a line in TAKES, or a type error from it
    would again surface deep inside a run."""
    unchecked = {f.name for f in fields(Settings) if f.type not in TAKES}
    assert unchecked == CHECKED_WHERE_USED
