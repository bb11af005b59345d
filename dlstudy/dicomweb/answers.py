"""What a QIDO answer says besides its results: whether whatever answered is a DICOMweb root
at all, and how many more results a `Warning: 299` announces."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import orjson

from .media import parse_media_type

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
    return describe_answer(response)


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


def ignored_keys_warning(headers: httpx.Headers) -> str | None:
    """The text of a `Warning: 299` saying the search was run without some of its matching
    keys (`The following attributes were not supported: 00280010`), or None."""
    for value in headers.get_list("warning"):
        if value.strip().startswith("299") and _IGNORED.search(value):
            return value.strip()
    return None


def has_more_warning(headers: httpx.Headers) -> bool:
    # PS3.18: `Warning: 299 <host>: There are N additional results that can be requested`.
    return any(
        value.strip().startswith("299") and "additional" in value.lower()
        for value in headers.get_list("warning")
    )
