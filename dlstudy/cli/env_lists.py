"""Options read from their environment variable that need more than click does with it.

click splits a repeatable option's variable at every run of whitespace, so
`DLSTUDY_FILTER='StudyDescription=CT CHEST'` became the filters `StudyDescription=CT` and
`CHEST`. For such options the variable is split again, by `split_filters`, before the command
runs (ConfigCommand), from the variable's own text. And a path in a variable has its `~`
expanded, as in the config file: no shell does it in a crontab's `DLSTUDY_OUTPUT=~/mirror`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .. import config

# A break between two filters: whitespace before the next `KEY=`.
_BEFORE_KEY = re.compile(r"\s+(?=[^\s=]+=)")


def split_filters(text: str) -> list[str]:
    """`KEY=VALUE` items of a variable: one a line if it has a line break (a value may then
    hold anything), else split only where whitespace comes before a `KEY=`."""
    if "\n" in text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [item for item in _BEFORE_KEY.split(text.strip()) if item]


# Parameter name -> how its variable is split.
SPLITTERS = {"filter": split_filters}


def resplit_environment(ctx: Any) -> None:
    """Split again, by SPLITTERS, the values that came from an environment variable."""
    for param in ctx.command.params:
        split = SPLITTERS.get(param.name)
        source = ctx.get_parameter_source(param.name) if split else None
        if split is None or source is None or source.name != "ENVIRONMENT":
            continue
        text = os.environ.get(param.envvar) if isinstance(param.envvar, str) else None
        if text is not None:
            ctx.params[param.name] = split(text)


def expand_home_in_environment(ctx: Any) -> None:
    """Expand `~` in the paths (config.PATH_KEYS) that came from an environment variable."""
    for param in ctx.command.params:
        long_names = [name for name in param.opts if name.startswith("--")]
        keys = {name.lstrip("-").replace("-", "_") for name in long_names}
        source = ctx.get_parameter_source(param.name) if keys & config.PATH_KEYS else None
        value = ctx.params.get(param.name)
        if source is None or source.name != "ENVIRONMENT" or value is None:
            continue
        ctx.params[param.name] = type(value)(config.expand_home(str(value)))
