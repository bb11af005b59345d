"""Credentials as given: a check that they can be sent at all, run before any request (the
CLI imports this at start-up, so nothing heavy is imported here)."""

from __future__ import annotations


def has_control_character(text: str) -> bool:
    """A CR or LF would end the header it is sent in (libcurl refuses it, late, as a network
    error); other control characters (tab aside) have no place in a credential either."""
    return any((ord(c) < 32 and c != "\t") or c == "\x7f" for c in text)


def character_problem(value: str, *, ascii_only: bool) -> str | None:
    """What is wrong with the characters of a credential, in words that show none of it; or
    None. A bearer token (RFC 6750) and a header are ASCII: httpx cannot encode anything else
    into a header (a traceback), and a non-ASCII character in one is usually a typographic
    quote or a non-breaking space pasted with it. A Basic user or password goes as UTF-8: a
    byte that is not (Python keeps it as a lone surrogate) cannot be encoded."""
    if has_control_character(value):
        return "has a control character (a line break?) in it"
    if ascii_only and not value.isascii():
        return "has a character that is not ASCII in it (a pasted quote or non-breaking space?)"
    if not _is_utf8(value):
        return "is not UTF-8 text (a byte of another encoding, Latin-1?)"
    return None


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_pair(given: object) -> bool:
    """Whether `given` is a (name, value) pair of strings."""
    return isinstance(given, tuple) and len(given) == 2 and all(isinstance(s, str) for s in given)


def credentials_problem(
    token: str | None,
    user: str | None,
    password: str | None,
    headers: tuple[tuple[str, str], ...] = (),
) -> str | None:
    """Which option holds a control character (or, in a token or header, a character that
    is not ASCII), in words that show none of it; or None.
    A token is taken stripped (see Transport): a trailing newline is common (a Kubernetes
    secret, `$(cat token.txt)`)."""
    if not all(is_pair(header) for header in headers):
        return "--header: headers must be (name, value) pairs of text, or a dict"
    for number, (name, _) in enumerate(headers, 1):
        if not name.strip() or any(c.isspace() or c == ":" for c in name.strip()):
            # as the CLI's --header says it: the value is not shown, nor the name (it may be
            # a secret value put in its place)
            return (
                f"--header number {number} has no header name (text without spaces or ':'): "
                "not shown, it may hold a secret"
            )
    named = [
        ("--token", (token or "").strip(), True),
        ("--user", user, False),
        ("--password", password, False),
    ]
    named += [(f"--header {name}", f"{name}:{value}", True) for name, value in headers]
    for option, value, ascii_only in named:
        if value and (problem := character_problem(value, ascii_only=ascii_only)) is not None:
            return f"{option} {problem}"
    return None


def auth_conflict(
    *,
    token: str | None,
    token_command: str | None,
    user: str | None,
    password: str | None,
    url_has_user: bool,
) -> str | None:
    """Which given credentials cannot go together (one would be dropped silently), or None."""
    if token and token_command:
        return "--token and --token-command both given: choose one"
    bearer = "--token" if token else "--token-command" if token_command else None
    if bearer and (user is not None or password is not None):
        return f"{bearer} and --user/--password both given: choose one way to authenticate"
    if bearer and url_has_user:
        return f"{bearer} and a user in --url both given: choose one way to authenticate"
    if password is not None and user is None and not url_has_user:
        return "--password needs --user (or a user in --url)"
    return None
