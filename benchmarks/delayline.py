"""A delay-line TCP proxy on 127.0.0.1: every chunk is forwarded at its arrival time + a delay.

    python benchmarks/delayline.py --delay-ms 10 LISTEN_PORT:TARGET_PORT [...]

Used by `benchmarks/compare.py` to run clients at 20 ms RTT (10 ms each way) against nginx,
because this kernel has no netem. It is a plain TCP relay, so TLS passes through untouched.

How it delays without limiting throughput. Each direction of each connection has a FIFO of
(deadline, bytes). A chunk that arrives is appended with deadline = arrival + delay; one timer
per direction (`loop.call_at`) fires at the deadline of the oldest chunk and writes every chunk
whose deadline has passed in one `write()`, then re-arms for the next one. Nothing sleeps per
chunk, so any number of chunks are "on the wire" at once: the pipe holds rate x delay bytes
(about 10 MB at 1 GB/s), like a long link of unlimited bandwidth. Order is kept because the
deadlines of one direction are monotonic. Back-pressure: when the receiving side's socket buffer
fills (`pause_writing`), reading from the sending side pauses until it drains, so memory stays
bounded by about rate x delay + the transport's high-water mark. A close (EOF) travels through
the same FIFO, so it arrives after the data that preceded it.

Prints `ready` on stdout once every listener is bound; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import socket
import sys

HOST = "127.0.0.1"
HIGH_WATER = 4 << 20  # bytes buffered in a transport before its peer stops reading


class Half(asyncio.Protocol):
    """One socket of a relayed connection; forwards what it reads to `peer`, delayed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.got_eof = False  # nothing more will be read from this socket
        self.sent_eof = False  # everything meant for this socket, and its EOF, was written
        self.closed = False

    # -- reading from this socket --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._enqueue(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        self._enqueue(None)
        self._close_if_done()
        return True  # keep our write side open until the peer's data has been delivered

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if exc is not None and peer is not None and peer.transport is not None:
            peer.transport.abort()  # a reset: pass it on at once
        elif not self.got_eof:
            self.got_eof = True
            self._enqueue(None)

    def _close_if_done(self) -> None:
        if self.got_eof and self.sent_eof and self.transport is not None and not self.closed:
            self.transport.close()  # flushes what is buffered first

    def _enqueue(self, item: bytes | None) -> None:
        # This socket's data goes to the peer: the queue of this direction lives here.
        self.queue.append((self.loop.time() + self.delay, item))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        peer = self.peer
        if peer is None or peer.transport is None:  # the outgoing leg is still connecting
            self.timer = self.loop.call_later(0.001, self._flush)
            return
        now = self.loop.time()
        chunks: list[bytes] = []
        eof = False
        while self.queue and self.queue[0][0] <= now:
            _, item = self.queue.popleft()
            if item is None:
                eof = True
                self.queue.clear()
                break
            chunks.append(item)
        if not peer.closed and not peer.sent_eof:
            if chunks:
                peer.transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
            if eof:
                peer.sent_eof = True
                if peer.transport.can_write_eof():
                    peer.transport.write_eof()
                    peer._close_if_done()
                else:
                    peer.transport.close()
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    # -- back-pressure: the peer reads from its socket only while we can write ------------------

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            if not self.peer.closed:
                self.peer.transport.resume_reading()


async def relay_accepted(
    loop: asyncio.AbstractEventLoop, client: Half, target_port: int, delay: float
) -> None:
    upstream = Half(loop, delay)
    client.peer, upstream.peer = upstream, client
    try:
        await loop.create_connection(lambda: upstream, HOST, target_port)
    except OSError:
        if client.transport is not None:
            client.transport.abort()


async def main(pairs: list[tuple[int, int]], delay: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    for listen_port, target_port in pairs:

        def factory(target: int = target_port) -> Half:
            half = Half(loop, delay)
            loop.create_task(relay_accepted(loop, half, target, delay))
            return half

        servers.append(await loop.create_server(factory, HOST, listen_port, backlog=1024))
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def parse_pair(text: str) -> tuple[int, int]:
    listen, _, target = text.partition(":")
    return int(listen), int(target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay (ms)")
    parser.add_argument("pairs", nargs="+", type=parse_pair, help="LISTEN_PORT:TARGET_PORT")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.pairs, args.delay_ms / 1000))
    except KeyboardInterrupt:
        sys.exit(130)
