"""Which credentials and headers the installed CLI sends, and which combinations it refuses:
`dlstudy query` against a scripted server on 127.0.0.1 that records every request."""

from __future__ import annotations

import base64
import subprocess

import httpx

from ..cli_helpers import run_installed
from ..factories import STUDY, element
from ..fixtures.scripted_routes import Routes

ONE_STUDY = [{"0020000D": element("UI", STUDY)}]


def query(
    scripted: Routes, *args: str, url: str | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[httpx.Request]]:
    """The installed `dlstudy query --url URL ARGS --uids` (URL: the scripted server's) and the
    requests the server got."""
    route = scripted.get("/dicomweb/studies").mock(return_value=httpx.Response(200, json=ONE_STUDY))
    result = run_installed("query", "--url", url or scripted.base, *args, "--uids", env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result, route.requests


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_percent_encoded_userinfo_is_decoded(scripted: Routes) -> None:
    """RFC 3986: an @, : or / in a user or password is written percent-encoded; what is
    sent is the decoded user and password, as curl sends them."""
    url = scripted.base.replace("://", "://al%40ice:p%40ss%3Aw%2Frd@")
    result, requests = query(scripted, url=url)
    assert result.returncode == 0, result.stderr
    assert requests[0].headers["authorization"] == basic("al@ice", "p@ss:w/rd")
