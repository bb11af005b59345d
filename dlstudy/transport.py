"""The HTTP client: protocol choice, TLS, auth, limits, and the one place where httpx, httpcore
and h2 exceptions become dlstudy errors.

`--http auto` over plain http:// first speaks HTTP/2 with prior knowledge (h2c); a server that
does not understand it drops the connection, which shows up as a protocol error on the very first
request. The transport then switches to an HTTP/1.1 connection pool once, for the whole run.
Over https:// ALPN decides and no probing is needed.

httpx is the client (auth, redirects, cookies, timeouts); underneath it, requests travel through
dlstudy's own lean transports (http11.py, http2.py) rather than httpcore's pool, which cost
several times the CPU per instance (README "Performance").
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl

import anyio
import h2.events
import h2.exceptions
import httpx

from .errors import AuthError, ConnectError, DlstudyError, TransferError
from .http2 import Http2Transport
from .http11 import Http11Transport, origin_of
from .settings import Settings
from .urls import redact_url, split_base_url

log = logging.getLogger(__name__)

# Errors that mean "the bytes on the wire were not what the protocol allows": a truncated body,
# a reset stream, a GOAWAY, or an h2c preface sent to an HTTP/1.1-only server. h2 and httpcore
# sometimes leak their own exception types instead of httpx's (DOMAIN.md), so list them all
# (httpcore's are added by protocol_errors() once httpcore is loaded).
_PROTOCOL_ERRORS: tuple[type[BaseException], ...] = (
    httpx.ProtocolError,
    h2.exceptions.ProtocolError,
    h2.exceptions.StreamClosedError,
)
USER_AGENT = "dlstudy"
# A path of RFC 3986 unreserved characters and slashes: nothing in it for httpx to quote.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
_MERGED_HEADERS_LIMIT = 64
# Requests go through dlstudy/http11.py and http2.py; tests that mock HTTP with respx (which
# patches httpcore) turn this off.
LEAN_TRANSPORTS = True


def _httpcore_errors(*names: str) -> tuple[type[BaseException], ...]:
    """httpcore's exception classes `names`, once httpcore is loaded. It is imported only for
    its pool, the fallback that dlstudy's requests do not take (~25 ms of start-up with h11),
    so an error of its kind cannot exist before."""
    httpcore = sys.modules.get("httpcore")
    return tuple(getattr(httpcore, name) for name in names) if httpcore is not None else ()


def protocol_errors() -> tuple[type[BaseException], ...]:
    return _PROTOCOL_ERRORS + _httpcore_errors("ProtocolError")


def translate_error(exc: BaseException, url: str) -> DlstudyError:
    """Turn an exception from the HTTP stack into a dlstudy error with a one-line message."""
    shown = redact_url(url)
    host = httpx.URL(url).host
    if isinstance(exc, (httpx.ConnectError, *_httpcore_errors("ConnectError"))):
        cause = _root_cause(exc)
        if isinstance(cause, socket.gaierror):
            return ConnectError(f"cannot resolve host {host!r} ({shown})", url=shown)
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(exc).lower():
            return ConnectError(f"connection refused by {_netloc(url)} ({shown})", url=shown)
        if isinstance(cause, ssl.SSLError) or "ssl" in str(exc).lower():
            reason = getattr(cause, "reason", None) or str(cause or exc)
            return ConnectError(f"TLS handshake with {host!r} failed: {reason}", url=shown)
        return ConnectError(
            f"cannot connect to {_netloc(url)}: {exc or type(exc).__name__}", url=shown
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return ConnectError(f"timed out connecting to {_netloc(url)}", url=shown)
    if isinstance(
        exc, (httpx.TimeoutException, TimeoutError, *_httpcore_errors("TimeoutException"))
    ):
        return TransferError(f"timed out waiting for {shown}", url=shown, retryable=True)
    if isinstance(exc, protocol_errors()):
        goaway = _goaway(exc)
        if goaway is not None:
            return TransferError(
                f"server closed the HTTP/2 connection (GOAWAY, error {goaway.error_code}) "
                f"on {shown}",
                url=shown,
                retryable=True,
                collateral=True,
            )
        detail = str(exc) or type(exc).__name__
        return TransferError(
            f"connection broken ({detail}) on {shown}",
            url=shown,
            retryable=True,
            collateral=_closed_by_another_stream(exc),
        )
    if isinstance(exc, httpx.TransportError | OSError):
        detail = str(exc) or type(exc).__name__
        return TransferError(f"network error ({detail}) on {shown}", url=shown, retryable=True)
    return TransferError(f"unexpected {type(exc).__name__} on {shown}", url=shown)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on: httpx keeps httpcore's error as its cause, and
    httpcore keeps h2's. Stops at a cycle."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _goaway(exc: BaseException) -> h2.events.ConnectionTerminated | None:
    """The GOAWAY behind an error on a stream the server never processed, if that is what it is.

    httpcore raises RemoteProtocolError(ConnectionTerminated) for streams above the GOAWAY's
    last_stream_id; those requests are safe to send again on a new connection.
    """
    for current in _chain(exc):
        for arg in current.args:
            if isinstance(arg, h2.events.ConnectionTerminated):
                return arg
    return None


def _closed_by_another_stream(exc: BaseException) -> bool:
    """h2's complaint when a stream touches a connection another stream's error closed."""
    # The chain that matters is short: httpx <- httpcore <- h2.
    return any(
        type(current) is h2.exceptions.ProtocolError and "ConnectionState.CLOSED" in str(current)
        for current in islice(_chain(exc), 5)
    )


def _root_cause(exc: BaseException) -> BaseException:
    *_, last = _chain(exc)
    return last


def _netloc(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def is_translatable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, OSError, *protocol_errors()))


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if settings.insecure:
        return False
    context = ssl.create_default_context(
        cafile=str(settings.ca_bundle) if settings.ca_bundle else None
    )
    if settings.ca_bundle is None:
        # Same trust store httpx uses by default (certifi), so behaviour matches plain httpx.
        import certifi

        context.load_verify_locations(certifi.where())
    if settings.cert is not None:
        context.load_cert_chain(str(settings.cert), str(settings.key) if settings.key else None)
    return context


# ALPN contexts made in this process, by trust settings and protocols: loading the CA store
# takes ~40 ms (the system's and certifi's), once per process, and a forked worker inherits them.
# Never changed once made (httpcore, which sets ALPN on the contexts it is given, gets others).
_ALPN_CONTEXTS: dict[tuple[object, ...], ssl.SSLContext] = {}


def _alpn_context(settings: Settings, protocols: tuple[str, ...]) -> ssl.SSLContext:
    key = (settings.insecure, settings.ca_bundle, settings.cert, settings.key, protocols)
    context = _ALPN_CONTEXTS.get(key)
    if context is not None:
        return context
    made = _ssl_context(settings)
    if not isinstance(made, ssl.SSLContext):  # --insecure
        made = ssl.create_default_context()
        made.check_hostname = False
        made.verify_mode = ssl.CERT_NONE
    made.set_alpn_protocols(list(protocols))
    _ALPN_CONTEXTS[key] = made
    return made


class _MadeOnFirstUse(httpx.AsyncBaseTransport):
    """A transport built when a request first needs it: httpcore's pool, for what the lean
    transports leave (requests with a body), with a context of its own to load."""

    def __init__(self, make: Callable[[], httpx.AsyncBaseTransport]) -> None:
        self._make = make
        self._made: httpx.AsyncBaseTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._made is None:
            self._made = self._make()
        return await self._made.handle_async_request(request)

    async def aclose(self) -> None:
        if self._made is not None:
            await self._made.aclose()


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
        is_tls = self.base_url.lower().startswith("https://")
        if settings.http == "1.1":
            self._plan = [(True, False)]
        elif settings.http == "2":
            self._plan = [(False, True)]
        elif is_tls:
            self._plan = [(True, True)]  # ALPN picks
        else:
            self._plan = [(False, True), (True, False)]  # h2c first, then HTTP/1.1
        self._verify: ssl.SSLContext | bool | None = None  # see _verify_context
        self._client = self._make_client(*self._plan[0])
        self._extensions = {"timeout": self._client.timeout.as_dict()}
        self._negotiated = len(self._plan) == 1
        self._negotiate_lock = anyio.Lock()
        self.http_version: str | None = None  # as observed on responses
        self.quickest_reply: float | None = None  # seconds, of the small GETs (see get)
        self._base_template = httpx.URL(base)  # with the query, which instance URLs keep
        # The path as sent (quoted); raw_path would bring the query too.
        self._base_path = httpx.URL(self.base_url).raw_path.decode("ascii").rstrip("/")

    def _make_client(self, http1: bool, http2: bool) -> httpx.AsyncClient:
        settings = self.settings
        timeout = httpx.Timeout(
            connect=settings.timeout, read=settings.timeout, write=settings.timeout, pool=None
        )
        limits = httpx.Limits(
            max_connections=max(1, settings.concurrency) + 2,
            max_keepalive_connections=max(1, settings.concurrency) + 2,
        )
        transport: httpx.AsyncBaseTransport | None = None
        self._direct: httpx.AsyncBaseTransport | None = None
        self._merged_headers: dict[tuple[tuple[str, str], ...], httpx.Headers] = {}  # per client
        # httpx itself needs the trust settings only for a transport of its own: without the
        # lean transports, or through a proxy from the environment (each loads a CA store).
        verify: ssl.SSLContext | bool = True
        if not LEAN_TRANSPORTS or urllib.request.getproxies():
            verify = self._verify_context()
        if LEAN_TRANSPORTS:
            # Bodies and other methods (dlstudy sends none) go to httpcore, as configured.
            fallback = _MadeOnFirstUse(
                lambda: httpx.AsyncHTTPTransport(
                    verify=self._verify_context(), http1=http1, http2=http2, limits=limits
                )
            )
            slots = limits.max_connections or 1
            http11 = Http11Transport(
                tls_context=self._tls_context("http/1.1"),
                max_connections=slots,
                fallback=fallback,
            )
            transport = http11
            if http2:
                transport = Http2Transport(
                    tls_context=self._tls_context("h2", "http/1.1")
                    if http1
                    else self._tls_context("h2"),
                    max_streams=slots,
                    fallback=fallback,
                    http1_fallback=http11 if http1 else None,
                )
            # Without an auth flow, instance GETs skip httpx's request pipeline (see _send).
            self._direct = transport if self._auth is None else None
        return httpx.AsyncClient(
            http1=http1,
            http2=http2,
            verify=verify,
            transport=transport,
            timeout=timeout,
            limits=limits,
            auth=self._auth,
            headers=self._headers,
            follow_redirects=True,
            event_hooks={"request": [self._strip_secrets_off_origin]},
        )

    def _verify_context(self) -> ssl.SSLContext | bool:
        if self._verify is None:
            self._verify = _ssl_context(self.settings)
        return self._verify

    def _tls_context(self, *protocols: str) -> Callable[[], ssl.SSLContext]:
        """A maker of the context that offers `protocols` by ALPN, made when first asked."""
        return lambda: _alpn_context(self.settings, protocols)

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
        """GET `url` as a stream; transport failures arrive as dlstudy errors."""
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
        """A streamed GET. With a plain (no auth flow, no cookie) client the request goes
        straight to the transport: httpx's pipeline (URL merging, auth and redirect generators,
        hooks, cookie-jar round trips through urllib objects) cost ~65 µs per request here, a
        sixth of the Python work per small instance. What that pipeline would act on (a
        redirect, a cookie, another origin) goes through it, so behaviour is the client's own."""
        client, direct = self._client, self._direct
        if direct is not None and not client.cookies:
            request = httpx.Request(
                "GET",
                self._parsed(url),
                headers=self._direct_headers(client, headers),
                extensions=self._extensions,
            )
            if origin_of(request.url) == self._origin:  # else the hook strips secrets
                return await self._send_direct(client, direct, request, headers)
        return await client.send(
            client.build_request("GET", self._parsed(url), headers=headers), stream=True
        )

    def _below_base(self, url: str) -> bool:
        """`url` is the base URL or a path or query below it (not `.../dicomweb2`)."""
        return url.startswith(self.base_url) and url[len(self.base_url) :][:1] in ("", "/", "?")

    def _parsed(self, url: str) -> httpx.URL | str:
        """A URL below the base URL gets the base URL's query. One made of unreserved characters
        (every instance URL: UIDs are digits and dots) is the base URL with a longer path;
        anything else httpx parses. Parsing a ~200-character URL cost ~15 µs a request,
        checking every character."""
        if not self._below_base(url):
            return url
        rest = url[len(self.base_url) :]
        if rest.startswith("/") and _PLAIN_PATH.fullmatch(rest):
            return with_path(self._base_template, self._base_path + rest)
        if self._base_params:
            return httpx.URL(url).copy_merge_params(self._base_params)
        return url

    def _params(self, url: str, params: Any) -> Any:
        """A QIDO query's parameters, after those of the base URL for a URL below it."""
        if not self._base_params or not self._below_base(url):
            return params
        own = list(params.items()) if isinstance(params, dict) else list(params or [])
        return [*self._base_params, *own]

    async def _send_direct(
        self,
        client: httpx.AsyncClient,
        direct: httpx.AsyncBaseTransport,
        request: httpx.Request,
        headers: dict[str, str] | None,
    ) -> httpx.Response:
        response = await direct.handle_async_request(request)
        response.request = request
        if response.has_redirect_location:  # followed (and checked) by httpx, from the start
            await response.aclose()
            return await client.send(
                client.build_request("GET", request.url, headers=headers), stream=True
            )
        if "set-cookie" in response.headers:
            client.cookies.extract_cookies(response)
        return response

    def _direct_headers(
        self, client: httpx.AsyncClient, headers: dict[str, str] | None
    ) -> httpx.Headers:
        """The client's headers with the request's on top; the few combinations a run uses
        (instance GETs all send the same) are merged once."""
        key = tuple(headers.items()) if headers else ()
        merged = self._merged_headers.get(key)
        if merged is None:
            if len(self._merged_headers) >= _MERGED_HEADERS_LIMIT:
                self._merged_headers.clear()
            merged = httpx.Headers(client.headers)
            if headers:
                merged.update(headers)
            self._merged_headers[key] = merged
        return merged  # httpx.Request copies it

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
            response = await self._client.get(
                url, headers=headers, params=self._params(url, params)
            )
        except Exception as exc:
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
            response = await self._client.get(
                url, headers=headers, params=self._params(url, params)
            )
            self._observe(response)
            self._time_reply(response)
        except protocol_errors() as exc:
            log.info("server does not speak h2c (%s); using HTTP/1.1", type(exc).__name__)
            await self._client.aclose()
            self._client = self._make_client(*self._plan[1])
            response = await self._get(url, headers, params)
        except Exception as exc:
            if is_translatable(exc):
                raise translate_error(exc, url) from exc
            raise
        self._negotiated = True
        return response

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


def with_path(template: httpx.URL, path: str) -> httpx.URL:
    """`template` with another path, which must need no quoting, without parsing it all again:
    httpx (pinned <0.29; tests compare with its parser) keeps a URL as a named tuple of parts."""
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = template._uri_reference._replace(path=path)
    return url


def check_auth(response: httpx.Response) -> None:
    """Raise AuthError for 401/403: the server refuses us, nothing else will work either."""
    if response.status_code in (401, 403):
        what = "rejected the credentials" if response.status_code == 401 else "denied access"
        hint = " (check --token / --user / --password)" if response.status_code == 401 else ""
        raise AuthError(
            f"server {what}: HTTP {response.status_code} on {redact_url(str(response.url))}{hint}",
            url=redact_url(str(response.url)),
            status_code=response.status_code,
        )
