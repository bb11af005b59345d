"""Which credentials and headers the installed CLI sends, and which combinations it refuses:
`dlstudy query` against a scripted server on 127.0.0.1 that records every request."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import httpx
import pytest

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


def test_a_token_is_sent_without_the_newline_around_it(scripted: Routes, tmp_path: Path) -> None:
    """A token file or Kubernetes secret ends with a newline: sent as is, it would end the
    Authorization header (libcurl refuses it, and it was retried as a network error)."""
    result, requests = query(scripted, env={"DLSTUDY_TOKEN": " tok-1\n"})
    assert result.returncode == 0, result.stderr
    config = tmp_path / "config.toml"
    config.write_text('[defaults]\ntoken_env = "MY_TOKEN"\n')
    result, requests = query(scripted, "--config", str(config), env={"MY_TOKEN": "tok-2\r\n"})
    assert result.returncode == 0, result.stderr
    assert [r.headers["authorization"] for r in requests] == ["Bearer tok-1", "Bearer tok-2"]


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        ((), {"DLSTUDY_TOKEN": "sec\nret"}, "--token"),
        (("--user", "bob"), {"DLSTUDY_PASSWORD": "sec\r\nret"}, "--password"),
        (("--user", "bob\x7fsec", "--password", "ret"), None, "--user"),
        (("--header", "X-Api-Key: sec\r\nX-Other: ret"), None, "--header X-Api-Key"),
    ],
)
def test_a_control_character_in_a_credential_is_a_usage_error(
    scripted: Routes, args: tuple[str, ...], env: dict[str, str] | None, option: str
) -> None:
    result, requests = query(scripted, *args, env=env)
    assert result.returncode == 2 and not requests
    assert (
        result.stderr == f"dlstudy: error: {option} has a control character (a line break?) in it\n"
    )


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        (("--token", "tok\u00a0en"), None, "--token"),  # a non-breaking space pasted with it
        ((), {"DLSTUDY_TOKEN": "t\u00f6ken"}, "--token"),
        (("--header", "X-Api-Key: \u201ckey\u201d"), None, "--header X-Api-Key"),
        (("--header", "X-Mandant: Z\u00fcrich"), None, "--header X-Mandant"),
        (("--header", "X-\u00c4: v"), None, "--header X-\u00c4"),
    ],
)
def test_a_character_that_is_not_ascii_in_a_token_or_header_is_a_usage_error(
    scripted: Routes, args: tuple[str, ...], env: dict[str, str] | None, option: str
) -> None:
    """httpx encodes headers as ASCII: such a token or header was a UnicodeEncodeError
    traceback (exit 1) from every command."""
    result, requests = query(scripted, *args, env=env)
    assert result.returncode == 2 and not requests
    assert result.stderr == (
        f"dlstudy: error: {option} has a character that is not ASCII in it "
        "(a pasted quote or non-breaking space?)\n"
    )


def test_a_token_command_printing_a_token_that_is_not_ascii_stops_the_run(
    scripted: Routes,
) -> None:
    result, requests = query(scripted, "--token-command", "printf 't\303\266ken'")
    assert result.returncode == 3 and not requests
    assert result.stderr == (
        "dlstudy: error: --token-command printed a token with a character that is not ASCII in it\n"
    )


def test_a_user_and_password_that_are_not_ascii_are_sent_as_utf8(scripted: Routes) -> None:
    """RFC 7617's charset=UTF-8: Basic credentials may be any text."""
    result, requests = query(scripted, "--user", "j\u00f6rg", "--password", "p\u00e4ss")
    assert result.returncode == 0, result.stderr
    assert requests[0].headers["authorization"] == basic("j\u00f6rg", "p\u00e4ss")


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        (("--user", "bob", "--password", "p\udce4ss-S3CRET"), None, "--password"),
        (("--user", "j\udcf6rg", "--password", "S3CRET"), None, "--user"),
        (("--user", "bob"), {"DLSTUDY_PASSWORD": "p\udce4ss-S3CRET"}, "--password"),
    ],
)
def test_a_user_or_password_that_is_not_utf8_is_a_usage_error(
    scripted: Routes, args: tuple[str, ...], env: dict[str, str] | None, option: str
) -> None:
    """A Latin-1 byte on the command line or in the environment (a terminal or file in
    another encoding) cannot be sent as UTF-8: it was a UnicodeEncodeError traceback."""
    result, requests = query(scripted, *args, env=env)
    assert result.returncode == 2 and not requests
    assert result.stderr == (
        f"dlstudy: error: {option} is not UTF-8 text (a byte of another encoding, Latin-1?)\n"
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("--user", "bob", "--password", "pw", "--token", "tk"),
            "--token and --user/--password both given: choose one way to authenticate",
        ),
        (
            ("--token", "tk", "--token-command", "echo tk"),
            "--token and --token-command both given: choose one",
        ),
        (
            ("--token-command", "echo tk", "--user", "bob"),
            "--token-command and --user/--password both given: choose one way to authenticate",
        ),
        (("--password", "pw"), "--password needs --user (or a user in --url)"),
    ],
)
def test_conflicting_credentials_are_a_usage_error(
    scripted: Routes, args: tuple[str, ...], said: str
) -> None:
    """Each of these used to drop one credential silently (or send none at all)."""
    result, requests = query(scripted, *args)
    assert result.returncode == 2 and not requests
    assert result.stderr == f"dlstudy: error: {said}\n"


