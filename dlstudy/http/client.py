"""The HTTP client of a run: protocol choice, credentials, redirects, small answers read
whole; its errors become dlstudy errors in http/failures.py.

httpx is the request API (auth flows, redirects, cookies, timeouts, responses); libcurl moves
the bytes underneath it, plugged in as an httpx transport (dlstudy/http/curl.py).

`--http auto` over plain http:// first speaks HTTP/2 with prior knowledge (h2c); a server that
does not understand it answers with something that is no HTTP/2, a protocol error on the very
first request. The client then switches to HTTP/1.1 once, for the whole run (and its workers:
`settled_http`). Over https:// ALPN decides and no probing is needed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import anyio
import httpx

from ..errors import (
    DlstudyError,
    ServerError,
    TransferError,
    UsageError,
)
from ..flow.watchdog import MIN_PROGRESS_BYTES
from ..settings import AUTO_CONCURRENCY_HTTP1, HttpVersion, Settings
from .bounded import ACCEPTED_ENCODINGS, AnswerCutShort, BadAnswer, read_bounded
from .credentials import credentials_problem
from .curl import MIN_PROGRESS, CurlTransport, HttpChoice, TlsOptions, has_http3
from .failures import (
    answered_without_http2,
    could_not_connect,
    curl_failure,
    is_translatable,
    no_answer,
    no_http_answer,
    origin_of,
    translate_error,
    unprocessed,
)
from .proxy import Proxies, shown
from .rate import RateLimit
from .tls_files import tls_files_problem, trusted_cas
from .urls import is_shown_query_key, redact_url, split_base_url, with_query

log = logging.getLogger(__name__)


class _RedactedUrls(logging.Filter):
    """httpx logs each request's whole URL at INFO (`HTTP Request: GET ...`): a library caller's
    `logging.basicConfig(level=logging.INFO)` printed a URL's secrets (an API key in its query,
    a presigned signature, a user name). They are masked here, as dlstudy's own records are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


_HTTPX_LOG = logging.getLogger("httpx")
if not any(isinstance(one, _RedactedUrls) for one in _HTTPX_LOG.filters):
    _HTTPX_LOG.addFilter(_RedactedUrls())

T = TypeVar("T")

USER_AGENT = "dlstudy"
# Seconds between attempts to connect again once a server that answered refuses connections.
RECONNECT_PAUSE = 0.5
# Times a request libcurl gave up sending again (failures.unprocessed) is sent once more,
# outside --retries: each lets libcurl try 6 more connections; a server that refuses every
# stream still ends the request.
UNPROCESSED_RESENDS = 20
# Headers about the body as it came over the wire, wrong for the decoded body of _read_small.
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# In the extensions of an answer read whole: whether it came unframed (its own headers gone).
UNFRAMED = "dlstudy.unframed"
# Headers of the archive's that no other origin gets (with the --header ones).
_NOT_ELSEWHERE = frozenset({"authorization", "cookie"})

# The attribute of a log record that says it is said once per run, and under which name: each
# --workers process has its own Transport, and the parent says each such name once for all of
# them (engine/workers.py).
ONCE_PER_RUN = "dlstudy_once_per_run"
PLAIN_HTTP_REDIRECT = "redirect to plain http"


async def refuse_unfollowable_redirect(response: httpx.Response) -> None:
    """A redirect whose Location is no URL httpx can follow raises UnsupportedProtocol (not
    retried: the server sends it again) naming it. httpx raises InvalidURL, which is no
    transport error, for one with a scheme and no host (`http:foo`), and a retryable
    RemoteProtocolError for one that does not parse."""
    if not response.has_redirect_location:
        return
    location = response.headers["Location"]
    try:
        target = httpx.URL(location)
        if target.scheme and not target.host:  # httpx gives it the request's host
            target.copy_with(host=response.request.url.host)
    except httpx.InvalidURL:
        raise httpx.UnsupportedProtocol(
            f"an invalid URL, {redact_url(location)!r},", request=response.request
        ) from None


