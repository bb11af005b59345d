"""Accept header negotiation for WADO-RS retrieve, metadata and QIDO (PS3.18 §8.7, §10.4.4).

The server never transcodes. A representation is acceptable when its transfer syntax is `*` or
the stored one; without a `transfer-syntax` parameter the standard default (Explicit VR Little
Endian) applies, so such a request succeeds only for files stored that way.

No Accept header, `*/*` and `multipart/*` mean "whatever the server prefers": the standard's
default multipart/related; type="application/dicom" at every level, as stored (no syntax was
asked for, so none is imposed). `application/dicom` alone is single-part: instances only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
ANY = "*"
OCTETS = "application/octet-stream"


class NotAcceptable(Exception):
    """No acceptable representation: `status` is 406, or 400 where a profile says so."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MediaRange:
    mime: str  # lower-cased type/subtype
    params: dict[str, str]  # lower-cased names, unquoted values (q removed)
    q: float


@dataclass(frozen=True)
class Rendering:
    multipart: bool
    transfer_syntax: str  # `*` (as stored) or the one UID every instance is stored in


@functools.lru_cache(maxsize=64)  # a client sends the same few values again and again
def parse_accept(value: str) -> tuple[MediaRange, ...]:
    """Media ranges by preference (q descending, then header order); q=0 ranges dropped."""
    ranges = []
    for item in _split(value, ","):
        mime, *raw_params = _split(item, ";")
        params: dict[str, str] = {}
        for raw in raw_params:
            name, _, param_value = raw.partition("=")
            params[name.strip().lower()] = _unquote(param_value.strip())
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if mime.strip() and q > 0:
            ranges.append(MediaRange(mime.strip().lower(), params, q))
    return tuple(sorted(ranges, key=lambda r: -r.q))  # stable: header order within a q


def choose_retrieve(
    accept: str | None, *, instance_level: bool, stored: Iterable[str], profile: str
) -> Rendering:
    """The representation to send, or NotAcceptable (400 for Orthanc's single-part refusal)."""
    stored_syntaxes = set(stored)
    wanted_single = False
    for media in parse_accept(accept or "*/*"):
        candidate = _candidate(media)
        if candidate is None:
            continue
        rendering, explicit = candidate
        if not rendering.multipart:
            wanted_single = wanted_single or explicit
            if not instance_level or profile != "standard":
                continue  # PS3.18 §10.4.4; Orthanc and dcm4chee refuse single-part outright
        ts = rendering.transfer_syntax
        if ts == ANY or stored_syntaxes <= {ts}:
            return rendering
    if wanted_single and instance_level and profile == "orthanc":
        raise NotAcceptable(400, "single-part application/dicom is not supported; ask multipart")
    raise NotAcceptable(406, "no acceptable representation (the server does not transcode)")


def bulkdata_multipart(accept: str | None) -> bool:
    """Whether bulk data goes as multipart/related (PS3.18's default) or, asked for, single
    part application/octet-stream; NotAcceptable if neither is acceptable."""
    for media in parse_accept(accept or "*/*"):
        if media.mime in ("*/*", "multipart/*"):
            return True
        if media.mime == "multipart/related":
            if media.params.get("type", OCTETS).strip().lower() == OCTETS:
                return True
        elif media.mime in (OCTETS, "application/*"):
            return False
    raise NotAcceptable(406, f"bulk data is {OCTETS}, single part or multipart/related")


def accepts_json(accept: str | None) -> bool:
    """QIDO and metadata answer application/dicom+json; application/json and wildcards too."""
    ok = {"application/dicom+json", "application/json", "application/*", "*/*"}
    return any(media.mime in ok for media in parse_accept(accept or "*/*"))


def _candidate(media: MediaRange) -> tuple[Rendering, bool] | None:
    """(rendering, asked for explicitly) for one media range; None if not a DICOM retrieve type."""
    ts = media.params.get("transfer-syntax")
    if media.mime in ("*/*", "multipart/*"):
        return Rendering(True, ts or ANY), False
    if media.mime in ("application/dicom", "application/*"):
        default = EXPLICIT_VR_LE if media.mime == "application/dicom" else ANY
        return Rendering(False, ts or default), True
    if media.mime == "multipart/related":
        if media.params.get("type", "application/dicom").strip().lower() != "application/dicom":
            return None
        return Rendering(True, ts or EXPLICIT_VR_LE), True
    return None


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes (a quoted parameter may contain `,` or `;`)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()] or [""]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        out, escaped = [], False
        for char in value:
            if char == "\\" and not escaped:
                escaped = True
                continue
            out.append(char)
            escaped = False
        return "".join(out)
    return value
