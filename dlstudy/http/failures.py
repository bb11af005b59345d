"""Where failures of the HTTP stack become dlstudy errors: libcurl's, through httpx's
exception tree, and the server's refusals (401/403) of a response.

Each error gets one line that says what happened in words (TLS causes named, the proxy named,
URLs redacted) and the exit code of its class (errors.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from itertools import islice

import httpx

from ..errors import (
    AuthError,
    ConnectError,
    DlstudyError,
    HttpStatusError,
    StorageError,
    TransferError,
)
from .curl import PROXY_USED, CurlFailure
from .urls import redact_url

PROXY_WANTS_CREDENTIALS = (
    "wants credentials (HTTP 407 Proxy Authentication Required); give them in its URL: "
    "http://user:password@host:port"
)


def translate_error(exc: BaseException, url: str) -> DlstudyError:
    """Turn an exception from the HTTP stack into a dlstudy error with a one-line message.
    A request redirected to another origin that failed there is described as the redirect
    target's failure (its host, its TLS), from `url`. An OSError naming a file is a local
    file's, written or read as a response streamed in: no network error, never retried."""
    if isinstance(exc, OSError) and exc.filename is not None:
        filename = str(exc.filename)
        return StorageError(f"cannot use {filename!r}: {exc.strerror or exc}", path=filename)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return TransferError(f"redirected to {exc} from {redact_url(url)}", url=redact_url(url))
    if isinstance(exc, httpx.TooManyRedirects):
        shown = redact_url(url)
        return TransferError(f"too many redirects (a loop?) from {shown}", url=shown)
    failed = _failed_url(exc, url)
    if origin_of(httpx.URL(failed)) == origin_of(httpx.URL(url)):
        return _translate(exc, url)
    error = _translate(exc, failed)
    error.message = f"{error.message}; redirected there from {redact_url(url)}"
    return error


def _translate(exc: BaseException, url: str) -> DlstudyError:
    shown = redact_url(url)
    parsed = httpx.URL(url)
    curl = curl_failure(exc)
    said = curl.message if curl is not None else (str(exc) or type(exc).__name__)
    if curl is not None and curl.proxy_tls and curl.code not in _LOCAL_TLS_FILES:
        return ConnectError(_proxy_tls_failure(said, curl.proxy or ""), url=shown)
    if isinstance(exc, httpx.ProxyError):
        proxy = curl.proxy if curl is not None else None
        # libcurl: "CONNECT tunnel failed, response 407"
        if said.endswith("response 407") or (said.endswith("response 401") and _has_user(proxy)):
            return ConnectError(_proxy_refusal(proxy, int(said[-3:])), url=shown)
        named = f"proxy {proxy}" if proxy else "the proxy"
        if curl is not None and (unreachable := _unreachable_proxy(curl)) is not None:
            said = unreachable
        return ConnectError(f"cannot use {named} for {shown}: {said}", url=shown)
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectError(f"timed out connecting to {_netloc(parsed)}", url=shown)
    if isinstance(exc, httpx.ConnectError):
        if curl is not None and curl.tls:
            if "no application protocol" in said:  # TLS alert 120: h2 alone offered by ALPN
                return ConnectError(
                    f"{_netloc(parsed)} does not speak HTTP/2 (its TLS handshake refused h2: "
                    f"{said}); try --http 1.1 ({shown})",
                    url=shown,
                )
            if _speaks_no_tls(said):
                said = f"{_netloc(parsed)} does not speak TLS; if it is plain HTTP, use http://"
            elif curl.code in _LOCAL_TLS_FILES:  # ours, not the server's: name the option
                return ConnectError(f"cannot use {_LOCAL_TLS_FILES[curl.code]}: {said}", url=shown)
            elif (refusal := _client_certificate_alert(curl)) is not None:
                said = f"the server {refusal} ({said})"
            else:
                said = _tls_cause(said, parsed.host, own_cas=curl.own_cas)
            return ConnectError(f"TLS handshake with {parsed.host!r} failed: {said}", url=shown)
        if curl is not None and curl.handshake_cut:
            return ConnectError(
                f"connection to {_netloc(parsed)} broken during the TLS handshake ({said}) "
                f"({shown})",
                url=shown,
            )
        if curl is not None and curl.code == 6:  # CURLE_COULDNT_RESOLVE_HOST
            return ConnectError(f"cannot resolve host {parsed.host!r} ({shown})", url=shown)
        if (curl is not None and curl.os_errno == errno.ECONNREFUSED) or "refused" in said:
            return ConnectError(f"connection refused by {_netloc(parsed)} ({shown})", url=shown)
        if curl is not None and curl.os_errno:
            said = os.strerror(curl.os_errno)
        return ConnectError(f"cannot connect to {_netloc(parsed)}: {said}", url=shown)
    # A proxy that hangs or breaks looks like the server doing it: name it.
    where = f"{shown} through proxy {curl.proxy}" if curl is not None and curl.proxy else shown
    if isinstance(exc, httpx.ReadTimeout) and str(exc).startswith("stalled"):
        return TransferError(f"{exc} on {where}", url=shown, retryable=True)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return TransferError(f"timed out waiting for {where}", url=shown, retryable=True)
    if isinstance(exc, httpx.ProtocolError) or (curl is not None and "reset by peer" in said):
        # (a reset as a request is sent or read: the server closed it, as when it stops)
        return TransferError(f"connection broken ({said}) on {where}", url=shown, retryable=True)
    if isinstance(exc, httpx.TransportError | OSError):
        return TransferError(f"network error ({said}) on {where}", url=shown, retryable=True)
    return TransferError(f"unexpected {type(exc).__name__} on {shown}", url=shown)


