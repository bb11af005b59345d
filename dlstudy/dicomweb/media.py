"""Media types: the Accept headers dlstudy sends and the Content-Type parameters it reads.

PS3.18 says quoted and unquoted parameter values are equivalent; real servers disagree about
which they send and accept (DOMAIN.md), so parsing accepts both and building can emit either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART_RELATED = "multipart/related"
ANY_TRANSFER_SYNTAX = "*"


@dataclass(frozen=True)
class MediaType:
    """A parsed Content-Type: lower-cased type/subtype and parameters (names lower-cased)."""

    mime: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def boundary(self) -> str | None:
        return self.params.get("boundary")

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_media_type(value: str) -> MediaType:
    """Parse a Content-Type header value; tolerant of quoting, spacing and empty parameters."""
    mime, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for name, param_value in _split_params(rest):
        params[name] = param_value
    return MediaType(mime.strip().lower(), params)


def _split_params(text: str) -> list[tuple[str, str]]:
    """Split `a=1; b="x;y"` into pairs, honouring quoted strings and backslash escapes."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        start = i
        while i < n and text[i] not in "=;":
            i += 1
        name = text[start:i].strip().lower()
        if i >= n or text[i] == ";":
            if name:
                pairs.append((name, ""))
            continue
        i += 1  # skip '='
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            i += 1  # closing quote (or end of text)
            value = "".join(chars)
            while i < n and text[i] != ";":
                i += 1
        else:
            start = i
            while i < n and text[i] != ";":
                i += 1
            value = text[start:i].strip()
        if name:
            pairs.append((name, value))
    return pairs


def single_part_accept(transfer_syntax: str | None = ANY_TRANSFER_SYNTAX) -> str:
    """Accept header for one instance as a bare Part 10 body."""
    if transfer_syntax is None:
        return DICOM
    return f"{DICOM}; transfer-syntax={transfer_syntax}"


def multipart_accept(
    transfer_syntax: str | None = ANY_TRANSFER_SYNTAX, *, quote_type: bool = True
) -> str:
    """Accept header for a multipart/related response of Part 10 parts.

    `quote_type` exists because some servers only understand `type="application/dicom"` and
    others only `type=application/dicom`; negotiation remembers which one worked.
    """
    type_param = f'type="{DICOM}"' if quote_type else f"type={DICOM}"
    accept = f"{MULTIPART_RELATED}; {type_param}"
    if transfer_syntax is not None:
        accept += f"; transfer-syntax={transfer_syntax}"
    return accept
