"""The windows a catalog pull asks for: their query keys, their halves, their stored form."""

from __future__ import annotations

import datetime as dt

from dlstudy.catalog.windows import Window, recent, windows_to_check
from dlstudy.dicomweb.search import StudyRecord
from dlstudy.dicomweb.silent_cut import ListedDates


def test_the_root_without_dates_asks_no_studydate_and_splits_into_open_ends() -> None:
    root = Window.root(None)
    assert root.params() == [] and root.key == "*"
    low, high = root.split()
    assert low.params()[0][1].startswith("-") and high.params()[0][1].endswith("-")
    assert Window.from_key(low.key) == low and Window.from_key(high.key) == high


def test_halves_cover_the_window_down_to_one_second() -> None:
    window = Window.root("20190101-20190104")
    assert window.params() == [("StudyDate", "20190101-20190104")]
    seen_days: list[str] = []
    todo = [window]
    seconds = 0
    while todo:
        w = todo.pop()
        if w.lo == w.hi and w.t_lo is None:
            seen_days.append(w.params()[0][1])
            if w.params()[0][1] == "20190102":  # one day walked down to its seconds
                todo.extend(w.split())
            continue
        if w.t_lo is not None and w.t_hi is not None:
            if not w.splittable:
                seconds += 1
                assert Window.from_key(w.key) == w
                continue
        todo.extend(w.split())
    assert sorted(seen_days) == ["20190101", "20190102", "20190103", "20190104"]
    assert seconds == 86_400


def test_recent_days_are_open_ended() -> None:
    window = recent(7, today=dt.date(2026, 12, 5))
    assert window.params() == [("StudyDate", "20261128-")]


def _studies(*dated: tuple[str | None, str | None]) -> list[StudyRecord]:
    return [StudyRecord(f"1.2.{n}", study_date=d, study_time=t) for n, (d, t) in enumerate(dated)]


def test_a_short_page_of_one_day_is_checked_by_the_times_of_that_day() -> None:
    """A one-day window has no date halves: it was taken as whole unasked."""
    day = Window.root("20220101")
    page = _studies(("20220101", "080000"), ("20220101", "100000"))
    assert [w.key for w in windows_to_check(day, ListedDates.of(page))] == [
        "20220101-20220101 000000-090000",
        "20220101-20220101 090001-235959",
    ]
    # Inside a window of the day's seconds, only within them.
    morning = Window.from_key("20220101-20220101 060000-115959")
    assert [w.key for w in windows_to_check(morning, ListedDates.of(page))] == [
        "20220101-20220101 060000-090000",
        "20220101-20220101 090001-115959",
    ]
    # Over more days: the days around it, and its times.
    assert len(windows_to_check(Window.root(None), ListedDates.of(page))) == 4


def test_a_short_page_without_dates_is_checked_by_its_windows_halves() -> None:
    page = _studies((None, None), ("", "080000"))
    assert windows_to_check(Window.root(None), ListedDates.of(page)) == list(
        Window.root(None).split()
    )
    assert windows_to_check(Window.root("20220101"), ListedDates.of(page)) == []


def test_time_windows_hold_their_whole_last_second() -> None:
    """`000000-115959` and `120000-235959` left a study of 11:59:59.5 or 23:59:59.999 out of
    both halves of its day (the embedded server and Orthanc alike); the day's end is open,
    for a leap second."""
    morning, afternoon = Window.root("20200101").split()
    assert morning.params()[1] == ("StudyTime", "000000-115959.999999")
    assert afternoon.params()[1] == ("StudyTime", "120000-")
    assert [w.key for w in (morning, afternoon)] == [
        "20200101-20200101 000000-115959",
        "20200101-20200101 120000-235959",
    ]
