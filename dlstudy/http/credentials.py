"""Credentials as given: a check that they can be sent at all, run before any request (the
CLI imports this at start-up, so nothing heavy is imported here)."""

from __future__ import annotations


def has_control_character(text: str) -> bool:
    """A CR or LF would end the header it is sent in (libcurl refuses it, late, as a network
    error); other control characters (tab aside) have no place in a credential either."""
    return any((ord(c) < 32 and c != "\t") or c == "\x7f" for c in text)


def credentials_problem(
    token: str | None,
    user: str | None,
    password: str | None,
    headers: tuple[tuple[str, str], ...] = (),
) -> str | None:
    """Which option holds a control character, in words that show none of it; or None.
    A token is taken stripped (see Transport): a trailing newline is common (a Kubernetes
    secret, `$(cat token.txt)`)."""
    named = [("--token", (token or "").strip()), ("--user", user), ("--password", password)]
    named += [(f"--header {name}", value) for name, value in headers]
    for option, value in named:
        if value and has_control_character(value):
            return f"{option} has a control character (a line break?) in it"
    return None
