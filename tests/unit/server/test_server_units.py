"""Server internals without a socket: Accept negotiation, options, and the import boundary."""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import pytest

import dlstudy.server
from dlstudy.server import ServerOptions
from dlstudy.server.negotiate import NotAcceptable, choose_retrieve, parse_accept

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG = "1.2.840.10008.1.2.4.50"


def test_parse_accept_quoting_spacing_and_q() -> None:
    ranges = parse_accept(
        'application/dicom;q=0.4, multipart/related ; type="application/dicom" ;'
        ' transfer-syntax=*, image/jpeg;q=0, text/x-weird; a="x,y;z"'
    )
    assert [r.mime for r in ranges] == ["multipart/related", "text/x-weird", "application/dicom"]
    assert ranges[0].params == {"type": "application/dicom", "transfer-syntax": "*"}
    assert ranges[1].params == {"a": "x,y;z"}
    assert ranges[2].q == 0.4


@pytest.mark.parametrize(
    ("accept", "instance_level", "stored", "multipart", "ts"),
    [
        (None, True, {EXPLICIT}, True, "*"),
        ("*/*", False, {JPEG}, True, "*"),
        ("multipart/*", False, {JPEG}, True, "*"),
        ("application/dicom", True, {EXPLICIT}, False, EXPLICIT),
        ("application/dicom; transfer-syntax=*", True, {JPEG}, False, "*"),
        (f"application/dicom; transfer-syntax={JPEG}", True, {JPEG}, False, JPEG),
        ("multipart/related", False, {EXPLICIT}, True, EXPLICIT),  # type defaults to DICOM
        (
            f"application/dicom, {'multipart/related; type=application/dicom; transfer-syntax=*'}",
            False,
            {JPEG},
            True,
            "*",
        ),
    ],
)
def test_choose_retrieve(
    accept: str | None, instance_level: bool, stored: set[str], multipart: bool, ts: str
) -> None:
    rendering = choose_retrieve(
        accept, instance_level=instance_level, stored=stored, profile="standard"
    )
    assert (rendering.multipart, rendering.transfer_syntax) == (multipart, ts)


@pytest.mark.parametrize(
    ("accept", "instance_level", "stored", "profile", "status"),
    [
        ("application/dicom", True, {JPEG}, "standard", 406),  # default syntax, no transcoding
        ("application/dicom; transfer-syntax=*", False, {EXPLICIT}, "standard", 406),
        ("multipart/related; type=application/dicom", False, {EXPLICIT, JPEG}, "standard", 406),
        ("application/dicom; transfer-syntax=*", True, {EXPLICIT}, "orthanc", 400),
        ("application/dicom; transfer-syntax=*", True, {EXPLICIT}, "dcm4chee", 406),
        ("multipart/related; type=image/jpeg", True, {EXPLICIT}, "standard", 406),
    ],
)
def test_not_acceptable(
    accept: str, instance_level: bool, stored: set[str], profile: str, status: int
) -> None:
    with pytest.raises(NotAcceptable) as caught:
        choose_retrieve(accept, instance_level=instance_level, stored=stored, profile=profile)
    assert caught.value.status == status


@pytest.mark.parametrize(
    "bad",
    [
        {"profile": "x"},
        {"fault_rate": 1.5},
        {"tls_cert": Path("c.pem")},
        {"max_page_size": 0},
        {"latency": -1},
        {"port": 70000},
    ],
)
def test_options_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerOptions(root=Path("."), **bad)  # type: ignore[arg-type]


