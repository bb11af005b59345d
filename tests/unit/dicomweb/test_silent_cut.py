"""The StudyDate windows a finished study search is checked by (dicomweb/silent_cut.py)."""

from __future__ import annotations

import pytest

from dlstudy.dicomweb.silent_cut import (
    ListedDates,
    _check_windows,
    _scope,
    _windows,
    day_seconds,
    split_times,
)


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


def _listed(*studies: tuple[str | None, str | None]) -> ListedDates:
    dates = ListedDates()
    for date, time in studies:
        dates.add(date, time)
    return dates


def test_a_listing_of_one_day_is_also_checked_by_the_times_of_that_day() -> None:
    """(20200301, 20200301): no date window lies inside the search, so the day's own studies
    were never asked for again."""
    one_day = _listed(("20200301", "081500"), ("20200301", "163000"))
    assert _check_windows(("20200301", "20200301"), one_day, by_time=True) == [
        [("StudyDate", "20200301"), ("StudyTime", "000000-122230")],
        [("StudyDate", "20200301"), ("StudyTime", "122231-235959")],
    ]
    # Unbounded, the days around it as well; a search of its own StudyTime keeps it.
    assert len(_check_windows(("", ""), one_day, by_time=True)) == 4
    assert _check_windows(("", ""), one_day, by_time=False) == [
        [("StudyDate", "-20200229")],
        [("StudyDate", "20200302-")],
    ]


def test_a_listing_without_any_date_is_checked_by_every_date_in_its_scope() -> None:
    undated = _listed((None, "081500"), ("", None))
    assert _check_windows(("", ""), undated, by_time=True) == [[("StudyDate", "-99991231")]]
    assert _check_windows(("20200101", ""), undated, by_time=True) == [[("StudyDate", "20200101-")]]


@pytest.mark.parametrize(
    ("first", "last", "ranges"),
    [
        (3600, 7200, [(0, 5400), (5401, 86399)]),
        (3600, 3600, [(0, 3599), (3601, 86399)]),  # one second: the seconds around it
        (0, 0, [(1, 86399)]),
        (86399, 86399, [(0, 86398)]),
        (None, None, [(0, 43199), (43200, 86399)]),  # no time listed: at noon
    ],
)
def test_split_times(first: int | None, last: int | None, ranges: list[tuple[int, int]]) -> None:
    assert split_times(first, last) == ranges


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("081500", 29700),
        ("0815", 29700),
        ("08", 28800),
        ("081500.123456", 29700),
        (" 235960 ", 86399),  # a leap second: the day's last
        ("", None),
        (None, None),
        ("2500", None),
        ("08:15", None),
        ("0815001", None),
    ],
)
def test_day_seconds_reads_dicom_tm(value: str | None, seconds: int | None) -> None:
    assert day_seconds(value) == seconds
