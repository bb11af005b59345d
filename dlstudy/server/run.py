"""Run the app under hypercorn: in a background thread (tests, demo) or in the foreground (CLI).

The listening socket is bound here, before hypercorn starts, and handed over as `fd://N`: the
port is known at once (port 0 = any free port) and connections made before hypercorn's accept
loop runs wait in the backlog instead of being refused. One socket serves HTTP/1.1 and h2c
(prior knowledge); with a certificate, TLS with ALPN h2 / http/1.1. With `http3`, a UDP socket
on the same port serves HTTP/3 (QUIC, through aioquic), bound here too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.logging import Logger

from .app import ROOT, STOPPING, ASGIApp, Message, Receive, Scope, Send, Stopping, create_app
from .options import ServerOptions

log = logging.getLogger("dlstudy.server")

_START_TIMEOUT = 30.0  # seconds to index the folder and start; generous for big folders
_STOP_TIMEOUT = 10.0
_ABORT_AFTER_GRACE = 0.5  # seconds past hypercorn's graceful timeout
_CANCEL_AGAIN_EVERY = 0.25  # seconds, until the stop ends


class _ClientGone(logging.Filter):
    """asyncio warns `socket.send() raised exception.` (over TLS, `SSL connection is closed`)
    from the fifth write into a connection its client has closed: a response still being sent
    as the client left, as a reader that stops early (`bench --limit`, a cancelled download)
    does, which is no fault of the server's. Those records become debug ones; every other
    asyncio record, and an error raised in the server (the loop's exception handler), is
    said as before."""

    _SAID = frozenset({"socket.send() raised exception.", "SSL connection is closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.msg not in self._SAID:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_CLIENT_GONE = _ClientGone()


@contextmanager
def running_server(options: ServerOptions) -> Iterator[str]:
    """Serve in a background thread; yield the DICOMweb base URL; stop cleanly on exit."""
    app = create_app(options)
    with _listening_sockets(options) as sockets:
        sock = sockets[0]
        ready = threading.Event()
        state: dict[str, Any] = {}

        def run() -> None:
            try:
                asyncio.run(_serve(app, options, sockets, ready.set, state))
            except BaseException as exc:  # reported to the caller's thread below
                state["error"] = exc
                ready.set()

        thread = threading.Thread(target=run, name="dlstudy-server", daemon=True)
        thread.start()
        if not ready.wait(_START_TIMEOUT) or "error" in state:
            _stop(state, thread)
            raise RuntimeError("the embedded DICOMweb server did not start") from state.get("error")
        try:
            yield _base_url(options, sock)
        finally:
            _stop(state, thread)
            if "error" in state:  # it failed as it served or stopped: said, not lost
                log.error("the embedded DICOMweb server failed: %r", state["error"])


def serve_forever(options: ServerOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground (main thread) until SIGINT, SIGTERM or SIGHUP. The address is
    taken before the folder is indexed: a port in use is said at once, not after the indexing."""
    with _listening_sockets(options) as sockets:
        app = create_app(options)
        url = _base_url(options, sockets[0])
        asyncio.run(_serve(app, options, sockets, lambda: on_ready and on_ready(url), None))


class CannotListen(OSError):
    """The address to listen on is taken, not this machine's, or no address at all."""


class _AccessLogWithoutSecrets(Logger):
    """hypercorn's access-log record carries every request header and every environment
    variable as its arguments (whatever the format uses), so a handler that prints them, as
    logging does when a handler fails, would show tokens. Keep the standard atoms only."""

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        # The record's atoms cost more than some responses: built only for a listening logger.
        if self.access_logger is not None and self.access_logger.isEnabledFor(logging.INFO):
            await super().access(request, response, request_time)

    def atoms(self, request: Any, response: Any, request_time: float) -> Mapping[str, str]:
        atoms = super().atoms(request, response, request_time)
        return {k: v for k, v in atoms.items() if not k.endswith(("}i", "}e", "}o"))}


async def _serve(
    app: ASGIApp,
    options: ServerOptions,
    sockets: tuple[socket.socket, socket.socket | None],
    on_started: Callable[[], object],
    state: dict[str, Any] | None,
) -> None:
    sock, quic = sockets
    port = sock.getsockname()[1]  # the UDP twin's too; read while our sockets are surely open
    config = Config()
    # hypercorn takes ownership of (and closes) a duplicate; ours is closed by the caller.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    if quic is not None:
        config.quic_bind = [f"fd://{os.dup(quic.fileno())}"]
    if options.tls_cert is not None and options.tls_key is not None:
        config.certfile, config.keyfile = str(options.tls_cert), str(options.tls_key)
    config.accesslog = logging.getLogger("dlstudy.server.access")  # silent unless configured
    config.logger_class = _AccessLogWithoutSecrets
    config.errorlog = logging.getLogger("dlstudy.server.hypercorn")
    config.graceful_timeout = 1.0
    config.include_server_header = False
    # hypercorn's default ends a connection after 1,000 requests, and on HTTP/2 it drops the
    # streams still in flight then (a GOAWAY, then no response): every client would see errors.
    limit = options.max_requests_per_connection
    config.keep_alive_max_requests = sys.maxsize if limit is None else limit

    # Set when shutdown starts: responses still streaming stop at once (see app.py), so
    # every connection ends within hypercorn's graceful timeout and none is cancelled.
    stopping = Stopping()
    stop = asyncio.Event()
    serving = {cast(asyncio.Task[None], asyncio.current_task())}  # and the lifespan's, below
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: _unless_stopping_ends_it(loop, context, stopping)
    )
    logging.getLogger("asyncio").addFilter(_CLIENT_GONE)  # once: the same filter object
    if state is not None:  # background thread: stopped by _stop()
        state["loop"], state["stop"] = asyncio.get_running_loop(), stop
    else:  # foreground: Ctrl-C / SIGTERM / SIGHUP (unless nohup ignores it)
        loop = asyncio.get_running_loop()
        hangup = [] if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else [signal.SIGHUP]
        for signum in (signal.SIGINT, signal.SIGTERM, *hangup):
            loop.add_signal_handler(signum, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        stopping.set()
        after = config.graceful_timeout + _ABORT_AFTER_GRACE
        asyncio.get_running_loop().call_later(after, _end_a_stuck_stop, port, serving)

    async def with_startup(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        scope.setdefault("state", {})[STOPPING] = stopping  # copied into every request's scope
        serving.add(cast(asyncio.Task[None], asyncio.current_task()))  # hypercorn's lifespan task

        async def send_and_report(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                on_started()  # the socket already listens; hypercorn accepts right after

        await app(scope, receive, send_and_report)

    try:
        await serve(cast(Any, with_startup), config, shutdown_trigger=shutdown_trigger)
    except ExceptionGroup as failed:  # (not except*: it would wrap what it re-raises)
        if not stopping.event.is_set() or (quic is None and not _refused_at_the_stop(failed)):
            raise
        # hypercorn's QUIC server, stopped with connections open, fails in its own task group
        # (timer tasks restarted in a group that is being cancelled; a 500 sent on a stream
        # that cannot take it); see _refused_at_the_stop for HTTP/2: those connections were
        # being ended anyway.
        log.debug("connections failed as the server stopped: %r", failed)
    finally:
        serving.clear()  # the stop is over: nothing more to cancel (asyncio.run's own tasks)
        if quic is not None:
            _close_datagram_transports(port)


def _end_a_stuck_stop(port: int, serving: set[asyncio.Task[None]]) -> None:
    """Past hypercorn's graceful timeout, what still runs keeps the stop waiting: connections
    a stalled client holds (aborted), and tasks that let their cancellation pass (hypercorn's
    QUIC connection, while it restarts its timer, swallows the CancelledError that its stop
    sends; it then waits for a datagram that may never come). Every task but the server's own
    and its lifespan's is cancelled, again until the stop ends, as asyncio.run would once
    the server returned. (`serving` emptied: the server has returned.)"""
    if not serving:
        return
    _abort_stuck_connections(port)
    for task in asyncio.all_tasks():
        if task not in serving:
            task.cancel()
    asyncio.get_running_loop().call_later(_CANCEL_AGAIN_EVERY, _end_a_stuck_stop, port, serving)


def _abort_stuck_connections(port: int) -> None:
    """hypercorn ends a connection gracefully, waiting until the bytes it still holds are sent:
    for a client that stopped reading, forever, and the server's stop with it (one run in
    twenty-five, over h2c). Past the graceful timeout, the connections of this server that are
    closing with bytes unsent are aborted."""
    for found in _transports_on(port, socket.SOCK_STREAM):
        if (
            isinstance(found, asyncio.WriteTransport)
            and found.is_closing()
            and found.get_write_buffer_size()
        ):
            log.debug("aborting a connection whose client stopped reading")
            found.abort()


def _close_datagram_transports(port: int) -> None:
    """hypercorn leaves its QUIC socket's transport open when it stops (the socket would be
    closed by the collector, with a ResourceWarning): closed here."""
    for found in _transports_on(port, socket.SOCK_DGRAM):
        if not found.is_closing():
            found.close()


def _transports_on(port: int, kind: socket.SocketKind) -> Iterator[asyncio.BaseTransport]:
    """This server's live transports of `kind` (TCP or UDP), found among live objects by the
    port they were accepted or bound on: asyncio offers no list of a server's transports, and
    the listening sockets hold the port, so no other socket of that kind here has it. (A
    datagram transport is no asyncio.DatagramTransport in Python 3.11.)"""
    for found in gc.get_objects():
        if (
            isinstance(found, asyncio.BaseTransport)
            and getattr(_extra_info(found, "socket"), "type", None) == kind
            and (_extra_info(found, "sockname") or (None, None))[1] == port
        ):
            yield found


def _extra_info(transport: asyncio.BaseTransport, name: str) -> Any:
    """The transport's `name`, or None for a TLS transport closed twice: it has let go of the
    protocol it asks (Python 3.11's sslproto raises AttributeError)."""
    try:
        return transport.get_extra_info(name)
    except AttributeError:
        return None


def _unless_stopping_ends_it(
    loop: asyncio.AbstractEventLoop, context: dict[str, Any], stopping: Stopping
) -> None:
    """The loop's error report, except for a cancelled task, and an HTTP/2 connection the
    stop refused a request on (_refused_at_the_stop). A connection still sending when the
    graceful timeout ends is cancelled, and Python 3.11's asyncio.streams then asks the
    cancelled task for its exception in a callback, which raises CancelledError there: a
    traceback for a stop that went as meant (the client sees its transfer cut)."""
    exception = context.get("exception")
    if isinstance(exception, asyncio.CancelledError) or (
        stopping.event.is_set()
        and isinstance(exception, ExceptionGroup)
        and _refused_at_the_stop(exception)
    ):
        log.debug("ended while stopping: %s (%r)", context.get("message"), exception)
        return
    loop.default_exception_handler(context)


def _refused_at_the_stop(failed: ExceptionGroup[Any]) -> bool:
    """Whether a connection's task group failed only as hypercorn refuses a request once the
    stop has begun: it resets the new stream, and when the client's GOAWAY came in the same
    read (a client process ending), h2 refuses to send a reset on the closed connection. The
    connection was closing from both ends: nothing was lost."""
    _, rest = failed.split(_is_h2_protocol_error)
    return rest is None


def _is_h2_protocol_error(exc: BaseException) -> bool:
    """h2's ProtocolError (or a subclass), told by name: hypercorn's HTTP/2 library is not
    imported here (the package speaks no HTTP itself)."""
    return any(
        cls.__name__ == "ProtocolError" and cls.__module__.startswith("h2.")
        for cls in type(exc).__mro__
    )


def _stop(state: dict[str, Any], thread: threading.Thread) -> None:
    loop, stop = state.get("loop"), state.get("stop")
    if loop is not None and stop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop closed in between: nothing left to stop
            pass
    thread.join(_STOP_TIMEOUT)
    if thread.is_alive():
        log.warning("the embedded DICOMweb server did not stop within %.0f s", _STOP_TIMEOUT)


@contextmanager
def _listening_sockets(
    options: ServerOptions,
) -> Iterator[tuple[socket.socket, socket.socket | None]]:
    """The TCP socket, listening, and with `http3` the UDP socket of the same port."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    where = f"[{options.host}]" if family == socket.AF_INET6 else options.host
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((options.host, options.port))
            sock.listen(128)
        except OSError as exc:  # (a host name that does not resolve: socket.gaierror)
            raise CannotListen(
                exc.errno, f"cannot listen on {where}:{options.port}: {exc.strerror or exc}"
            ) from exc
        if not options.http3:
            yield sock, None
            return
        port = sock.getsockname()[1]  # the one port 0 picked
        with socket.socket(family, socket.SOCK_DGRAM) as quic:
            try:
                quic.bind((options.host, port))
            except OSError as exc:
                raise CannotListen(
                    exc.errno,
                    f"cannot listen on {where}:{port} over UDP for HTTP/3: {exc.strerror or exc}",
                ) from exc
            yield sock, quic


def _base_url(options: ServerOptions, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if options.tls else 'http'}://{host}:{port}{ROOT}"