def test_a_token_with_a_user_in_the_url_is_a_usage_error(scripted: Routes) -> None:
    url = scripted.base.replace("://", "://bob:pw@")
    result, requests = query(scripted, "--token", "tk", url=url)
    assert result.returncode == 2 and not requests
    assert result.stderr == (
        "dlstudy: error: --token and a user in --url both given: choose one way to authenticate\n"
    )


def test_a_password_for_the_user_in_the_url_is_sent_with_it(scripted: Routes) -> None:
    url = scripted.base.replace("://", "://bob@")
    result, requests = query(scripted, "--password", "pw", url=url)
    assert result.returncode == 0, result.stderr
    assert requests[0].headers["authorization"] == basic("bob", "pw")


def pacs_profile(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'server = "pacs"\n[servers.pacs]\nurl = "{url}"\ntoken_env = "PACS_TOKEN"\n'
        'header = ["X-Tenant: radiology"]\n'
    )
    return config


def test_a_profiles_credentials_stay_with_its_origin(scripted: Routes, tmp_path: Path) -> None:
    """A --url (or DLSTUDY_URL) of another origin than the profile's url gets neither the
    profile's token nor its headers; credentials given for the run still go."""
    config = pacs_profile(tmp_path, "http://127.0.0.1:9/dicom-web")  # the hospital PACS
    env = {"DLSTUDY_CONFIG": str(config), "PACS_TOKEN": "pacs-secret"}
    result, requests = query(scripted, env=env)
    assert result.returncode == 0, result.stderr
    assert "authorization" not in requests[0].headers and "x-tenant" not in requests[0].headers
    assert result.stderr == (
        "dlstudy: warning: the config file's --token, --header are not sent: --url is of "
        "another origin than the config's url\n"
    )
    assert "pacs-secret" not in result.stderr
    result, requests = query(scripted, env={**env, "DLSTUDY_TOKEN": "mine"})
    assert result.returncode == 0, result.stderr
    assert requests[-1].headers["authorization"] == "Bearer mine"
    assert "x-tenant" not in requests[-1].headers
    assert result.stderr.count("dlstudy: warning:") == 1