async def refuse_search_dropping_redirect(response: httpx.Response) -> None:
    """A search redirected to a Location without its query (nginx's `return 301 /moved$uri`:
    `$uri` has none) would be a search for everything: `sync --modality MR` downloaded every
    study, exit 0. A redirect that changes the search (its matching keys, paging or
    includefield) is refused before it is followed; not retried, the server sends it again.
    Run after refuse_unfollowable_redirect, which refuses a Location that does not parse."""
    if not response.has_redirect_location:
        return
    asked = search_params(response.request.url)
    if not asked:
        return
    target = response.request.url.join(response.headers["Location"])
    kept = search_params(target)
    if kept != asked:
        shown = redact_url(str(target))
        raise ServerError(
            f"the server redirected the search {redact_url(str(response.request.url))} to "
            f"{shown}, which {'changes' if kept else 'drops'} the search's query: not "
            "followed, it would search for other studies than asked (the redirect should "
            "keep the query; or give its target in --url)",
            url=shown,
        )


def search_params(url: httpx.URL) -> list[tuple[str, str]]:
    """A URL's QIDO parameters (matching keys, paging, includefield), in order of name."""
    return sorted(
        (name, value) for name, value in url.params.multi_items() if is_shown_query_key(name)
    )


def make_engine(
    http: HttpChoice, settings: Settings, proxies: Proxies, rate_limit: RateLimit | None = None
) -> httpx.AsyncBaseTransport:
    """The transport under httpx: libcurl."""
    ca_bundle, ca_directories = trusted_cas(settings.ca_bundle)
    tls = TlsOptions(ca_bundle, settings.cert, settings.key, settings.insecure, ca_directories)
    return CurlTransport(
        http=http,
        max_connections=(settings.concurrency or AUTO_CONCURRENCY_HTTP1) + 2,
        tls=tls,
        proxies=proxies,
        rate_limit=rate_limit,
    )


def _plan(settings: Settings, is_tls: bool) -> list[HttpChoice]:
    """The HTTP versions to try, in order (only `auto` on http:// has a second)."""
    if settings.http == "1.1":
        return ["1.1"]
    if settings.http in ("2", "3"):
        return [settings.http]
    return ["h2 or 1.1"] if is_tls else ["2", "1.1"]


def http_version_problem(settings: Settings) -> str | None:
    """Why the one HTTP version --http asks for cannot reach the archive, if it cannot."""
    if settings.http == "3":
        return http3_problem(settings)
    if settings.http == "2":
        return _http2_proxy_problem(settings)
    return None


def http3_problem(settings: Settings) -> str | None:
    """Why --http 3 cannot reach the archive, if it cannot: HTTP/3 is QUIC, over UDP and TLS,
    which neither plain http:// nor a proxy (a TCP tunnel) carries."""
    if settings.http != "3":
        return None
    url = httpx.URL(split_base_url(settings.url)[0])
    if url.scheme != "https":
        return "--http 3 needs an https:// URL: HTTP/3 (QUIC) runs over TLS"
    if not has_http3():
        return "--http 3: this libcurl has no HTTP/3 (pycurl's wheels have it); use --http 2"
    proxy = Proxies(settings.proxy).for_origin(url.scheme, url.host, url.port)
    if proxy is not None:
        return (
            f"--http 3 cannot go through the proxy {shown(proxy)} (HTTP/3 runs over UDP): "
            "use --http 2, or leave the archive's host out of the proxy (NO_PROXY)"
        )
    return None


def _http2_proxy_problem(settings: Settings) -> str | None:
    proxy = http2_forwarding_proxy(settings)
    if proxy is None:
        return None
    return (
        f"--http 2 cannot go through the proxy {shown(proxy)} to an http:// URL (a proxy "
        "forwards http:// requests over HTTP/1.1): use --http auto, an https:// URL (tunnelled, "
        "HTTP/2 kept), or leave the archive's host out of the proxy (NO_PROXY)"
    )


def http2_forwarding_proxy(settings: Settings) -> str | None:
    """The HTTP proxy that requests to the http:// archive go through, if one does: it is
    sent them to forward, and forwards them over HTTP/1.1 whatever was asked (--http 2 ran
    HTTP/1.1 without a word). https:// goes through a tunnel (CONNECT) and keeps h2; a SOCKS
    proxy tunnels http:// too."""
    url = httpx.URL(split_base_url(settings.url)[0])
    if url.scheme != "http":
        return None
    proxy = Proxies(settings.proxy).for_origin(url.scheme, url.host, url.port)
    if proxy is None or proxy.partition("://")[0].lower() not in ("http", "https"):
        return None
    return proxy


