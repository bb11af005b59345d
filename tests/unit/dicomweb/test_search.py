"""Study-level search: filters as sent, paging, records as parsed, and `query`'s output forms."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import httpx
import pytest

from dlstudy.cli.query_cmd import render
from dlstudy.dicomweb.answers import ignored_keys_warning
from dlstudy.dicomweb.search import (
    StudyQuery,
    StudyRecord,
    attribute_id,
    parse_filter,
    parse_study_date,
    search,
)
from dlstudy.errors import AuthError, ServerError, UsageError
from dlstudy.settings import Settings

from ...factories import element
from ...fixtures.scripted_routes import Routes

STUDIES_URL = "/dicomweb/studies"  # the path routes match
TODAY = dt.date(2026, 1, 31)


def study_json(uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"0020000D": element("UI", uid)}
    item.update(extra)
    return item


def full_study_json(uid: str) -> dict[str, Any]:
    return study_json(
        uid,
        **{
            "00100020": element("LO", "PID-1"),
            "00100010": element("PN", {"Alphabetic": "DOE^JANE"}),
            "00080020": element("DA", "20260105"),
            "00080030": element("TM", "093000"),
            "00080050": element("SH", "ACC1"),
            "00081030": element("LO", "CT, CHEST"),
            "00080061": element("CS", "CT", "PT"),
            "00201206": element("IS", 2),
            "00201208": element("IS", "40"),
        },
    )


def run_search(server: Routes, query: StudyQuery, page_size: int = 1000) -> list[StudyRecord]:
    settings = Settings(url=server.base, http="1.1", qido_page_size=page_size, retries=0)
    return search(settings, query)


# --- what is sent -----------------------------------------------------------------------------


def test_filters_are_sent_as_keywords_with_includefields(scripted: Routes) -> None:
    route = scripted.get(STUDIES_URL).mock(return_value=httpx.Response(204))
    query = StudyQuery(
        patient_id="PID*",
        patient_name="DOE^J*",
        study_date="20260101-20260131",
        accession="ACC1",
        modalities=("CT",),
        filters=(("PatientSex", "F"), ("00091001", "private")),
    )

    assert run_search(scripted, query) == []

    params = route.requests[0].url.params
    assert params["PatientID"] == "PID*"
    assert params["PatientName"] == "DOE^J*"
    assert params["StudyDate"] == "20260101-20260131"
    assert params["AccessionNumber"] == "ACC1"
    assert params["ModalitiesInStudy"] == "CT"
    assert params["PatientSex"] == "F"
    assert params["00091001"] == "private"
    assert set(params.get_list("includefield")) >= {"00201208", "00080061", "00081030"}
    assert params["limit"] == "1000" and params["offset"] == "0"


def test_no_filter_searches_everything_page_by_page(scripted: Routes) -> None:
    studies = [study_json(f"1.2.{n}") for n in range(5)]

    def answer(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params.get("offset", 0))
        limit = int(request.url.params["limit"])
        page = studies[offset : offset + limit]
        return httpx.Response(200, json=page) if page else httpx.Response(204)

    route = scripted.get(STUDIES_URL).mock(side_effect=answer)

    records = run_search(scripted, StudyQuery(), page_size=2)

    assert [r.study_uid for r in records] == [f"1.2.{n}" for n in range(5)]
    # Three pages, and the search over every StudyDate that checks a listing in which no
    # study has a date (it brings none the search did not: whole).
    assert route.call_count == 4
    assert route.requests[-1].url.params["StudyDate"] == "-99991231"
    assert not any(k in route.requests[0].url.params for k in ("PatientID", "StudyDate"))


def test_several_modalities_are_searched_one_by_one_and_merged(scripted: Routes) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        found = {"CT": ["1.1", "1.2"], "MR": ["1.2", "1.3"]}[
            request.url.params["ModalitiesInStudy"]
        ]
        return httpx.Response(200, json=[study_json(uid) for uid in found])

    route = scripted.get(STUDIES_URL).mock(side_effect=answer)

    records = run_search(scripted, StudyQuery(modalities=("CT", "MR")))

    assert [r.study_uid for r in records] == ["1.1", "1.2", "1.3"]
    # Each search, the page after its short one (a cap the server might not announce), and
    # its search over every StudyDate (no study listed has a date).
    assert route.call_count == 6


def test_a_lone_object_a_404_and_an_auth_failure(scripted: Routes) -> None:
    scripted.get(STUDIES_URL).mock(return_value=httpx.Response(200, json=study_json("1.9")))
    assert [r.study_uid for r in run_search(scripted, StudyQuery())] == ["1.9"]

    # A 404 is "no match" when the root's own study search answers as DICOMweb ...
    def no_match_but_a_root(request: httpx.Request) -> httpx.Response:
        if "offset" in request.url.params:
            return httpx.Response(404)
        return httpx.Response(200, json=[], headers={"content-type": "application/dicom+json"})

    scripted.get(STUDIES_URL).mock(side_effect=no_match_but_a_root)
    assert run_search(scripted, StudyQuery()) == []

    # ... and a wrong URL when it does not.
    scripted.get(STUDIES_URL).mock(return_value=httpx.Response(404, text="no such page"))
    with pytest.raises(ServerError, match="is not a DICOMweb root: .* answered HTTP 404"):
        run_search(scripted, StudyQuery())

    scripted.get(STUDIES_URL).mock(return_value=httpx.Response(401))
    with pytest.raises(AuthError):
        run_search(scripted, StudyQuery())


# --- what comes back --------------------------------------------------------------------------


def test_record_from_dicom_json() -> None:
    record = StudyRecord.from_json(full_study_json("1.2.3"))
    assert record is not None
    assert record.as_dict() == {
        "study_uid": "1.2.3",
        "patient_id": "PID-1",
        "patient_name": "DOE^JANE",
        "study_date": "20260105",
        "study_time": "093000",
        "accession": "ACC1",
        "description": "CT, CHEST",
        "modalities": ["CT", "PT"],
        "series": 2,
        "instances": 40,
    }


def test_record_tolerates_missing_and_odd_values() -> None:
    assert StudyRecord.from_json({"00100020": element("LO", "x")}) is None
    record = StudyRecord.from_json(
        study_json(
            "1.2",
            **{
                "00100010": {"vr": "PN"},
                "00201208": element("IS", "many"),
                "00080061": {"vr": "CS", "Value": ["", None, "MR"]},
            },
        )
    )
    assert record is not None
    assert (record.patient_name, record.instances, record.modalities) == (None, None, ("MR",))
    plain_name = StudyRecord.from_json(study_json("1.3", **{"00100010": element("PN", "ROE^J")}))
    assert plain_name is not None and plain_name.patient_name == "ROE^J"


def test_render_every_form() -> None:
    records = [r for r in (StudyRecord.from_json(full_study_json(u)) for u in ("1.1", "1.2")) if r]

    def out(form: str) -> str:
        stream = io.StringIO()
        render(records, form, stream)
        return stream.getvalue()

    assert out("uids") == "1.1\n1.2\n"
    lines = [json.loads(line) for line in out("json").splitlines()]
    assert [line["study_uid"] for line in lines] == ["1.1", "1.2"]
    assert lines[0]["modalities"] == ["CT", "PT"]
    rows = list(csv.DictReader(io.StringIO(out("csv"))))
    assert rows[0]["description"] == "CT, CHEST" and rows[0]["modalities"] == "CT\\PT"
    tsv = [line.split("\t") for line in out("tsv").splitlines()]
    assert tsv[0][0] == "study_uid" and tsv[1][tsv[0].index("instances")] == "40"
    table = out("table")
    assert "Study Instance UID" in table and "1.2" in table and "DOE^JANE" in table


# --- parsing options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PatientID", "PatientID"),
        ("00100020", "PatientID"),
        ("0010,0020", "PatientID"),
        ("(0010,0020)", "PatientID"),
        ("0009100a", "0009100A"),  # private: no keyword, sent as the tag
    ],
)
def test_attribute_ids(text: str, expected: str) -> None:
    assert attribute_id(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PatientID", "must look like KEY=VALUE"),
        ("=x", "must look like KEY=VALUE"),
        ("PatientIdentity=x", "neither a DICOM keyword"),
        ("limit=3", "neither a DICOM keyword"),
    ],
)
def test_bad_filters(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        StudyQuery(filters=[parse_filter(text)])


def test_filters_keep_their_value_and_refuse_repeats() -> None:
    texts = ["00100040=F", "StudyDescription=*HEAD*=x"]
    assert StudyQuery(filters=[parse_filter(text) for text in texts]).filters == (
        ("PatientSex", "F"),
        ("StudyDescription", "*HEAD*=x"),
    )
    with pytest.raises(UsageError, match="PatientSex given more than once"):
        StudyQuery(filters=[parse_filter("PatientSex=F"), parse_filter("00100040=M")])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260105", "20260105"),
        ("20260101-20260131", "20260101-20260131"),
        ("-20260131", "-20260131"),
        ("20260101-", "20260101-"),
        ("today", "20260131"),
        ("Yesterday", "20260130"),
        ("7d", "20260124-20260131"),
    ],
)
def test_study_dates(text: str, expected: str) -> None:
    assert parse_study_date(text, TODAY) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026", "-", "last week", "1.2", "10000d",
        "\u0663d",  # an Arabic-Indic 3: read as 3d, where such a date was refused
        "\u0662\u0660\u0662\u0666\u0660\u0661\u0660\u0661",
    ],
)  # fmt: skip
def test_bad_study_dates(text: str) -> None:
    with pytest.raises(UsageError, match=r"--study-date must be .* Nd \(N up to 9999\)"):
        parse_study_date(text, TODAY)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("20261301", "'20261301': 20261301 is no day of the calendar"),
        ("2024-02-30", "'2024-02-30': 20240230 is no day of the calendar"),
        ("20260131-20260101", "the range ends before it begins (20260131 > 20260101)"),
        ("2026-01-31/2026-01-01", "the range ends before it begins (20260131 > 20260101)"),
    ],
)
def test_a_date_of_a_right_form_says_what_is_wrong_with_it(text: str, said: str) -> None:
    """These match a form the error lists: listing the forms again left the reader to find
    that the day does not exist or the range is reversed."""
    with pytest.raises(UsageError) as refused:
        parse_study_date(text, TODAY)
    assert str(refused.value).startswith(f"--study-date {text!r}: "), refused.value
    assert str(refused.value).endswith(said), refused.value


@pytest.mark.parametrize(
    ("warning", "ignored"),
    [
        ("299 pacs: The following attributes were not supported: 00280010", True),
        ("299 pacs: The following attributes were not supported: (0028,0010)", True),
        ("299 pacs: attribute Rows is not supported and was ignored", True),
        # an includefield the server cannot return is no matching key it dropped
        ("299 pacs: The following attributes were not supported: 00201208", False),
        ("299 pacs: There are 12 additional results that can be requested", False),
    ],
)
def test_only_a_warning_naming_a_matching_key_sent_says_the_search_was_widened(
    warning: str, ignored: bool
) -> None:
    headers = httpx.Headers([("warning", warning)])
    found = ignored_keys_warning(headers, ["PatientID", "Rows"])
    assert (found is not None) == ignored, found
