"""libcurl's multi interface driven by the running asyncio event loop.

libcurl says which sockets to watch (M_SOCKETFUNCTION) and when it next wants to be woken
(M_TIMERFUNCTION); the loop calls `socket_action` when a socket is ready or the timer fires, and
finished transfers are collected with `info_read`. This is the pattern of tornado's
curl_httpclient: no thread per transfer, no polling loop. Everything runs on the loop's thread,
so the callbacks a transfer gets (headers, body chunks) run there too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import pycurl


class Finishing(Protocol):
    """What the driver tells a transfer when libcurl is done with it."""

    def finished(self, code: int, message: str) -> None: ...


class MultiDriver:
    """One CurlMulti on one event loop. libcurl forbids calling multi functions from inside its
    own callbacks; here they are only called from loop callbacks and tasks."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, configure: Callable[[pycurl.CurlMulti], None]
    ):
        self.loop = loop
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._watch)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._set_timer)
        configure(self._multi)
        self._watched: dict[int, int] = {}  # fd -> pycurl.POLL_* now watched
        self._timer: asyncio.TimerHandle | None = None
        self._transfers: dict[pycurl.Curl, Finishing] = {}
        self.closed = False

    def start(self, easy: pycurl.Curl, transfer: Finishing) -> None:
        """Hand `easy` to libcurl; it asks for a timer of 0 ms to begin."""
        self._transfers[easy] = transfer
        self._multi.add_handle(easy)

    def abandon(self, easy: pycurl.Curl) -> None:
        """Take a transfer back before it ended (an HTTP/2 stream is reset, an HTTP/1.1
        connection with an unread body is closed)."""
        if self._transfers.pop(easy, None) is not None:
            self._multi.remove_handle(easy)

    def close(self) -> None:
        """Drop every transfer and connection; nothing is watched after this."""
        if self.closed:
            return
        self.closed = True
        for easy in list(self._transfers):
            transfer = self._transfers.pop(easy)
            self._multi.remove_handle(easy)
            transfer.finished(pycurl.E_ABORTED_BY_CALLBACK, "the client was closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._multi.close()  # may still report sockets to _watch, which forgets them
        for fd in list(self._watched):
            self._watch(pycurl.POLL_REMOVE, fd, None, None)

    # --- libcurl's callbacks ---------------------------------------------------------------

    def _watch(self, what: int, fd: int, multi: object, socketp: object) -> None:
        before = self._watched.get(fd, pycurl.POLL_NONE)
        after = pycurl.POLL_NONE if what == pycurl.POLL_REMOVE else what
        if before & pycurl.POLL_IN and not after & pycurl.POLL_IN:
            self.loop.remove_reader(fd)
        if before & pycurl.POLL_OUT and not after & pycurl.POLL_OUT:
            self.loop.remove_writer(fd)
        if after & pycurl.POLL_IN and not before & pycurl.POLL_IN:
            self.loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if after & pycurl.POLL_OUT and not before & pycurl.POLL_OUT:
            self.loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
        if after == pycurl.POLL_NONE:
            self._watched.pop(fd, None)
        else:
            self._watched[fd] = after

    def _set_timer(self, milliseconds: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if milliseconds >= 0 and not self.closed:
            self._timer = self.loop.call_later(
                milliseconds / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0
            )

    # --- driving ---------------------------------------------------------------------------

    def _act(self, fd: int, flags: int) -> None:
        if self.closed:
            return
        if fd == pycurl.SOCKET_TIMEOUT:
            self._timer = None
        try:
            self._multi.socket_action(fd, flags)
        except pycurl.error:
            pass  # a multi-level failure; each affected transfer reports its own below
        self._collect()

    def _collect(self) -> None:
        while True:
            queued, succeeded, failed = self._multi.info_read()
            for easy in succeeded:
                self._finish(easy, 0, "")
            for easy, code, message in failed:
                self._finish(easy, code, message)
            if not queued:
                return

    def _finish(self, easy: pycurl.Curl, code: int, message: str) -> None:
        transfer = self._transfers.pop(easy, None)
        self._multi.remove_handle(easy)
        if transfer is not None:
            transfer.finished(code, message)
