"""--max-rate: its parser, its checks, the concurrency it allows, and the token bucket."""

from __future__ import annotations

import asyncio

import pytest
import typer

from dlstudy.cli.options import byte_rate
from dlstudy.http.rate import RateLimit, rate_problem
from dlstudy.settings import Settings, concurrency_for, processes_for

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("0", 0),
        ("2000000", 2_000_000),
        ("500k", 500 * 1024),
        ("500K", 500 * 1024),
        ("50M", 50 * MIB),
        ("50MB", 50 * MIB),
        ("50MiB", 50 * MIB),
        ("50M/s", 50 * MIB),
        (" 1.5G ", int(1.5 * 1024**3)),
        (1048576, MIB),  # a number from the config file
    ],
)
def test_rates_read_as_curl_reads_them(text: object, rate: int) -> None:
    assert byte_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-5M", "5T", "", "5 M B", "1e6", True])
def test_what_is_no_rate_is_refused(text: object) -> None:
    with pytest.raises(typer.BadParameter, match="must be bytes per second"):
        byte_rate(text)


def test_a_rate_below_what_a_transfer_must_bring_is_refused() -> None:
    assert rate_problem(0, 30) is None
    assert rate_problem(4370, 30) is None  # 2 x 64 KiB in 30 s
    assert "give at least 4370" in (rate_problem(4369, 30) or "")
    assert "give at least 65536" in (rate_problem(50_000, 2) or "")
    assert rate_problem(-1, 30) == "--max-rate must be 0 (no cap) or more"


def test_the_cap_runs_one_transfer_per_512_kib_per_second_of_it() -> None:
    def settings(max_rate: int, concurrency: int = 0) -> Settings:
        return Settings(url="http://h/d", max_rate=max_rate, concurrency=concurrency)

    assert concurrency_for(settings(0), "HTTP/2") == 64
    assert concurrency_for(settings(1 * MIB), "HTTP/2") == 2
    assert concurrency_for(settings(100 * MIB), "HTTP/1.1") == 16
    assert concurrency_for(settings(100 * 1024), "HTTP/2") == 1
    assert concurrency_for(settings(1 * MIB, 64), "HTTP/2") == 2  # asked for, still capped
    assert concurrency_for(settings(0, 8), "HTTP/2") == 8
    assert processes_for(Settings(url="http://h/d", max_rate=MIB)) == 1
    assert processes_for(Settings(url="http://h/d", max_rate=MIB, workers=3)) == 3
    assert processes_for(Settings(url="http://h/d")) == 0


class Piece:
    """A transfer as the bucket sees it: resumed, it takes its held piece at once (as libcurl
    hands it back within `pause`)."""

    def __init__(self, rate: RateLimit, size: int, log: list[tuple[str, float]], name: str):
        self.rate, self.size, self.log, self.name = rate, size, log, name
        self.granted = False
        self.left = 0

    def offer(self) -> None:
        while self.left and self.rate.take(self, self.size):
            self.left -= 1
            self.log.append((self.name, asyncio.get_running_loop().time()))

    def resume_for_rate(self) -> None:
        self.offer()


def test_the_bucket_keeps_to_its_rate_and_takes_turns() -> None:
    async def run() -> tuple[list[tuple[str, float]], float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rate = RateLimit(400 * 1024)
        log: list[tuple[str, float]] = []
        pieces = [Piece(rate, 16 * 1024, log, name) for name in "ab"]
        for piece in pieces:
            piece.left = 25  # 2 x 400 KiB: two seconds at the rate
            piece.offer()
        for _ in range(200):  # 10 s at most
            if not any(piece.left for piece in pieces):
                break
            await asyncio.sleep(0.05)
        rate.close()
        return log, loop.time() - started

    log, took = asyncio.run(run())
    assert len(log) == 50
    assert took >= (50 * 16 * 1024) / (400 * 1024) - 0.05  # no burst beyond one piece
    names = [name for name, _ in log]
    assert abs(names[:26].count("a") - names[:26].count("b")) <= 2  # both go on, in turns


def test_a_transfer_that_ends_while_waiting_is_forgotten() -> None:
    async def run() -> None:
        rate = RateLimit(64 * 1024)
        log: list[tuple[str, float]] = []
        first, second = Piece(rate, 64 * 1024, log, "1"), Piece(rate, 1024, log, "2")
        first.left, second.left = 2, 1
        first.offer()  # takes one (overdrawing the bucket), waits with the other
        second.offer()
        assert [name for name, _ in log] == ["1"]
        rate.forget(first)  # it ended: the next turn is the other's
        await asyncio.sleep(1.2)
        assert [name for name, _ in log] == ["1", "2"]
        rate.close()

    asyncio.run(run())