def unframed(response: httpx.Response) -> bool:
    """No Content-Length and not chunked: the body ended where the connection (or the HTTP/2
    stream) did, so one cut short looked whole to HTTP. (An answer read whole says so in its
    extensions: its framing headers are gone.)"""
    said = response.extensions.get(UNFRAMED)
    if said is not None:
        return bool(said)
    if "content-length" in response.headers:
        return False
    return "chunked" not in response.headers.get("transfer-encoding", "").lower()


NOT_ASYNCIO = (
    "dlstudy runs its transfers in an asyncio event loop; from another (trio), "
    "call dlstudy.download() or dlstudy.sync() in a worker thread"
)


def require_asyncio() -> None:
    """libcurl's transfers are driven from asyncio's loop (multi.py): in another event loop
    (trio's), say so at once, not with a RuntimeError from deep in the first request."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise UsageError(NOT_ASYNCIO) from None


def refuse_other_loop() -> None:
    """For the blocking calls, which start an event loop of their own, or run beside a running
    asyncio one: in a trio task anyio.run refused with a bare `RuntimeError: Already running
    trio in this thread`. sniffio says which loop runs; trio imports it, asyncio needs none."""
    sniffio = sys.modules.get("sniffio")
    if sniffio is None:
        return
    try:
        running = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return
    if running != "asyncio":
        raise UsageError(NOT_ASYNCIO)


class Transport:
    """One shared AsyncClient per run, plus the HTTP version it settled on."""

    def __init__(
        self, settings: Settings, *, auth: httpx.Auth | None = None, answered: bool = False
    ) -> None:
        """`auth` overrides the credentials in `settings` (a refreshing bearer token).
        `answered`: the server answered this run already (a worker process's parent saw it),
        so a refused connection is a restart from the first request on (see _reconnecting)."""
        base, url_user, url_password = split_base_url(settings.url)
        problem = credentials_problem(
            settings.token, settings.user, settings.password, settings.headers
        )
        if problem is not None:
            raise UsageError(problem)
        if (
            problem := tls_files_problem(settings.ca_bundle, settings.cert, settings.key)
        ) is not None:
            raise UsageError(problem)
        # Resource paths go after the base path; a query in --url (an API key, say) goes with
        # every request to a URL below it, and to nothing else.
        self.base_url, _, query = base.partition("?")
        self._base_params = tuple(parse_qsl(query, keep_blank_values=True))
        self.settings = settings
        parsed = httpx.URL(self.base_url)
        self._origin = origin_of(parsed)
        self._scheme, self._host, self._port = parsed.scheme, parsed.host, parsed.port
        # URLs below the base go to libcurl as made (CurlTransport.get) when httpx would send
        # the base URL as written, not normalized (escaped, its host IDNA-encoded...).
        self._as_written = str(parsed) == self.base_url
        self._auth: httpx.Auth | None = auth
        user = settings.user or url_user
        password = settings.password if settings.password is not None else url_password
        if auth is None and user is not None:
            self._auth = httpx.BasicAuth(user, password or "")
        self._headers: dict[str, str] = {"User-Agent": USER_AGENT}
        self._custom_header_names = {name.lower() for name, _ in settings.headers}
        self.said: set[str] = set()  # the ONCE_PER_RUN warnings said (or, a worker's, sent up)
        for name, value in settings.headers:
            self._headers[name] = value
        token = (settings.token or "").strip()
        if token and auth is None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._proxies = Proxies(settings.proxy)
        # One cap for every request of this process, whichever engine carries it.
        self.rate_limit = RateLimit(settings.max_rate) if settings.max_rate else None
        if (problem := http_version_problem(settings)) is not None:
            raise UsageError(problem)
        self._plan = _plan(settings, self.base_url.lower().startswith("https://"))
        self._client = self._make_client(self._plan[0])
        self._negotiated = len(self._plan) == 1
        self._negotiate_lock = anyio.Lock()
        self.http_version: str | None = None  # as observed on responses
        self._answered_before = answered
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
        self._engine = make_engine(http, settings, self._proxies, self.rate_limit)
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
            event_hooks={
                "request": [self._strip_secrets_off_origin],
                "response": [refuse_unfollowable_redirect, refuse_search_dropping_redirect],
            },
        )

    async def _strip_secrets_off_origin(self, request: httpx.Request) -> None:
        # httpx drops Authorization on a cross-origin redirect but forwards every other header,
        # and --header is how API keys are usually passed: drop those too. And cookies: a
        # cookie is scoped by host, not port or scheme, so the jar hands the archive's session
        # cookie to another port of its host, or to http:// from https://.
        if origin_of(request.url) != self._origin:
            for name in list(request.headers):
                if name.lower() in self._custom_header_names or name.lower() in _NOT_ELSEWHERE:
                    del request.headers[name]
            self._warn_of_downgrade(request.url)

    def _warn_of_downgrade(self, url: httpx.URL) -> None:
        """Say once that a redirect left https:// for plain http://: what comes from there
        (patient data) travels unencrypted. Followed all the same, as curl and browsers do:
        an archive may hand instances out from a store on the hospital's own network."""
        if self._scheme != "https" or url.scheme != "http":
            return
        if PLAIN_HTTP_REDIRECT in self.said:
            return
        self.said.add(PLAIN_HTTP_REDIRECT)
        log.warning(
            "the server redirects to plain http:// (%s): what comes from there is not "
            "encrypted; credentials and --header values are not sent there",
            redact_url(str(url)),
            extra={ONCE_PER_RUN: PLAIN_HTTP_REDIRECT},
        )

    async def aclose(self) -> None:
        await self._client.aclose()
        if self.rate_limit is not None:
            self.rate_limit.close()

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
            response = await self._reconnecting(lambda: self._send(url, headers))
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

    async def _reconnecting(self, send: Callable[[], Awaitable[T]]) -> T:
        """`send()`, sent again while no connection can be opened to a server that answered
        this run, for up to --timeout seconds: a server or proxy restarting (a hospital's
        proxy reloading its configuration) refuses connections for a moment, which is no
        reason to stop the run. One that never answered, or stays down, stops it (exit 3).
        Whether it answered is the run's knowledge: a worker process's Transport is told.
        A request the server never began, that libcurl gave up sending again (an HTTP/2
        stream refused, or cut by a GOAWAY, more times than libcurl's own bound), is sent
        again too, up to UNPROCESSED_RESENDS times, without using up a retry."""
        deadline = time.monotonic() + self.settings.timeout
        resends = 0
        while True:
            try:
                return await send()
            except httpx.TransportError as exc:
                if unprocessed(exc) and resends < UNPROCESSED_RESENDS:
                    resends += 1
                    log.debug(
                        "the server did not process the request (%s); sending it again",
                        curl_failure(exc),
                    )
                    continue
                answered = self._answered_before or self.http_version is not None
                if not answered or not could_not_connect(exc):
                    raise
                if time.monotonic() + RECONNECT_PAUSE > deadline:
                    raise
                log.info("cannot connect (%s); trying again", curl_failure(exc) or exc)
            await anyio.sleep(RECONNECT_PAUSE)

    async def _send(self, url: str, headers: dict[str, str] | None) -> httpx.Response:
        """A streamed GET. One to the server's own origin with nothing for httpx's pipeline to
        do (no auth flow, no cookie) goes straight to the client's transport: that pipeline
        (URL merging, cookie-jar round trips through urllib objects, auth and redirect
        generators) was a third of the client's CPU per instance (docs/decisions.md). A
        redirect or a cookie in the answer is handed back to httpx, so behaviour stays the
        client's own."""
        client = self._client
        target = self._with_base_query(url)
        extensions = {
            "timeout": client.timeout.as_dict(),
            MIN_PROGRESS: (MIN_PROGRESS_BYTES, self.settings.timeout),
        }
        if self._direct and self._auth is None and not client.cookies and self._below_base(url):
            response = await self._get_directly(target, headers, extensions)
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

    async def _get_directly(
        self, url: str | httpx.URL, headers: dict[str, str] | None, extensions: dict[str, Any]
    ) -> httpx.Response:
        """GET `url`, below the base URL, from the client's transport (see _send)."""
        merged = self._headers_with(headers)
        if isinstance(url, str) and self._as_written and isinstance(self._engine, CurlTransport):
            return await self._engine.get(
                url,
                scheme=self._scheme,
                host=self._host,
                port=self._port,
                headers=merged,
                extensions=extensions,
            )
        request = httpx.Request("GET", url, headers=merged, extensions=extensions)
        response = await self._engine.handle_async_request(request)
        response.request = request
        return response

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

    def _params(self, url: str, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A QIDO query's parameters, after those of the base URL for a URL below it."""
        if not self._base_params or not self._below_base(url):
            return params
        return [*self._base_params, *params]

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
            response = await self._reconnecting(lambda: self._read_answered(url, headers, params))
        except DlstudyError:
            raise
        except Exception as exc:
            if is_translatable(exc):
                raise translate_error(exc, url) from exc
            raise
        self._observe(response)
        self._time_reply(response)
        return response

    async def _read_answered(
        self, url: str, headers: dict[str, str] | None, params: Any
    ) -> httpx.Response:
        """_read_small, asked once more at once when no HTTP answer came before the server
        ever answered this run: one connection closed unanswered (a restart, a balancer) is
        worth another try; a second silence means a server that does not speak HTTP here (a
        TLS port asked with http://), which retries would not change."""
        try:
            return await self._read_small(url, headers, params)
        except Exception as exc:
            if self.http_version is not None or not no_answer(exc):
                raise
            log.info("no HTTP answer from %s (%s); asking again", redact_url(url), exc)
        try:
            return await self._read_small(url, headers, params)
        except Exception as exc:
            if self.http_version is None and no_answer(exc):
                raise no_http_answer(exc, url) from exc
            raise

    async def _first_get(
        self, url: str, headers: dict[str, str] | None, params: Any
    ) -> httpx.Response:
        """The run's first request doubles as the h2c probe; on a protocol error, HTTP/1.1."""
        try:
            response = await self._probe(url, headers, params)
            self._observe(response)
            self._time_reply(response)
        except (httpx.ProtocolError, httpx.WriteError, httpx.ReadError) as exc:
            # A server without h2c answers the preface as HTTP/1.1 (not HTTP/2 to libcurl),
            # or closes the connection while libcurl is still sending: either way, HTTP/1.1.
            log.info("server does not speak h2c (%s); using HTTP/1.1", curl_failure(exc) or exc)
            await self._client.aclose()
            self._client = self._make_client(self._plan[1])
            self._negotiated = True  # the last choice: a failure below is not about h2c
            response = await self._get(url, headers, params)
        except DlstudyError:
            raise
        except Exception as exc:
            if is_translatable(exc):
                raise translate_error(exc, url) from exc
            raise
        self._negotiated = True
        return response

    async def _probe(self, url: str, headers: dict[str, str] | None, params: Any) -> httpx.Response:
        """_read_small over h2c, asked once more at once when no answer came at all: one
        connection closed unanswered (a restart, a balancer) says nothing about h2c, and would
        leave the whole run on HTTP/1.1. A server that answered the preface in HTTP/1.1 has
        no h2c, and is not asked again."""
        try:
            return await self._read_small(url, headers, params)
        except Exception as exc:
            if not no_answer(exc) or answered_without_http2(exc):
                raise
            log.info(
                "no HTTP/2 answer to the h2c probe (%s); asking again", curl_failure(exc) or exc
            )
        return await self._read_small(url, headers, params)

    async def _read_small(
        self, url: str, headers: dict[str, str] | None, params: Any
    ) -> httpx.Response:
        """GET an answer read whole, its decoded size bounded as it is decoded
        (http/bounded.py): the response carries the decoded body."""
        client = self._client
        headers = {"Accept-Encoding": ACCEPTED_ENCODINGS, **(headers or {})}
        started = time.monotonic()
        own = list(params.items()) if isinstance(params, dict) else list(params or [])
        url = with_query(url, self._params(url, own))  # the query as QIDO writes it
        response = await self._search_direct(url, headers)
        if response is None:
            request = client.build_request("GET", url, headers=headers)
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
            extensions={**response.extensions, UNFRAMED: unframed(response)},
        )
        decoded.elapsed = dt.timedelta(seconds=time.monotonic() - started)
        return decoded

    async def _search_direct(self, url: str, headers: dict[str, str]) -> httpx.Response | None:
        """A search of the server's own origin, sent as `_send` sends retrievals: straight to
        the engine, skipping httpx's pipeline (its URL merging alone costs more than the rest
        of a small search; a list of 100,000 studies is 100,000 searches). None when that
        pipeline has work to do: the caller sends it the usual way."""
        client = self._client
        if not (self._negotiated and self._direct and self._auth is None and not client.cookies):
            return None
        if not self._below_base(url):
            return None
        response = await self._get_directly(url, headers, {"timeout": client.timeout.as_dict()})
        if response.has_redirect_location:
            await response.aclose()  # followed (and checked) by httpx, from the start
            self._direct = False
            return None
        if "set-cookie" in response.headers:
            client.cookies.extract_cookies(response)
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
