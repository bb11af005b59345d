"""libcurl as an httpx transport: httpx builds requests and follows redirects, libcurl moves
the bytes (HTTP/1.1 connection pool, HTTP/2 multiplexing, TLS, proxies).

A response is handed to httpx as soon as its head is complete; its body comes through a
Transfer (http/transfer.py). libcurl never decodes a body (no ACCEPT_ENCODING): bytes reach
the consumer as the server sent them (small answers are decoded, bounded, by http/bounded.py).
"""

from __future__ import annotations

import asyncio
import errno
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import certifi
import httpx
import pycurl

from .echoes import MASK_ECHOED, mask_echoed
from .multi import MultiDriver
from .proxy import Proxies, shown
from .rate import RateLimit
from .transfer import BODY, CurlBody, Transfer
from .urls import redact_urls_in

# A response extension: the proxy the answer came through (password masked), or None.
PROXY_USED = "dlstudy.proxy"
# A request extension, (bytes, seconds): the transfer fails as stalled unless every `seconds`
# bring `bytes` (libcurl's low-speed check, once a second). Without it, httpx's read timeout
# applies: no byte for that long.
MIN_PROGRESS = "dlstudy.min_progress"
# libcurl's receive buffer: larger reads mean fewer write callbacks (each a Python call).
BUFFER_SIZE = 64 * 1024
# Seconds a connection may sit idle and still be reused. Servers close idle connections after
# a few seconds (hypercorn, uvicorn, Apache: 5; gunicorn: 2), and libcurl does not always see
# it: an HTTP/2 connection hypercorn closed failed its next request ("Send failure: Broken
# pipe"), which cost an attempt after every backoff longer than that. After a pause, a new
# connection is cheap.
MAX_IDLE_REUSE = 1
_HEADER_MEMO_LIMIT = 64
# Options pycurl knows by number only.
_SUPPRESS_CONNECT_HEADERS = 265
_QUIC_CONNECT_ERROR = 96  # CURLE_QUIC_CONNECT_ERROR
_NOT_CONNECTED = ("Failed to connect", "Connection timed out")

HttpChoice = Literal["1.1", "2", "3", "h2 or 1.1"]
_CURL_VERSIONS = {
    "1.1": pycurl.CURL_HTTP_VERSION_1_1,
    "2": pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE,  # h2c on http://, h2 only by ALPN on TLS
    "3": pycurl.CURL_HTTP_VERSION_3ONLY,  # QUIC, https:// only; no fallback, as "2" has none
    "h2 or 1.1": pycurl.CURL_HTTP_VERSION_2TLS,  # ALPN picks on TLS; HTTP/1.1 on http://
}


def has_http3() -> bool:
    """Whether this libcurl speaks HTTP/3 (pycurl's wheels bring ngtcp2 and nghttp3; a pycurl
    built against a system libcurl may not)."""
    return bool(pycurl.version_info()[4] & pycurl.VERSION_HTTP3)


_TLS_ERRORS = frozenset(
    {
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_PEER_FAILED_VERIFICATION,
        pycurl.E_SSL_CERTPROBLEM,
        pycurl.E_SSL_CIPHER,
        pycurl.E_SSL_CACERT_BADFILE,
        pycurl.E_SSL_ISSUER_ERROR,
        pycurl.E_SSL_PINNEDPUBKEYNOTMATCH,
        pycurl.E_SSL_INVALIDCERTSTATUS,
        pycurl.E_SSL_CRL_BADFILE,
        pycurl.E_USE_SSL_FAILED,
    }
)
# A handshake the peer reset or closed (a server restarting: its backlog's connections
# reset, or closed before it serves TLS) is a broken connection, not a TLS failure.
_HANDSHAKE_CUT_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_HANDSHAKE_CUT_WORDS = "unexpected eof"  # OpenSSL's, for a peer that closed it
_BAD_ARGUMENT = 43  # CURLE_BAD_FUNCTION_ARGUMENT
_PROXY_HANDSHAKE = 97  # CURLE_PROXY: the proxy refused the tunnel or spoke nonsense
# CURLINFO_PROXY_ERROR's codes (CURLPX_REPLY_*) for a SOCKS proxy that could not connect to
# the server, in words: the server, not the proxy, refused or could not be reached.
_SOCKS_COULD_NOT_CONNECT = {
    19: "connection refused",
    20: "general failure",
    21: "host unreachable",
    22: "network unreachable",
    24: "TTL expired",
}
# Words for the failures libcurl reports with an empty message (curl_easy_strerror's gist).
_WORDS = {
    52: "the server answered nothing",
    55: "failure sending data",
    56: "failure receiving data",
    100: "a header or answer larger than libcurl accepts",
}
_HTTP2_STREAM = 92  # CURLE_HTTP2_STREAM: the server reset the stream


