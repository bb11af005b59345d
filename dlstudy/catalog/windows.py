"""Windows of the study space a catalog pull asks for: StudyDate ranges, then StudyTime ranges.

A window is a date range (`StudyDate=lo-hi`; the outermost ends open, so odd dates such as
18000101 or 30000101 are still found) or, for a day that alone holds more than a page, a range
of seconds of that day (`StudyTime=HHMMSS-HHMMSS`). The root is the whole scope of the pull: no
StudyDate at all (so it also finds studies without one) or the user's --study-date range.
Splitting halves a window; a one-second window cannot be split any further.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..dicomweb.silent_cut import (
    ListedDates,
    split_days,
    split_times,
    tm,
    tm_range,
    unmatched_key,
)

# The span a root without a date range is split over; its two outer halves are open-ended.
FIRST_DAY = dt.date(1800, 1, 1)
LAST_DAY = dt.date(2199, 12, 31)
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Window:
    """`lo`/`hi` are day numbers (date.toordinal), inclusive; `open_lo`/`open_hi` drop that end
    from the query. `t_lo`/`t_hi` (seconds, inclusive) narrow a single day by StudyTime.
    `dated` False is the root of an undated scope: no StudyDate key at all."""

    lo: int
    hi: int
    open_lo: bool = False
    open_hi: bool = False
    t_lo: int | None = None
    t_hi: int | None = None
    dated: bool = True

    @classmethod
    def root(cls, study_date: str | None) -> Window:
        """The whole scope: no StudyDate key, or the --study-date range (DICOM form)."""
        if not study_date:
            return cls(FIRST_DAY.toordinal(), LAST_DAY.toordinal(), True, True, dated=False)
        low, sep, high = study_date.partition("-")
        if not sep:
            high = low
        return cls(
            _day(low) if low else FIRST_DAY.toordinal(),
            _day(high) if high else LAST_DAY.toordinal(),
            open_lo=not low,
            open_hi=not high,
        )

    @property
    def key(self) -> str:
        """A stable text form, the window's identity in the catalog's `windows` table."""
        if not self.dated:
            return "*"
        dates = f"{'' if self.open_lo else _date(self.lo)}-{'' if self.open_hi else _date(self.hi)}"
        if self.t_lo is None or self.t_hi is None:
            return dates
        return f"{dates} {tm(self.t_lo)}-{tm(self.t_hi)}"

    @classmethod
    def from_key(cls, key: str) -> Window:
        if key == "*":
            return cls.root(None)
        dates, _, times = key.partition(" ")
        window = cls.root(dates)
        if times:
            low, _, high = times.partition("-")
            window = Window(window.lo, window.hi, t_lo=_seconds(low), t_hi=_seconds(high))
        return window

    def params(self) -> list[tuple[str, str]]:
        """The matching keys that select this window."""
        if not self.dated:
            return []
        low = "" if self.open_lo else _date(self.lo)
        high = "" if self.open_hi else _date(self.hi)
        params = [("StudyDate", low if low == high else f"{low}-{high}")]
        if self.t_lo is not None and self.t_hi is not None:
            params.append(("StudyTime", tm_range(self.t_lo, self.t_hi)))
        return params

    def unmatched_key(self, date: str | None, time: str | None) -> str | None:
        """The key of this window ("StudyDate", "StudyTime") that a study of `date` and
        `time`, sent as one of its matches, does not match: the server ignored it. None
        when it matches, or its value cannot be read."""
        return unmatched_key(self.params(), date, time)

    @property
    def splittable(self) -> bool:
        if self.t_lo is not None and self.t_hi is not None:
            return self.t_hi > self.t_lo
        return True

    def split(self) -> tuple[Window, Window]:
        """Two halves: of the days, or, for one day, of its seconds."""
        if not self.dated:
            root = Window(self.lo, self.hi, True, True)
            return root.split()
        if self.lo < self.hi:
            mid = (self.lo + self.hi) // 2
            return (
                Window(self.lo, mid, open_lo=self.open_lo),
                Window(mid + 1, self.hi, open_hi=self.open_hi),
            )
        t_lo = 0 if self.t_lo is None else self.t_lo
        t_hi = DAY_SECONDS - 1 if self.t_hi is None else self.t_hi
        if t_lo >= t_hi:
            raise ValueError(f"window {self.key} cannot be split")
        mid = (t_lo + t_hi) // 2
        return (
            Window(self.lo, self.hi, t_lo=t_lo, t_hi=mid),
            Window(self.lo, self.hi, t_lo=mid + 1, t_hi=t_hi),
        )


def windows_to_check(window: Window, dates: ListedDates) -> list[Window]:
    """Where a cut listing of `window` would show studies it did not send, `dates` being those
    its short page listed: `window` split where those dates split (silent_cut.split_days), at its
    own middle when none of them has a date (an archive listing its undated studies first);
    and when they are all one day, which is in neither date half, that day split where their
    times split (silent_cut.split_times)."""
    if dates.first is None or dates.last is None:
        return list(window.split()) if window.t_lo is None and window.lo < window.hi else []
    halves = []
    if window.t_lo is None:
        below, above = split_days(dates.first, dates.last)
        if window.dated:
            lo, hi, open_lo, open_hi = window.lo, window.hi, window.open_lo, window.open_hi
        else:
            lo, hi, open_lo, open_hi = FIRST_DAY.toordinal(), LAST_DAY.toordinal(), True, True
        if lo <= below:
            halves.append(Window(lo, below, open_lo=open_lo))
        if above <= hi:
            halves.append(Window(above, hi, open_hi=open_hi))
    if dates.first == dates.last:
        day = _day(dates.first)
        t_lo = 0 if window.t_lo is None else window.t_lo
        t_hi = DAY_SECONDS - 1 if window.t_hi is None else window.t_hi
        for low, high in split_times(dates.first_time, dates.last_time):
            if max(low, t_lo) <= min(high, t_hi):
                halves.append(Window(day, day, t_lo=max(low, t_lo), t_hi=min(high, t_hi)))
    return halves


def recent(days: int, today: dt.date | None = None) -> Window:
    """From `days` days ago, open-ended: where new studies and new instances usually land."""
    start = (today or dt.date.today()) - dt.timedelta(days=days)
    return Window(start.toordinal(), LAST_DAY.toordinal(), open_hi=True)


def _day(text: str) -> int:
    return dt.datetime.strptime(text, "%Y%m%d").date().toordinal()


def _date(day: int) -> str:
    date = dt.date.fromordinal(day)
    return f"{date.year:04}{date.month:02}{date.day:02}"  # (strftime leaves years < 1000 short)


def _seconds(text: str) -> int:
    return int(text[:2]) * 3600 + int(text[2:4]) * 60 + int(text[4:6])
