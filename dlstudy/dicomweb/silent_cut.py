"""Whether a study search that ended on a short page was whole, or cut by a cap the server does
not announce and pages past with nothing (Orthanc's `LimitFindResults: N` sends the first N + 1
matches, no Warning, no count, and nothing at any offset after them).

Paging cannot tell the two apart. Two more searches can: the same search in two StudyDate
windows, split at the middle of the dates listed. A server that cut the whole search fills
each window's answer up to its cap, and the listed studies now share the cap with others in
each window, so a window brings studies the search did not. A whole listing holds everything
either window can bring. When no study listed has a date (an archive that lists its undated
studies first), one window of every date is asked: any study it brings was not sent. Studies
without a StudyDate are in no window: a cut that hid only such studies cannot be seen.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import IncompleteListingError, ServerError
from ..http.urls import redact_url
from .qido import TAG_STUDY_DATE, TAG_STUDY_TIME, TAG_STUDY_UID, Pager, first_value

if TYPE_CHECKING:
    from .search import StudyRecord

log = logging.getLogger(__name__)

_DATE_KEYS = ("StudyDate", "00080020", "0008,0020", "(0008,0020)")
TIME_KEYS = ("StudyTime", "00080030", "0008,0030", "(0008,0030)")
DAY_SECONDS = 86_400
LAST_DATE = "99991231"  # a range up to it holds every date
# The retired ACR-NEMA forms PS3.5 6.2 still has readers accept: 2020.01.01, 12:30:00.5.
_OLD_DATE = re.compile(r"\d{4}\.\d{2}\.\d{2}", re.ASCII)
_OLD_TIME = re.compile(r"\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?", re.ASCII)


class ListedDates:
    """The earliest and latest StudyDate (YYYYMMDD) of the studies a search listed, and the
    earliest and latest StudyTime (seconds into the day) of those with both."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.last: str | None = None
        self.first_time: int | None = None
        self.last_time: int | None = None
        self.timed = 0  # the studies with both

    @classmethod
    def of(cls, records: Iterable[StudyRecord]) -> ListedDates:
        dates = cls()
        for record in records:
            dates.add(record.study_date, record.study_time)
        return dates

    def add(self, date: str | None, time: str | None = None) -> None:
        date = normal_date(date) if date else date
        if date is None or len(date) != 8 or not date.isdigit() or not _is_day(date):
            return
        if self.first is None or date < self.first:
            self.first = date
        if self.last is None or date > self.last:
            self.last = date
        seconds = day_seconds(time)
        if seconds is None:
            return
        if self.first_time is None or seconds < self.first_time:
            self.first_time = seconds
        if self.last_time is None or seconds > self.last_time:
            self.last_time = seconds
        self.timed += 1

    def one_second(self, studies: int) -> bool:
        """Whether all the `studies` listed are of one day and one second of it."""
        return (
            self.timed == studies and self.first == self.last
            and self.first_time == self.last_time
        )  # fmt: skip


async def check_whole(
    pager: Pager,
    url: str,
    params: list[tuple[str, str]],
    listed: set[str],
    dates: ListedDates,
) -> None:
    """IncompleteListingError when the search of `url` with `params`, which listed the UIDs in
    `listed` (two or more), was cut by the server: a window of it brings a study it did not.
    A study that came since the listing (an archive taking studies as it is searched) is no
    cut: the search asked again then brings it and all it listed."""
    if len(listed) < 2:
        return
    kept = [(k, v) for k, v in params if k not in _DATE_KEYS]  # its own StudyTime too
    untimed = [(k, v) for k, v in kept if k not in TIME_KEYS]
    for window in _check_windows(_scope(params), dates, time_scope(params)):
        base = untimed if any(k == "StudyTime" for k, _ in window) else kept
        try:
            page = await pager.get_page(url, [*base, *window, ("limit", str(pager.page_size))])
        except ServerError as exc:  # a server that refuses the date range
            log.info("%s: no StudyDate window to check the search by: %s", redact_url(url), exc)
            return
        items = page[0] if page else []
        unlisted = _unlisted(items, listed)
        if unlisted is None:
            if (ignored := _ignored(window, items)) is not None:
                _warn_ignored(redact_url(url), ignored, len(listed))
                return
            continue
        if await _grew(pager, url, params, listed, unlisted):
            log.info("%s: studies came while it was searched", redact_url(url))
            return
        shown = redact_url(url)
        over = " and ".join(f"{key} {value}" for key, value in window)
        raise IncompleteListingError(
            f"could not list {shown} completely: it sent {len(listed):,} studies and nothing "
            f"after them, but the same search over {over} found {unlisted}, which "
            "it had not sent (a cap on search results that the server does not announce, such "
            "as Orthanc's LimitFindResults): search in --study-date windows that each hold "
            "fewer studies than the cap, let 'dlstudy catalog pull' split the search by date "
            "and time of day (as 'sync' does by itself), or lift the cap",
            url=shown,
        )
    warn_if_one_second(redact_url(url), dates, len(listed))


