"""What a QIDO answer says besides its results: whether whatever answered is a DICOMweb root
at all, and how many more results a `Warning: 299` announces."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from ..http.echoes import MASK_ECHOED, mask_echoed
from .media import parse_media_type

TAG_KEY = re.compile(r"[0-9A-Fa-f]{8}")  # a tag as DICOM JSON keys an attribute

ROOT_HINT = "DICOMweb roots usually end in /dicomweb, /dicom-web, /wado-rs or /rs"
_JSON_TYPES = ("application/dicom+json", "application/json")


def root_problem(response: httpx.Response) -> str | None:
    """What is wrong with a study search's answer for a DICOMweb root, or None."""
    if response.status_code == 204:
        return None
    if response.status_code == 200 and _mime(response) in _JSON_TYPES:
        try:
            data = json_of(response)
        except (ValueError, RecursionError):
            return "HTTP 200 with a body that is not JSON"
        if isinstance(data, list | dict):
            return None
        return "HTTP 200 with JSON that is no list of studies"
    said = refusal_words(response)  # (a 4xx's own words, its secrets masked)
    return describe_answer(response) + (f": {said}" if said else "")


def json_of(response: httpx.Response) -> Any:
    """The body's JSON: through orjson, the quicker reader of QIDO pages (docs/decisions.md);
    what only the stdlib reads (UTF-16, NaN) through the stdlib, so both accept and refuse the
    same bodies. Raises ValueError (RecursionError when nested too deep)."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return json.loads(response.content)


def describe_answer(response: httpx.Response) -> str:
    """`HTTP 404 (an HTML page)`, `HTTP 200 (text/plain)` and the like."""
    mime = _mime(response)
    kind = "an HTML page" if mime == "text/html" else (mime or "no content type")
    return f"HTTP {response.status_code} ({kind})"


def _mime(response: httpx.Response) -> str:
    return parse_media_type(response.headers.get("content-type", "")).mime


_ADDITIONAL = re.compile(r"(\d+)\s+additional", re.IGNORECASE)


def remaining_of(headers: httpx.Headers) -> int | None:
    """N of `Warning: 299 <host>: There are N additional results that can be requested`."""
    for value in headers.get_list("warning"):
        match = _ADDITIONAL.search(value)
        if value.strip().startswith("299") and match:
            return int(match.group(1))
    return None


# What a server says in a `Warning: 299` when it ignored a matching key it cannot match on
# (PS3.18: it then answers as if the key were not there).
_IGNORED = re.compile(r"not supported|unsupported|ignored|not recogni[sz]ed", re.IGNORECASE)


def ignored_keys_warning(headers: httpx.Headers, keys: Sequence[str]) -> str | None:
    """The text of a `Warning: 299` saying the search was run without one of its matching
    `keys` (keywords or tags as sent; `The following attributes were not supported:
    00280010`), or None. One naming none of them (an includefield a server cannot return) is
    not about the matching."""
    for value in headers.get_list("warning"):
        if value.strip().startswith("299") and _IGNORED.search(value):
            said = value.upper()
            if any(name in said for key in keys for name in _names_of(key)):
                return value.strip()
    return None


def _names_of(key: str) -> tuple[str, ...]:
    """How a warning may name a matching key: as sent, and as its tag (`00280010`,
    `(0028,0010)`)."""
    from pydicom.datadict import tag_for_keyword  # only when a server says it ignored a key

    tag = int(key, 16) if TAG_KEY.fullmatch(key) else tag_for_keyword(key)
    if tag is None:
        return (key.upper(),)
    return key.upper(), f"{tag:08X}", f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def keys_not_returned(items: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The matching `keys` (keywords or tags as sent) that no result of a search carries.
    PS3.18 has a search return the attributes it matched on: one returned by none may have
    been ignored without a word (Orthanc does so with keys it cannot match)."""
    missing = []
    for key in keys:
        names = _names_of(key)
        tag = names[1] if len(names) > 1 else None
        if tag is not None and not any(tag in item for item in items):
            missing.append(key)
    return missing


def has_more_warning(headers: httpx.Headers) -> bool:
    # PS3.18: `Warning: 299 <host>: There are N additional results that can be requested`.
    return any(
        value.strip().startswith("299") and "additional" in value.lower()
        for value in headers.get_list("warning")
    )


# Where a refusal's JSON body puts its words: PS3.18 servers, Orthanc, dcm4chee, cloud gateways.
_MESSAGE_KEYS = ("message", "Message", "errorMessage", "error_description", "Details", "detail")
SAID_AT_MOST = 200


def refusal_words(response: httpx.Response) -> str | None:
    """What a 4xx answer says of why, from a text or JSON body: its message, or the text's
    first line, cut to SAID_AT_MOST characters, with the request's secrets masked (a gateway
    may repeat the query with its key). None for an HTML page or an empty body."""
    if not 400 <= response.status_code < 500:
        return None
    return answer_words(response)


def answer_words(response: httpx.Response) -> str | None:
    """What a text or JSON body says, as refusal_words reads it, whatever the status."""
    mime = _mime(response)
    words: object = None
    if not mime and response.content.lstrip()[:1] in (b"{", b"["):
        mime = "application/json"  # JSON sent without its type (Orthanc's REST errors)
    if mime in _JSON_TYPES:
        try:
            data = json_of(response)
        except (ValueError, RecursionError):
            return None
        words = _message_of(data)
    elif mime == "text/plain":
        text = response.content[: 4 * SAID_AT_MOST].decode("utf-8", "replace")
        words = next((line.strip() for line in text.splitlines() if line.strip()), None)
    if not isinstance(words, str) or not words.strip():
        return None
    masked = _masked(words.strip().encode(), response)
    said = masked.decode("utf-8", "replace")
    return said if len(said) <= SAID_AT_MOST else said[: SAID_AT_MOST - 1] + "…"


def _masked(words: bytes, response: httpx.Response) -> bytes:
    """`words` of `response` with the secrets of its request masked, its proxy's too."""
    mask = response.extensions.get(MASK_ECHOED)
    if mask is not None:
        masked: bytes = mask(words)
        return masked
    request = response.request  # not libcurl's answer: no proxy of its own
    return mask_echoed(words, str(request.url), request.headers.raw)


def _message_of(data: Any) -> object:
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("error"), dict):  # {"error": {"code": 400, "message": ...}}
        data = data["error"]
    for key in _MESSAGE_KEYS:
        if isinstance(data.get(key), str):
            return data[key]
    return data.get("error")
