"""Many studies listed in one instance search (`StudyInstanceUID=a,b,...`: UID list matching),
against scripted servers on 127.0.0.1: trusted only where each study's own instance count
proves its listing complete, and never again from a server that ignores the list, gives no
counts or refuses the search."""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from ...factories import element, instance_json
from ...fixtures.scripted_routes import Routes
from .test_qido import paged, resolver_on

SEARCH = "/dicomweb/instances"
STUDIES = ["1.2.3.100", "1.2.3.200"]


def item(study: str, sop: str, *, count: int | None, modality: str = "DX") -> dict[str, Any]:
    found = {
        **instance_json(sop),
        "0020000D": element("UI", study),
        "0020000E": element("UI", f"{study}.1"),
        "00080060": element("CS", modality),
    }
    if count is not None:
        found["00201208"] = element("IS", count)
    return found


def listed(server: Routes, studies: list[str], page_size: int = 100, **filters: Any) -> Any:
    """What Resolver.studies_at_once finds for `studies`, and whether it would ask so again."""

    async def run() -> tuple[dict[str, list[str]], bool | None]:
        async with resolver_on(server, page_size, **filters) as resolver:
            found = await resolver.studies_at_once(studies)
            return {k: [r.sop_uid for r in v] for k, v in found.items()}, resolver.lists_studies

    return anyio.run(run)


def test_studies_whose_counts_are_met_are_listed_from_one_search(scripted: Routes) -> None:
    items = [
        item("1.2.3.100", "1.2.3.100.1.1", count=2),
        item("1.2.3.100", "1.2.3.100.1.2", count=2),
        item("1.2.3.200", "1.2.3.200.1.1", count=1),
    ]
    route = scripted.get(SEARCH).mock(side_effect=paged(items))

    found, again = listed(scripted, STUDIES)

    assert found == {
        "1.2.3.100": ["1.2.3.100.1.1", "1.2.3.100.1.2"],
        "1.2.3.200": ["1.2.3.200.1.1"],
    }
    assert again is True
    (request,) = route.requests
    assert request.url.params["StudyInstanceUID"] == "1.2.3.100,1.2.3.200"
    assert "00201208" in request.url.params.get_list("includefield")


def test_a_study_short_of_its_count_is_left_to_be_listed_alone(scripted: Routes) -> None:
    items = [
        item("1.2.3.100", "1.2.3.100.1.1", count=3),  # one listed of 3: cut somewhere
        item("1.2.3.200", "1.2.3.200.1.1", count=1),
    ]
    scripted.get(SEARCH).mock(side_effect=paged(items))

    found, again = listed(scripted, STUDIES)

    assert found == {"1.2.3.200": ["1.2.3.200.1.1"]}
    assert again is True


def test_a_capped_server_is_paged_until_every_count_is_met(scripted: Routes) -> None:
    items = [item("1.2.3.100", f"1.2.3.100.1.{k}", count=7) for k in range(7)]
    items += [item("1.2.3.200", f"1.2.3.200.1.{k}", count=4) for k in range(4)]
    route = scripted.get(SEARCH).mock(side_effect=paged(items, cap=1, warn=True))

    found, _ = listed(scripted, STUDIES)

    assert [len(found[s]) for s in STUDIES] == [7, 4]
    assert len(route.requests) == 11


def test_a_server_that_ignores_the_list_stops_at_its_first_page(scripted: Routes) -> None:
    """Answering with another study means the filter was ignored: paging would walk the
    whole archive. The first page ends it, and lists are not asked for again."""
    items = [item("1.2.3.100", "1.2.3.100.1.1", count=1)]
    items += [item(f"9.9.{n}", f"9.9.{n}.1.1", count=1) for n in range(50)]
    route = scripted.get(SEARCH).mock(side_effect=paged(items))

    found, again = listed(scripted, STUDIES, page_size=5)

    assert (found, again) == ({}, False)
    assert len(route.requests) == 1


def test_a_server_without_counts_is_not_asked_for_lists_again(scripted: Routes) -> None:
    items = [item(s, f"{s}.1.1", count=None) for s in STUDIES]
    scripted.get(SEARCH).mock(side_effect=paged(items))

    assert listed(scripted, STUDIES) == ({}, False)


def test_a_refused_list_search_is_not_asked_again(scripted: Routes) -> None:
    scripted.get(SEARCH).mock(return_value=httpx.Response(400, text="bad StudyInstanceUID"))

    assert listed(scripted, STUDIES) == ({}, False)


def test_the_modality_filter_applies_after_the_counts_are_checked(scripted: Routes) -> None:
    items = [
        item("1.2.3.100", "1.2.3.100.1.1", count=2, modality="DX"),
        {**item("1.2.3.100", "1.2.3.100.2.1", count=2), "0020000E": element("UI", "1.2.3.100.2")}
        | {"00080060": element("CS", "SR")},
        item("1.2.3.200", "1.2.3.200.1.1", count=1, modality="SR"),
    ]
    scripted.get(SEARCH).mock(side_effect=paged(items))

    found, _ = listed(scripted, STUDIES, modality_filter=["DX"])

    assert found == {"1.2.3.100": ["1.2.3.100.1.1"], "1.2.3.200": []}
