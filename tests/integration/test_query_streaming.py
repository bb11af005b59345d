"""`dlstudy query` prints each page of the study search as it arrives, through the installed
CLI against a scripted server on 127.0.0.1: a listing of any size goes out in flat memory,
and what did arrive is printed before the error that ends an incomplete one."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from typing import IO

import httpx
import pytest

from dlstudy.server import VirtualArchive, VirtualSpec

from ..cli_helpers import STOP_SIGNALS, start_installed, stop_installed
from ..factories import STUDY, element
from ..fixtures.embedded_server import StartServer
from ..fixtures.scripted_routes import Routes

pytestmark = pytest.mark.integration

FIRST_PAGE = [f"{STUDY}.{n}" for n in (1, 2, 3)]
# PS3.18's announcement of a page cut short: the client asks for the next page.
MORE = {
    "Content-Type": "application/dicom+json",
    "Warning": "299 pacs: There are 3 additional results that can be requested",
}
# Long enough for a busy machine to start the CLI and read the first page.
PATIENCE = 60.0


def studies_page(uids: list[str]) -> httpx.Response:
    items = [{"0020000D": element("UI", uid)} for uid in uids]
    return httpx.Response(200, headers=MORE, content=json.dumps(items).encode())


def read_lines(stream: IO[str], count: int) -> list[str]:
    """The first `count` lines the CLI writes, or fewer: those written within PATIENCE (read
    by a thread: a line the CLI has not written yet blocks it, not the test)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(stream.readline()) for _ in range(count)], daemon=True
    ).start()
    got: list[str] = []
    deadline = time.monotonic() + PATIENCE
    with contextlib.suppress(queue.Empty):
        while len(got) < count:
            got.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
    return got


def test_query_prints_the_first_page_while_the_second_is_still_coming(
    scripted: Routes,
) -> None:
    """The server holds the second page until the first page's UIDs are read from the CLI's
    output; then it sends the first page again (it ignores offset), so the listing is
    incomplete: exit 1, and the error comes after the results that did arrive."""
    first_page_read = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("offset", "0") != "0":
            first_page_read.wait(2 * PATIENCE)  # past the test's patience: it fails first
        return studies_page(FIRST_PAGE)

    scripted.get("/dicomweb/studies").mock(side_effect=answer)
    process = start_installed("query", "--url", scripted.base, "--uids", "--http", "1.1")
    assert process.stdout is not None
    try:
        printed = read_lines(process.stdout, len(FIRST_PAGE))
        first_page_read.set()
        rest, _ = process.communicate(timeout=PATIENCE)
    finally:
        first_page_read.set()
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert printed == [f"{uid}\n" for uid in FIRST_PAGE]
    assert process.returncode == 1, rest
    assert rest.startswith(f"dlstudy: error: could not list {scripted.base}/studies completely")
    assert "ignores offset" in rest and "Traceback" not in rest


def test_a_reader_slower_than_the_timeout_costs_no_retry(embedded_server: StartServer) -> None:
    """`query | less`: while the reader pauses, writes wait and so does the search, but the
    page asked for meanwhile still arrives within its window: no "stalled" retry (it was
    cut off and asked again after each pause longer than two --timeout windows)."""
    spec = VirtualSpec(5000, seed=5, mix="mimic")
    url = embedded_server(None, virtual=spec, max_page_size=1000)
    process = start_installed("query", "--url", url, "--uids", "--timeout", "1", "-v")
    assert process.stdout is not None
    try:
        time.sleep(6)  # the pipe fills (5,000 UIDs are far more than it holds) and waits
        output, _ = process.communicate(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, output[-2000:]
    assert "retrying" not in output and "stalled" not in output
    uids = [line for line in output.splitlines() if " dlstudy." not in line]  # not a log line
    assert uids == list(VirtualArchive(spec).study_uids())


@pytest.mark.parametrize(("signum", "status", "said"), STOP_SIGNALS)
def test_a_stopped_query_says_only_that_it_stopped(
    scripted: Routes, signum: int, status: int, said: str
) -> None:
    """A query stopped while the server held its answer said `interrupted; completed
    instances are kept, rerun the same command to resume`: download's words, for a search
    that downloads nothing. Now the signal's word alone, as bench says."""
    answered = threading.Event()

    def held(request: httpx.Request) -> httpx.Response:
        answered.wait(2 * PATIENCE)
        return studies_page([])

    route = scripted.get("/dicomweb/studies").mock(side_effect=held)
    try:
        code, stderr = stop_installed(
            "query", "--url", scripted.base, signum=signum, ready=lambda: route.call_count > 0
        )
    finally:
        answered.set()

    assert code == status, stderr
    assert stderr.splitlines()[-1] == f"dlstudy: error: {said}", stderr