def _failed_url(exc: BaseException, url: str) -> str:
    """The URL of the request that failed: when a redirect's target could not be reached,
    that target, not `url`, which answered (httpx sets the request on the errors of the
    requests it sends; those sent to the transport directly have none)."""
    if isinstance(exc, httpx.RequestError):
        try:
            return str(exc.request.url)
        except RuntimeError:
            pass
    return url


# libcurl's codes for a server that sent nothing, or nothing like HTTP: empty reply, weird
# reply, an HTTP/0.9-looking reply, an HTTP/2 framing error.
_NO_ANSWER = frozenset({52, 8, 1, 16})
# A receive failure (a reset) is no answer only before any byte of one came: a TLS server
# asked in plain text may reset the connection instead of closing it. Once the answer
# started, it is a broken connection, worth a retry.
_RECV_ERROR = 56


def no_answer(exc: BaseException) -> bool:
    curl = curl_failure(exc)
    if not isinstance(exc, httpx.ProtocolError) or curl is None:
        return False
    return curl.code in _NO_ANSWER or (curl.code == _RECV_ERROR and not curl.answered)


# nghttp2's words (libcurl's code 16) when an h2c connection's first bytes were no HTTP/2: a
# server without h2c answered the preface in HTTP/1.1. It answered: asking again changes nothing.
_NOT_HTTP2 = "expected SETTINGS frame"


def answered_without_http2(exc: BaseException) -> bool:
    curl = curl_failure(exc)
    return curl is not None and curl.code == 16 and _NOT_HTTP2 in curl.message


# CURLE_COULDNT_CONNECT: refused or unreachable, the server or the proxy in front of it (an
# HTTP proxy's CONNECT answered with an error status too).
_COULDNT_CONNECT = 7
# An HTTP proxy's own refusals of a CONNECT: its rules (403), credentials (407; tinyproxy: 401).
_CONNECT_REFUSALS = frozenset({401, 403, 407})


def _unreachable_proxy(curl: CurlFailure) -> str | None:
    """Why no connection to the proxy itself could be made, in words; or None when one was
    (libcurl's words then name the server's address: `Failed to connect to <server> over
    proxy ...`, which read as the server being down)."""
    if curl.code != _COULDNT_CONNECT or curl.connect_status or not curl.os_errno:
        return None
    if curl.os_errno == errno.ECONNREFUSED:
        return "connection refused by the proxy"
    return f"cannot connect to the proxy: {os.strerror(curl.os_errno)}"


def could_not_connect(exc: BaseException) -> bool:
    """libcurl could not open a connection (to the server, or to the proxy in front of it),
    or the proxy could not open one to the server; or the peer reset or closed the
    connection during the TLS handshake, as a restarting server does. An HTTP proxy refusing
    the CONNECT itself is no connection that failed: asking again gets the same refusal."""
    curl = curl_failure(exc)
    if curl is None or curl.connect_status in _CONNECT_REFUSALS:
        return False
    return curl.code == _COULDNT_CONNECT or curl.proxy_could_not_connect or curl.handshake_cut


# libcurl's words when its own resends of a request the server never began ran out: a stream
# refused (REFUSED_STREAM: libcurl opens streams past the server's limit before its SETTINGS
# arrive), or left unprocessed behind a GOAWAY, is sent again on a fresh connection, at most 5
# times a request (CONN_MAX_RETRIES), whatever the server said in between.
_RESENDS_RAN_OUT = "Connection died, tried"


