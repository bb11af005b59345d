"""Counts in words: `counted(1, "instance")` is "1 instance", `counted(2, "study", "studies")`
"2 studies"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