def _warn_ignored(where: str, ignored: str, studies: int) -> None:
    """A server that answered a window with studies outside it answers every window as it
    did the whole search: no window can show a cut, nor does any listing rule one out."""
    log.warning(
        "%s: %s, so whether it cut the search cannot be told (it sent %d studies and nothing "
        "after them, as it would if it had a cap on search results that it does not announce)",
        where, ignored, studies,
    )  # fmt: skip


def _ignored(window: list[tuple[str, str]], items: Iterable[dict[str, Any]]) -> str | None:
    """What shows that a server ignored a key of `window`, the search it answered with
    `items`: a study that does not match it."""
    for item in items:
        date, time = first_value(item, TAG_STUDY_DATE), first_value(item, TAG_STUDY_TIME)
        key = unmatched_key(window, date, time)
        if key is not None:
            asked = " and ".join(f"{k} {v}" for k, v in window)
            return f"the server ignores {key} (asked for {asked}, it sent a study of " + (
                f"{date})" if key == "StudyDate" else f"{time})"
            )
    return None


def unmatched_key(params: list[tuple[str, str]], date: str | None, time: str | None) -> str | None:
    """The key of a search's `params` ("StudyDate", "StudyTime") that a study of `date` and
    `time`, sent as one of its matches, does not match: the server ignored it. None when it
    matches, or a value cannot be read."""
    day = _calendar_date(date)
    if day is None or not any(k in _DATE_KEYS for k, _ in params):
        return None
    low, high = (_calendar_date(end) if end else "" for end in _scope(params))
    if low is None or high is None:
        return None
    if (low and day < low) or (high and day > high):
        return "StudyDate"
    if not time or not any(k in TIME_KEYS for k, _ in params):
        return None
    scope, first, last = time_scope(params), day_seconds(time), last_second(time)
    if scope is None or first is None or last is None or (scope[0] <= last and first <= scope[1]):
        return None  # (a time of less precision matches where its span overlaps)
    return "StudyTime"


