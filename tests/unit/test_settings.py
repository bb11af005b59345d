"""Settings and StudyQuery as a script meets them: the types checked, the hints mypy reads."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields

import pytest

from dlstudy.dicomweb.search import StudyQuery
from dlstudy.settings import TAKES, Settings

# headers: where they are sent (http/credentials.py); in_shard: made from --shard K/N
CHECKED_WHERE_USED = {"headers", "in_shard"}


def test_every_fields_type_is_checked() -> None:
    """A field added with a hint of its own gets a line in TAKES, or a type error from it
    would again surface deep inside a run."""
    unchecked = {f.name for f in fields(Settings) if f.type not in TAKES}
    assert unchecked == CHECKED_WHERE_USED


@pytest.mark.parametrize("cls", [Settings, StudyQuery])
def test_the_init_mypy_reads_has_the_fields(cls: type) -> None:
    """The `if TYPE_CHECKING:` __init__ (wider hints than the fields': `output="studies"`,
    `modalities="CT"`) names every field, in order: one left out would be an error in a
    script that sets it, though it runs."""
    [stub] = [
        node
        for node in ast.walk(ast.parse(inspect.getsource(cls)))
        if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    ]
    names = [arg.arg for arg in stub.args.args[1:]]
    assert names == [f.name for f in fields(cls)]