def test_a_profiles_credentials_go_to_its_own_origin(scripted: Routes, tmp_path: Path) -> None:
    config = pacs_profile(tmp_path, scripted.origin + "/another-root")
    env = {"DLSTUDY_CONFIG": str(config), "PACS_TOKEN": "pacs-token"}
    result, requests = query(scripted, env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert requests[0].headers["authorization"] == "Bearer pacs-token"
    assert requests[0].headers["x-tenant"] == "radiology"


def test_defaults_credentials_go_only_to_a_server_the_file_names(
    scripted: Routes, tmp_path: Path
) -> None:
    """With no profile chosen, [defaults]' token went to any --url even when the file's only
    url (a profile's) was of another origin; it now goes to the origin of some profile's
    url only. A file with no url at all still sends it where --url says."""
    config = tmp_path / "c.toml"
    defaults = '[defaults]\ntoken = "file-secret"\nheader = ["X-Tenant: radiology"]\n'
    config.write_text(defaults + '[servers.a]\nurl = "http://127.0.0.1:9/dicom-web"\n')
    result, requests = query(scripted, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "authorization" not in requests[0].headers and "x-tenant" not in requests[0].headers
    assert result.stderr == (
        "dlstudy: warning: the config file's --token, --header are not sent: --url is of "
        "another origin than the config's url\n"
    )
    config.write_text(defaults + f'[servers.a]\nurl = "{scripted.origin}/other-root"\n')
    result, requests = query(scripted, "--config", str(config))
    assert result.returncode == 0 and result.stderr == ""
    assert requests[-1].headers["authorization"] == "Bearer file-secret"
    config.write_text(defaults)
    result, requests = query(scripted, "--config", str(config))
    assert result.returncode == 0 and result.stderr == ""
    assert requests[-1].headers["authorization"] == "Bearer file-secret"


def test_a_token_given_for_the_run_goes_even_when_the_profile_has_the_same(
    scripted: Routes, tmp_path: Path
) -> None:
    """Only what the config file filled in is withheld from another origin: the same token
    typed on the command line (or in DLSTUDY_TOKEN) is the user's own and goes."""
    config = pacs_profile(tmp_path, "http://127.0.0.1:9/dicom-web")
    env = {"DLSTUDY_CONFIG": str(config), "PACS_TOKEN": "shared"}
    result, requests = query(scripted, "--token", "shared", env=env)
    assert result.returncode == 0, result.stderr
    assert requests[0].headers["authorization"] == "Bearer shared"
    assert "x-tenant" not in requests[0].headers
    assert result.stderr == (
        "dlstudy: warning: the config file's --header is not sent: --url is of "
        "another origin than the config's url\n"
    )


def orthanc_profile(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[servers.orthanc]\nurl = "{url}"\nuser = "dlstudy"\npassword_env = "ORTHANC_PASSWORD"\n'
        '[servers.pacs]\nurl = "http://127.0.0.1:9/dicom-web"\ntoken_env = "PACS_TOKEN"\n'
    )
    return config


@pytest.mark.parametrize(
    ("server", "withheld"), [("orthanc", "--user, --password are"), ("pacs", "--token is")]
)
def test_a_secret_that_is_withheld_need_not_be_set(
    scripted: Routes, tmp_path: Path, server: str, withheld: str
) -> None:
    """password_env / token_env naming an unset variable is no error when --url is of another
    origin than the profile's: that credential would not be sent anyway."""
    config = orthanc_profile(tmp_path, "http://127.0.0.1:8042/dicom-web")
    result, requests = query(scripted, "--config", str(config), "--server", server)
    assert result.returncode == 0, result.stderr
    assert "authorization" not in requests[0].headers
    assert result.stderr == (
        f"dlstudy: warning: the config file's {withheld} not sent: --url is of another origin "
        "than the config's url\n"
    )


def test_a_secret_that_would_be_sent_must_be_set(scripted: Routes, tmp_path: Path) -> None:
    config = orthanc_profile(tmp_path, scripted.base)
    result, requests = query(scripted, "--config", str(config), "--server", "orthanc")
    assert result.returncode == 2 and not requests
    assert result.stderr == (
        f"dlstudy: error: password_env in [servers.orthanc] of {config}: $ORTHANC_PASSWORD is "
        "not set\n"
    )
    # ... unless the run gives its own password: the file's is not used then.
    env = {"DLSTUDY_PASSWORD": "mine"}
    result, requests = query(scripted, "--config", str(config), "--server", "orthanc", env=env)
    assert result.returncode == 0, result.stderr
    assert requests[0].headers["authorization"] == basic("dlstudy", "mine")
    env = {"ORTHANC_PASSWORD": "theirs"}
    result, requests = query(scripted, "--config", str(config), "--server", "orthanc", env=env)
    assert result.returncode == 0, result.stderr
    assert requests[-1].headers["authorization"] == basic("dlstudy", "theirs")
