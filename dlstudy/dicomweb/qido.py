"""QIDO-RS listings, paged and deduplicated (resolve.py turns them into a study's instances).

Servers page in different ways (DOMAIN.md): some honour limit/offset, some cap silently or with a
`Warning: 299`, static servers ignore offset and send the same page again, some send a lone
object instead of a list, 204 means no match. The pager below copes with all of them and
always terminates: it pages as long as pages bring new results, however many pages that takes
(an archive capping pages at 100 lists a million instances in 10,000 of them), and stops on an
empty page or a page with nothing new. A page shorter than asked for ends a listing only when a
count confirms it, or when the server has shown where it caps pages; otherwise the next page is
asked for, since some servers cap without saying so. A listing is never cut silently: when the
server still announces more results (a `Warning: 299`, a 206, or a series count not yet reached)
but the next page brings nothing new, it raises IncompleteListingError, and the run fails that
study.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import anyio.lowlevel
import httpx

from ..errors import (
    HttpStatusError,
    IncompleteListingError,
    ServerError,
    TransferError,
    UsageError,
)
from ..flow.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after, with_retries
from ..flow.watchdog import watchdog
from ..http.client import Transport, unframed
from ..http.curl import proxy_note
from ..http.failures import check_auth
from ..http.urls import redact_url
from .answers import (
    ROOT_HINT,
    TAG_KEY,
    answer_words,
    describe_answer,
    has_more_warning,
    ignored_keys_warning,
    json_of,
    keys_not_returned,
    refusal_words,
    remaining_of,
    root_problem,
)
from .media import DICOM_JSON, parse_media_type

log = logging.getLogger(__name__)

# A stop against a server that keeps inventing new results: far past any study, and past what
# one process holds (each result is kilobytes of parsed JSON). Reaching it fails the listing
# (IncompleteListingError); it never cuts it.
MAX_RESULTS = 10_000_000
# Series queries run concurrently; more than this gains nothing and crowds the server.
QIDO_CONCURRENCY = 4
# A QIDO page must arrive whole within this many --timeout windows (it is computed, then sent).
QIDO_WINDOWS = 2
JSON_TYPES = frozenset({DICOM_JSON, "application/json"})
# While a page is read and the next is being fetched: a pause for the loop every this many items.
YIELD_EVERY = 128

TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"
TAG_MODALITY = "00080060"
TAG_STUDY_DATE = "00080020"
TAG_STUDY_TIME = "00080030"
TAG_SERIES_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
TAG_STUDY_SERIES = "00201206"  # NumberOfStudyRelatedSeries
TAG_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
# A study-wide instance search: what a ref needs, and the count its completeness is checked by.
STUDY_INSTANCE_PARAMS = [
    ("includefield", tag) for tag in (TAG_SERIES_UID, TAG_MODALITY, TAG_STUDY_INSTANCES)
]


T = TypeVar("T")


def _whole(item: dict[str, Any]) -> dict[str, Any]:
    return item


def first_value(item: dict[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    value = values[0]
    if value is None or isinstance(value, dict | list):
        return None
    return unpadded(str(value))


def unpadded(text: str) -> str:
    """`text` without the padding DICOM gives a value of odd length (PS3.5 6.2: a space, or
    for a UID one NUL), which some servers leave in their JSON."""
    return text.strip().rstrip("\0").rstrip()


def first_int(item: dict[str, Any], tag: str) -> int | None:
    """An IS value: None unless a number within IS's range, -2^31 to 2^31-1 (PS3.5 6.2)."""
    value = first_value(item, tag)
    try:
        number = int(float(value)) if value is not None else None
    except (ValueError, OverflowError):  # not a number, or "1e999" / "inf"
        return None
    return number if number is not None and -(2**31) <= number < 2**31 else None


def first_count(item: dict[str, Any], tag: str) -> int | None:
    """A count (NumberOfStudyRelatedInstances, ...): None, unknown, unless 0 to 2^31-2. A
    server's -1, 2147483647 or 4294967295 for "unknown" would make a study complete with
    nothing on disk, fail it every night as short, or stop a catalog that keeps counts as
    32-bit integers."""
    number = first_int(item, tag)
    return number if number is not None and 0 <= number < 2**31 - 1 else None


@dataclass(frozen=True)
class SeriesRef:
    study_uid: str
    series_uid: str
    modality: str
    instance_count: int | None


