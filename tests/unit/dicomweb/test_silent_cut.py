"""The StudyDate windows a finished study search is checked by (dicomweb/silent_cut.py)."""

from __future__ import annotations

import pytest

from dlstudy.dicomweb.silent_cut import ListedDates, _scope, _windows


@pytest.mark.parametrize(
    ("scope", "first", "last", "windows"),
    [
        (("", ""), "20200101", "20200611", ["-20200322", "20200323-"]),
        (("", ""), "20200101", "20200102", ["-20200101", "20200102-"]),
        # All listed on one day: the days around it (the day itself cannot be split).
        (("", ""), "20200301", "20200301", ["-20200229", "20200302-"]),
        # Inside the search's own range, never past it.
        (
            ("20200101", "20201231"),
            "20200301",
            "20200901",
            ["20200101-20200601", "20200602-20201231"],
        ),
        (("20200301", "20200301"), "20200301", "20200301", []),
        (("20200301", ""), "20200301", "20200301", ["20200302-"]),
        (("", "20200301"), "20200301", "20200301", ["-20200229"]),
    ],
)
def test_windows_split_the_listed_dates_inside_the_scope(
    scope: tuple[str, str], first: str, last: str, windows: list[str]
) -> None:
    assert _windows(scope, first, last) == windows


def test_the_scope_is_the_searchs_own_study_date_by_keyword_or_tag() -> None:
    assert _scope([("PatientID", "x")]) == ("", "")
    assert _scope([("StudyDate", "20200101-")]) == ("20200101", "")
    assert _scope([("00080020", "-20200101")]) == ("", "20200101")
    assert _scope([("StudyDate", "20200101")]) == ("20200101", "20200101")


def test_listed_dates_keep_the_first_and_last_real_days() -> None:
    dates = ListedDates()
    for date in ("20200611", None, "", "2020", "20201399", "00000000", "20200101", "20200301"):
        dates.add(date)
    assert (dates.first, dates.last) == ("20200101", "20200611")
