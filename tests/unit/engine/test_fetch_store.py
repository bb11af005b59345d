"""One-instance fetches from a scripted server: what lands on disk, what never does, what is
retried."""

from __future__ import annotations

import io
import random
from pathlib import Path

import anyio
import httpx
import pytest
from pydicom.dataset import Dataset

from dlstudy.dicomweb.negotiate import Negotiator, Retrieval
from dlstudy.engine.fetch import InstanceFetcher
from dlstudy.errors import AuthError, HttpStatusError, IntegrityError, TransferError, UsageError
from dlstudy.flow.retry import RETRY_AFTER_CAP, RetryPolicy, backoff_delay, parse_retry_after
from dlstudy.flow.throttle import Throttle
from dlstudy.http.client import Transport
from dlstudy.model import InstanceRef
from dlstudy.settings import Settings
from dlstudy.store.files import Store, check_layout

from ...factories import STUDY, part10
from ...fixtures.scripted_routes import DROP, Routes
from ...verify_helpers import verify_instance

SERIES = f"{STUDY}.7"
SOP = f"{SERIES}.1"
REF = InstanceRef(STUDY, SERIES, SOP, "CT")
URL = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}"  # the route's path


def fetch(
    server: Routes, tmp_path: Path, retries: int = 2, negotiator: Negotiator | None = None
) -> tuple[int, list[int]]:
    chunks: list[int] = []

    async def run() -> int:
        transport = Transport(Settings(url=server.base, http="1.1"))
        fetcher = InstanceFetcher(
            transport,
            Store(tmp_path, "{study}/{series}/{sop}.dcm"),
            negotiator or Negotiator([Retrieval(single_part=True, transfer_syntax="*")]),
            policy=RetryPolicy(retries=retries, budget=60.0, window=10.0),
            throttle=Throttle(4),
            rng=random.Random(0),
        )
        try:
            return (await fetcher.fetch(REF, chunks.append)).size
        finally:
            await transport.aclose()

    return anyio.run(run), chunks


def final(tmp_path: Path) -> Path:
    return tmp_path / STUDY / SERIES / f"{SOP}.dcm"


def leftovers(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file()]


def test_instance_is_streamed_to_its_final_path_byte_exact(
    scripted: Routes, tmp_path: Path
) -> None:
    body = part10(STUDY, SERIES, SOP, payload=b"\x01\x02" * 5000)
    route = scripted.get(URL).mock(return_value=httpx.Response(200, content=body))

    size, chunks = fetch(scripted, tmp_path)

    assert size == len(body) == sum(chunks)
    assert final(tmp_path).read_bytes() == body
    assert leftovers(tmp_path) == [final(tmp_path)]
    sent = route.requests[0].headers
    assert sent["accept"] == "application/dicom; transfer-syntax=*"
    assert sent["accept-encoding"] == "identity"


def test_html_error_page_is_rejected_without_retry_and_leaves_nothing(
    scripted: Routes, tmp_path: Path
) -> None:
    page = b"<!DOCTYPE html><html><body>" + b"Session expired " * 20 + b"</body></html>"
    route = scripted.get(URL).mock(return_value=httpx.Response(200, content=page))

    with pytest.raises(IntegrityError, match="not DICOM .looks like an HTML page."):
        fetch(scripted, tmp_path)
    assert route.call_count == 1
    assert leftovers(tmp_path) == []


def test_wrong_instance_is_retried_then_reported_never_kept(
    scripted: Routes, tmp_path: Path
) -> None:
    wrong = part10(STUDY, SERIES, f"{SERIES}.999")
    route = scripted.get(URL).mock(return_value=httpx.Response(200, content=wrong))

    with pytest.raises(IntegrityError, match=r"SOP Instance UID .* expected") as info:
        fetch(scripted, tmp_path, retries=1)
    assert route.call_count == 2
    assert "after 2 attempts" in str(info.value)
    assert leftovers(tmp_path) == []


def test_503_with_retry_after_is_retried(scripted: Routes, tmp_path: Path) -> None:
    body = part10(STUDY, SERIES, SOP)
    route = scripted.get(URL).mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "0"}),
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(200, content=body),
        ]
    )

    size, _ = fetch(scripted, tmp_path, retries=2)

    assert size == len(body) and route.call_count == 3
    assert final(tmp_path).read_bytes() == body


@pytest.mark.parametrize("status", [400, 404, 406])
def test_definitive_answers_are_not_retried(scripted: Routes, tmp_path: Path, status: int) -> None:
    route = scripted.get(URL).mock(return_value=httpx.Response(status))

    with pytest.raises(HttpStatusError) as info:
        fetch(scripted, tmp_path)
    assert info.value.status_code == status and not info.value.retryable
    assert route.call_count == 1
    assert SOP in str(info.value)


def test_reset_connections_are_retried_then_reported_with_the_sop_uid(
    scripted: Routes, tmp_path: Path
) -> None:
    route = scripted.get(URL).mock(return_value=DROP)

    with pytest.raises(TransferError, match=f"instance {SOP}: connection broken") as info:
        fetch(scripted, tmp_path, retries=1)
    assert info.value.sop_instance_uid == SOP and info.value.retryable
    assert "after 2 attempts" in str(info.value)
    assert route.call_count == 2
    assert leftovers(tmp_path) == []


def test_401_aborts_as_auth_error(scripted: Routes, tmp_path: Path) -> None:
    scripted.get(URL).mock(return_value=httpx.Response(401))
    with pytest.raises(AuthError):
        fetch(scripted, tmp_path)


