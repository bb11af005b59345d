"""What a server may echo of the secrets a request carried, masked before anyone shows it.

Some servers and gateways answer a refusal with a reason phrase that repeats what they were
sent: the Authorization header, an API key, the request line with its query. The reason phrase
goes into failure lines, --json, --report and logs, so the secrets of the request it answers
are masked in it here, where both are at hand (the request as libcurl sent it).
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote, unquote_plus, urlsplit

from .urls import is_shown_query_key

MASK = b"***"
# Headers dlstudy sends that hold no secret; any other header's value is one (Authorization,
# Cookie, a --header API key).
_PLAIN_HEADERS = frozenset(
    {
        b"host",
        b"accept",
        b"accept-encoding",
        b"user-agent",
        b"range",
        b"connection",
        b"content-type",
        b"content-length",
    }
)
# A response extension: its request's mask_echoed (URL, headers and proxy given), for words
# of its body; the proxy's credentials are known only where the request went out.
MASK_ECHOED = "dlstudy.mask_echoed"
# A shorter value is masked nowhere: it guards nothing, and would garble the words around it.
MIN_SECRET_LENGTH = 4


def mask_echoed(
    text: bytes, url: str, headers: list[tuple[bytes, bytes]], proxy: str | None = None
) -> bytes:
    """`text` (a server's words) with every secret the request to `url` carried masked: its
    header values, their credentials alone (`Bearer X`: X; a Basic one's user and password,
    decoded), its query values (but paging and matching keys), and the user and password of
    its `proxy` (and the Basic credential libcurl sends it). The user name is one too: many
    services take a token as the user name (`https://<token>@host`), and urls.py never shows
    it either."""
    if len(text) < MIN_SECRET_LENGTH:
        return text
    secrets = set(_header_secrets(headers)) | set(_url_secrets(url))
    if proxy is not None:
        secrets |= set(_url_secrets(proxy)) | set(_proxy_credentials(proxy))
    for secret in sorted(secrets, key=len, reverse=True):  # a whole value before its parts
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return text


def _header_secrets(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    secrets = []
    for name, value in headers:
        if name.lower() in _PLAIN_HEADERS:
            continue
        secrets.append(value)
        scheme, _, credentials = value.partition(b" ")
        secrets.append(credentials.strip())
        if scheme.lower() == b"basic":
            secrets += _basic_secrets(credentials.strip())
    return secrets


def _basic_secrets(credentials: bytes) -> list[bytes]:
    """The decoded `user:password` of a Basic credential, and its user and password alone."""
    try:
        decoded = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        return []
    user, _, password = decoded.partition(b":")
    return [decoded, user, password]


def _proxy_credentials(proxy: str) -> list[bytes]:
    """The Basic credential libcurl sends `proxy` (Proxy-Authorization), which a proxy may
    echo as it came: base64 of its user and password, decoded."""
    try:
        parts = urlsplit(proxy)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    if user is None:
        return []
    pair = f"{unquote(user)}:{unquote(password or '')}".encode("utf-8", "replace")
    return [base64.b64encode(pair)]


def _url_secrets(url: str) -> list[bytes]:
    """The user and password in `url` and the values of its query that are not shown
    (urls.py), as written and decoded."""
    try:
        parts = urlsplit(url)
        written = [parts.username or "", parts.password or ""]
    except ValueError:  # an IPv6 literal without its ']': no request went to it
        return []
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if not is_shown_query_key(unquote(name)):
            written.append(value)
    forms = {form for value in written for form in (value, unquote(value), unquote_plus(value))}
    return [form.encode("utf-8", "replace") for form in forms]