def unprocessed(exc: BaseException) -> bool:
    """libcurl gave up sending again a request the server did not process (nothing of an
    answer came): sending it once more is safe, and no failure of the server's."""
    curl = curl_failure(exc)
    return curl is not None and not curl.answered and curl.message.startswith(_RESENDS_RAN_OUT)


def no_http_answer(exc: BaseException, url: str) -> ConnectError:
    """The run's first request got no HTTP answer at all, twice: a TLS port asked in plain
    text closes or resets the connection, or answers with TLS records."""
    curl = curl_failure(exc)
    said = curl.message if curl is not None else (str(exc) or type(exc).__name__)
    parsed = httpx.URL(url)
    shown = redact_url(url)
    if curl is not None and (refusal := _client_certificate_alert(curl)) is not None:
        # TLS 1.3: the client's side of the handshake ends before the server checks its
        # certificate; the server's alert comes as the answer.
        return ConnectError(
            f"TLS handshake with {parsed.host!r} failed: the server {refusal} ({said})", url=shown
        )
    if curl is not None and curl.code == 16:  # CURLE_HTTP2: the answer was no HTTP/2
        return ConnectError(
            f"{_netloc(parsed)} does not speak HTTP/2 ({said}); try --http 1.1 ({shown})",
            url=shown,
        )
    if curl is not None and _http_proxy(curl.proxy) and not curl.connect_status:
        return ConnectError(f"{_no_answer_through(curl, parsed)} ({shown})", url=shown)
    hint = "; if it speaks TLS, use https://" if parsed.scheme == "http" else ""
    return ConnectError(
        f"{_netloc(parsed)} gave no HTTP answer ({said}){hint} ({shown})", url=shown
    )


def _no_answer_through(curl: CurlFailure, parsed: httpx.URL) -> str:
    """The line for no HTTP answer through an HTTP proxy (`curl.proxy`) that never opened a
    tunnel: most often a SOCKS proxy given as http://. Its CONNECT (for https://) got no HTTP
    answer: that is the proxy's. For http://, the proxy answers in the server's place, and may
    pass on what the server sent (tinyproxy does): either may be the one."""
    socks = "if it is a SOCKS proxy, not an HTTP one, give it as socks5://"
    if parsed.scheme == "https":
        return f"proxy {curl.proxy} did not answer as an HTTP proxy ({curl.message}); {socks}"
    return (
        f"no HTTP answer through proxy {curl.proxy} ({curl.message}): {socks}; "
        f"if {_netloc(parsed)} speaks TLS, use https://"
    )


_WANTS_CERTIFICATE = "wants a client certificate: give it with --cert/--key"
_REFUSED_CERTIFICATE = "refused the client certificate (--cert): not one it trusts, or expired?"
# nginx's words (in an HTTP 400 of its own) when `ssl_verify_client on` got no client
# certificate, or one it does not trust: the handshake itself succeeded.
_CLIENT_CERTIFICATE_REFUSALS = (
    (b"No required SSL certificate was sent", _WANTS_CERTIFICATE),
    (b"The SSL certificate error", _REFUSED_CERTIFICATE),
)
# OpenSSL's words (through libcurl) for the TLS alerts a server sends about the client's
# certificate: none came (TLS 1.3's own alert), or the one that came is refused (Go's servers
# send `bad certificate` when none came, before TLS 1.3).
_CERTIFICATE_REQUIRED = "alert certificate required"
_CERTIFICATE_REFUSED = ("alert unknown ca", "alert bad certificate", "alert certificate unknown")


def _client_certificate_alert(curl: CurlFailure) -> str | None:
    """What a server's TLS alert says about the client certificate, in words; or None."""
    if _CERTIFICATE_REQUIRED in curl.message:
        return _WANTS_CERTIFICATE
    if any(alert in curl.message for alert in _CERTIFICATE_REFUSED):
        return _REFUSED_CERTIFICATE if curl.client_cert else _WANTS_CERTIFICATE
    return None


def _client_certificate_refusal(response: httpx.Response) -> str | None:
    """What a 400 read whole (a search's) says about the client certificate; or None."""
    if response.status_code != 400:
        return None
    try:
        head = response.content[:4096]
    except httpx.ResponseNotRead:  # a retrieval's, streamed: the run's searches came first
        return None
    return next((said for words, said in _CLIENT_CERTIFICATE_REFUSALS if words in head), None)


