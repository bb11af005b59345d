"""What the tests of dlstudy's own transports (test_http11.py, test_http2.py) share."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import httpx


class Recorder(httpx.AsyncBaseTransport):
    """Stands in for httpcore (or the HTTP/1.1 pool) where a lean transport hands over."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(299)


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run one test coroutine, bounded in time."""
    asyncio.run(asyncio.wait_for(test(), 20))
    gc.collect()  # an unclosed socket warns now, inside the test, not in a later one
