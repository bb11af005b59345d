"""Test knobs: latency, injected 503/429, connections cut mid-body, bearer tokens that expire."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.fixtures.embedded_server import StartServer, SynthStudy

pytestmark = pytest.mark.integration

SINGLE = "application/dicom; transfer-syntax=*"
MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def instance_url(base: str, study: SynthStudy, index: int = 0) -> str:
    i = study.instances[index]
    return f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"


def test_latency(synth_study: SynthStudy, embedded_server: StartServer) -> None:
    base = embedded_server(synth_study.root, latency=0.2)
    with httpx.Client() as client:
        started = time.monotonic()
        assert client.get(f"{base}/studies").status_code == 200
        assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("status", [503, 429])
def test_faults_with_retry_after(
    synth_study: SynthStudy, embedded_server: StartServer, status: int
) -> None:
    base = embedded_server(synth_study.root, fault_rate=1.0, fault_status=status, retry_after=7)
    with httpx.Client() as client:
        response = client.get(instance_url(base, synth_study), headers={"accept": SINGLE})
        assert response.status_code == status and response.headers["retry-after"] == "7"
        study = client.get(f"{base}/studies/{synth_study.study_uid}", headers={"accept": MULTIPART})
        assert study.status_code == status
        assert client.get(f"{base}/studies").status_code == 200  # QIDO is never faulted
        missing = client.get(f"{base}/studies/1.2.3", headers={"accept": MULTIPART})
        assert missing.status_code == 404


def test_fault_rate_is_reproducible_by_seed(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    runs = []
    for _ in range(2):
        base = embedded_server(synth_study.root, fault_rate=0.5, seed=42)
        with httpx.Client() as client:
            url = instance_url(base, synth_study)
            runs.append(
                [client.get(url, headers={"accept": SINGLE}).status_code for _ in range(30)]
            )
    assert runs[0] == runs[1]
    assert {200, 503} == set(runs[0])


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
@pytest.mark.parametrize("accept", [SINGLE, MULTIPART], ids=["single", "multipart"])
def test_drop_after_bytes_is_an_error_not_a_clean_end(
    synth_study: SynthStudy, embedded_server: StartServer, http2: bool, accept: str
) -> None:
    base = embedded_server(synth_study.root, drop_after_bytes=10_000)
    with httpx.Client(http1=not http2, http2=http2, timeout=5) as client:
        url = instance_url(base, synth_study)
        received = bytearray()
        # HTTP/1.1: the connection closes short of Content-Length / the last chunk. HTTP/2: the
        # stream ends short of the announced Content-Length (h2 raises its own error type).
        with pytest.raises(Exception) as caught:  # noqa: B017 - the type depends on the version
            with client.stream("GET", url, headers={"accept": accept}) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += chunk
        assert not isinstance(caught.value, AssertionError)
        assert len(received) <= 10_000
        # the server is still fine afterwards, and bodies shorter than the cut are whole
        assert client.get(f"{base}/studies").status_code == 200


def test_drop_leaves_short_bodies_and_qido_alone(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    base = embedded_server(synth_study.root, drop_after_bytes=10_000_000)
    with httpx.Client() as client:
        response = client.get(instance_url(base, synth_study), headers={"accept": SINGLE})
        assert response.content == synth_study.instances[0].path.read_bytes()


def test_drop_rate(synth_study: SynthStudy, embedded_server: StartServer) -> None:
    base = embedded_server(synth_study.root, drop_after_bytes=100, drop_rate=0.5, seed=3)
    outcomes = set()
    for _ in range(12):
        with httpx.Client() as client:  # a fresh connection each time: a cut closes it
            try:
                client.get(instance_url(base, synth_study), headers={"accept": SINGLE})
                outcomes.add("ok")
            except httpx.RemoteProtocolError:
                outcomes.add("cut")
    assert outcomes == {"ok", "cut"}


def test_token_required(synth_study: SynthStudy, embedded_server: StartServer) -> None:
    base = embedded_server(synth_study.root, token="s3cret")
    with httpx.Client() as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
            response = client.get(f"{base}/studies", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        ok = client.get(f"{base}/studies", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_token_expires_after_n_requests(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    base = embedded_server(synth_study.root, token="tok", token_expires_after=3)
    with httpx.Client() as client:

        def status(token: str) -> int:
            return client.get(
                f"{base}/studies", headers={"authorization": f"Bearer {token}"}
            ).status_code

        assert [status("tok") for _ in range(4)] == [200, 200, 200, 401]
        expired = client.get(f"{base}/studies", headers={"authorization": "Bearer tok"})
        assert "expired" in expired.headers["www-authenticate"]
        # a refreshed token (`tok-<anything>`) works for its own N requests
        assert [status("tok-2") for _ in range(4)] == [200, 200, 200, 401]
        assert status("other-2") == 401


@pytest.mark.integration
def test_access_log_records_carry_no_headers_or_environment(
    synth_study: SynthStudy,
    embedded_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hypercorn passes every request header and environment variable as the record's
    arguments; a failing handler prints those (seen: a token in a test's captured stderr)."""
    monkeypatch.setenv("DLSTUDY_TOKEN", "env-secret-value")
    url = embedded_server(synth_study.root, token="header-secret-value")
    caplog.set_level(logging.INFO, logger="dlstudy.server.access")
    headers = {"Authorization": "Bearer header-secret-value", "X-Api-Key": "header-secret-value"}
    assert httpx.get(url + "/studies", headers=headers).status_code == 200
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.name == "dlstudy.server.access"]:
        assert time.monotonic() < deadline, "no access log record"
        time.sleep(0.02)
    (record,) = [r for r in caplog.records if r.name == "dlstudy.server.access"]
    assert "GET /dicomweb/studies" in record.getMessage()
    assert "secret" not in repr(record.args)
