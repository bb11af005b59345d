"""A small TCP proxy on 127.0.0.1 that breaks chosen connections the way networks do.

Faults act on the server -> client direction after `after_bytes` bytes of a connection:
  reset  close with SO_LINGER 0, so the client sees a TCP RST mid-body
  stall  stop forwarding but keep the connection open (a server that hangs)
  drip   forward one byte every `drip_interval` seconds (a server that crawls)
  close  read what the client sends, then close without a byte of answer (a restarting
         server, a balancer): never connected upstream
Which connections are hit: every connection whose 1-based number is in `connections`, or all
when it is None. Apart from faults, `refuse=(marker, seconds)`: once a client sends `marker`
(a path, over HTTP/1.1), the proxy stops listening for `seconds`, so new connections are
refused (a restart) while those already open carry on. One thread per connection
multiplexes both directions with select, so a close really closes (a second thread blocked
in recv would keep the socket alive and the RST unsent). Everything is closed by `close()`;
nothing outlives the test.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Fault:
    kind: str  # "reset" | "stall" | "drip" | "close"
    after_bytes: int = 0
    connections: set[int] | None = None
    drip_interval: float = 0.05


@dataclass
class FaultProxy:
    upstream_port: int
    fault: Fault | None = None
    refuse: tuple[bytes, float] | None = None
    port: int = 0
    accepted: int = 0
    faulted: list[int] = field(default_factory=list)
    refused_windows: int = 0

    def __post_init__(self) -> None:
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._listen(0)

    def _listen(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(self._listener,), daemon=True
        )
        self._accept_thread.start()

    def _refuse_for(self, seconds: float) -> None:
        """Stop listening for `seconds` (connections are refused), then listen again; once
        per proxy. The connection that asked carries on meanwhile."""
        with self._lock:
            if self.refused_windows:
                return
            self.refused_windows += 1
            self._listener.close()

        def listen_again() -> None:
            self._closing.wait(seconds)
            self._accept_thread.join(timeout=5)
            with self._lock:
                if not self._closing.is_set():
                    self._listen(self.port)

        thread = threading.Thread(target=listen_again, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def url(self, path: str = "/dicomweb") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                number = self.accepted
            fault = self.fault
            if fault is not None and (fault.connections is None or number in fault.connections):
                self.faulted.append(number)
            else:
                fault = None
            if fault is not None and fault.kind == "close":
                thread = threading.Thread(
                    target=self._close_unanswered, args=(client,), daemon=True
                )
            else:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                thread = threading.Thread(
                    target=self._relay, args=(client, upstream, fault), daemon=True
                )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket, upstream: socket.socket, fault: Fault | None) -> None:
        """Copy bytes both ways until either side closes, misbehaving as `fault` says."""
        sent_to_client = 0
        dripping = bytearray()
        mode = "normal"
        with selectors.DefaultSelector() as selector, client, upstream:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._closing.is_set():
                for key, _ in selector.select(timeout=0.05):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = source.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if source is client:
                        if self.refuse is not None and self.refuse[0] in data:
                            self._refuse_for(self.refuse[1])
                        upstream.sendall(data)
                        continue
                    if mode == "drip" or mode == "stall":
                        dripping += data
                        continue
                    if fault is not None and sent_to_client + len(data) > fault.after_bytes:
                        head = data[: fault.after_bytes - sent_to_client]
                        client.sendall(head)
                        sent_to_client += len(head)
                        if fault.kind == "reset":
                            client.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                            return  # closing with linger 0 sends the RST
                        mode = fault.kind
                        dripping += data[len(head) :]
                        continue
                    client.sendall(data)
                    sent_to_client += len(data)
                if mode == "drip" and dripping:
                    try:
                        client.sendall(bytes(dripping[:1]))
                    except OSError:
                        return
                    del dripping[:1]
                    time.sleep(fault.drip_interval if fault else 0)

    def _close_unanswered(self, client: socket.socket) -> None:
        """Read the client's request until it pauses, then close: a FIN, no RST (nothing of
        the request is left unread)."""
        with client:
            client.settimeout(0.2)
            try:
                while client.recv(65536):
                    pass
            except OSError:  # (the pause)
                pass

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._listener.close()
        self._accept_thread.join(timeout=5)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
