"""The HTTP client of a run: protocol choice, credentials, redirects, and the one place where
transport errors become dlstudy errors.

httpx is the request API (auth flows, redirects, cookies, timeouts, responses); libcurl moves
the bytes underneath it, plugged in as an httpx transport (dlstudy/http/curl.py).

`--http auto` over plain http:// first speaks HTTP/2 with prior knowledge (h2c); a server that
does not understand it answers with something that is no HTTP/2, a protocol error on the very
first request. The client then switches to HTTP/1.1 once, for the whole run (and its workers:
`settled_http`). Over https:// ALPN decides and no probing is needed.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl

import anyio
import httpx

from ..errors import (
    AuthError,
    ConnectError,
    DlstudyError,
    HttpStatusError,
    ServerError,
    TransferError,
)
from ..flow.watchdog import MIN_PROGRESS_BYTES
from ..settings import AUTO_CONCURRENCY_HTTP1, HttpVersion, Settings
from .bounded import ACCEPTED_ENCODINGS, AnswerCutShort, BadAnswer, read_bounded
from .curl import MIN_PROGRESS, CurlFailure, CurlTransport, HttpChoice, TlsOptions
from .proxy import Proxies
from .urls import redact_url, split_base_url

log = logging.getLogger(__name__)

USER_AGENT = "dlstudy"
# Headers about the body as it came over the wire, wrong for the decoded body of _read_small.
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def make_engine(http: HttpChoice, settings: Settings, proxies: Proxies) -> httpx.AsyncBaseTransport:
    """The transport under httpx: libcurl. (Unit tests that mock HTTP with respx swap in
    httpx's own transport here, which respx patches.)"""
    return CurlTransport(
        http=http,
        max_connections=(settings.concurrency or AUTO_CONCURRENCY_HTTP1) + 2,
        tls=TlsOptions(settings.ca_bundle, settings.cert, settings.key, settings.insecure),
        proxies=proxies,
    )


def translate_error(exc: BaseException, url: str) -> DlstudyError:
    """Turn an exception from the HTTP stack into a dlstudy error with a one-line message."""
    shown = redact_url(url)
    parsed = httpx.URL(url)
    curl = _curl_failure(exc)
    said = curl.message if curl is not None else (str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.ProxyError):
        proxy = f"proxy {curl.proxy}" if curl is not None and curl.proxy else "the proxy"
        return ConnectError(f"cannot use {proxy} for {shown}: {said}", url=shown)
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectError(f"timed out connecting to {_netloc(parsed)}", url=shown)
    if isinstance(exc, httpx.ConnectError):
        if curl is not None and curl.tls:
            if "wrong version number" in said or "packet length too long" in said:
                said = f"{_netloc(parsed)} does not speak TLS; if it is plain HTTP, use http://"
            else:
                said = _tls_cause(said, parsed.host)
            return ConnectError(f"TLS handshake with {parsed.host!r} failed: {said}", url=shown)
        if curl is not None and curl.code == 6:  # CURLE_COULDNT_RESOLVE_HOST
            return ConnectError(f"cannot resolve host {parsed.host!r} ({shown})", url=shown)
        if (curl is not None and curl.os_errno == errno.ECONNREFUSED) or "refused" in said:
            return ConnectError(f"connection refused by {_netloc(parsed)} ({shown})", url=shown)
        if curl is not None and curl.os_errno:
            said = os.strerror(curl.os_errno)
        return ConnectError(f"cannot connect to {_netloc(parsed)}: {said}", url=shown)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return TransferError(f"redirected to {exc} from {shown}", url=shown)
    if isinstance(exc, httpx.TooManyRedirects):
        return TransferError(f"too many redirects (a loop?) from {shown}", url=shown)
    if isinstance(exc, httpx.ReadTimeout) and str(exc).startswith("stalled"):
        return TransferError(f"{exc} on {shown}", url=shown, retryable=True)
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return TransferError(f"timed out waiting for {shown}", url=shown, retryable=True)
    if isinstance(exc, httpx.ProtocolError):
        return TransferError(f"connection broken ({said}) on {shown}", url=shown, retryable=True)
    if isinstance(exc, httpx.TransportError | OSError):
        return TransferError(f"network error ({said}) on {shown}", url=shown, retryable=True)
    return TransferError(f"unexpected {type(exc).__name__} on {shown}", url=shown)


# libcurl's codes for a server that sent nothing, or nothing like HTTP: empty reply, weird
# reply, an HTTP/0.9-looking reply, an HTTP/2 framing error.
_NO_ANSWER = frozenset({52, 8, 1, 16})


def _no_answer(exc: BaseException) -> bool:
    curl = _curl_failure(exc)
    return isinstance(exc, httpx.ProtocolError) and curl is not None and curl.code in _NO_ANSWER


def _no_http_answer(exc: BaseException, url: str) -> ConnectError:
    """The run's first request got no HTTP answer at all: nothing a retry would change. A TLS
    port asked in plain text closes the connection or answers with TLS records."""
    curl = _curl_failure(exc)
    said = curl.message if curl is not None else (str(exc) or type(exc).__name__)
    parsed = httpx.URL(url)
    shown = redact_url(url)
    if curl is not None and curl.code == 16:  # CURLE_HTTP2: the answer was no HTTP/2
        return ConnectError(
            f"{_netloc(parsed)} does not speak HTTP/2 ({said}); try --http 1.1 ({shown})",
            url=shown,
        )
    hint = "; if it speaks TLS, use https://" if parsed.scheme == "http" else ""
    return ConnectError(
        f"{_netloc(parsed)} gave no HTTP answer ({said}){hint} ({shown})", url=shown
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on. Stops at a cycle."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _curl_failure(exc: BaseException) -> CurlFailure | None:
    for current in islice(_chain(exc), 5):
        if isinstance(current, CurlFailure):
            return current
    return None


# What OpenSSL says (through libcurl) about a certificate, and the cause in plain words.
_UNKNOWN_CA = "the server's certificate is signed by an unknown CA (trust it with --ca-bundle)"
_TLS_CAUSES = (
    (("certificate has expired",), "the server's certificate has expired"),
    (("certificate is not yet valid",), "the server's certificate is not valid yet"),
    (("subject name",), "the server's certificate is for another host name than {host!r}"),
    (("local issuer certificate", "self-signed", "self signed"), _UNKNOWN_CA),
)


def _tls_cause(said: str, host: str) -> str:
    """libcurl's TLS message, led by its cause in plain words when it is a known one."""
    for markers, cause in _TLS_CAUSES:
        if any(marker in said for marker in markers):
            return f"{cause.format(host=host)} ({said})"
    return said


def _netloc(parsed: httpx.URL) -> str:
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def is_translatable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | httpx.TooManyRedirects | OSError)


def _plan(settings: Settings, is_tls: bool) -> list[HttpChoice]:
    """The HTTP versions to try, in order (only `auto` on http:// has a second)."""
    if settings.http == "1.1":
        return ["1.1"]
    if settings.http == "2":
        return ["2"]
    return ["h2 or 1.1"] if is_tls else ["2", "1.1"]


class Transport:
    """One shared AsyncClient per run, plus the HTTP version it settled on."""

    def __init__(self, settings: Settings, *, auth: httpx.Auth | None = None) -> None:
        """`auth` overrides the credentials in `settings` (a refreshing bearer token)."""
        base, url_user, url_password = split_base_url(settings.url)
        # Resource paths go after the base path; a query in --url (an API key, say) goes with
        # every request to a URL below it, and to nothing else.
        self.base_url, _, query = base.partition("?")
        self._base_params = tuple(parse_qsl(query, keep_blank_values=True))
        self.settings = settings
        self._origin = origin_of(httpx.URL(self.base_url))
        self._auth: httpx.Auth | None = auth
        user = settings.user or url_user
        password = settings.password if settings.password is not None else url_password
        if auth is None and user is not None:
            self._auth = httpx.BasicAuth(user, password or "")
        self._headers: dict[str, str] = {"User-Agent": USER_AGENT}
        self._custom_header_names = {name.lower() for name, _ in settings.headers}
        for name, value in settings.headers:
            self._headers[name] = value
        if settings.token and auth is None:
            self._headers["Authorization"] = f"Bearer {settings.token}"
        self._proxies = Proxies(settings.proxy)
        self._plan = _plan(settings, self.base_url.lower().startswith("https://"))
        self._client = self._make_client(self._plan[0])
        self._negotiated = len(self._plan) == 1
        self._negotiate_lock = anyio.Lock()
        self.http_version: str | None = None  # as observed on responses
        self.quickest_reply: float | None = None  # seconds, of the small GETs (see get)

    @property
    def settled_http(self) -> HttpVersion:
        """`--http` as this run settled it: what a worker process should use without probing."""
        if self._negotiated and len(self._plan) > 1:
            return "2" if self._client_http == "2" else "1.1"
        return self.settings.http

    def _make_client(self, http: HttpChoice) -> httpx.AsyncClient:
        settings = self.settings
        self._client_http = http
        timeout = httpx.Timeout(
            connect=settings.timeout, read=settings.timeout, write=settings.timeout, pool=None
        )
        self._engine = make_engine(http, settings, self._proxies)
        self._merged_headers: dict[tuple[tuple[str, str], ...], httpx.Headers] = {}
        # Cleared by the first redirect: a server that redirects instances gets every request
        # through httpx, instead of asking it twice for each (a presigned link minted twice).
        self._direct = True
        # With a transport given, httpx leaves proxies alone: the engine applies them.
        return httpx.AsyncClient(
            transport=self._engine,
            timeout=timeout,
            auth=self._auth,
            headers=self._headers,
            follow_redirects=True,
            event_hooks={"request": [self._strip_secrets_off_origin]},
        )

    async def _strip_secrets_off_origin(self, request: httpx.Request) -> None:
        # httpx drops Authorization on a cross-origin redirect but forwards every other header,
        # and --header is how API keys are usually passed: drop those too.
        if origin_of(request.url) != self._origin:
            for name in list(request.headers):
                if name.lower() in self._custom_header_names or name.lower() == "authorization":
                    del request.headers[name]

    async def aclose(self) -> None:
        await self._client.aclose()

    @asynccontextmanager
    async def stream(
        self, url: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """GET `url` as a stream (a retrieval); transport failures arrive as dlstudy errors.

        httpx's read timeout is per chunk, so a server dripping bytes would pass it forever: a
        retrieval must bring MIN_PROGRESS_BYTES every --timeout seconds instead, or fail as
        stalled (libcurl's low-speed check, in C, once a second)."""
        await self._negotiate(url, headers)
        try:
            response = await self._send(url, headers)
            try:
                self._observe(response)
                yield response
            finally:
                await response.aclose()
        except DlstudyError:
            raise
        except Exception as exc:
            if is_translatable(exc):
                raise translate_error(exc, url) from exc
            raise

    async def _send(self, url: str, headers: dict[str, str] | None) -> httpx.Response:
        """A streamed GET. One to the server's own origin with nothing for httpx's pipeline to
        do (no auth flow, no cookie) goes straight to the client's transport: that pipeline
        (URL merging, cookie-jar round trips through urllib objects, auth and redirect
        generators) cost ~0.4 ms a request, a third of the client's CPU per instance on `ct`
        (profile in docs/performance.md). A redirect or a cookie in the answer is handed back
        to httpx, so behaviour stays the client's own."""
        client = self._client
        target = self._with_base_query(url)
        extensions = {
            "timeout": client.timeout.as_dict(),
            MIN_PROGRESS: (MIN_PROGRESS_BYTES, self.settings.timeout),
        }
        if self._direct and self._auth is None and not client.cookies and self._below_base(url):
            request = httpx.Request(
                "GET", target, headers=self._headers_with(headers), extensions=extensions
            )
            response = await self._engine.handle_async_request(request)
            response.request = request
            if not response.has_redirect_location:
                if "set-cookie" in response.headers:
                    client.cookies.extract_cookies(response)
                return response
            await response.aclose()  # followed (and checked) by httpx, from the start
            self._direct = False
        return await client.send(
            client.build_request("GET", target, headers=headers, extensions=extensions),
            stream=True,
        )

    def _headers_with(self, headers: dict[str, str] | None) -> httpx.Headers:
        """The client's headers with the request's on top; the few combinations a run uses
        are merged once."""
        key = tuple(headers.items()) if headers else ()
        merged = self._merged_headers.get(key)
        if merged is None:
            merged = httpx.Headers(self._client.headers)
            merged.update(headers or {})
            if len(self._merged_headers) >= 64:
                self._merged_headers.clear()
            self._merged_headers[key] = merged
        return merged  # httpx.Request copies it

    def _below_base(self, url: str) -> bool:
        """`url` is the base URL or a path or query below it (not `.../dicomweb2`)."""
        return url.startswith(self.base_url) and url[len(self.base_url) :][:1] in ("", "/", "?")

    def _with_base_query(self, url: str) -> httpx.URL | str:
        """A URL below the base URL gets the base URL's query."""
        if self._base_params and self._below_base(url):
            return httpx.URL(url).copy_merge_params(self._base_params)
        return url

    def _params(self, url: str, params: Any) -> Any:
        """A QIDO query's parameters, after those of the base URL for a URL below it."""
        if not self._base_params or not self._below_base(url):
            return params
        own = list(params.items()) if isinstance(params, dict) else list(params or [])
        return [*self._base_params, *own]

    async def get(
        self, url: str, headers: dict[str, str] | None = None, params: Any = None
    ) -> httpx.Response:
        """GET `url` and read the whole (small) body: for QIDO and probes only."""
        if not self._negotiated:
            async with self._negotiate_lock:
                if not self._negotiated:
                    return await self._first_get(url, headers, params)
        return await self._get(url, headers, params)

    async def _get(self, url: str, headers: dict[str, str] | None, params: Any) -> httpx.Response:
        try:
            response = await self._read_small(url, headers, params)
        except DlstudyError:
            raise
        except Exception as exc:
            if self.http_version is None and _no_answer(exc):
                raise _no_http_answer(exc, url) from exc
            if is_translatable(exc):
                raise translate_error(exc, url) from exc
            raise
        self._observe(response)
        self._time_reply(response)
        return response

    async def _first_get(
        self, url: str, headers: dict[str, str] | None, params: Any
    ) -> httpx.Response:
        """The run's first request doubles as the h2c probe; on a protocol error, HTTP/1.1."""
        try:
            response = await self._read_small(url, headers, params)
            self._observe(response)
            self._time_reply(response)
        except (httpx.ProtocolError, httpx.WriteError, httpx.ReadError) as exc:
            # A server without h2c answers the preface as HTTP/1.1 (not HTTP/2 to libcurl),
            # or closes the connection while libcurl is still sending: either way, HTTP/1.1.
            log.info("server does not speak h2c (%s); using HTTP/1.1", _curl_failure(exc) or exc)
            await self._client.aclose()
            self._client = self._make_client(self._plan[1])
            response = await self._get(url, headers, params)
        except DlstudyError:
            raise
        except Exception as exc:
            if is_translatable(exc):
                raise translate_error(exc, url) from exc
            raise
        self._negotiated = True
        return response

    async def _read_small(
        self, url: str, headers: dict[str, str] | None, params: Any
    ) -> httpx.Response:
        """GET an answer read whole, its decoded size bounded as it is decoded
        (http/bounded.py): the response carries the decoded body."""
        client = self._client
        request = client.build_request(
            "GET",
            url,
            headers={"Accept-Encoding": ACCEPTED_ENCODINGS, **(headers or {})},
            params=self._params(url, params),
        )
        response = await client.send(request, stream=True)
        try:
            encoding = response.headers.get("content-encoding", "")
            body = await read_bounded(response.aiter_raw(), encoding)
        except AnswerCutShort as exc:
            shown = redact_url(str(response.url))
            raise TransferError(f"{exc} from {shown}", url=shown, retryable=True) from exc
        except BadAnswer as exc:
            shown = redact_url(str(response.url))
            raise ServerError(f"{exc} from {shown}", url=shown) from exc
        finally:
            await response.aclose()
        decoded = httpx.Response(
            response.status_code,
            headers=[
                (name, value)
                for name, value in response.headers.multi_items()
                if name.lower() not in _BODY_FRAMING
            ],
            content=body,
            request=response.request,
            history=response.history,
            extensions=response.extensions,
        )
        decoded.elapsed = response.elapsed
        return decoded

    def _observe(self, response: httpx.Response) -> None:
        self.http_version = response.http_version

    def _time_reply(self, response: httpx.Response) -> None:
        """Keep the quickest complete answer (QIDO): about a round trip plus the server's
        time, once the connection is up."""
        seconds = response.elapsed.total_seconds()
        if self.quickest_reply is None or seconds < self.quickest_reply:
            self.quickest_reply = seconds

    async def _negotiate(self, url: str, headers: dict[str, str] | None) -> None:
        if not self._negotiated:
            # Streams start after QIDO in every run, so this probe is only for library callers
            # whose first request is a retrieve: a small GET settles the protocol first.
            response = await self.get(self.base_url + "/studies", params={"limit": "1"})
            del response


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    scheme = url.scheme
    return scheme, url.host, url.port or (443 if scheme == "https" else 80)


def check_auth(response: httpx.Response) -> None:
    """Raise AuthError for 401/403: the server refuses us, nothing else will work either.

    Except from a redirect target on another origin: archives hand instances out through
    expiring links to object stores, and a link that died is one the archive renews when asked
    again, so that is a retryable failure of this request only.
    """
    if response.status_code not in (401, 403):
        return
    if response.history and origin_of(response.url) != origin_of(response.history[0].url):
        url = redact_url(str(response.url))
        raise HttpStatusError(
            f"HTTP {response.status_code} from the redirect target {url} (an expired link?); "
            "asking the archive again",
            status_code=response.status_code,
            url=url,
            retryable=True,
        )
    what = "rejected the credentials" if response.status_code == 401 else "denied access"
    hint = " (check --token / --user / --password)" if response.status_code == 401 else ""
    raise AuthError(
        f"server {what}: HTTP {response.status_code} on {redact_url(str(response.url))}{hint}",
        url=redact_url(str(response.url)),
        status_code=response.status_code,
    )
