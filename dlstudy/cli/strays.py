"""Words a shell split off a secret's value, which error lines must not name.

A value with a space in it, not quoted (`--header X-Api-Key: s3cret`, `--password two words`),
gives the option only its first word; the rest become arguments of their own, which the parser
names when it refuses them (an unexpected extra argument, an invalid study UID).
"""

from __future__ import annotations

from collections.abc import Sequence

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
