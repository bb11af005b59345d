"""DICOMweb resource URLs and the redaction of credentials from any URL we show."""

from __future__ import annotations

import re
import sys
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from ..errors import UsageError

# PS3.5 §9.1: dot-separated numeric components, at most 64 characters. Leading zeros are not
# conformant but occur in real archives; they are harmless in a path, so they are accepted.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
# Query keys whose values are shown: QIDO's paging and its matching keys (DICOM keywords or
# tags, the user's own search). Every other value is masked: gateway keys (subscription-key),
# presigned signatures (X-Amz-Signature, X-Goog-Signature), OAuth codes, and names no list
# of secrets could foresee.
_SHOWN_QUERY_KEYS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
# The matching keys dlstudy's own searches send (query's options, listings, a catalog's
# windows), known without pydicom, which is slow to import; other keywords come from --filter,
# which checks them with pydicom's dictionary first (see _is_dicom_keyword).
_OWN_MATCHING_KEYS = frozenset(
    {
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "Modality",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    }
)
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_SECRET_LOOKING = re.compile(r"(?i)token|key|sig|secret|pass|credential|code|auth|session")


# Why a UID a server sent is never put in a request's path when it could name another
# resource there: `..` or `.` do (libcurl resolves dot segments, RFC 3986 5.2.4), and a `/`,
# `\` or `%2E`, percent-encoded as it is, becomes one behind a proxy that decodes the path.
NOT_ASKED_FOR = "which is no UID and cannot be asked for"
_PATH_CHARACTERS = frozenset("/\\%")


def is_valid_uid(uid: str) -> bool:
    """Digits and dots, at most 64 characters; anything but text (a library caller's int or
    bytes) is no UID."""
    return isinstance(uid, str) and len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


def can_be_asked_for(uid: str) -> bool:
    """Whether a UID a server sent may go in a request's path: anything but what could name
    another resource there. Other UIDs that break the rules (letters, more than 64
    characters) are percent-encoded harmlessly: asked for, so one such series does not cost
    a whole study its listing (the store refuses them as file names, instance by instance)."""
    return uid not in ("", ".", "..") and _PATH_CHARACTERS.isdisjoint(uid)


def split_base_url(url: str) -> tuple[str, str | None, str | None]:
    """Return (base URL without userinfo and trailing slash, user, password); a URL that
    cannot be one (base_url_problem) is a UsageError."""
    if (problem := base_url_problem(url)) is not None:
        raise UsageError(problem)
    parts = urlsplit(url.strip())
    # RFC 3986 §3.2.1: an @, : or / in a user or password is percent-encoded; curl decodes.
    user = None if parts.username is None else unquote(parts.username)
    password = None if parts.password is None else unquote(parts.password)
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    return clean, user, password


