"""DICOMweb resource URLs and the redaction of credentials from any URL we show."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

# PS3.5 §9.1: dot-separated numeric components, at most 64 characters. Leading zeros are not
# conformant but occur in real archives; they are harmless in a path, so they are accepted.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
# Query keys whose values are shown: QIDO's paging and its matching keys (DICOM keywords or
# tags, the user's own search). Every other value is masked: gateway keys (subscription-key),
# presigned signatures (X-Amz-Signature, X-Goog-Signature), OAuth codes, and names no list
# of secrets could foresee.
_SHOWN_QUERY_KEYS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_MATCHING_KEY = re.compile(r"[A-Z][A-Za-z0-9]*|[0-9A-Fa-f]{8}")
_SECRET_LOOKING = re.compile(r"(?i)token|key|sig|secret|pass|credential|code|auth|session")


def is_valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


def split_base_url(url: str) -> tuple[str, str | None, str | None]:
    """Return (base URL without userinfo and trailing slash, user, password)."""
    parts = urlsplit(url.strip())
    user = parts.username
    password = parts.password
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    return clean, user, password


def redact_url(url: str) -> str:
    """The URL with any userinfo password and every query value that is not known to be
    harmless (see _shown) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = []
        for item in query.split("&"):
            name, sep, value = item.partition("=")
            if sep and value and not _shown(name):
                value = "***"
            pairs.append(f"{name}{sep}{value}")
        query = "&".join(pairs)
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def _shown(name: str) -> bool:
    """Whether a query value under `name` is harmless to print."""
    if name.lower() in _SHOWN_QUERY_KEYS:
        return True
    return bool(_MATCHING_KEY.fullmatch(name)) and not _SECRET_LOOKING.search(name)


def _seg(uid: str) -> str:
    return quote(uid, safe="")


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{_seg(study)}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{study_url(base, study)}/series/{_seg(series)}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{series_url(base, study, series)}/instances/{_seg(sop)}"


# Left as typed in a query value: QIDO's wildcards, the name component separator and the list
# separator (RFC 3986 allows them there, `^` aside, which servers take as sent). An archive that
# matches on the query as sent (Orthanc 1.10's DICOMweb plugin) finds nothing for %2A or %5E.
_QUERY_VALUE_SAFE = "*?^,:/@"


def with_query(url: str, params: list[tuple[str, str]]) -> str:
    """`url` with `params` as its query (after any query it has), values percent-encoded but
    for the characters a QIDO match is written with."""
    if not params:
        return url
    query = "&".join(
        f"{quote(key, safe='')}={quote(value, safe=_QUERY_VALUE_SAFE)}" for key, value in params
    )
    return f"{url}{'&' if '?' in url else '?'}{query}"
