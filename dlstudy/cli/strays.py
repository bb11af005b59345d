"""Words a shell split off a secret's value, which error lines must not name.

A value with a space in it, not quoted (`--header X-Api-Key: s3cret`, `--password two words`,
`--url http://alice:Winter 2024@host/dw`), gives the option only its first word; the rest
become arguments of their own, which the parser names when it refuses them (an unexpected
extra argument, an invalid study UID).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Options whose value is a secret, or a command that may hold one (`echo $TOKEN`), or a URL,
# which may hold a user and password (`http://alice:Winter 2024@host/...`).
URL_OPTIONS = frozenset({"--url", "--proxy"})
SECRET_OPTIONS = URL_OPTIONS | {"--header", "--token", "--token-command", "--user", "--password"}
_NOT_SHOWN = "not shown: it follows {option} and may be part of its value; "
_QUOTE = "quote a value that has spaces, e.g. --header 'Name: value'"
_ENCODE = "write a space in a URL as %20"  # quoted whole, a URL with a space is refused


def not_shown(option: str) -> str:
    """Why a word after `option`'s value is not shown, and how to give such a value."""
    return _NOT_SHOWN.format(option=option) + (_ENCODE if option in URL_OPTIONS else _QUOTE)


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


def split_off_header_values(argv: Sequence[str]) -> dict[str, str]:
    """Each word of `argv` that comes right after an empty --header value, and that header's
    name: `--header X-Api-Key: 8734629183` gives X-Api-Key nothing and leaves the key as a
    word which, all digits, is a valid study UID (and would be sent as one)."""
    split: dict[str, str] = {}
    for at, word in enumerate(argv):
        if word == "--":
            break
        if word == "--header" and at + 1 < len(argv):
            value, after = argv[at + 1], argv[at + 2 : at + 3]
        elif word.startswith("--header="):
            value, after = word.removeprefix("--header="), argv[at + 1 : at + 2]
        else:
            continue
        name, colon, rest = value.partition(":")
        if colon and not rest.strip() and after and not after[0].startswith("-"):
            split.setdefault(after[0], name.strip())
    return split


class StrayWords:
    """The words of a command line that may be the rest of a secret's value: found once, for
    all the UIDs a run is given (a --from-file list may hold a million)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.after_secrets = split_off_secrets(argv)
        self.after_empty_headers = split_off_header_values(argv)

    def uid_not_shown(self, word: str, *, valid: bool) -> str | None:
        """The usage line for `word` given as a study UID (`valid`: whether it is a valid one,
        as the caller found) when it may be the rest of a secret's value: it names the
        option, never the word; None otherwise. Any word right after an empty --header is
        one; after another secret's value, an invalid UID alone (a valid one is taken:
        `--password pw 1.2.3` is a study asked for)."""
        header = self.after_empty_headers.get(word)
        if header is not None:
            return f"--header {header}: is empty and a word follows it ({not_shown('--header')})"
        option = None if valid else self.after_secrets.get(word)
        return None if option is None else f"invalid study UID ({not_shown(option)})"


def stray_words() -> StrayWords:
    """The StrayWords of this process's command line."""
    return StrayWords(sys.argv[1:])
