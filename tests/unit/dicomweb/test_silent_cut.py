"""The StudyDate windows a finished study search is checked by (dicomweb/silent_cut.py)."""

from __future__ import annotations

import pytest

from dlstudy.dicomweb.silent_cut import (
    ListedDates,
    _check_windows,
    _scope,
    _windows,
    day_seconds,
    normal_date,
    normal_time,
    split_times,
    time_scope,
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


@pytest.mark.parametrize(
    ("sent", "normal"),
    [
        ("2020.01.02", "20200102"),  # the retired ACR-NEMA form
        (" 2020.01.02 ", "20200102"),
        ("20200102", "20200102"),
        ("2020.1.2", "2020.1.2"),  # no DICOM form: kept as sent
        ("2020.01.02-2020.01.03", "2020.01.02-2020.01.03"),
        ("", ""),
    ],
)
def test_a_date_in_the_retired_form_is_read_as_yyyymmdd(sent: str, normal: str) -> None:
    assert normal_date(sent) == normal


@pytest.mark.parametrize(
    ("sent", "normal"),
    [
        ("12:30:00", "123000"),  # the retired ACR-NEMA form
        ("12:30:00.5", "123000.5"),
        ("12:30", "1230"),
        ("123000.5", "123000.5"),
        ("12:3", "12:3"),  # no DICOM form: kept as sent
        ("noon", "noon"),
    ],
)
def test_a_time_in_the_retired_form_is_read_as_hhmmss(sent: str, normal: str) -> None:
    assert normal_time(sent) == normal


def test_listed_dates_read_the_retired_forms() -> None:
    dates = ListedDates()
    dates.add("2020.06.11", "12:30:00")
    dates.add("2020.01.01", "08:00")
    assert (dates.first, dates.last) == ("20200101", "20200611")
    assert (dates.first_time, dates.last_time) == (8 * 3600, 12 * 3600 + 30 * 60)


WHOLE_DAY = (0, 86399)


def _listed(*studies: tuple[str | None, str | None]) -> ListedDates:
    dates = ListedDates()
    for date, time in studies:
        dates.add(date, time)
    return dates


def test_a_listing_of_one_day_is_also_checked_by_the_times_of_that_day() -> None:
    """(20200301, 20200301): no date window lies inside the search, so the day's own studies
    were never asked for again."""
    one_day = _listed(("20200301", "081500"), ("20200301", "163000"))
    assert _check_windows(("20200301", "20200301"), one_day, WHOLE_DAY) == [
        [("StudyDate", "20200301"), ("StudyTime", "000000-122230.999999")],
        [("StudyDate", "20200301"), ("StudyTime", "122231-")],
    ]
    # Unbounded, the days around it as well; a search's own StudyTime it cannot read: those.
    assert len(_check_windows(("", ""), one_day, WHOLE_DAY)) == 4
    assert _check_windows(("", ""), one_day, None) == [
        [("StudyDate", "-20200229")],
        [("StudyDate", "20200302-")],
    ]


def test_a_one_day_search_of_its_own_times_is_checked_inside_them() -> None:
    """`--study-date DAY --filter StudyTime=080000-235959`: the search's own StudyTime turned
    the time windows off, and both date windows lie outside the day: nothing was asked."""
    one_day = _listed(("20200301", "081500"), ("20200301", "163000"))
    scope = time_scope([("StudyDate", "20200301"), ("StudyTime", "080000-2359")])
    assert scope == (28800, 86399)
    assert _check_windows(("20200301", "20200301"), one_day, scope) == [
        [("StudyDate", "20200301"), ("StudyTime", "080000-122230.999999")],
        [("StudyDate", "20200301"), ("StudyTime", "122231-")],
    ]
    assert time_scope([("StudyTime", "10")]) == (36000, 39599)  # all of its precision
    assert time_scope([("StudyTime", "-0930")]) == (0, 34259)
    assert time_scope([("00080030", "1200-")]) == (43200, 86399)
    assert time_scope([("StudyTime", "noon")]) is None
    assert time_scope([("StudyTime", "1300-1200")]) is None
    assert time_scope([("PatientID", "x")]) == WHOLE_DAY


def test_a_listing_without_any_date_is_checked_by_every_date_in_its_scope() -> None:
    undated = _listed((None, "081500"), ("", None))
    assert _check_windows(("", ""), undated, WHOLE_DAY) == [[("StudyDate", "-99991231")]]
    assert _check_windows(("20200101", ""), undated, WHOLE_DAY) == [[("StudyDate", "20200101-")]]


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
    ("first", "last", "ranges"),
    [
        (36000, 43200, [(30000, 39600), (39601, 50000)]),
        (None, None, [(30000, 39999), (40000, 50000)]),  # none listed: the scope's middle
        (30000, 30000, [(30001, 50000)]),
        (100, 200, [(30000, 50000)]),  # a server that ignored the search's StudyTime
        (40000, 40000, [(30000, 39999), (40001, 50000)]),
    ],
)
def test_split_times_inside_a_scope(
    first: int | None, last: int | None, ranges: list[tuple[int, int]]
) -> None:
    assert split_times(first, last, (30000, 50000)) == ranges


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
        ("08:15", 29700),  # the retired form
        ("08:15:00.5", 29700),
        ("8:15", None),
        ("0815001", None),
    ],
)
def test_day_seconds_reads_dicom_tm(value: str | None, seconds: int | None) -> None:
    assert day_seconds(value) == seconds
