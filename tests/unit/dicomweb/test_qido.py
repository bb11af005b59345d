"""QIDO-RS resolution against scripted servers on 127.0.0.1 that page in every way seen in the
wild."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from dlstudy.dicomweb.qido import MAX_RESULTS
from dlstudy.dicomweb.resolve import Resolver
from dlstudy.errors import AuthError, IncompleteListingError, NothingMatchedError, ServerError
from dlstudy.flow.retry import RetryPolicy
from dlstudy.http.client import Transport
from dlstudy.settings import Settings

from ...factories import STUDY, instance_json, series_json
from ...fixtures.scripted_routes import Route, Routes

SERIES_URL = f"/dicomweb/studies/{STUDY}/series"  # the paths routes match
ROOT_SEARCH = "/dicomweb/studies"


def resolve(
    server: Routes, page_size: int = 2, *, one_request: bool | None = False, **filters: Any
) -> list[Any]:
    """The study's instances; series by series unless `one_request` is None (not yet known:
    a study-wide instance search first, as a run starts)."""
    return resolve_studies(server, [STUDY], page_size, one_request=one_request, **filters)[0]


def resolve_studies(
    server: Routes,
    studies: list[str],
    page_size: int = 2,
    *,
    one_request: bool | None = None,
    **filters: Any,
) -> list[list[Any]]:
    async def run() -> list[list[Any]]:
        async with resolver_on(server, page_size, **filters) as resolver:
            resolver.one_request = one_request
            return [await resolver.resolve(study) for study in studies]

    return anyio.run(run)


@asynccontextmanager
async def resolver_on(server: Routes, page_size: int, **filters: Any) -> AsyncIterator[Resolver]:
    """A Resolver over HTTP/1.1 to `server`, one retry; its transport closed afterwards."""
    transport = Transport(Settings(url=server.base, http="1.1"))
    try:
        policy = RetryPolicy(retries=1, budget=5.0, window=5.0)
        yield Resolver(transport, page_size=page_size, policy=policy, **filters)
    finally:
        await transport.aclose()


def paged(items: list[dict[str, Any]], *, cap: int | None = None, warn: bool = False) -> Callable:
    """A route side effect that honours limit/offset, optionally capping the page size."""

    def answer(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params.get("limit", len(items)))
        offset = int(request.url.params.get("offset", 0))
        size = min(limit, cap) if cap else limit
        page = items[offset : offset + size]
        headers = {}
        remaining = len(items) - offset - len(page)
        if warn and remaining > 0:
            headers["Warning"] = (
                f"299 pacs.test: There are {remaining} additional results that can be requested"
            )
        if not page:
            return httpx.Response(204)
        return httpx.Response(200, json=page, headers=headers)

    return answer


def instances_route(server: Routes, series_uid: str, sops: list[str], **kwargs: Any) -> Route:
    return server.get(f"{SERIES_URL}/{series_uid}/instances").mock(
        side_effect=paged([instance_json(s) for s in sops], **kwargs)
    )


def test_pages_through_series_and_instances_until_a_short_page(scripted: Routes) -> None:
    series = [series_json(f"1.2.3.{i}") for i in range(5)]
    series_route = scripted.get(SERIES_URL).mock(side_effect=paged(series))
    for i in range(5):
        instances_route(scripted, f"1.2.3.{i}", [f"1.2.3.{i}.{j}" for j in range(3)])

    refs = resolve(scripted, page_size=2)

    assert len(refs) == 15
    assert {r.series_uid for r in refs} == {f"1.2.3.{i}" for i in range(5)}
    assert series_route.call_count == 3  # 2 + 2 + 1 (short page ends it)
    first = series_route.requests[0].url.params
    assert first["limit"] == "2" and first["offset"] == "0"
    assert "00201209" in first.get_list("includefield")


def test_warning_299_truncation_keeps_paging_past_a_short_page(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    sops = [f"1.2.3.1.{j}" for j in range(7)]
    route = instances_route(scripted, "1.2.3.1", sops, cap=3, warn=True)

    refs = resolve(scripted, page_size=100)

    assert [r.sop_uid for r in refs] == sops
    assert route.call_count == 3


def test_silent_server_cap_is_detected_from_the_series_instance_count(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(200, json=[series_json("1.2.3.1", count=5)])
    )
    sops = [f"1.2.3.1.{j}" for j in range(5)]
    instances_route(scripted, "1.2.3.1", sops, cap=2)  # fewer than asked, no Warning

    assert [r.sop_uid for r in resolve(scripted, page_size=100)] == sops


def list_in_turn(server: Routes, urls: list[str], page_size: int = 100) -> list[list[str]]:
    """The SOP UIDs each listing gives, one listing after another through one pager."""

    async def run() -> list[list[str]]:
        async with resolver_on(server, page_size) as resolver:
            listed = []
            for url in urls:
                origin = server.base.removesuffix("/dicomweb")
                found = await resolver.pager.fetch_all(origin + url, [], "00080018")
                listed.append([item["00080018"]["Value"][0] for item in found or []])
            return listed

    return anyio.run(run)


def test_a_silent_cap_without_counts_is_paged_past_then_known(scripted: Routes) -> None:
    """No count, no Warning: a page shorter than asked for may be the server's cap. The next
    page is asked for; once it brought more, a page shorter than the cap is an end."""
    long = [f"1.2.3.1.{j}" for j in range(7)]
    short = ["1.2.3.2.0", "1.2.3.2.1"]
    long_route = instances_route(scripted, "1.2.3.1", long, cap=3)
    short_route = instances_route(scripted, "1.2.3.2", short, cap=3)
    urls = [f"{SERIES_URL}/1.2.3.1/instances", f"{SERIES_URL}/1.2.3.2/instances"]

    assert list_in_turn(scripted, urls) == [long, short]
    assert long_route.call_count == 3  # 3, 3 (the cap shows), 1 (shorter than the cap: the end)
    assert short_route.call_count == 1


def test_a_listing_that_ended_rules_out_a_cap_below_its_length(scripted: Routes) -> None:
    five = [f"1.2.3.1.{j}" for j in range(5)]
    three = [f"1.2.3.2.{j}" for j in range(3)]
    five_route = instances_route(scripted, "1.2.3.1", five)
    three_route = instances_route(scripted, "1.2.3.2", three)
    again_route = instances_route(scripted, "1.2.3.3", five)
    urls = [f"{SERIES_URL}/1.2.3.{i}/instances" for i in (1, 2, 3)]

    assert list_in_turn(scripted, urls) == [five, three, five]
    assert five_route.call_count == 2  # 5, then nothing: no cap of 5 or less
    assert three_route.call_count == 1
    assert again_route.call_count == 2  # as long as the longest end: it could be the cap


def test_server_that_ignores_offset_is_paged_once_and_never_loops(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    same_page = [instance_json(f"1.2.3.1.{j}") for j in range(2)]
    route = scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        return_value=httpx.Response(200, json=same_page)  # full page every time
    )

    refs = resolve(scripted, page_size=2)

    assert [r.sop_uid for r in refs] == ["1.2.3.1.0", "1.2.3.1.1"]
    # The repeat is noticed on the second page; that the first, as long as asked for, is
    # everything is checked by a third one shorter (limit ignored too: a static tree).
    assert route.call_count == 3
    assert route.requests[2].url.params["limit"] == "1"


def test_a_server_that_honours_limit_but_ignores_offset_fails_a_listing_of_full_pages(
    scripted: Routes,
) -> None:
    """No count, no Warning: 299: the first page is as long as asked for, the next repeats
    it. What comes after those cannot be listed: never a listing cut silently."""
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    everything = [instance_json(f"1.2.3.1.{j}") for j in range(5)]

    def first_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=everything[: int(request.url.params["limit"])])

    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(side_effect=first_page)

    with pytest.raises(IncompleteListingError, match="ignores offset"):
        resolve(scripted, page_size=2)


def test_server_that_ignores_limit_is_asked_once_when_the_count_is_met(scripted: Routes) -> None:
    """A static tree answers every query with the whole list: more than the page asked for
    and as many as the series count says, so one request gets it all. Without the count (or
    with one not yet met), the next page is still asked for."""
    everything = [instance_json(f"1.2.3.{i}.{j}") for i in (1, 2) for j in range(5)]
    scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(
            200, json=[series_json("1.2.3.1", count=5), series_json("1.2.3.2")]
        )
    )
    counted = scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        return_value=httpx.Response(200, json=everything[:5])
    )
    uncounted = scripted.get(f"{SERIES_URL}/1.2.3.2/instances").mock(
        return_value=httpx.Response(200, json=everything[5:])
    )

    refs = resolve(scripted, page_size=2)

    assert [r.sop_uid for r in refs] == [f"1.2.3.{i}.{j}" for i in (1, 2) for j in range(5)]
    assert counted.call_count == 1
    assert uncounted.call_count == 2  # the repeat is noticed on the second page


def test_server_that_invents_results_forever_fails_the_listing(
    scripted: Routes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dlstudy.dicomweb.qido.MAX_RESULTS", 9)
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    counter = iter(range(10_000))
    route = scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        side_effect=lambda request: httpx.Response(
            200, json=[instance_json(f"1.2.3.1.{next(counter)}") for _ in range(2)]
        )
    )

    with pytest.raises(IncompleteListingError, match="more than 9 results"):
        resolve(scripted, page_size=2)
    assert route.call_count == 5
    assert MAX_RESULTS == 10_000_000  # the real stop is far past any real listing


def test_no_page_ceiling_a_page_cap_of_one_lists_ten_thousand_and_one(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    sops = [f"1.2.3.1.{j}" for j in range(10_001)]
    route = instances_route(scripted, "1.2.3.1", sops, cap=1, warn=True)

    refs = resolve(scripted, page_size=100)

    assert [r.sop_uid for r in refs] == sops
    assert route.call_count == 10_001


def test_a_capped_server_that_ignores_offset_fails_the_listing(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    first_page = [instance_json(f"1.2.3.1.{j}") for j in range(3)]
    warning = {"Warning": "299 pacs.test: There are 4 additional results that can be requested"}
    route = scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        return_value=httpx.Response(200, json=first_page, headers=warning)
    )

    with pytest.raises(IncompleteListingError) as caught:
        resolve(scripted, page_size=100)
    assert route.call_count == 2
    message = str(caught.value)
    instances = f"{scripted.base}/studies/{STUDY}/series/1.2.3.1/instances"
    assert message.startswith(f"could not list {instances} completely: 3 ")
    assert "ignores offset" in message


def test_a_server_that_ignores_offset_short_of_its_count_fails_the_listing(
    scripted: Routes,
) -> None:
    scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(200, json=[series_json("1.2.3.1", count=5)])
    )
    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        return_value=httpx.Response(200, json=[instance_json(f"1.2.3.1.{j}") for j in range(2)])
    )

    with pytest.raises(IncompleteListingError, match="2 results, its count says 5"):
        resolve(scripted, page_size=100)


def test_more_announced_but_nothing_sent_fails_the_listing(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    warning = {"Warning": "299 pacs.test: There are 9 additional results that can be requested"}
    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        side_effect=[
            httpx.Response(200, json=[instance_json("1.2.3.1.0")], headers=warning),
            httpx.Response(200, json=[], headers=warning),
        ]
    )

    with pytest.raises(IncompleteListingError, match="sends nothing more"):
        resolve(scripted, page_size=100)


def test_nothing_more_before_the_series_count_is_met_fails_the_listing(
    scripted: Routes,
) -> None:
    """A short page, then nothing, of a series whose count says more: never a listing cut
    short in silence."""
    scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(200, json=[series_json("1.2.3.1", count=5)])
    )
    sops = [instance_json(f"1.2.3.1.{j}") for j in range(3)]
    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        side_effect=[httpx.Response(200, json=sops), httpx.Response(204)]
    )

    with pytest.raises(IncompleteListingError, match="3 results, its count says 5, but the "
                       "server sends nothing more"):  # fmt: skip
        resolve(scripted, page_size=100)


def test_lone_object_instead_of_a_list_is_one_result(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=series_json("1.2.3.1")))
    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        return_value=httpx.Response(200, json=instance_json("1.2.3.1.1"))
    )

    assert [r.sop_uid for r in resolve(scripted)] == ["1.2.3.1.1"]


@pytest.mark.parametrize(
    "response",
    [httpx.Response(204), httpx.Response(200, json=[]), httpx.Response(404)],
    ids=["204", "empty-list", "404"],
)
def test_unknown_study_is_nothing_matched(scripted: Routes, response: httpx.Response) -> None:
    scripted.get(SERIES_URL).mock(return_value=response)
    scripted.get(ROOT_SEARCH).mock(return_value=httpx.Response(200, json=[]))

    with pytest.raises(NothingMatchedError, match=f"study {STUDY} not found"):
        resolve(scripted)


@pytest.mark.parametrize(
    ("root", "said"),
    [
        (httpx.Response(404, text="Not Found"), "HTTP 404 (text/plain)"),
        (httpx.Response(200, html="<html>login</html>"), "HTTP 200 (an HTML page)"),
        (httpx.Response(200, text="[]"), "HTTP 200 (text/plain)"),
    ],
    ids=["404", "html", "not-json"],
)
def test_a_404_from_something_that_is_no_dicomweb_root_is_a_server_error(
    scripted: Routes, root: httpx.Response, said: str
) -> None:
    """A mistyped path must not read as "study not found" (exit 4): exit 3, saying why."""
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(404))
    scripted.get(ROOT_SEARCH).mock(return_value=root)

    with pytest.raises(ServerError, match=f"is not a DICOMweb root: .*answered {re.escape(said)}"):
        resolve(scripted)


def test_filters_by_series_and_modality(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(
            200,
            json=[
                series_json("1.2.3.1", "CT"),
                series_json("1.2.3.2", "SR"),
                series_json("1.2.3.3", "ct"),
            ],
        )
    )
    for i in (1, 2, 3):
        instances_route(scripted, f"1.2.3.{i}", [f"1.2.3.{i}.1"])

    assert {r.series_uid for r in resolve(scripted, modality_filter=["CT"])} == {
        "1.2.3.1",
        "1.2.3.3",
    }
    assert {r.series_uid for r in resolve(scripted, series_filter=["1.2.3.2"])} == {"1.2.3.2"}


def test_401_is_an_auth_error_and_500_a_server_error(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(401))
    with pytest.raises(AuthError, match="HTTP 401"):
        resolve(scripted)
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(500))
    with pytest.raises(ServerError, match="QIDO search: HTTP 500 .* \\(after 2 attempts\\)"):
        resolve(scripted)


def test_big_pages_are_read_while_the_next_one_is_asked_for(scripted: Routes) -> None:
    """A page of more than YIELD_EVERY items asks for the next before it is read through:
    the results stay complete and in order, and no page is asked for twice or in vain."""
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    sops = [f"1.2.3.1.{j}" for j in range(1000)]
    route = instances_route(scripted, "1.2.3.1", sops)

    refs = resolve(scripted, page_size=200)

    assert [r.sop_uid for r in refs] == sops
    offsets = [int(r.url.params["offset"]) for r in route.requests]
    assert sorted(offsets) == [0, 200, 400, 600, 800, 1000]  # 5 full pages, then an empty one


def test_a_failure_of_a_page_asked_for_early_is_raised_as_it_is(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    listing = paged([instance_json(f"1.2.3.1.{j}") for j in range(1000)])

    def third_page_fails(request: httpx.Request) -> httpx.Response:
        if request.url.params["offset"] == "400":
            return httpx.Response(500)
        return listing(request)

    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(side_effect=third_page_fails)

    with pytest.raises(ServerError, match="QIDO search: HTTP 500 .* \\(after 2 attempts\\)"):
        resolve(scripted, page_size=200)


def test_non_json_answer_is_a_clear_server_error(scripted: Routes) -> None:
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, content=b"<html>login</html>"))
    with pytest.raises(ServerError, match="not JSON"):
        resolve(scripted)
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, content=json.dumps([1, 2])))
    with pytest.raises(ServerError, match="not a list of DICOM JSON objects"):
        resolve(scripted)
    cut = httpx.Response(
        200, headers={"Content-Type": "application/dicom+json"}, content=b'[{"0020000E": {"vr'
    )
    scripted.get(SERIES_URL).mock(return_value=cut)  # DICOM JSON, cut: no hint at the root
    with pytest.raises(ServerError, match="malformed JSON .*18 bytes: cut short") as raised:
        resolve(scripted)
    assert "DICOMweb root" not in str(raised.value)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(instance_json("1.2.3.1.1")).encode("utf-16"),  # JSON may be UTF-16 (RFC 4627)
        json.dumps(
            [{**instance_json("1.2.3.1.1"), "00181050": {"vr": "DS", "Value": [float("nan")]}}]
        ).encode(),
    ],
    ids=["utf-16", "nan"],
)
def test_an_answer_only_the_standard_json_reader_reads_is_still_read(
    scripted: Routes, body: bytes
) -> None:
    """orjson reads QIDO pages faster; what it refuses and Python's json reads (UTF-16, NaN,
    as some servers write DS values) is read as before."""
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=series_json("1.2.3.1")))
    scripted.get(f"{SERIES_URL}/1.2.3.1/instances").mock(
        return_value=httpx.Response(200, content=body)
    )

    assert [r.sop_uid for r in resolve(scripted)] == ["1.2.3.1.1"]


# --- one request per study: /studies/{uid}/instances, checked against the study's count -------


def study_counts_route(server: Routes, series: int) -> None:
    """The study search a series listing not proven whole is checked by: each study asked
    for, with `series` as its NumberOfStudyRelatedSeries."""

    def answer(request: httpx.Request) -> httpx.Response:
        study = request.url.params["StudyInstanceUID"]
        item = {
            "0020000D": {"vr": "UI", "Value": [study]},
            "00201206": {"vr": "IS", "Value": [series]},
        }
        return httpx.Response(200, json=[item])

    server.get("/dicomweb/studies").mock(side_effect=answer)


STUDY_INSTANCES_URL = f"/dicomweb/studies/{STUDY}/instances"


def study_wide(rows: list[tuple[str, str, str]], count: int | None) -> list[dict[str, Any]]:
    """Results of a study-wide instance search: (series, modality, SOP) each, with the study's
    instance count when given."""
    items = []
    for series_uid, modality, sop in rows:
        item = {**instance_json(sop), **series_json(series_uid, modality)}
        if count is not None:
            item["00201208"] = {"vr": "IS", "Value": [count]}
        items.append(item)
    return items


ROWS = [("1.2.3.1", "CT", f"1.2.3.1.{j}") for j in range(3)] + [("1.2.3.2", "SR", "1.2.3.2.0")]


def test_a_study_with_its_count_is_listed_in_one_paged_request(scripted: Routes) -> None:
    route = scripted.get(STUDY_INSTANCES_URL).mock(side_effect=paged(study_wide(ROWS, 4)))
    series_route = scripted.get(SERIES_URL).mock(return_value=httpx.Response(500))

    refs = resolve(scripted, page_size=3, one_request=None)

    assert [(r.series_uid, r.modality, r.sop_uid) for r in refs] == ROWS
    assert route.call_count == 2 and series_route.call_count == 0
    fields = route.requests[0].url.params.get_list("includefield")
    assert {"0020000E", "00080060", "00201208"} <= set(fields)
    # Refs share their series' string, not one copy each.
    assert refs[0].series_uid is refs[2].series_uid and refs[0].study_uid is refs[3].study_uid


def test_a_silent_cap_short_of_the_study_count_is_listed_series_by_series(
    scripted: Routes,
) -> None:
    first_two = httpx.Response(200, json=study_wide(ROWS, 4)[:2])  # offset ignored too
    scripted.get(STUDY_INSTANCES_URL).mock(return_value=first_two)
    series_route = scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(
            200, json=[series_json("1.2.3.1", count=3), series_json("1.2.3.2", "SR", 1)]
        )
    )
    instances_route(scripted, "1.2.3.1", [f"1.2.3.1.{j}" for j in range(3)], cap=2)
    instances_route(scripted, "1.2.3.2", ["1.2.3.2.0"])
    study_counts_route(scripted, series=2)

    refs = resolve(scripted, page_size=100, one_request=None)

    assert [r.sop_uid for r in refs] == [sop for _, _, sop in ROWS]
    # 2 of 4 listed: the study-wide answer was not trusted. The series listing is asked for
    # twice: its page was short and had no count, and the next page only repeated it.
    assert series_route.call_count == 2


def test_a_server_without_the_study_count_is_listed_series_by_series_from_then_on(
    scripted: Routes,
) -> None:
    studies = [STUDY, STUDY + ".9"]
    study_routes = []
    for study in studies:
        base = f"/dicomweb/studies/{study}"
        study_routes.append(
            scripted.get(f"{base}/instances").mock(side_effect=paged(study_wide(ROWS, None)))
        )
        scripted.get(f"{base}/series").mock(
            return_value=httpx.Response(200, json=[series_json("1.2.3.1"), series_json("1.2.3.2")])
        )
        scripted.get(f"{base}/series/1.2.3.1/instances").mock(
            side_effect=paged([instance_json(f"1.2.3.1.{j}") for j in range(3)])
        )
        scripted.get(f"{base}/series/1.2.3.2/instances").mock(
            side_effect=paged([instance_json("1.2.3.2.0")])
        )
    study_counts_route(scripted, series=2)

    found = resolve_studies(scripted, studies, page_size=100)

    assert [[r.sop_uid for r in refs] for refs in found] == [[s for _, _, s in ROWS]] * 2
    assert study_routes[0].call_count == 1
    assert study_routes[1].call_count == 0  # the second study was not asked that way


def test_a_server_refusing_the_study_wide_search_is_listed_series_by_series(
    scripted: Routes,
) -> None:
    scripted.get(STUDY_INSTANCES_URL).mock(return_value=httpx.Response(400))
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=[series_json("1.2.3.1")]))
    instances_route(scripted, "1.2.3.1", ["1.2.3.1.0"])

    refs = resolve(scripted, page_size=100, one_request=None)

    assert [r.sop_uid for r in refs] == ["1.2.3.1.0"]


def test_filters_apply_to_a_study_listed_in_one_request(scripted: Routes) -> None:
    scripted.get(STUDY_INSTANCES_URL).mock(side_effect=paged(study_wide(ROWS, 4)))

    refs = resolve(scripted, page_size=100, one_request=None, modality_filter=["sr"])

    assert [r.sop_uid for r in refs] == ["1.2.3.2.0"]


def test_a_series_filter_lists_only_those_series(scripted: Routes) -> None:
    study_route = scripted.get(STUDY_INSTANCES_URL).mock(side_effect=paged(study_wide(ROWS, 4)))
    scripted.get(SERIES_URL).mock(
        return_value=httpx.Response(200, json=[series_json("1.2.3.1"), series_json("1.2.3.2")])
    )
    instances_route(scripted, "1.2.3.2", ["1.2.3.2.0"])
    study_counts_route(scripted, series=2)

    refs = resolve(scripted, page_size=100, one_request=None, series_filter=["1.2.3.2"])

    assert [r.sop_uid for r in refs] == ["1.2.3.2.0"]
    assert study_route.call_count == 0  # the study's other series are never listed


def test_a_server_refusing_the_study_count_search_keeps_its_series_listing(
    scripted: Routes,
) -> None:
    two = [series_json("1.2.3.1"), series_json("1.2.3.2")]
    scripted.get(SERIES_URL).mock(return_value=httpx.Response(200, json=two))
    instances_route(scripted, "1.2.3.1", ["1.2.3.1.0"])
    instances_route(scripted, "1.2.3.2", ["1.2.3.2.0"])
    counts = scripted.get("/dicomweb/studies").mock(return_value=httpx.Response(400))

    refs = resolve(scripted, page_size=100)

    assert [r.sop_uid for r in refs] == ["1.2.3.1.0", "1.2.3.2.0"]
    assert counts.call_count == 1


def test_a_refusal_in_json_without_its_content_type_is_read() -> None:
    """Orthanc sends its REST errors as JSON without a Content-Type: its words were lost."""
    import httpx

    from dlstudy.dicomweb.answers import refusal_words

    request = httpx.Request("GET", "http://pacs/studies")
    body = b'{ "Details" : "Missing \\"since\\" argument", "HttpStatus" : 400 }'
    assert refusal_words(httpx.Response(400, content=body, request=request)) == (
        'Missing "since" argument'
    )
    page = httpx.Response(400, content=b"<html>no</html>", request=request)
    assert refusal_words(page) is None