def test_server_imports_nothing_from_the_client() -> None:
    """stdlib, pydicom, hypercorn and orjson only: server and synth never share the client's
    code."""
    allowed = {"pydicom", "hypercorn", "orjson"}
    folder = Path(dlstudy.server.__file__).parent
    for module in folder.glob("*.py"):
        tree = ast.parse(module.read_text(), str(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"{module} reaches out"
                continue
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in allowed or top == "__future__", (
                    f"{module.name} imports {name}"
                )


def test_json_answers_fall_back_to_the_standard_writer() -> None:
    """orjson writes QIDO answers; what it refuses (an integer beyond 64 bits, as a malformed
    header in a real file may hold) is written by the stdlib, never an error."""
    from dlstudy.server.app import _json_bytes

    results = [{"00280010": {"vr": "US", "Value": [512]}, "name": "é"}]
    assert json.loads(_json_bytes(results)) == results
    huge = [{"00181000": {"vr": "IS", "Value": [2**70]}}]
    assert json.loads(_json_bytes(huge)) == huge


def test_only_asyncios_words_for_a_client_gone_are_demoted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """serve demotes asyncio's warning about writes into a connection its client closed; its
    other records (a task's error, a slow callback) are said as before."""
    from dlstudy.server.run import _CLIENT_GONE

    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(_CLIENT_GONE)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            asyncio_log.warning("socket.send() raised exception.")
            asyncio_log.warning("SSL connection is closed")
            asyncio_log.error("Task exception was never retrieved")
            asyncio_log.warning("Executing %s took %.3f seconds", "<Handle>", 1.0)
    finally:
        asyncio_log.removeFilter(_CLIENT_GONE)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "Task exception was never retrieved"),
        ("WARNING", "Executing <Handle> took 1.000 seconds"),
    ]


def test_only_h2s_refusal_of_a_reset_on_a_closed_connection_is_taken_as_the_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stopping, hypercorn resets a request that came with the client's GOAWAY, on a
    connection h2 has closed: h2's ProtocolError fails the connection's task group, which
    asyncio reports and the server's stop raised (CI saw it once, at a test's teardown). Once
    the stop has begun, a group of only those is taken as the connection ending; anything
    else, or any group before the stop, is reported as before."""
    import asyncio

    import h2.exceptions

    from dlstudy.server.app import Stopping
    from dlstudy.server.run import _refused_at_the_stop, _unless_stopping_ends_it

    refused = h2.exceptions.ProtocolError("Invalid input SEND_RST_STREAM in state CLOSED")
    closed = h2.exceptions.StreamClosedError(3)  # a subclass
    assert _refused_at_the_stop(ExceptionGroup("tg", [refused]))
    assert _refused_at_the_stop(ExceptionGroup("tg", [closed, ExceptionGroup("inner", [refused])]))
    assert not _refused_at_the_stop(ExceptionGroup("tg", [refused, ValueError("x")]))
    assert not _refused_at_the_stop(ExceptionGroup("tg", [ProtocolError("not h2's")]))

    async def report(stopped: bool, exc: BaseException) -> None:
        stopping = Stopping()
        if stopped:
            stopping.set()
        loop = asyncio.get_running_loop()
        context = {"message": "Unhandled exception in client_connected_cb", "exception": exc}
        _unless_stopping_ends_it(loop, context, stopping)

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        asyncio.run(report(True, ExceptionGroup("tg", [refused])))
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        asyncio.run(report(False, ExceptionGroup("tg", [refused])))
        asyncio.run(report(True, ExceptionGroup("tg", [ValueError("a server fault")])))
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said == ["Unhandled exception in client_connected_cb"] * 2


class ProtocolError(Exception):
    """Another library's class of h2's name."""


@pytest.mark.parametrize(
    ("stored", "wanted", "matched"),
    [
        ("115959.5", "000000-115959", True),  # a bound holds every instant of its second
        ("115959.5", "120000-", False),
        ("235959.999", "120000-235959", True),
        ("115959.5", "-1159", True),  # ... and of its minute
        ("120000", "000000-115959", False),
        ("115959", "115959.5-", False),
        ("115959.75", "115959.5-115959.7", True),
        ("09:00:30.5", "0900-090030", True),  # the old form
    ],
)
def test_time_ranges_hold_the_fractions_of_their_bounds(
    stored: str, wanted: str, matched: bool
) -> None:
    """A study of 11:59:59.5 was in neither `000000-115959` nor `120000-235959`: compared as
    text, "115959.5" sorted after "115959"."""
    from dlstudy.server.qido import matches

    assert matches(0x00080030, {"vr": "TM", "Value": [stored]}, wanted) is matched