def _calendar_date(date: str | None) -> str | None:
    """A StudyDate as YYYYMMDD (the old form `2020.01.01` too); None if it is none."""
    text = normal_date(date or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        _day(text)
    except ValueError:
        return None
    return text


def warn_if_one_second(where: str, dates: ListedDates, studies: int) -> None:
    """Say so when the `studies` a search listed (two or more) are all of one second: no
    window narrower than the search can hold one it did not send, so a cut goes unseen."""
    if studies > 1 and dates.one_second(studies):
        log.warning(
            "%s: the %d studies it sent are all of one second (%s %s): no narrower search "
            "can show whether the server cut it there",
            where, studies, dates.first, tm(dates.first_time or 0),
        )  # fmt: skip


def _check_windows(
    scope: tuple[str, str], dates: ListedDates, time_scope: tuple[int, int] | None
) -> list[list[tuple[str, str]]]:
    """The windows that hold what a cut listing did not send: two StudyDate ranges that split
    the dates listed; when they are all one day, also two StudyTime ranges of that day, inside
    the search's own (`time_scope`; None: one it cannot read), that split the times listed
    (the day is in neither date range); when none has a date, one range of every date (any
    dated study it brings was not sent)."""
    if dates.first is None or dates.last is None:
        return [[("StudyDate", _whole(scope))]]
    windows = [[("StudyDate", window)] for window in _windows(scope, dates.first, dates.last)]
    if dates.first == dates.last and time_scope is not None:
        day = dates.first
        for low, high in split_times(dates.first_time, dates.last_time, time_scope):
            windows.append([("StudyDate", day), ("StudyTime", tm_range(low, high))])
    return windows


def _unlisted(items: Iterable[dict[str, Any]], listed: set[str]) -> str | None:
    for item in items:
        uid = first_value(item, TAG_STUDY_UID)
        if uid and uid not in listed:
            return uid
    return None


async def _grew(
    pager: Pager, url: str, params: list[tuple[str, str]], listed: set[str], unlisted: str
) -> bool:
    """Whether the search, asked again, now brings `unlisted` and everything it listed: an
    archive that took the study since. (A cut one still sends its cap's worth, `unlisted`
    not among them or in place of one it listed.)"""
    again = 0
    found = False

    def count(item: dict[str, Any]) -> None:
        nonlocal again, found
        uid = first_value(item, TAG_STUDY_UID)
        again += uid in listed
        found = found or uid == unlisted

    await pager.walk(url, params, TAG_STUDY_UID, each=count, keyless=lambda: None)
    return found and again == len(listed)


def time_scope(params: list[tuple[str, str]]) -> tuple[int, int] | None:
    """The search's own StudyTime as a range of seconds into the day (a bound as written
    holds every second of its precision: `10` is 10:00:00-10:59:59), the whole day when it
    has none; None when it cannot be read."""
    for key, value in params:
        if key in TIME_KEYS:
            low, sep, high = value.partition("-")
            first = day_seconds(low) if low else 0
            last = last_second(high if sep else low) if (high or not sep) else DAY_SECONDS - 1
            if first is None or last is None or first > last:
                return None
            return first, last
    return 0, DAY_SECONDS - 1


def last_second(time: str) -> int | None:
    """The last second a DICOM TM value of its precision holds (HH: HH:59:59)."""
    seconds = day_seconds(time)
    if seconds is None:
        return None
    digits = len(normal_time(time).strip().partition(".")[0])
    return min(seconds + {2: 3599, 4: 59}.get(digits, 0), DAY_SECONDS - 1)


def _scope(params: list[tuple[str, str]]) -> tuple[str, str]:
    """The search's own StudyDate range, as (first, last) YYYYMMDD ('' for an open end)."""
    for key, value in params:
        if key in _DATE_KEYS:
            low, sep, high = value.partition("-")
            return (low, high) if sep else (low, low)
    return "", ""


def _whole(scope: tuple[str, str]) -> str:
    """A StudyDate range of every date in `scope` (open ends stay open; one end at least is
    given, as a range must)."""
    low, high = scope
    return f"{low}-{high}" if low or high else f"-{LAST_DATE}"


def _windows(scope: tuple[str, str], first: str, last: str) -> list[str]:
    """Two StudyDate ranges inside `scope` that split the listed dates: at their middle, or,
    when all are one day, the days before and after it."""
    low, high = scope
    below, above = (_date(day) for day in split_days(first, last))
    windows = []
    if not low or low <= below:
        windows.append(f"{low}-{below}")
    if not high or above <= high:
        windows.append(f"{above}-{high}")
    return windows


def split_days(first: str, last: str) -> tuple[int, int]:
    """The last day of the lower window and the first of the upper (date.toordinal) that
    split the listed dates `first`..`last` (YYYYMMDD): at their middle day, or, when they are
    one day, the days before and after it (a day cannot be split by date)."""
    lo, hi = _day(first), _day(last)
    return ((lo + hi) // 2, (lo + hi) // 2 + 1) if lo < hi else (lo - 1, lo + 1)


def _is_day(date: str) -> bool:
    try:
        return dt.date(2, 1, 1).toordinal() <= _day(date) < dt.date(9999, 12, 31).toordinal()
    except ValueError:
        return False


def _day(date: str) -> int:
    return dt.datetime.strptime(date, "%Y%m%d").date().toordinal()


def _date(day: int) -> str:
    return dt.date.fromordinal(day).strftime("%Y%m%d")


def split_times(
    first: int | None, last: int | None, scope: tuple[int, int] = (0, DAY_SECONDS - 1)
) -> list[tuple[int, int]]:
    """Two ranges of the seconds in `scope` (by default the whole day) that split the times
    listed, `first`..`last`: at their middle, or, when they are one second, the seconds
    before and after it; at the scope's middle when none was listed."""
    lo, hi = scope
    if first is None or last is None:
        middle = (lo + hi + 1) // 2
        ranges = [(lo, middle - 1), (middle, hi)]
    elif first < last:
        middle = (first + last) // 2
        ranges = [(lo, middle), (middle + 1, hi)]
    else:
        ranges = [(lo, first - 1), (first + 1, hi)]
    # (times outside the scope: a server that ignored the search's StudyTime)
    return [(max(a, lo), min(b, hi)) for a, b in ranges if max(a, lo) <= min(b, hi)]


def day_seconds(time: str | None) -> int | None:
    """A DICOM TM value (HH, HHMM, HHMMSS, with .FFFFFF) as seconds into the day; None when
    it is none."""
    if not time:
        return None
    digits = normal_time(time).strip().partition(".")[0]
    if len(digits) not in (2, 4, 6) or not digits.isdigit():
        return None
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return min(hours * 3600 + minutes * 60 + seconds, DAY_SECONDS - 1)


def normal_date(date: str) -> str:
    """A DA value in the form ranges compare: the retired `2020.01.01` as `20200101`; any
    other value as it was sent."""
    if _OLD_DATE.fullmatch(date.strip()):
        return date.strip().replace(".", "")
    return date


def normal_time(time: str) -> str:
    """A TM value in the form ranges compare: the retired `12:30:00.5` as `123000.5`; any
    other value as it was sent."""
    if _OLD_TIME.fullmatch(time.strip()):
        return time.strip().replace(":", "")
    return time


def tm(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def tm_range(first: int, last: int) -> str:
    """A StudyTime range of the seconds `first`..`last`, each whole: `HHMMSS` is the instant
    HH:MM:SS.000000, so a study of 11:59:59.5 is in no window up to `115959` (the embedded
    server and Orthanc both left it out); the last second of the day is left open, for a leap
    second (`235960`)."""
    high = "" if last >= DAY_SECONDS - 1 else f"{tm(last)}.999999"
    return f"{tm(first)}-{high}"
