"""Header forms and URL helpers: pure functions, exhaustively."""

from __future__ import annotations

import pytest

from dlstudy.dicomweb.media import multipart_accept, parse_media_type, single_part_accept
from dlstudy.http.urls import instance_url, is_valid_uid, redact_url, split_base_url


@pytest.mark.parametrize(
    "value",
    [
        'multipart/related; type="application/dicom"; boundary=abc',
        "multipart/related;type=application/dicom;boundary=abc",
        'Multipart/Related; boundary="abc"; type="application/dicom"',
        'multipart/related;start="<1@resteasy-multipart>";type="application/dicom"; boundary=abc',
        'multipart/related; boundary = "abc" ; type=application/dicom;',
    ],
)
def test_parse_media_type_accepts_every_quoting_and_order(value: str) -> None:
    media = parse_media_type(value)
    assert media.mime == "multipart/related"
    assert media.boundary == "abc"
    assert media.params["type"] == "application/dicom"


def test_parse_media_type_quoted_specials_and_transfer_syntax() -> None:
    media = parse_media_type('application/dicom; transfer-syntax=1.2.840.10008.1.2.1; x="a;b\\"c"')
    assert media.mime == "application/dicom"
    assert media.transfer_syntax == "1.2.840.10008.1.2.1"
    assert media.params["x"] == 'a;b"c'
    assert parse_media_type("application/dicom").params == {}
    assert parse_media_type("text/plain; flag").params == {"flag": ""}


def test_accept_headers() -> None:
    assert single_part_accept() == "application/dicom; transfer-syntax=*"
    assert single_part_accept(None) == "application/dicom"
    assert multipart_accept() == 'multipart/related; type="application/dicom"; transfer-syntax=*'
    assert multipart_accept(None, quote_type=False) == "multipart/related; type=application/dicom"


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.840.10008.1.2.1", True),
        ("0", True),
        ("1.2." + "3" * 60, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65 characters
        ("1.02.3", True),  # leading zero: not conformant, but seen in real archives
        ("1..2", False),
        ("1.2.", False),
        ("../etc", False),
        ("1.2/3", False),
        ("", False),
        ("1.2.3\n", False),
    ],
)
def test_is_valid_uid(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok


def test_split_base_url_strips_userinfo_and_trailing_slash() -> None:
    assert split_base_url("https://bob:pw@host:8443/dicom-web/") == (
        "https://host:8443/dicom-web",
        "bob",
        "pw",
    )
    assert split_base_url("http://[::1]:8042/dicomweb") == (
        "http://[::1]:8042/dicomweb",
        None,
        None,
    )


def test_redact_url_hides_userinfo_and_secret_query_values() -> None:
    shown = redact_url("https://bob:hunter2@host/x?token=abc&limit=5&API_KEY=zz")
    assert "hunter2" not in shown and "abc" not in shown and "zz" not in shown
    assert shown == "https://***:***@host/x?token=***&limit=5&API_KEY=***"
    assert redact_url("http://host/x") == "http://host/x"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ghp_tok3n@host/dw", "https://***@host/dw"),
        ("https://ghp_tok3n:x-oauth-basic@host/dw", "https://***:***@host/dw"),
        ("https://ghp_tok3n:@host/dw", "https://***:***@host/dw"),
        ("http://ghp_tok3n@host:99999/dw", "http://***@host:99999/dw"),  # loosely
    ],
)
def test_redact_url_hides_a_token_given_as_the_user_name(url: str, shown: str) -> None:
    """Many services take a token as the URL's user name: it is masked as a password is."""
    assert redact_url(url) == shown


def test_every_query_value_is_masked_unless_known_harmless() -> None:
    """Gateway keys and presigned object-store URLs carry secrets under names no list could
    foresee: only QIDO's paging and matching keys are shown."""
    secrets = {
        "subscription-key": "s1",
        "X-Amz-Signature": "s2",
        "X-Amz-Credential": "s3",
        "X-Goog-Signature": "s4",
        "code": "s5",
        "AccessToken": "s6",
        "sv": "s7",
        "se": "s8",
    }
    harmless = {"limit": "100", "offset": "0", "includefield": "0020000E", "StudyDate": "2026"}
    query = "&".join(f"{k}={v}" for k, v in {**secrets, **harmless}.items())
    shown = redact_url(f"https://store.test/o/1.dcm?{query}")
    for key in secrets:
        assert f"{key}=***" in shown
    for key, value in harmless.items():
        assert f"{key}={value}" in shown


def test_instance_url() -> None:
    assert instance_url("http://h/dw", "1.2", "1.2.3", "1.2.3.4") == (
        "http://h/dw/studies/1.2/series/1.2.3/instances/1.2.3.4"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("bob:pw@host:9/dw", "***:***@host:9/dw"),  # no scheme: urlsplit takes bob: for one
        ("http:/bob:pw@host/dw", "http:/***:***@host/dw"),  # one slash: no authority
        ("http://bob:p/w@host/dw", "http://***:***@host/dw"),  # a slash in the password
        ("http://bob:p?w@host/dw?token=t", "http://***:***@host/dw?token=***"),
        ("http://bob:pw@host:99999/dw", "http://***:***@host:99999/dw"),  # port out of range
        ("http://[::1:9/dw?key=k", "http://[::1:9/dw?key=***"),  # urlsplit raises
        ("http://host:8042/dw?PatientName=a@b", "http://host:8042/dw?PatientName=a@b"),
        ("http:host:9/dw?key=k", "http:host:9/dw?key=***"),  # no authority: none added
    ],
)
def test_redact_url_masks_passwords_of_malformed_urls(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_split_base_url_decodes_percent_encoded_userinfo() -> None:
    assert split_base_url("http://al%40ice:p%40ss%3Aw%2Frd@host/dw") == (
        "http://host/dw",
        "al@ice",
        "p@ss:w/rd",
    )