def proxy_note(response: httpx.Response) -> str:
    """` (through proxy X)` for a server error that came through a proxy: the proxy may have
    answered it itself (tinyproxy's `500 Unable to connect`, a gateway's 502 or 504 when the
    archive is down), so the line names both."""
    proxy = response.extensions.get(PROXY_USED)
    return f" (through proxy {proxy})" if proxy and response.status_code >= 500 else ""


def engine_version() -> str:
    """pycurl's and libcurl's versions, with the TLS and HTTP/2 libraries libcurl was built with."""
    return str(pycurl.version)


class CurlFailure(Exception):
    """What libcurl said about a failed transfer; the cause of the httpx error raised."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        proxy: str | None,
        tls: bool,
        os_errno: int = 0,
        answered: bool = False,
        proxy_tls: bool = False,
        proxy_could_not_connect: bool = False,
        connect_status: int = 0,
        handshake_cut: bool = False,
        client_cert: bool = False,
        own_cas: bool = False,
    ) -> None:
        super().__init__(f"curl error {code}: {message}")
        self.code = code
        self.message = message
        self.os_errno = os_errno  # the system's error behind it (ECONNREFUSED...), or 0
        self.answered = answered  # some of the response (its head, at least) had arrived
        self.proxy = proxy  # as shown (password masked), when the request went through one
        self.tls = tls  # a TLS handshake or certificate failure
        self.proxy_tls = proxy_tls  # ... with the proxy (an https:// one), not the server
        # a SOCKS proxy could not connect to the server (refused, unreachable)
        self.proxy_could_not_connect = proxy_could_not_connect
        # an HTTP proxy's answer to the CONNECT for an https:// URL (0: none came)
        self.connect_status = connect_status
        # the peer reset or closed the connection during the TLS handshake
        self.handshake_cut = handshake_cut
        self.client_cert = client_cert  # a client certificate was offered (--cert)
        self.own_cas = own_cas  # the server was checked against CAs given (--ca-bundle)

    @property
    def through_proxy(self) -> bool:
        return self.proxy is not None


@dataclass(frozen=True)
class TlsOptions:
    ca_bundle: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    ca_directories: str | None = None  # OpenSSL's hashed CA directories, colon-separated


class AnswerToGet(httpx.Response):
    """The response to CurlTransport.get: its httpx.Request (which `url`, cookie extraction and
    error messages read) is made the first time something asks for it."""

    asked: tuple[str, httpx.Headers, dict[str, Any]]
    _made = False

    @property
    def request(self) -> httpx.Request:
        if not self._made:
            url, headers, extensions = self.asked
            self.request = httpx.Request("GET", url, headers=headers, extensions=extensions)
        return httpx.Response.request.fget(self)  # type: ignore[attr-defined, no-any-return]

    @request.setter
    def request(self, value: httpx.Request) -> None:
        httpx.Response.request.fset(self, value)  # type: ignore[attr-defined]
        self._made = True

    def raise_for_status(self) -> httpx.Response:
        self.request  # noqa: B018 - made now: httpx's check reads it without asking
        return super().raise_for_status()


class CurlTransport(httpx.AsyncBaseTransport):
    """Requests through one libcurl multi handle on the running event loop.

    `http`: "1.1" (a connection pool of up to `max_connections`), "2" (HTTP/2 only: h2c with
    prior knowledge on http://, ALPN h2 on https://) or "h2 or 1.1" (ALPN decides on https://).
    HTTP/2 requests wait for the connection being set up (PIPEWAIT) and share it, as many streams
    at once as the server allows; libcurl opens another connection beyond that.
    """

    def __init__(
        self,
        *,
        http: HttpChoice,
        max_connections: int,
        tls: TlsOptions,
        proxies: Proxies,
        rate_limit: RateLimit | None = None,
    ) -> None:
        """`rate_limit`: the cap every body this transport receives shares (--max-rate)."""
        self.http = http
        self.rate_limit = rate_limit
        self.max_connections = max(1, max_connections)
        self.tls = tls
        self.proxies = proxies
        self._driver: MultiDriver | None = None
        self._idle: list[pycurl.Curl] = []
        self._header_memo: dict[tuple[tuple[bytes, bytes], ...], list[bytes]] = {}
        self._closed = False

    def driver(self) -> MultiDriver:
        if self._driver is None:
            if self._closed:
                raise httpx.LocalProtocolError("the client was closed")

            def configure(multi: pycurl.CurlMulti) -> None:
                multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
                multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, self.max_connections)
                multi.setopt(pycurl.M_MAXCONNECTS, self.max_connections)

            self._driver = MultiDriver(asyncio.get_running_loop(), configure)
        return self._driver

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):  # a redirect to file://, ftp://, ...
            raise httpx.UnsupportedProtocol(f"a {url.scheme}:// URL, which is not HTTP")
        if url.userinfo:  # httpx turned it into an Authorization header already
            url = url.copy_with(username=None, password=None)
        body = await request.aread()
        head = (request.method, body, request.headers.raw, request.extensions)
        transfer = await self._start(str(url), (url.scheme, url.host, url.port), *head)
        return httpx.Response(transfer.status, **self._answer(transfer))

    async def get(
        self,
        url: str,
        *,
        scheme: str,
        host: str,
        port: int | None,
        headers: httpx.Headers,
        extensions: dict[str, Any],
    ) -> httpx.Response:
        """GET `url` as handle_async_request would, without building an httpx.Request first:
        for a client's own requests to a URL it made (`scheme`, `host` and `port` are the
        URL's, with no user info), where parsing it again was most of a small request's cost
        in httpx (docs/decisions.md). The response's request is made if something asks for it."""
        origin = (scheme, host, port)
        transfer = await self._start(url, origin, "GET", b"", headers.raw, extensions)
        answer = AnswerToGet(transfer.status, **self._answer(transfer))
        answer.asked = (url, headers, extensions)
        return answer

    async def _start(
        self,
        url: str,
        origin: tuple[str, str, int | None],
        method: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        extensions: dict[str, Any],
    ) -> Transfer:
        """A transfer of the request on the multi handle, once its response head is in.
        `origin`: the URL's scheme, host and port (None: the scheme's default)."""
        driver = self.driver()
        proxy = self.proxies.for_origin(*origin)
        easy = self._idle.pop() if self._idle else self._new_easy()
        transfer = Transfer(self, easy, shown(proxy) if proxy else None)
        try:
            self._prepare(easy, url, headers, extensions, transfer, proxy)
            transfer.reusable = self._set_method(easy, method, body)
        except BaseException:
            easy.close()
            raise
        driver.start(easy, transfer)
        try:
            await transfer.head
        except BaseException:
            transfer.abandon()
            raise
        transfer.mask_echoed = partial(mask_echoed, url=url, headers=headers, proxy=proxy)
        transfer.reason = transfer.mask_echoed(transfer.reason)
        return transfer

    @staticmethod
    def _answer(transfer: Transfer) -> dict[str, Any]:
        """An httpx response's arguments but its status, for `transfer`."""
        body = CurlBody(transfer)
        return {
            "headers": transfer.headers,
            "stream": body,
            "extensions": {
                "http_version": transfer.version,
                "reason_phrase": transfer.reason,
                BODY: body,
                PROXY_USED: transfer.proxy,
                MASK_ECHOED: transfer.mask_echoed,
            },
        }

    async def aclose(self) -> None:
        self._closed = True
        if self._driver is not None:
            self._driver.close()
            self._driver = None
        for easy in self._idle:
            easy.close()
        self._idle.clear()

    # --- easy handles ----------------------------------------------------------------------

    def _new_easy(self) -> pycurl.Curl:
        """A handle with everything that stays the same for every request of this client."""
        easy = pycurl.Curl()
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.HTTP_VERSION, _CURL_VERSIONS[self.http])
        easy.setopt(pycurl.PIPEWAIT, 1)
        easy.setopt(pycurl.BUFFERSIZE, BUFFER_SIZE)
        easy.setopt(pycurl.PATH_AS_IS, 1)  # the path as httpx built it, no dot-segment squash
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.FOLLOWLOCATION, 0)  # httpx follows redirects, with its rules
        easy.setopt(_SUPPRESS_CONNECT_HEADERS, 1)  # a proxy's CONNECT answer is not ours
        easy.setopt(pycurl.TCP_KEEPALIVE, 1)
        easy.setopt(pycurl.MAXAGE_CONN, MAX_IDLE_REUSE)
        tls = self.tls
        if tls.insecure:
            # The server's certificate only, as curl's --insecure (--proxy-insecure is another
            # option): an https:// proxy is verified still, its credentials sent over TLS only
            # to the proxy the CAs vouch for.
            easy.setopt(pycurl.SSL_VERIFYPEER, 0)
            easy.setopt(pycurl.SSL_VERIFYHOST, 0)
        if tls.ca_directories:
            # The environment's CA directories alone (SSL_CERT_DIR), as httpx trusts them.
            for option in (pycurl.CAPATH, pycurl.PROXY_CAPATH):
                easy.setopt(option, tls.ca_directories)
            for option in (pycurl.CAINFO, pycurl.PROXY_CAINFO):
                easy.unsetopt(option)
        else:
            # certifi by default, or the user's bundle (--ca-bundle or the environment's).
            bundle = str(tls.ca_bundle) if tls.ca_bundle else certifi.where()
            easy.setopt(pycurl.CAINFO, bundle)
            easy.setopt(pycurl.PROXY_CAINFO, bundle)
        if tls.cert is not None:
            easy.setopt(pycurl.SSLCERT, str(tls.cert))
            if tls.key is not None:
                easy.setopt(pycurl.SSLKEY, str(tls.key))
            # An encrypted key then fails to load: without a pass phrase set, OpenSSL asks
            # for one on the terminal, and the run waits there, deaf to Ctrl-C.
            easy.setopt(pycurl.KEYPASSWD, "")
        return easy

    def _prepare(
        self,
        easy: pycurl.Curl,
        url: str,
        headers: list[tuple[bytes, bytes]],
        extensions: dict[str, Any],
        transfer: Transfer,
        proxy: str | None,
    ) -> None:
        """Set `easy` up for a request to `url`."""
        easy.setopt(pycurl.URL, url)
        easy.setopt(pycurl.PROXY, proxy or "")  # "": no proxy, whatever the environment says
        easy.setopt(pycurl.HTTPHEADER, self._header_lines(headers))
        easy.setopt(pycurl.HEADERFUNCTION, transfer.on_header)
        easy.setopt(pycurl.WRITEFUNCTION, transfer.on_data)
        if self.rate_limit is not None:
            # libcurl keeps the stream window near this, so an HTTP/2 server cannot send far
            # ahead of what the rate limit lets through.
            easy.setopt(pycurl.MAX_RECV_SPEED_LARGE, self.rate_limit.rate)
        timeout = extensions.get("timeout", {})
        connect, read = timeout.get("connect"), timeout.get("read")
        easy.setopt(pycurl.CONNECTTIMEOUT_MS, int(connect * 1000) if connect else 0)
        transfer.min_progress = extensions.get(MIN_PROGRESS)
        if transfer.min_progress is not None:
            nbytes, seconds = transfer.min_progress
            window = max(1, math.ceil(seconds))
            easy.setopt(pycurl.LOW_SPEED_LIMIT, max(1, math.ceil(nbytes / window)))
            easy.setopt(pycurl.LOW_SPEED_TIME, window)
        else:
            # httpx's read timeout: no byte for that long. libcurl's nearest rule: under
            # 1 byte/s over that many seconds.
            easy.setopt(pycurl.LOW_SPEED_LIMIT, 1 if read else 0)
            easy.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(read)) if read else 0)

    @staticmethod
    def _set_method(easy: pycurl.Curl, method: str, body: bytes) -> bool:
        """Whether `easy` can serve another request afterwards (only a plain GET leaves no
        method or body behind)."""
        if method == "GET" and not body:
            easy.setopt(pycurl.HTTPGET, 1)
            return True
        if method == "HEAD":
            easy.setopt(pycurl.NOBODY, 1)
        else:
            easy.setopt(pycurl.POSTFIELDS, body)
            easy.setopt(pycurl.CUSTOMREQUEST, method)
        return False

    def release(self, easy: pycurl.Curl, reusable: bool) -> None:
        """libcurl is done with `easy` (its connection stays in the multi's pool)."""
        if reusable and not self._closed:
            self._idle.append(easy)
        else:
            easy.close()

    def abandon(self, easy: pycurl.Curl, reusable: bool) -> None:
        if self._driver is not None and not self._driver.closed:
            self._driver.abandon(easy)
        self.release(easy, reusable)

    def _header_lines(self, raw: list[tuple[bytes, bytes]]) -> list[bytes]:
        """httpx's headers as libcurl's lines; an empty value is spelled `Name;` (a bare
        `Name:` would remove a header). A CR, LF or NUL would let one header smuggle others.
        A run sends a few combinations over and over: each is made once."""
        key = tuple(raw)
        lines = self._header_memo.get(key)
        if lines is None:
            lines = []
            for name, value in raw:
                if any(c in name + value for c in (b"\r", b"\n", b"\0")):
                    raise httpx.LocalProtocolError(f"illegal character in header {name!r}")
                lines.append(name + b": " + value if value else name + b";")
            if len(self._header_memo) >= _HEADER_MEMO_LIMIT:
                self._header_memo.clear()
            self._header_memo[key] = lines
        return lines

    # --- errors ----------------------------------------------------------------------------

    def error_for(self, code: int, message: str, transfer: Transfer) -> httpx.TransportError:
        """libcurl's error as httpx's exception (what callers of a transport expect), with
        libcurl's code and words kept as its cause."""
        os_errno = int(transfer.easy.getinfo(pycurl.OS_ERRNO))
        handshake_cut = code == pycurl.E_SSL_CONNECT_ERROR and (
            os_errno in _HANDSHAKE_CUT_ERRNOS or _HANDSHAKE_CUT_WORDS in message
        )
        # A key that does not belong to its --cert is a bad argument to this libcurl.
        tls = not handshake_cut and (
            code in _TLS_ERRORS or (code == _BAD_ARGUMENT and "private key" in message)
        )
        # libcurl quotes URLs whole in some messages ("Unsupported proxy syntax in '...'").
        message = redact_urls_in(message) or _WORDS.get(code, f"libcurl error {code}")
        socks_said = _socks_could_not_connect(code, transfer)
        if socks_said is not None:
            message = f"the proxy could not connect to the server: {socks_said} ({message})"
        answered = transfer.received > 0 or int(transfer.easy.getinfo(pycurl.HEADER_SIZE)) > 0
        # HTTP/3 to a server that offers none (a closed UDP port: "Failed sending data") or
        # past a firewall that drops UDP: libcurl's words say nothing of either.
        unanswered_quic = (
            self.http == "3"
            and not answered
            and (code == _QUIC_CONNECT_ERROR or message.startswith(_NOT_CONNECTED))
        )
        if unanswered_quic:
            message = (
                f"no HTTP/3 answer ({message}): the server may not offer HTTP/3 (QUIC, over "
                "UDP), or UDP may be blocked on the way; --http 2 goes over TCP"
            )
        failure = CurlFailure(
            code,
            message,
            proxy=transfer.proxy,
            tls=tls,
            os_errno=os_errno,
            answered=answered,
            proxy_tls=(tls or handshake_cut or _handshake_timed_out(transfer, message))
            and _with_proxy(transfer),
            proxy_could_not_connect=socks_said is not None,
            connect_status=int(transfer.easy.getinfo(pycurl.HTTP_CONNECTCODE)),
            handshake_cut=handshake_cut,
            client_cert=self.tls.cert is not None,
            own_cas=self.tls.ca_bundle is not None,
        )
        error: httpx.TransportError
        if unanswered_quic:
            timed_out = code == pycurl.E_OPERATION_TIMEDOUT
            error = (httpx.ConnectTimeout if timed_out else httpx.ConnectError)(message)
        elif code in (pycurl.E_COULDNT_RESOLVE_PROXY, _PROXY_HANDSHAKE) or (
            # through a proxy, the only connection libcurl makes is to the proxy
            transfer.proxy is not None
            and (code == pycurl.E_COULDNT_CONNECT or message.startswith("Connection timed out"))
        ):
            error = httpx.ProxyError(message)
        elif (
            code in (pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT)
            or tls
            or handshake_cut
        ):
            error = httpx.ConnectError(message)
        elif code == pycurl.E_OPERATION_TIMEDOUT:
            if message.startswith(("Connection timed out", "Resolving timed out")):
                error = httpx.ConnectTimeout(message)
            elif transfer.min_progress is not None and message.startswith("Operation too slow"):
                nbytes, seconds = transfer.min_progress
                error = httpx.ReadTimeout(
                    f"stalled (less than {nbytes // 1024} KiB in {seconds:g} s)"
                )
            else:
                error = httpx.ReadTimeout(message)
        elif code in (pycurl.E_SEND_ERROR,):
            error = httpx.WriteError(message)
        elif code == pycurl.E_URL_MALFORMAT or (
            code == pycurl.E_UNSUPPORTED_PROTOCOL and "HTTP/0.9" not in message
        ):
            error = httpx.UnsupportedProtocol(message)
        else:  # cut bodies, resets, GOAWAY, framing errors, nothing at all, TLS cut short
            error = httpx.RemoteProtocolError(message)
        error.__cause__ = failure
        return error