# What web servers answer (HTTP 400, a page of their own) to plain HTTP on a TLS port they
# serve, instead of closing the connection (no_http_answer): nginx's, Apache httpd's, Go's.
_PLAIN_HTTP_TO_TLS_PORT = (
    b"The plain HTTP request was sent to HTTPS port",
    b"speaking plain HTTP to an SSL-enabled server port",
    b"Client sent an HTTP request to an HTTPS server",
)


def _plain_http_to_tls_port(response: httpx.Response) -> str | None:
    """The line for a 400 read whole that says the request went in plain HTTP to a TLS port;
    or None."""
    if response.status_code != 400 or response.url.scheme != "http":
        return None
    try:
        head = response.content[:4096]
    except httpx.ResponseNotRead:  # a retrieval's, streamed: the run's searches came first
        return None
    words = next((words for words in _PLAIN_HTTP_TO_TLS_PORT if words in head), None)
    if words is None:
        return None
    return (
        f"{_netloc(response.url)} speaks TLS: it answered HTTP 400 ({words.decode()}); "
        f"use https:// ({redact_url(str(response.url))})"
    )


def _proxy_refusal(proxy: str | None, status: int) -> str:
    """The line for a proxy that refused the request: credentials wanted, or those in its
    URL refused (`proxy` as shown, its password masked)."""
    named = f"proxy {proxy}" if proxy else "the proxy"
    if _has_user(proxy):
        return f"{named} refused the credentials in its URL (HTTP {status})"
    return f"{named} {PROXY_WANTS_CREDENTIALS}"


def _proxy_answers_for(response: httpx.Response, proxy: str | None) -> bool:
    """Whether `response` may be the answer of `proxy` (as shown) itself: an HTTP proxy asked
    for an http:// URL answers in the server's place. Through a CONNECT tunnel (https://) or
    a SOCKS proxy, every answer is the server's."""
    return _http_proxy(proxy) and response.url.scheme == "http"


def _http_proxy(proxy: str | None) -> bool:
    return proxy is not None and proxy.lower().startswith(("http://", "https://"))


def _has_user(proxy: str | None) -> bool:
    return proxy is not None and "@" in proxy.partition("://")[2].partition("/")[0]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on. Stops at a cycle."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def curl_failure(exc: BaseException) -> CurlFailure | None:
    for current in islice(_chain(exc), 5):
        if isinstance(current, CurlFailure):
            return current
    return None


# libcurl's codes for a TLS file of ours it could not use (tls_files.py checks what it can
# before any request; a PEM block that does not parse is found here).
_LOCAL_TLS_FILES = {77: "--ca-bundle", 58: "--cert/--key", 43: "--cert/--key"}

# What OpenSSL says (through libcurl) about a certificate, and the cause in plain words.
_UNKNOWN_CA = "the {whose} certificate is signed by an unknown CA (trust it with --ca-bundle)"
# ... when the CAs to trust were given (--ca-bundle, $SSL_CERT_FILE): not the server's CA.
_NOT_IN_BUNDLE = "the {whose} certificate is signed by no CA of the bundle given"
_TLS_CAUSES = (
    (("certificate has expired",), "the {whose} certificate has expired"),
    (("certificate is not yet valid",), "the {whose} certificate is not valid yet"),
    (("subject name",), "the {whose} certificate is for another host name than {host!r}"),
    (("local issuer certificate", "self-signed", "self signed"), _UNKNOWN_CA),
)


def _tls_cause(said: str, host: str, whose: str = "server's", *, own_cas: bool = False) -> str:
    """libcurl's TLS message, led by its cause in plain words when it is a known one.
    `own_cas`: the CAs to trust were given (--ca-bundle, $SSL_CERT_FILE)."""
    for markers, cause in _TLS_CAUSES:
        if any(marker in said for marker in markers):
            if cause == _UNKNOWN_CA and own_cas:
                cause = _NOT_IN_BUNDLE
            return f"{cause.format(host=host, whose=whose)} ({said})"
    return said


def _speaks_no_tls(said: str) -> bool:
    """Whether OpenSSL's words (through libcurl) say the peer answered the TLS hello in
    something else: plain HTTP, most often."""
    return "wrong version number" in said or "packet length too long" in said


