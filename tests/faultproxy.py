"""A small TCP proxy on 127.0.0.1 that breaks chosen connections the way networks do.

Faults act on the server -> client direction after `after_bytes` bytes of a connection:
  reset  close with SO_LINGER 0, so the client sees a TCP RST mid-body
  stall  stop forwarding but keep the connection open (a server that hangs)
  drip   forward one byte every `drip_interval` seconds (a server that crawls)
Which connections are hit: every connection whose 1-based number is in `connections`, or all
when it is None. Threads and sockets are all closed by `close()`; nothing outlives the test.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Fault:
    kind: str  # "reset" | "stall" | "drip"
    after_bytes: int = 0
    connections: set[int] | None = None
    drip_interval: float = 0.05


@dataclass
class FaultProxy:
    upstream_port: int
    fault: Fault | None = None
    port: int = 0
    accepted: int = 0
    faulted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    def url(self, path: str = "/dicomweb") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                number = self.accepted
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._track(client, upstream)
            fault = self.fault
            if fault is not None and (fault.connections is None or number in fault.connections):
                self.faulted.append(number)
            else:
                fault = None
            self._start(self._pump, client, upstream, None)
            self._start(self._pump, upstream, client, fault)

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.extend(socks)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, fault: Fault | None) -> None:
        sent = 0
        try:
            while not self._closing.is_set():
                data = source.recv(65536)
                if not data:
                    break
                if fault is not None and sent + len(data) > fault.after_bytes:
                    head = data[: max(0, fault.after_bytes - sent)]
                    sink.sendall(head)
                    self._misbehave(source, sink, fault, data[len(head) :])
                    return
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _misbehave(
        self, source: socket.socket, sink: socket.socket, fault: Fault, rest: bytes
    ) -> None:
        if fault.kind == "reset":
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sink.close()
        elif fault.kind == "stall":
            self._closing.wait()
        elif fault.kind == "drip":
            source.settimeout(0.01)
            pending = bytearray(rest)
            while not self._closing.is_set():
                try:
                    pending += source.recv(65536)
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    return
                if pending:
                    try:
                        sink.sendall(bytes(pending[:1]))
                    except OSError:
                        return
                    del pending[:1]
                time.sleep(fault.drip_interval)
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        self._accept_thread.join(timeout=5)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=5)