def _socks_could_not_connect(code: int, transfer: Transfer) -> str | None:
    """In words, why a SOCKS proxy could not connect to the server, or None when that is not
    what failed. libcurl's own words give the SOCKS reply's number alone."""
    if code != _PROXY_HANDSHAKE:
        return None
    return _SOCKS_COULD_NOT_CONNECT.get(int(transfer.easy.getinfo(pycurl.PROXY_ERROR)))


def _with_proxy(transfer: Transfer) -> bool:
    """Whether a TLS failure of `transfer` is its https:// proxy's: libcurl speaks TLS with
    such a proxy first, and with the server only inside the tunnel its CONNECT answer opened
    (never for an http:// URL, which the proxy fetches itself)."""
    if transfer.proxy is None or not transfer.proxy.lower().startswith("https://"):
        return False
    url = str(transfer.easy.getinfo(pycurl.EFFECTIVE_URL) or "")
    return not url.lower().startswith("https://") or not transfer.easy.getinfo(
        pycurl.HTTP_CONNECTCODE
    )


def _handshake_timed_out(transfer: Transfer, message: str) -> bool:
    """Whether the connection was made but its TLS handshake never finished in time (a plain
    HTTP proxy given as https:// may wait silently for a request line)."""
    easy = transfer.easy
    connected = easy.getinfo(pycurl.CONNECT_TIME) > 0
    return (
        message.startswith("Connection timed out")
        and connected
        and not easy.getinfo(pycurl.APPCONNECT_TIME)
    )