def redact_url(url: str) -> str:
    """The URL with its userinfo, user name too, and every query value that is not known to be
    harmless (is_shown_query_key) replaced by ***, and so the fragment's (an OAuth implicit
    grant's `#access_token=...`). A malformed URL (no scheme, one slash, a bad port or IPv6
    literal) is masked as loosely as needed: a `user:password@` anywhere in it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_loosely(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{_masked_userinfo(userinfo)}@{hostport}"
    elif "@" in url and (
        not netloc or "@" in parts.path or not _has_valid_port(parts) or _password_cut_short(parts)
    ):
        return _redact_loosely(url)  # a userinfo urlsplit did not see as one ("a:p/q@host")
    elif _port_is_a_word(netloc):
        # `http://alice:Winter 2024@host/dw`, not quoted: the shell left `http://alice:Winter`
        netloc = _masked_userinfo(netloc)
    query, fragment = _redact_query(parts.query), _redact_query(parts.fragment)
    if parts.scheme and not netloc and not url[len(parts.scheme) + 1 :].startswith("//"):
        # No authority (`http:foo`, a malformed Location): urlunsplit would add one (`http:///foo`)
        return f"{parts.scheme}:{urlunsplit(('', '', parts.path, query, fragment))}"
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, fragment))


def _masked_userinfo(userinfo: str) -> str:
    """`***` for a user name alone, `***:***` for a user and password. The user name is no
    safer to show than the password: many services take a token as the user name
    (`https://<token>@host`, `<token>:x-oauth-basic`), and the user typed it anyway."""
    return "***:***" if ":" in userinfo else "***"


def _password_cut_short(parts: SplitResult) -> bool:
    """Whether a `#` or `?` written as is in a password ended the authority early:
    `http://bob:2024#Winter@host/` splits as host `bob`, port 2024 and a fragment
    `Winter@host/`. An `@` in the fragment, or in a query before any `=` (a query's own
    `@` is in a value, `key=a@b`), is the rest of such a userinfo."""
    query_head = parts.query.partition("@")[0]
    return "@" in parts.fragment or ("@" in parts.query and "=" not in query_head)


def _port_is_a_word(netloc: str) -> bool:
    """Whether what stands after the netloc's last `:` starts with no digit: no port (a
    mistyped one starts with digits), but a user and the head of a password whose `@host` a
    shell split off (an IPv6 literal ends in `]`)."""
    port = netloc.rpartition(":")[2] if ":" in netloc else ""
    return port[:1] not in ("", *"0123456789") and "]" not in port


def _has_valid_port(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 (parsed on access)
    except ValueError:
        return False
    return True


# A scheme as written before userinfo, even a malformed one: `http://`, `http:/`, `http:`.
_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")


def _redact_loosely(url: str) -> str:
    """`url` with whatever stands between its scheme and its last `@` masked as a userinfo (a
    password may hold any character), and the query's values as in redact_url. It masks
    too much rather than too little: it is for URLs that do not parse as written."""
    head, at, tail = url.rpartition("@")
    if at:
        prefix = _SCHEME_PREFIX.match(head)
        start = prefix.end() if prefix else 0
        url = f"{head[:start]}{_masked_userinfo(head[start:])}@{tail}"
    url, hash_mark, fragment = url.partition("#")
    base, mark, query = url.partition("?")
    return f"{base}{mark}{_redact_query(query)}{hash_mark}{_redact_query(fragment)}"


def _redact_query(query: str) -> str:
    if not query:
        return query
    pairs = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        if sep and value and not is_shown_query_key(name):
            value = "***"
        pairs.append(f"{name}{sep}{value}")
    return "&".join(pairs)


def is_shown_query_key(name: str) -> bool:
    """Whether a query value under `name` is harmless to print: paging, and DICOM matching
    keys. A name merely shaped like a keyword is not one (`Policy`, `GoogleAccessId` of
    signed links, a gateway's `Sid` or `Jwt`)."""
    if name.lower() in _SHOWN_QUERY_KEYS:
        return True
    if _SECRET_LOOKING.search(name):
        return False
    return name in _OWN_MATCHING_KEYS or bool(_TAG.fullmatch(name)) or _is_dicom_keyword(name)


def _is_dicom_keyword(name: str) -> bool:
    """Whether pydicom's dictionary knows `name`, when pydicom is loaded (--filter loads it to
    check its keys before any request); otherwise the value is masked."""
    datadict = sys.modules.get("pydicom.datadict")
    return datadict is not None and datadict.tag_for_keyword(name) is not None


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


def authority_problem(url: str) -> str | None:
    """What is wrong with `url` past its scheme (its host, port, characters), in words that
    quote none of it, or None. urlsplit checks a port only when asked, and httpx rejects hosts
    urlsplit lets through: both are asked here, before any request."""
    if any(not c.isprintable() and not c == " " for c in url):
        return "has a control or non-printing character in it"
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc and _password_cut_short(parts):
            return "has a '#' or '?' in its user or password: write it percent-encoded (%23, %3F)"
        port = parts.port
    except ValueError as exc:
        if "Port" in str(exc):
            return "has a port that is not a number from 1 to 65535"
        return "is malformed (an IPv6 address without its closing ']'?)"
    if port == 0:
        return "has a port that is not a number from 1 to 65535"
    if any(not c.isprintable() for c in unquote(parts.netloc.rpartition("@")[0])):
        return "has a control character in its user or password (percent-encoded)"
    if not parts.hostname:
        return "has no host"
    if " " in parts.netloc.rpartition("@")[2]:  # a path may hold one (escaped as %20)
        return "has a space in its host"
    import httpx  # not at the start-up of commands that need no URL

    try:
        httpx.URL(url)
    except httpx.InvalidURL:
        return "is not a valid URL"
    return None


def base_url_problem(url: str) -> str | None:
    """Why `url` (a `--url` value) cannot be a DICOMweb root, in one line that shows it with
    its secrets masked; or None."""
    url = url.strip()
    shown = redact_url(url)
    if not url.lower().startswith(("http://", "https://")):
        return f"--url must start with http:// or https://, got {shown!r}"
    problem = authority_problem(url)
    return f"--url {problem}: {shown!r}" if problem else None


# A URL ends at a space or quote, unless an `@` further on the line shows a userinfo with a
# space in it (a password): the space is masked with the rest.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^'\"/@\n]*@)?[^\s'\"]*")


def redact_urls_in(text: str) -> str:
    """`text` (a library's error message) with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)