def series_ref(study_uid: str, item: dict[str, Any]) -> SeriesRef | None:
    """The series a QIDO result describes (its modality interned: a few distinct values)."""
    series_uid = first_value(item, TAG_SERIES_UID)
    if series_uid is None:
        return None
    modality = sys.intern((first_value(item, TAG_MODALITY) or "").upper())
    return SeriesRef(study_uid, series_uid, modality, first_count(item, TAG_SERIES_INSTANCES))


_Page = tuple[list[dict[str, Any]], bool]


def _refused(exc: ServerError) -> bool:
    """Whether a search failed for a 4xx answer (after its retries)."""
    cause = exc.__cause__
    return isinstance(cause, HttpStatusError) and 400 <= cause.status_code < 500


# Matching keys every study search answers with anyway (PS3.18 Table 6.7.1-2): their
# absence says nothing of a key ignored.
_ALWAYS_RETURNED = frozenset({"StudyDate", "StudyInstanceUID", "includefield"})


class _NextPage:
    """A page asked for while the one before it is read; its failure is raised to whoever
    waits for it, not to the task group (a page not needed after all is cancelled)."""

    def __init__(
        self, tg: anyio.abc.TaskGroup, fetch: Callable[[], Awaitable[_Page | None]]
    ) -> None:
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()
        self._page: _Page | None = None
        self._error: Exception | None = None
        tg.start_soon(self._run, fetch)

    async def _run(self, fetch: Callable[[], Awaitable[_Page | None]]) -> None:
        with self._scope:
            try:
                self._page = await fetch()
            except Exception as exc:  # noqa: BLE001 - kept for the reader of the page
                self._error = exc
        self._done.set()

    async def result(self) -> _Page | None:
        await self._done.wait()
        if self._error is not None:
            error, self._error = self._error, None
            try:
                raise error
            finally:  # no cycle through this frame: the failed answer is freed at once
                del error
        return self._page

    def cancel(self) -> None:
        self._scope.cancel()


