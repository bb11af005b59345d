"""Text from servers and files, made safe to print on one line of a terminal or a log.

A message can carry what a server sent (an HTTP reason phrase, a header, a value from its JSON)
or a file name. Printed as is, an escape sequence in it rewrites the terminal (its title, its
colours, lines above), a line break forges a log line, and a lone surrogate (a file name that
is not UTF-8) makes the print itself fail. Such characters are shown as escapes instead.
"""

from __future__ import annotations

import unicodedata

# Control (C0, DEL, C1), format (bidi overrides, zero-width), surrogates, line and paragraph
# separators: everything a terminal or a log line may take for something other than text.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """`text` with each unsafe character replaced by its escape (`\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _UNSAFE:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
