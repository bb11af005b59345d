"""`catalog pull`: every study of the scope into the catalog, window by window.

The walk. A window is asked for its first page (`limit` = the page size). A page that is not
truncated (no `Warning: 299`, no 206, fewer results than asked) is the whole window. A
truncated one is either paged by offset (when the server honours offset, found out once per
catalog by asking the second page: new results or the same ones) or split in two: by date,
then by time of day, so a server that caps pages at one or two results and ignores offset is
still enumerated completely. `--walk split` splits even when offset works (deep offsets are
slow on some archives). A window that cannot be split (one second of one day) and still holds
more than a page is recorded as unreachable, with the server's count, and the pull exits 1.

A short page is checked once per length (the page after it; when that brings nothing, the
window split at the middle of the dates listed): a server that cuts silently, even one that
sends nothing past its cap at any offset (Orthanc's LimitFindResults), has its windows split.

Studies without a StudyDate are found when the first page of the whole scope holds everything,
or when that scope is paged by offset; once the walk splits by date they cannot be asked for:
if the server gave a count, how many there are is reported as unreachable; if not, and the
catalog holds undated studies, that some may be missing (count unknown); if it holds none, a
note says undated studies, if any, may be missing. Studies without a StudyTime are the same
within a day split by time of day (no time range matches an empty time): counted from the
server's count of the day, or else unreachable (count unknown) when the catalog holds such
studies of that day, a note when it holds none.

Later pulls (`update`) ask for what can be new: each window's first page again, skipped when
the count the server reports equals the studies the catalog has there; when only new studies
were added, and the server keeps them at the end of the listing (as the archives that order by
insertion do), the pages from the known count on hold exactly them (checked: the pages must
start with studies the catalog knows and bring exactly as many new ones as the count grew);
otherwise the window is walked again. The last `--recent` days are always listed again, which
is where studies gain instances. `--full` walks everything again, and once every window was
listed, the catalogued studies it did not find are gone: removed, and recorded as 'deleted'
(with a split walk, only studies with a calendar StudyDate, the ones a window could find).
Whatever a later pull finds different is recorded in `changes`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from ..dicomweb.qido import TAG_SERIES_UID, Pager, first_count, first_int, first_value
from ..dicomweb.search import StudyQuery, StudyRecord
from ..dicomweb.silent_cut import TIME_KEYS, ListedDates, time_scope, tm_range, warn_if_one_second
from ..errors import IncompleteListingError, ServerError
from ..flow.pool import first_error
from ..http.client import Transport
from ..http.urls import NOT_ASKED_FOR, can_be_asked_for, redact_url, study_url
from .store import Catalog, OpenWindow, Pull
from .summary import PullSummary
from .windows import Window, recent, windows_to_check

log = logging.getLogger(__name__)

T = TypeVar("T")

WINDOW_CONCURRENCY = 4  # windows asked at once: more gains little and crowds the server
SERIES_CONCURRENCY = 4
SERIES_BATCH = 200  # studies whose series are listed, then written, at a time
TAIL_OVERLAP = 8  # known studies a tail must start with, to show the order held
MAX_WINDOW = 100_000_000  # studies paged by offset in one window: past it, a server inventing
MAX_TAIL = 100_000  # new studies read from a tail at most (held until written); more: walk
TAG_SERIES_NUMBER = "00200011"
TAG_SERIES_DESCRIPTION = "0008103E"
TAG_SERIES_MODALITY = "00080060"
TAG_SERIES_INSTANCES = "00201209"
SERIES_FIELDS = (TAG_SERIES_DESCRIPTION, TAG_SERIES_NUMBER, TAG_SERIES_INSTANCES)


@dataclass(frozen=True)
class Page:
    records: list[StudyRecord]
    truncated: bool  # the server said or showed there is more
    remaining: int | None  # "N additional results", when the server says so


class Harvester:
    def __init__(
        self,
        catalog: Catalog,
        transport: Transport,
        query: StudyQuery,
        *,
        page_size: int,
        policy: Any,
        walk: str,
        recent_days: int,
        full: bool,
        level: str,
        page_size_option: str | None = "--page-size",
    ) -> None:
        self.catalog = catalog
        self.page_size_option = page_size_option  # named when the server's cap is found
        self.transport = transport
        self.query = query
        self.page_size = page_size
        self.policy = policy
        self.walk = walk
        self.recent_days = recent_days
        self.full = full
        self.level = level
        self.lock = anyio.Lock()
        self.offset_ok: bool | None = None
        # The page length at which this server cuts a listing without saying so (Orthanc's
        # LimitFindResults): a page that long is a full one.
        self.silent_cap: int | None = None
        # A listing this long ended with nothing after it: any cap is at least that, so a
        # shorter page is a whole window.
        self.whole_below = 0
        self.says_cut = False  # the server said it cut a page (Warning 299, 206): none is silent

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every catalog call goes through here: one at a time, off the event loop."""
        async with self.lock:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # --- the pull --------------------------------------------------------------------------

    async def run(self) -> PullSummary:
        """The pull; one that fails or is cancelled carries what it had recorded so far as
        `.summary` of its exception (for `--json`)."""
        started = time.monotonic()
        summary = PullSummary()
        try:
            await self._run(summary)
        except BaseException as exc:
            self._recorded(summary)
            summary.seconds = time.monotonic() - started
            exc.summary = summary  # type: ignore[attr-defined]
            raise
        summary.seconds = time.monotonic() - started
        return summary

    def _recorded(self, summary: PullSummary) -> None:
        """The requests and studies the catalog holds for a pull that stopped: read here,
        not through `db`, as the walk's tasks have all ended (and a cancelled one cannot
        wait for the lock)."""
        if summary.pull is None:
            return
        with contextlib.suppress(Exception):  # a failure of the catalog itself: left at 0
            summary.requests = self.catalog.requests(summary.pull)
            summary.studies = self.catalog.count_in(Window.root(None))

    async def _run(self, summary: PullSummary) -> None:
        c = self.catalog
        pull = await self.db(c.unfinished_pull)
        summary.resumed = pull is not None
        if pull is None:
            earlier = await self.db(c.finished_pulls)
            kind = "first" if earlier == 0 else "full" if self.full else "update"
            pull = await self.db(c.start_pull, kind, self._first_windows(kind))
        summary.pull, summary.kind = pull.number, pull.kind
        stored = await self.db(c.get_meta, "offset_ok")
        self.offset_ok = None if stored is None else stored == "1"
        cap = await self.db(c.get_meta, "silent_cap")  # a resumed pull pages on at that cap
        self.silent_cap = None if cap is None else int(cap)
        limiter = anyio.CapacityLimiter(WINDOW_CONCURRENCY)

        async def one(window: OpenWindow) -> None:
            async with limiter:
                await self._window(pull, window)

        # Round by round: a round's split windows are the next round's.
        while windows := await self.db(c.open_windows, pull.number):
            with first_error():
                async with anyio.create_task_group() as tg:
                    for window in windows:
                        tg.start_soon(one, window)
        await self.db(c.merge, pull)
        summary.unreachable = await self.db(c.unreachable, pull.number)
        # (before a --full pull removes any; the root's count holds those it counted)
        untimed = await self.db(self._untimed, pull, summary)
        if pull.kind == "full":
            if summary.unreachable == 0:
                await self.db(c.remove_unseen, pull, Window.root(self.query.study_date))
            else:
                summary.notes.append(
                    "studies gone from the archive were not looked for: "
                    "part of it could not be listed"
                )
        summary.new, summary.changed, summary.deleted = await self.db(c.found, pull.number)
        if self.level == "series":
            await self._series(pull, summary)
        undated = max(0, await self.db(self._outside_windows, pull) - untimed)
        if undated:
            summary.notes.append(
                f"{undated} studies of the server's count are in no date window "
                "(no StudyDate?) and could not be asked for"
            )
            summary.unreachable = (
                None if summary.unreachable is None else (summary.unreachable + undated)
            )
        elif await self.db(self._undated_cut, pull):
            summary.notes.append(
                "the search was cut, so it was split by date, and the archive has studies "
                "without a StudyDate, which no date window finds: those past the first page "
                "could not be asked for (--study-date catalogs the dated ones alone)"
            )
            summary.unreachable = None
        elif await self.db(self._split_uncounted, pull):
            summary.notes.append(
                "the search gave no count and was split by date: studies without a StudyDate, "
                "which no date window finds, may be missing past its first page (--study-date "
                "catalogs the dated ones alone)"
            )
        # Read before the pull is marked finished: the checkpoint that follows, failing (a
        # full disk), leaves the connection unusable, and the summary said 0 of both.
        summary.requests = await self.db(c.requests, pull.number)
        summary.studies = await self.db(lambda: c.count_in(Window.root(None)))
        await self.db(
            c.finish_pull,
            pull,
            new=summary.new,
            changed=summary.changed,
            unreachable=summary.unreachable,
        )

    def _outside_windows(self, pull: Pull) -> int:
        """Studies the server counted in the whole scope that no window of the walk found."""
        root = Window.root(self.query.study_date)
        state, reported = self.catalog.window_state(pull.number, root.key)
        if state != "split" or reported is None:
            return 0
        return max(0, reported - self.catalog.count_in(root))

    def _untimed(self, pull: Pull, summary: PullSummary) -> int:
        """Studies without a StudyTime in the days the walk split by time of day: a time range
        never matches an empty time (Orthanc), so past a day's first page they cannot be asked
        for. Counted when the server counted the day (its count less its two time halves' and
        the untimed ones catalogued), and that count returned; otherwise unknown: unreachable
        when the catalog holds such studies of the day (its first page listed some), a note
        when it holds none, as for studies without a StudyDate."""
        counted: dict[str, int] = {}
        seen: list[str] = []
        uncounted: list[str] = []
        for day, reported in self.catalog.split_days(pull.number):
            halves = [self.catalog.window_state(pull.number, h.key)[1] for h in day.split()]
            untimed = self.catalog.untimed_in(day)
            if reported is not None and None not in halves:
                if (missing := reported - sum(h or 0 for h in halves) - untimed) > 0:
                    counted[day.key] = missing
            elif untimed:
                seen.append(day.key)
            else:
                uncounted.append(day.key)
        missing = sum(counted.values())
        if missing:
            summary.notes.append(
                f"{missing} studies of the server's count of {_days(list(counted))} are in no "
                "time window (no StudyTime?) and could not be asked for"
            )
            summary.unreachable = None if summary.unreachable is None else (
                summary.unreachable + missing
            )  # fmt: skip
        if seen:
            summary.notes.append(
                f"the search of {_days(seen)} was cut, so it was split by time of day, and the "
                "day has studies without a StudyTime, which no time window finds: those past "
                "its first page could not be asked for"
            )
            summary.unreachable = None
        elif uncounted:
            summary.notes.append(
                f"the search of {_days(uncounted)} gave no count and was split by time of day: "
                "studies without a StudyTime, which no time window finds, may be missing past "
                "its first page"
            )
        return missing

    def _undated_cut(self, pull: Pull) -> bool:
        """Whether the whole scope was split uncounted in an archive with undated studies
        (its first page listed some): more of them may be past the cut."""
        return self._split_uncounted(pull) and self.catalog.undated()

    def _split_uncounted(self, pull: Pull) -> bool:
        """Whether the whole scope, no StudyDate asked for, was split with no count to tell
        how many it holds: undated studies past the cut, if any, no window can ask for. (Not
        counted as unreachable: none may exist, and the pull cannot tell, every night.)"""
        root = Window.root(self.query.study_date)
        state, reported = self.catalog.window_state(pull.number, root.key)
        return not root.dated and state == "split" and reported is None

    def _first_windows(self, kind: str) -> list[tuple[Window, str]]:
        root = Window.root(self.query.study_date)
        if kind != "update":
            return [(root, "walk")]
        windows = [(root, "probe")]
        latest = recent(self.recent_days)
        if root.dated:  # the recent days inside the scope's own range
            if not root.open_hi and root.hi < latest.lo:
                return windows
            latest = Window(max(latest.lo, root.lo), root.hi, open_lo=False, open_hi=root.open_hi)
        windows.append((latest, "walk"))
        return windows

    # --- one window ------------------------------------------------------------------------

    async def _window(self, pull: Pull, open_window: OpenWindow) -> None:
        window, mode = open_window.window, open_window.mode
        if open_window.state == "paging":
            await self._page_on(pull, window, open_window.next_offset, set())
            return
        first = await self._page(window, 0)
        if not first.truncated and await self._cut_silently(pull, window, first):
            first = Page(first.records, True, first.remaining)
        if not first.truncated:
            await self.db(self.catalog.record, pull.number, window, first.records, state="done",
                          reported=len(first.records), requests=1)  # fmt: skip
            return
        total = None if first.remaining is None else len(first.records) + first.remaining
        if mode == "probe":
            known = await self.db(self.catalog.count_in, window)
            if total is not None and total == known:
                await self.db(self.catalog.record, pull.number, window, [], state="unchanged",
                              reported=total, requests=1)  # fmt: skip
                return
            growth = None if total is None else total - known
            if self.offset_ok is not False and known >= TAIL_OVERLAP and (growth or 0) >= 0:
                tail = await self._tail(window, known, growth)
                if tail is not None:
                    records, asked = tail
                    await self.db(self.catalog.record, pull.number, window, records,
                                  state="done", reported=total, requests=1 + asked)  # fmt: skip
                    return
        second: Page | None = None
        if self.offset_ok is None and self.walk == "auto":
            second = await self._page(window, len(first.records))
            seen = {r.study_uid for r in first.records}
            self.offset_ok = any(r.study_uid not in seen for r in second.records)
            await self.db(self.catalog.set_meta, "offset_ok", "1" if self.offset_ok else "0")
        if self.walk == "auto" and self.offset_ok:
            await self.db(self.catalog.record, pull.number, window, first.records,
                          state="paging", next_offset=len(first.records), reported=total,
                          requests=1)  # fmt: skip
            await self._page_on(
                pull, window, len(first.records), {r.study_uid for r in first.records}, second
            )
            return
        asked = 1 if second is None else 2
        if window.splittable:
            halves = [(half, mode) for half in window.split()]
            await self.db(self.catalog.record, pull.number, window, first.records, state="split",
                          reported=total, children=halves, requests=asked)  # fmt: skip
        else:
            log.warning("%s: more than a page in one second, and offset is ignored", window.key)
            await self.db(self.catalog.record, pull.number, window, first.records,
                          state="unreachable", reported=total, requests=asked)  # fmt: skip

    async def _cut_silently(self, pull: Pull, window: Window, page: Page) -> bool:
        """Whether a short page was cut by the server without saying so: the page after it
        (asked for once per length not yet known to be whole) brings other studies. Then the
        server honours offset too, and pages of that length are full ones from now on (and in
        later pulls, recorded in `meta`; a shorter page is still checked: the cap may have been
        lowered)."""
        length = len(page.records)
        if self.says_cut or length < max(1, self.whole_below):
            return False
        after = await self._page(window, length, probe=True)
        await self.db(self.catalog.record, pull.number, window, [], state="todo", requests=1)
        seen = {r.study_uid for r in page.records}
        paged_on = any(r.study_uid not in seen for r in after.records)
        dates = ListedDates.of(page.records)
        if not paged_on and not await self._dates_bring_more(pull, window, page.records, dates):
            self.whole_below = max(self.whole_below, length)
            warn_if_one_second(f"window {window.key}", dates, length)
            return False
        if self.page_size_option is None:
            log.warning("the server cuts pages at %d results without saying so", length)
        else:
            log.warning(
                "the server cuts pages at %d results without saying so: %s %d spares a request",
                length,
                self.page_size_option,
                length,
            )
        self.silent_cap = length
        await self.db(self.catalog.set_meta, "silent_cap", str(length))
        if self.offset_ok is None:
            self.offset_ok = paged_on
            await self.db(self.catalog.set_meta, "offset_ok", "1" if paged_on else "0")
        return True

    async def _dates_bring_more(
        self, pull: Pull, window: Window, records: list[StudyRecord], dates: ListedDates
    ) -> bool:
        """Whether `window`, split where the `dates` (or, all one day, the times) of its short
        page `records` split, brings a study that page did not: a server that cuts silently
        and sends nothing past its cap whatever the offset (Orthanc's LimitFindResults) fills
        each part up to its cap (windows.windows_to_check)."""
        halves = windows_to_check(window, dates)
        seen = {r.study_uid for r in records}
        for half in halves:
            page = await self._page(half, 0, probe=True)
            await self.db(self.catalog.record, pull.number, window, [], state="todo", requests=1)
            if any(r.study_uid not in seen for r in page.records):
                return True
        return False

    async def _page_on(
        self,
        pull: Pull,
        window: Window,
        offset: int,
        previous: set[str],
        fetched: Page | None = None,
    ) -> None:
        """Page `window` by offset from `offset` on, each page committed with its offset."""
        page = fetched if fetched is not None else await self._page(window, offset)
        asked = 1  # the first page was asked for here, or by the caller (the offset test)
        while True:
            if offset > MAX_WINDOW:
                shown = redact_url(self.transport.base_url)
                raise ServerError(
                    f"{shown} keeps sending new studies past {MAX_WINDOW:,} in window "
                    f"{window.key}: stopped",
                    url=shown,
                )
            uids = {r.study_uid for r in page.records}
            if not page.records:
                await self.db(self.catalog.record, pull.number, window, [], state="done",
                              next_offset=offset, requests=asked)  # fmt: skip
                return
            if uids <= previous:  # the same page again: offset stopped working
                halves = [(half, "walk") for half in window.split()] if window.splittable else []
                await self.db(self.catalog.record, pull.number, window, [],
                              state="split" if halves else "unreachable", children=halves,
                              requests=asked)  # fmt: skip
                return
            more = page.truncated
            state = "paging" if more else "done"
            following: Page | None = None
            with first_error():
                async with anyio.create_task_group() as tg:  # the next page comes meanwhile
                    tg.start_soon(
                        self._record_page, pull, window, page, state, offset + len(page.records),
                        asked,
                    )  # fmt: skip
                    if more:
                        following = await self._page(window, offset + len(page.records))
            if following is None:
                return
            offset += len(page.records)
            previous, page, asked = uids, following, 1

    async def _record_page(
        self, pull: Pull, window: Window, page: Page, state: str, next_offset: int, asked: int
    ) -> None:
        await self.db(self.catalog.record, pull.number, window, page.records, state=state,
                      next_offset=next_offset, requests=asked)  # fmt: skip

    async def _tail(
        self, window: Window, known: int, added: int | None
    ) -> tuple[list[StudyRecord], int] | None:
        """The studies after the `known` ones of the window's listing, if that is where the new
        ones are (None if not): the listing from `known - TAIL_OVERLAP` on must bring studies
        the catalog knows first, then only unknown ones to its end (and as many as the count
        grew, when the server counts). A study added in the middle of the listing shifts a
        known one past the overlap, which fails the check."""
        offset = known - TAIL_OVERLAP
        found: dict[str, StudyRecord] = {}
        checked = asked = 0
        while True:
            page = await self._page(window, offset)
            asked += 1
            uids = [r.study_uid for r in page.records]
            have = await self.db(self.catalog.known, uids) if uids else set()
            for record in page.records:
                if checked < TAIL_OVERLAP:  # the overlap: studies the catalog knows
                    if record.study_uid not in have:
                        return None
                    checked += 1
                elif record.study_uid in have:
                    return None  # a known study among the new: not where they are
                else:
                    found[record.study_uid] = record
            if checked < TAIL_OVERLAP:  # the listing ended before the overlap did
                return None
            if (added is not None and len(found) > added) or len(found) > MAX_TAIL:
                return None
            if not page.truncated:
                break
            offset += len(page.records)
        if added is not None and len(found) != added:
            return None
        return list(found.values()), asked

    def _params(self, window: Window) -> list[tuple[str, str]] | None:
        """The search's matching keys narrowed to `window`: its StudyDate range, and its
        StudyTime range inside the search's own StudyTime (one key each: a server may read
        only one of two); None when the window lies outside the search's own times."""
        own = self.query.params(_one(self.query.modalities))
        if window.dated:
            own = [(k, v) for k, v in own if k != "StudyDate"]
        narrowed = window.params()
        scope = time_scope(own)
        if window.t_lo is not None and window.t_hi is not None and scope is not None:
            low, high = max(window.t_lo, scope[0]), min(window.t_hi, scope[1])
            if low > high:
                return None
            own = [(k, v) for k, v in own if k not in TIME_KEYS]
            narrowed = [narrowed[0], ("StudyTime", tm_range(low, high))]
        return [*own, *narrowed]

    async def _page(self, window: Window, offset: int, *, probe: bool = False) -> Page:
        """A page of `window`'s studies from `offset`. A `probe` (the page after a short one,
        asked to find a silent cap) warns of nothing: what it brings is paged again if new."""
        pager = Pager(self.transport, self.page_size, self.policy)
        params = self._params(window)
        if params is None:
            return Page([], False, None)
        params += [("limit", str(self.page_size)), ("offset", str(offset))]
        answer = await pager.get_page(f"{self.transport.base_url}/studies", params)
        if answer is None:  # 404: no match, if the root is a DICOMweb root at all
            await pager.check_root()
            return Page([], False, None)
        items, truncated = answer
        self.says_cut = self.says_cut or truncated
        records = [r for r in map(StudyRecord.from_json, items) if r is not None]
        if (keyless := len(items) - len(records)) > 0 and not probe:
            log.warning(
                "the server sent %s without a Study Instance UID (0020000D): not catalogued",
                "a study result" if keyless == 1 else f"{keyless} study results",
            )
        self._check_matched(window, params, records)
        cap = self.page_size if self.silent_cap is None else min(self.page_size, self.silent_cap)
        more = truncated or len(items) >= cap or bool(pager.remaining)
        return Page(records, more, pager.remaining)

    def _check_matched(
        self, window: Window, params: list[tuple[str, str]], records: list[StudyRecord]
    ) -> None:
        """An IncompleteListingError when the answer for `window` holds a study outside it:
        the server ignores StudyDate or StudyTime (a gateway dropping them), so every window
        brings the same first studies; splitting would go on to one-second windows (2^17 a
        day) or, behind a silent cap, take those few for everything."""
        for record in records:
            key = window.unmatched_key(record.study_date, record.study_time)
            if key is None:
                continue
            asked = " and ".join(f"{k} {v}" for k, v in params if k in ("StudyDate", "StudyTime"))
            sent = record.study_date if key == "StudyDate" else record.study_time
            shown = redact_url(self.transport.base_url)
            raise IncompleteListingError(
                f"could not list {shown} completely: the server ignores {key} (asked for "
                f"{asked}, it sent a study of {sent}), so a search it cuts cannot be "
                "split into windows: lift its cap on search results, or let it honour offset",
                url=shown,
            )

    # --- series ----------------------------------------------------------------------------

    async def _series(self, pull: Pull, summary: PullSummary) -> None:
        """List the series of every study whose series are not in the catalog yet, or were
        listed for another instance count: one request per such study. A study whose series
        cannot be listed whole (paging cannot get them all, or fewer than the study's own
        series count: a cap on search results such as Orthanc's LimitFindResults) keeps what
        the catalog had, is counted in `summary.series_cut`, and is listed again next pull."""
        pager = Pager(self.transport, self.page_size, self.policy)
        limiter = anyio.CapacityLimiter(SERIES_CONCURRENCY)
        listed: list[tuple[str, list[tuple[Any, ...]]]] = []
        cut: list[str] = []

        async def one(uid: str, count: int | None) -> None:
            if not can_be_asked_for(uid):  # catalogued as sent (a download fails it), listed empty
                log.warning(
                    "the server lists a study with the UID %r, %s: its series are not catalogued",
                    uid[:80],
                    NOT_ASKED_FOR,
                )
                listed.append((uid, []))
                return
            keyless: list[int] = []
            async with limiter:
                try:
                    items = await pager.fetch_all(
                        f"{study_url(self.transport.base_url, uid)}/series",
                        [("includefield", tag) for tag in SERIES_FIELDS],
                        TAG_SERIES_UID,
                        keyless=lambda: keyless.append(1),
                    )
                except IncompleteListingError as exc:
                    log.warning("study %s: its series are not catalogued: %s", uid, exc)
                    cut.append(uid)
                    return
            found = len(items or ()) + len(keyless)
            if items is not None and count is not None and found < count:  # (404: gone since)
                log.warning(
                    "study %s: the server listed %d of its %d series (a cap on search results, "
                    "such as Orthanc's LimitFindResults?): its series are not catalogued",
                    uid, found, count,
                )  # fmt: skip
                cut.append(uid)
                return
            if keyless:
                log.warning(
                    "study %s: the server listed %d series without a Series Instance UID "
                    "(0020000E): not catalogued",
                    uid,
                    len(keyless),
                )
            rows = [
                (
                    uid,
                    series_uid,
                    first_value(item, TAG_SERIES_MODALITY),
                    first_int(item, TAG_SERIES_NUMBER),
                    first_value(item, TAG_SERIES_DESCRIPTION),
                    first_count(item, TAG_SERIES_INSTANCES),
                )
                for item in items or []
                if (series_uid := first_value(item, TAG_SERIES_UID)) is not None
            ]
            listed.append((uid, rows))

        while batch := await self.db(self.catalog.studies_without_series, SERIES_BATCH, cut):
            listed.clear()
            with first_error():
                async with anyio.create_task_group() as tg:
                    for uid, count in batch:
                        tg.start_soon(one, uid, count)
            asked = sum(can_be_asked_for(uid) for uid, _ in batch)
            await self.db(self.catalog.record_series, list(listed), asked, pull.number)
        summary.series_cut = len(cut)


def _days(keys: list[str]) -> str:
    """`20200301`, or `20200301 and 2 other days` (window keys of single days)."""
    first = next(part for part in sorted(keys)[0].split("-") if part)
    others = len(keys) - 1
    return first if not others else f"{first} and {others} other day{'s' * (others > 1)}"


def _one(modalities: tuple[str, ...]) -> str | None:
    return modalities[0] if modalities else None


def scope_of(query: StudyQuery) -> dict[str, Any]:
    """What a catalog's pulls must agree on: the filters, as sent."""
    return {
        "patient_id": query.patient_id,
        "patient_name": query.patient_name,
        "study_date": query.study_date,
        "accession": query.accession,
        "modalities": list(query.modalities),
        "filters": [list(f) for f in query.filters],
    }


__all__ = ["Harvester", "PullSummary", "scope_of"]