def _proxy_tls_failure(said: str, proxy: str) -> str:
    """The line for a failed TLS handshake with an https:// proxy (`proxy` as shown), or one
    that timed out before a tunnel was open (its handshake, or its CONNECT answer)."""
    plain = "if it is a plain HTTP proxy, give it as http://"
    if said.startswith("Connection timed out"):
        return f"proxy {proxy} did not answer in time ({said}); {plain}"
    if _speaks_no_tls(said):
        said = f"it does not speak TLS; {plain}"
    else:
        said = _tls_cause(said, httpx.URL(proxy).host, "proxy's")
    return f"TLS handshake with proxy {proxy} failed: {said}"


def _netloc(parsed: httpx.URL) -> str:
    """`host:port` as written in a URL: an IPv6 address in brackets (`[::1]:8042`)."""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{host}:{parsed.port}" if parsed.port else host


def is_translatable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | httpx.TooManyRedirects | OSError)


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    scheme = url.scheme
    return scheme, url.host, url.port or (443 if scheme == "https" else 80)


def redirected_elsewhere(response: httpx.Response) -> bool:
    """Whether redirects led the request to `response` on another origin than the URL asked.
    Its history may begin with an answer an auth flow replayed the request after (a 401 from
    a redirect target, with --token-command): the redirects that count come after it."""
    if not response.history:
        return False
    asked = response.url
    for earlier in reversed(response.history):
        if not earlier.has_redirect_location:
            break
        asked = earlier.url
    return origin_of(response.url) != origin_of(asked)


def check_auth(response: httpx.Response, *, search: bool = False) -> None:
    """Raise AuthError for 401/403: the server refuses us, nothing else will work either;
    and for 407, the proxy's refusal, which names the proxy. A 400 that says the request
    went in plain HTTP to a TLS port (nginx's) is a ConnectError saying to use https://.

    Except from a redirect target on another origin: archives hand instances out through
    expiring links to object stores, and a link that died is one the archive renews when asked
    again, so that is a retryable failure of this request only. Not for a `search` (QIDO):
    no archive hands searches out through expiring links; a search redirected elsewhere is an
    archive that moved (`http://` to `https://`, another host name), to which the run's
    credentials are never sent: asking again gets the same refusal.
    """
    proxy = response.extensions.get(PROXY_USED)
    if response.status_code == 407:  # from the proxy, not the server: the archive URL is moot
        raise AuthError(
            _proxy_refusal(proxy, 407), url=redact_url(str(response.url)), status_code=407
        )
    if (plain := _plain_http_to_tls_port(response)) is not None:
        raise ConnectError(plain, url=redact_url(str(response.url)))
    if (refusal := _client_certificate_refusal(response)) is not None:
        url = redact_url(str(response.url))
        raise AuthError(f"server {refusal} (HTTP 400 on {url})", url=url, status_code=400)
    status = response.status_code
    if status not in (401, 403):
        return
    if redirected_elsewhere(response):
        url = redact_url(str(response.url))
        if search:
            raise AuthError(_moved_archive_refusal(response), url=url, status_code=status)
        raise HttpStatusError(
            f"HTTP {response.status_code} from the redirect target {url} (an expired link?); "
            "asking the archive again",
            status_code=response.status_code,
            url=url,
            retryable=True,
        )
    what = "rejected the credentials" if response.status_code == 401 else "denied access"
    hint = " (check --token / --user / --password)" if response.status_code == 401 else ""
    sent = "authorization" in response.request.headers or _has_user(proxy)
    if response.status_code == 401 and not sent:
        what, hint = "wants credentials", " (give --token, or --user and --password)"
    if response.status_code == 401 and _has_user(proxy):
        # Some proxies (tinyproxy) refuse wrong credentials with 401, not 407.
        hint = f" (check --token / --user / --password, and the credentials of proxy {proxy})"
    if response.status_code == 403 and _proxy_answers_for(response, proxy):
        # A proxy whose rules do not allow the host answers 403 itself (tinyproxy's filter).
        hint = (
            f" (through proxy {proxy}, which may be the one refusing; to reach the archive "
            "without it, add its host to NO_PROXY)"
        )
    raise AuthError(
        f"server {what}: HTTP {response.status_code} on {redact_url(str(response.url))}{hint}",
        url=redact_url(str(response.url)),
        status_code=response.status_code,
    )


def _moved_archive_refusal(response: httpx.Response) -> str:
    """The line for a search that the archive redirected to another origin, which refused it
    without the credentials it was not given."""
    moved_to = f"{response.url.scheme}://{_netloc(response.url)}"
    return (
        f"the server redirected the search to another origin, {moved_to}, which answered "
        f"HTTP {response.status_code} on {redact_url(str(response.url))}: no credential or "
        f"--header goes to another origin; if {moved_to} is the archive, give it in --url"
    )