def test_verify_checks_study_and_series_too(scripted: Routes, tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(part10(STUDY, SERIES, SOP))
    assert verify_instance(path, study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)
    with pytest.raises(IntegrityError, match="Series Instance UID"):
        verify_instance(path, study_uid=STUDY, series_uid="1.2.3", sop_uid=SOP)
    path.write_bytes(part10(STUDY, SERIES, SOP)[:100])
    with pytest.raises(IntegrityError, match="too short"):
        verify_instance(path, study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)


@pytest.mark.parametrize(
    "layout", ["/abs/{sop}.dcm", "../{sop}.dcm", "{study}/{nope}.dcm", "{study}/x.dcm", "{"]
)
def test_bad_layouts_are_usage_errors(layout: str) -> None:
    with pytest.raises(UsageError):
        check_layout(layout)


def test_layout_fields_and_invalid_server_uids(scripted: Routes, tmp_path: Path) -> None:
    store = Store(tmp_path, "{modality}/{study}/{sop}.dcm")
    assert store.final_path(REF) == tmp_path / "CT" / STUDY / f"{SOP}.dcm"
    evil = InstanceRef(STUDY, "../../etc", SOP)
    assert not store.is_valid(evil)
    with pytest.raises(ValueError):
        store.final_path(evil)


@pytest.mark.parametrize("root", ["out", "./out", "/tmp/x/out/", ".", "/"])
def test_manifest_paths_are_relative_to_the_output_folder(root: str) -> None:
    """The manifest's path of a file is what relative_to gives, however the root is spelled
    (the quick string form and Path's own agree)."""
    store = Store(Path(root), "{modality}/{study}/{sop}.dcm")
    path = store.final_path(REF)
    assert store.relative(path) == f"CT/{STUDY}/{SOP}.dcm" == path.relative_to(root).as_posix()
    elsewhere = Path(root).resolve() / "CT" / f"{SOP}.dcm"  # spelled otherwise: Path decides
    if not root.startswith("/"):
        with pytest.raises(ValueError):
            store.relative(elsewhere)


def test_unwritable_output_is_an_output_error(scripted: Routes, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="not writable"):
        Store(blocker / "sub", "{sop}.dcm").prepare()


def test_retry_after_forms_and_backoff() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("100000") == RETRY_AFTER_CAP
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    rng = random.Random(1)
    delays = [backoff_delay(n, rng) for n in range(1, 10)]
    assert all(0 < d <= 10 for d in delays)
    assert delays[0] <= 0.25 and delays[-1] >= 5


def test_bare_dataset_without_part10_header_is_kept_when_its_uid_matches(
    scripted: Routes, tmp_path: Path
) -> None:
    # What some archives store and serve: no preamble, no DICM, no file meta.
    dataset = Dataset()
    dataset.SOPInstanceUID = SOP
    dataset.StudyInstanceUID = STUDY
    dataset.SeriesInstanceUID = SERIES
    dataset.PatientName = "Bare^Dataset"
    dataset.ImageComments = "padding the dataset past the 132-byte prefix " * 2
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    path = tmp_path / "bare.dcm"
    path.write_bytes(buffer.getvalue())
    assert path.read_bytes()[128:132] != b"DICM"

    verify_instance(path, study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)
    with pytest.raises(IntegrityError, match="SOP Instance UID in the file"):
        verify_instance(path, study_uid=STUDY, series_uid=SERIES, sop_uid=f"{SOP}9")


def test_binary_garbage_is_rejected(scripted: Routes, tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(IntegrityError):
        verify_instance(path, study_uid=STUDY, series_uid=SERIES, sop_uid=SOP)


def test_a_folder_removed_during_a_run_is_made_again(scripted: Routes, tmp_path: Path) -> None:
    """The store remembers the folders it made (one mkdir per folder, not per file) and makes
    one again if it disappeared meanwhile."""
    store = Store(tmp_path / "out", "{study}/{series}/{sop}.dcm")
    first = store.final_path(InstanceRef("1.2", "1.2.3", "1.2.3.4"))
    with store.open_temp(first) as temp:
        temp.write(b"one")
        temp.commit()
    first.unlink()
    first.parent.rmdir()
    second = store.final_path(InstanceRef("1.2", "1.2.3", "1.2.3.5"))
    with store.open_temp(second) as temp:
        temp.write(b"two")
        temp.commit()
    assert second.read_bytes() == b"two"


@pytest.mark.parametrize(
    "layout", ["{study}/{series}/{sop}.dcm", "{sop}.dcm", "{modality}/{study}/{sop}/{sop}.dcm"]
)
def test_final_paths_follow_the_layout_and_refuse_bad_uids_every_time(
    tmp_path: Path, layout: str
) -> None:
    """final_path remembers folders and checked series; the answers must not change."""
    store = Store(tmp_path, layout)
    for sop in ("1.2.3.4", "1.2.3.5", "1.2.3.4"):
        ref = InstanceRef("1.2", "1.2.3", sop, "CT")
        fields = {"study": "1.2", "series": "1.2.3", "sop": sop, "modality": "CT"}
        assert store.final_path(ref) == tmp_path / layout.format(**fields)
    for bad in (InstanceRef("1.2", "1.2.3", "../x"), InstanceRef("1.2", "../x", "1.2.3.4")):
        with pytest.raises(ValueError, match="invalid UIDs"):
            store.final_path(bad)