class Pager:
    """Walks one QIDO query through every page it has, retrying transient failures."""

    def __init__(
        self,
        transport: Transport,
        page_size: int,
        policy: RetryPolicy,
        *,
        matching_keys: Sequence[str] = (),
    ) -> None:
        if page_size < 1:  # the library's qido_page_size (the CLI's --page-size is checked)
            raise UsageError(f"qido_page_size must be 1 or more, not {page_size}")
        self.transport = transport
        self.page_size = page_size
        self.policy = policy
        # The matching keys a search must apply: a server that says it ignored one (Warning:
        # 299) answered a wider search than asked, a UsageError.
        self.matching_keys = matching_keys
        # Those not yet seen in results: a server that matched on one returns it (PS3.18).
        self._unchecked_keys = [k for k in matching_keys if k not in _ALWAYS_RETURNED]
        self._root_checked = False
        self.remaining: int | None = None  # what the last page's Warning 299 counted
        # The page size at which this server was seen to cut a listing without saying so (a
        # short page with more after it): a page that long is a full one.
        self.silent_cap: int | None = None
        # A listing of this many ended with nothing after it: any cap the server has is at
        # least that, so a shorter page is a whole listing.
        self.uncapped_below = 0
        self.last_listed: set[str] = set()  # the keys the last walk listed

    async def check_root(self) -> None:
        """A 404 means "no such study" only when a DICOMweb server says it: before believing
        one, ask the root's own study search, once; if what answers is no DICOMweb server (a
        mistyped path, a web page), the run stops with exit 3 saying what came back."""
        if self._root_checked:
            return
        base = self.transport.base_url
        response = await self.transport.get(
            f"{base}/studies", headers={"Accept": DICOM_JSON}, params={"limit": "1"}
        )
        check_auth(response, search=True)
        problem = root_problem(response)
        if problem is not None:
            shown = redact_url(base)
            raise ServerError(
                f"{shown} is not a DICOMweb root: {shown}/studies answered {problem} ({ROOT_HINT})",
                url=shown,
            )
        self._root_checked = True

    @overload
    async def fetch_all(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        counts_checked: bool = False,
        keyless: Callable[[], object] | None = None,
        unproven: Callable[[], object] | None = None,
    ) -> list[dict[str, Any]] | None: ...

    @overload
    async def fetch_all(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        counts_checked: bool = False,
        keep: Callable[[dict[str, Any]], T | None],
        keyless: Callable[[], object] | None = None,
        unproven: Callable[[], object] | None = None,
    ) -> list[T] | None: ...

    async def fetch_all(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        counts_checked: bool = False,
        keep: Callable[[dict[str, Any]], Any] = _whole,
        keyless: Callable[[], object] | None = None,
        unproven: Callable[[], object] | None = None,
    ) -> list[Any] | None:
        """What `keep` makes of each distinct result of the query keyed by `key_tag` (results
        it makes None of count, but are not returned); None when the URL is 404.
        IncompleteListingError when the server announces more than paging can get."""
        kept: list[Any] = []

        def each(item: dict[str, Any]) -> None:
            value = keep(item)
            if value is not None:
                kept.append(value)

        found = await self.walk(
            url, params, key_tag, expected, counts_checked=counts_checked, each=each,
            keyless=keyless, unproven=unproven,
        )  # fmt: skip
        return kept if found else None

    async def walk(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        counts_checked: bool = False,
        each: Callable[[dict[str, Any]], None],
        keyless: Callable[[], object] | None = None,
        page_read: Callable[[], Awaitable[object]] | None = None,
        unproven: Callable[[], object] | None = None,
    ) -> bool:
        """Call `each` with every distinct result of the query keyed by `key_tag`, page after
        page, and await `page_read` once each page is read (the page asked for meanwhile
        still arrives while it waits); False when the URL is 404.
        `counts_checked`: the caller checks what was listed against the counts the results
        carry, so a short page may end the listing. A result without a usable `key_tag` (no
        value, an empty or malformed one) cannot be told apart from the others, nor fetched:
        IncompleteListingError, or `keyless()` is called. `unproven()` is called when the
        listing ended with a page after a short one bringing nothing new: a whole listing, or
        a server that sends nothing past a silent cap whatever the offset (Orthanc).

        Each page's parsed JSON is dropped once `each` has read it: a listing of a million
        instances holds a million small values, not a million DICOM JSON objects.
        IncompleteListingError when the server announces more than paging can get."""
        # A task group wraps what is raised in it: errors are taken out and raised as they are.
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:
            try:
                found = await self._walk(
                    tg, url, params, key_tag, expected, counts_checked, each, keyless, page_read,
                    unproven,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - raised below, outside the group
                failed = exc
        if failed is not None:
            try:
                raise failed
            finally:  # this frame and the traceback would hold each other (and the page)
                del failed
        return found

    async def _walk(
        self,
        tg: anyio.abc.TaskGroup,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None,
        counts_checked: bool,
        each: Callable[[dict[str, Any]], None],
        keyless: Callable[[], object] | None,
        page_read: Callable[[], Awaitable[object]] | None,
        unproven: Callable[[], object] | None,
    ) -> bool:
        seen: set[str] = set()
        self.last_listed = seen
        seen_keyless: set[int] = set()
        offset = 0
        probing = 0  # the length of a short page whose end the next page is asked to confirm
        full = False  # whether the page before this one was as long as asked for

        def page_at(offset: int) -> Callable[[], Awaitable[_Page | None]]:
            params_now = [*params, ("limit", str(self.page_size)), ("offset", str(offset))]
            return lambda: self.get_page(url, params_now)

        upcoming: _NextPage | None = None
        try:
            while True:
                if upcoming is None:
                    try:
                        page = await page_at(offset)()
                    except ServerError as exc:
                        if not offset and _refused(exc) and url.endswith("/studies"):
                            # A refused study search, or no DICOMweb root at all (Orthanc's
                            # REST root answers 400): the root's own search says which.
                            await self.check_root()
                        raise
                else:
                    page, upcoming = await upcoming.result(), None
                if page is None:
                    await self.check_root()
                    return False
                items, truncated = page
                count, repeated = len(items), bool(items)
                new = 0
                for index, item in enumerate(items):
                    if index % YIELD_EVERY == 0 and index:
                        if (
                            upcoming is None
                            and new
                            and self._likely_more(count, truncated, seen, expected)
                        ):
                            # Asked for now, this page making progress: the server makes the
                            # next one while the rest of this one is read. (A page of fewer
                            # items is read before the next is asked for.)
                            upcoming = _NextPage(tg, page_at(offset + count))
                        if upcoming is not None:
                            await anyio.lowlevel.checkpoint()  # lets the request go out
                    key = first_value(item, key_tag)
                    if not key:
                        if keyless is None:
                            raise _keyless(url, key_tag)
                        # Told apart by content: a server that repeats a page repeats them.
                        content = hash(repr(item))
                        if content not in seen_keyless:
                            seen_keyless.add(content)
                            keyless()
                    elif key not in seen:
                        seen.add(key)
                        new += 1
                        each(item)
                del page, items  # the next page is awaited without this one's JSON
                if page_read is not None:
                    await page_read()
                if probing and new:
                    self.silent_cap = probing
                    log.info(
                        "%s: the server cut a page at %d results without saying so",
                        redact_url(url),
                        probing,
                    )
                if probing and not new:
                    self.uncapped_below = max(self.uncapped_below, probing)
                    if unproven is not None:
                        unproven()
                probing = 0
                if new == 0:
                    short_of = expected is not None and len(seen) < expected
                    if truncated or short_of:
                        raise _incomplete(url, len(seen), expected, repeated=repeated)
                    if repeated and offset:
                        log.info("%s repeats a page: server ignores offset", redact_url(url))
                        if full and expected is None and not counts_checked:
                            await self._check_all_sent(url, params, len(seen))
                    break
                if len(seen) > MAX_RESULTS:
                    shown = redact_url(url)
                    raise IncompleteListingError(
                        f"could not list {shown} completely: more than {MAX_RESULTS:,} "
                        "results, and the server keeps sending new ones",
                        url=shown,
                    )
                offset += count
                full = count == self.page_size
                if truncated or (expected is not None and len(seen) < expected):
                    continue
                if count < self.page_size:
                    if counts_checked or self._short_page_ends(count, expected):
                        break
                    probing = count
                    continue
                if count > self.page_size and expected is not None:
                    # More than asked for, as many as the count said: a server that ignores
                    # limit (a static DICOMweb tree) sent everything; asking again would
                    # fetch it twice.
                    break
        finally:
            if upcoming is not None:
                upcoming.cancel()  # not needed after all
        return True

    async def _check_all_sent(self, url: str, params: list[tuple[str, str]], count: int) -> None:
        """A server that ignores offset sent `count` results, as many as asked for, then the
        same again: if it honours limit, that page was cut at the limit and the rest cannot be
        paged to (IncompleteListingError); if it ignores limit too (a static tree), it sent
        everything it has. One page one shorter tells the two apart."""
        if count > 1:
            page = await self.get_page(url, [*params, ("limit", str(count - 1)), ("offset", "0")])
            if page is not None and len(page[0]) >= count:
                return
        shown = redact_url(url)
        raise IncompleteListingError(
            f"could not list {shown} completely: {count} results, as many as a page asks "
            "for, but the server sends the same results again for the next page (it ignores "
            "offset): the ones after them cannot be listed",
            url=shown,
        )

    def _short_page_ends(self, count: int, expected: int | None) -> bool:
        """Whether a page shorter than asked for ends the listing. Without a count to check
        against, it may be a cap the server does not announce (no Warning: 299, no 206): the
        next page is asked for, unless what this server has shown rules a cap out. One result
        is no cap."""
        if expected is not None or count < 2:
            return True
        if self.silent_cap is not None:
            return count < self.silent_cap
        return count < self.uncapped_below

    def _likely_more(
        self, count: int, truncated: bool, seen: set[str], expected: int | None
    ) -> bool:
        """Whether the page after this one of `count` results will be asked for, as far as
        the loop in _walk can tell before it has read all of this one."""
        if len(seen) > MAX_RESULTS:
            return False
        if count > self.page_size and expected is not None:
            return False  # everything at once (limit ignored): asked again only if short
        if self.silent_cap is not None and count >= self.silent_cap:
            return True
        return truncated or count >= self.page_size

    async def get_page(
        self, url: str, params: list[tuple[str, str]]
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page (None for 404): its items and whether the server says it was truncated;
        transient failures retried, lasting ones a ServerError. `remaining` then holds the
        count of further results a `Warning: 299` gave, if any."""

        async def attempt() -> tuple[list[dict[str, Any]], bool] | None:
            # httpx's read timeout is per chunk: a dripping QIDO answer would pass it forever.
            # A page is small, so the whole of it gets QIDO_WINDOWS watchdog windows.
            with watchdog(self.policy.window * QIDO_WINDOWS, "QIDO search"):
                response = await self.transport.get(
                    url, headers={"Accept": DICOM_JSON}, params=params
                )
                if response.status_code == 404:
                    return None
                return self._read_page(response)
            raise AssertionError("unreachable: the watchdog raises when it cancels")

        try:
            return await with_retries(attempt, what="QIDO search", policy=self.policy)
        except TransferError as exc:
            raise ServerError(str(exc), url=exc.url) from exc

    def _read_page(self, response: httpx.Response) -> tuple[list[dict[str, Any]], bool]:
        check_auth(response, search=True)
        self.remaining = remaining_of(response.headers)
        shown = redact_url(str(response.url))
        if response.status_code == 204:
            log.debug("QIDO %s: HTTP 204, no results", shown)
            return [], False
        if response.status_code not in (200, 206):
            said = refusal_words(response)
            raise HttpStatusError(
                f"HTTP {response.status_code} on {shown}{proxy_note(response)}"
                + (f": {said}" if said else ""),
                status_code=response.status_code,
                url=shown,
                retryable=response.status_code in RETRYABLE_STATUS,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        ignored = ignored_keys_warning(response.headers, self.matching_keys)
        if ignored is not None:
            raise UsageError(
                f"the server searched without some of the filters given, which it cannot "
                f"match on ({ignored[:200]}): its results are not what was asked for; "
                "leave those filters out"
            )
        if not response.content.strip():
            return [], False
        try:
            data = json_of(response)
        except RecursionError as exc:  # arrays nested thousands deep: no QIDO answer
            raise ServerError(
                f"QIDO answer nests too deep to be DICOM JSON on {shown}", url=shown
            ) from exc
        except ValueError as exc:
            what = describe_answer(response)
            if parse_media_type(response.headers.get("content-type", "")).mime in JSON_TYPES:
                # DICOM JSON it says it is, and cut or broken: a server fault, not a wrong root.
                said = (
                    f"QIDO answer is malformed JSON ({what}, {len(response.content)} bytes: "
                    f"cut short?) on {shown}"
                )
                if unframed(response):  # a cut HTTP cannot see: asked again
                    raise TransferError(said, url=shown, retryable=True) from exc
                raise ServerError(said, url=shown) from exc
            raise ServerError(
                f"QIDO answer is not JSON ({what}) on {shown}: is --url a DICOMweb root? "
                f"({ROOT_HINT})",
                url=shown,
            ) from exc
        if isinstance(data, dict):
            data = [data]  # some servers send a lone object for a single match
        if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
            raise ServerError(
                f"QIDO answer is not a list of DICOM JSON objects on {shown}", url=shown
            )
        if data and not any(TAG_KEY.fullmatch(key) for item in data for key in item):
            # `{"error": "quota exceeded"}` with a 200: no attribute at all, no result
            words = answer_words(response)
            raise ServerError(
                f"QIDO answer holds no DICOM attribute ({describe_answer(response)}"
                f"{f': {words}' if words else ''}) on {shown}",
                url=shown,
            )
        if data and self._unchecked_keys:
            for key in keys_not_returned(data, self._unchecked_keys):
                log.warning(
                    "the server's answers carry no %s, which the search matches on: a server "
                    "that ignored it (and said nothing) sent studies whatever their %s",
                    key, key,
                )  # fmt: skip
            self._unchecked_keys = []  # (once: the first page with results tells)
        truncated = response.status_code == 206 or has_more_warning(response.headers)
        log.debug(
            "QIDO %s: HTTP %d, %d result%s%s",
            shown,
            response.status_code,
            len(data),
            "" if len(data) == 1 else "s",
            " (the server says there are more)" if truncated else "",
        )
        return data, truncated


KEY_NAMES = {
    TAG_STUDY_UID: "Study Instance UID",
    TAG_SERIES_UID: "Series Instance UID",
    TAG_SOP_UID: "SOP Instance UID",
}


def _keyless(url: str, key_tag: str) -> IncompleteListingError:
    shown = redact_url(url)
    return IncompleteListingError(
        f"could not list {shown} completely: the server sent a result without a usable "
        f"{KEY_NAMES.get(key_tag, key_tag)} ({key_tag})",
        url=shown,
    )


def _incomplete(
    url: str, listed: int, expected: int | None, *, repeated: bool
) -> IncompleteListingError:
    shown = redact_url(url)
    announced = f"its count says {expected}" if expected is not None else "it announces more"
    if repeated:
        why = "the server sends the same results again for the next page (it ignores offset)"
    else:
        why = "the server sends nothing more"
    return IncompleteListingError(
        f"could not list {shown} completely: {listed} result{'' if listed == 1 else 's'}, "
        f"{announced}, but {why}",
        url=shown,
    )
