"""Words a shell split off a secret's value, which error lines must not name.

A value with a space in it, not quoted (`--header X-Api-Key: s3cret`, `--password two words`),
gives the option only its first word; the rest become arguments of their own, which the parser
names when it refuses them (an unexpected extra argument, an invalid study UID).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..http.urls import is_valid_uid

# Options whose value is a secret, or a command that may hold one (`echo $TOKEN`).
SECRET_OPTIONS = frozenset({"--header", "--token", "--token-command", "--user", "--password"})
NOT_SHOWN = (
    "not shown: it follows {option} and may be part of its value; "
    "quote a value that has spaces, e.g. --header 'Name: value'"
)


def split_off_secrets(argv: Sequence[str]) -> dict[str, str]:
    """Each word of `argv` (a command line, without the program) that stands between a
    secret option's value and the next option, and that option's name."""
    strays: dict[str, str] = {}
    after: str | None = None
    words = iter(argv)
    for word in words:
        if word == "--":
            after = None
            continue
        name, has_value, _ = word.partition("=")
        if name in SECRET_OPTIONS:
            after = name
            if not has_value:
                next(words, None)  # the option's own value
        elif word.startswith("-"):
            after = None
        elif after is not None:
            strays.setdefault(word, after)
    return strays


def invalid_uid_not_shown(word: str) -> str | None:
    """The usage line for `word` given as a study UID when it is not a valid one and may be
    the rest of a secret's value on this command line: it names the option, never the word;
    None otherwise (a valid UID is taken, wherever it stands)."""
    if is_valid_uid(word):
        return None
    option = split_off_secrets(sys.argv[1:]).get(word)
    return None if option is None else f"invalid study UID ({NOT_SHOWN.format(option=option)})"
