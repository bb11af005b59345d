"""Negotiating the retrieval form with servers that refuse single-part or `transfer-syntax=*`."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from dlstudy.dicomweb.negotiate import Negotiator, candidates
from dlstudy.engine.fetch import InstanceFetcher
from dlstudy.errors import HttpStatusError, IntegrityError, TransferError
from dlstudy.flow.retry import RetryPolicy
from dlstudy.flow.throttle import Throttle
from dlstudy.http.client import Transport
from dlstudy.model import InstanceRef
from dlstudy.settings import Settings
from dlstudy.store.files import Store

from ...factories import STUDY, multipart_body, part10
from ...fixtures.scripted_routes import Routes

SERIES = f"{STUDY}.7"
REFS = [InstanceRef(STUDY, SERIES, f"{SERIES}.{i}") for i in range(1, 4)]
MULTIPART_CT = 'multipart/related; type="application/dicom"; boundary=b0undary'


def url(ref: InstanceRef) -> str:
    """The path of `ref`'s route."""
    return f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{ref.sop_uid}"


def fetch_all(
    server: Routes, tmp_path: Path, negotiator: Negotiator, refs: list[InstanceRef] = REFS
) -> None:
    async def run() -> None:
        transport = Transport(Settings(url=server.base, http="1.1"))
        fetcher = InstanceFetcher(
            transport,
            Store(tmp_path, "{sop}.dcm"),
            negotiator,
            policy=RetryPolicy(retries=0, budget=10.0, window=10.0),
            throttle=Throttle(4),
        )
        try:
            async with anyio.create_task_group() as tg:
                for ref in refs:
                    tg.start_soon(fetcher.fetch, ref, lambda n: None)
        finally:
            await transport.aclose()

    anyio.run(run)


def orthanc_like(ref: InstanceRef, *, wants_quoted: bool = True, boundary: bool = True):  # type: ignore[no-untyped-def]
    body = part10(STUDY, SERIES, ref.sop_uid)

    def answer(request: httpx.Request) -> httpx.Response:
        accept = request.headers["accept"]
        if not accept.startswith("multipart/related"):
            return httpx.Response(400)
        if wants_quoted != ('type="application/dicom"' in accept):
            return httpx.Response(406)
        content_type = MULTIPART_CT if boundary else 'multipart/related; type="application/dicom"'
        return httpx.Response(
            200, content=multipart_body([body]), headers={"Content-Type": content_type}
        )

    return answer


def test_single_part_refused_with_400_switches_to_multipart_once(
    scripted: Routes, tmp_path: Path
) -> None:
    routes = [scripted.get(url(ref)).mock(side_effect=orthanc_like(ref)) for ref in REFS]
    negotiator = Negotiator(candidates("*", single_part=True))

    fetch_all(scripted, tmp_path, negotiator)

    for ref in REFS:
        assert (tmp_path / f"{ref.sop_uid}.dcm").read_bytes() == part10(STUDY, SERIES, ref.sop_uid)
    assert sum(r.call_count for r in routes) == len(REFS) + 1  # one refusal in the whole run
    assert negotiator.settled and not negotiator.current.single_part
    assert negotiator.as_dict()["rejected"] == ["application/dicom; transfer-syntax=* -> HTTP 400"]


def test_unquoted_type_and_missing_boundary_are_handled(scripted: Routes, tmp_path: Path) -> None:
    for ref in REFS:
        scripted.get(url(ref)).mock(
            side_effect=orthanc_like(ref, wants_quoted=False, boundary=False)
        )
    negotiator = Negotiator(candidates("*", single_part=True))

    fetch_all(scripted, tmp_path, negotiator)

    assert (
        negotiator.current.accept == "multipart/related; type=application/dicom; transfer-syntax=*"
    )
    assert len(list(tmp_path.glob("*.dcm"))) == 3


def test_rejected_transfer_syntax_star_falls_back_and_warns(
    scripted: Routes, tmp_path: Path
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "transfer-syntax" in request.headers["accept"]:
            return httpx.Response(406)
        sop = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, content=part10(STUDY, SERIES, sop))

    scripted.get("/dicomweb/", prefix=True).mock(side_effect=answer)
    negotiator = Negotiator(candidates("*", single_part=True))

    fetch_all(scripted, tmp_path, negotiator)

    assert negotiator.current.accept == "application/dicom"
    assert negotiator.warnings == [
        "server refused transfer-syntax=*; it may transcode what it sends"
    ]


def test_more_than_one_part_for_one_instance_is_rejected(scripted: Routes, tmp_path: Path) -> None:
    ref = REFS[0]
    body = part10(STUDY, SERIES, ref.sop_uid)
    scripted.get(url(ref)).mock(
        return_value=httpx.Response(
            200, content=multipart_body([body, body]), headers={"Content-Type": MULTIPART_CT}
        )
    )
    with pytest.raises(ExceptionGroup) as info:
        fetch_all(scripted, tmp_path, Negotiator(candidates("*", single_part=True)), [ref])
    assert info.group_contains(IntegrityError, match="more than one part")
    assert list(tmp_path.rglob("*.dcm")) == []


def test_truncated_multipart_is_a_retryable_transfer_error(
    scripted: Routes, tmp_path: Path
) -> None:
    ref = REFS[0]
    body = multipart_body([part10(STUDY, SERIES, ref.sop_uid)])
    scripted.get(url(ref)).mock(
        return_value=httpx.Response(200, content=body[:-40], headers={"Content-Type": MULTIPART_CT})
    )
    with pytest.raises(ExceptionGroup) as info:
        fetch_all(scripted, tmp_path, Negotiator(candidates("*", single_part=True)), [ref])
    assert info.group_contains(TransferError, match="malformed multipart response")
    assert list(tmp_path.rglob("*.dcm")) == []


def test_candidates_order() -> None:
    accepts = [c.accept for c in candidates("*", single_part=True)]
    assert accepts == [
        "application/dicom; transfer-syntax=*",
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        "multipart/related; type=application/dicom; transfer-syntax=*",
        "application/dicom",
        'multipart/related; type="application/dicom"',
        "multipart/related; type=application/dicom",
    ]
    assert all(not c.single_part for c in candidates(None, single_part=False))


def test_an_inconclusive_probe_lets_the_others_go_together_and_refusals_move_on_once() -> None:
    """The first attempt times out: the waiting ones run at once, together, not one after
    another; the refusal of a form they all sent moves to the next form once."""
    negotiator = Negotiator(candidates("*", single_part=True))
    in_flight, peak, asked = [0], [0], []

    async def attempt(form, first: bool) -> str:  # type: ignore[no-untyped-def]
        asked.append(form.accept)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await anyio.sleep(0.05)
            if first:
                raise TransferError("timed out", url="u", retryable=True)
            if form.single_part:
                raise HttpStatusError("refused", status_code=406, url="u")
            return form.accept
        finally:
            in_flight[0] -= 1

    results: list[str] = []

    async def one(first: bool) -> None:
        try:
            results.append(await negotiator.run(lambda form: attempt(form, first)))
        except TransferError:
            results.append("timed out")

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, True)
            await anyio.sleep(0.01)  # the first one is the probe
            for _ in range(5):
                tg.start_soon(one, False)

    anyio.run(run)
    assert negotiator.settled and not negotiator.current.single_part
    assert results.count("timed out") == 1 and len(results) == 6
    assert peak[0] == 5  # the five after the probe, at once
    assert negotiator.rejected == [f"{candidates('*', single_part=True)[0].accept} -> HTTP 406"]
