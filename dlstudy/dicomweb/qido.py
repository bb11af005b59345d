"""QIDO-RS listings, paged and deduplicated (resolve.py turns them into a study's instances).

Servers page in different ways (DOMAIN.md): some honour limit/offset, some cap silently or with a
`Warning: 299`, static servers ignore offset and send the same page again, some send a lone
object instead of a list, 204 means no match. The pager below copes with all of them and
always terminates: it pages as long as pages bring new results, however many pages that takes
(an archive capping pages at 100 lists a million instances in 10,000 of them), and stops on an
empty page or a page with nothing new. A listing is never cut silently: when the server still
announces more results (a `Warning: 299`, a 206, or a series count not yet reached) but the next
page brings nothing new, it raises IncompleteListingError, and the run fails that study.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import httpx

from ..errors import (
    HttpStatusError,
    IncompleteListingError,
    ServerError,
    TransferError,
)
from ..flow.retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after, with_retries
from ..flow.watchdog import watchdog
from ..http.client import Transport
from ..http.failures import check_auth
from ..http.urls import redact_url
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

TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"
TAG_MODALITY = "00080060"
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
    return str(value).strip()


def first_int(item: dict[str, Any], tag: str) -> int | None:
    value = first_value(item, tag)
    try:
        return int(float(value)) if value is not None else None
    except (ValueError, OverflowError):  # not a number, or "1e999" / "inf"
        return None


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
    return SeriesRef(study_uid, series_uid, modality, first_int(item, TAG_SERIES_INSTANCES))


class Pager:
    """Walks one QIDO query through every page it has, retrying transient failures."""

    def __init__(self, transport: Transport, page_size: int, policy: RetryPolicy) -> None:
        self.transport = transport
        self.page_size = page_size
        self.policy = policy
        self._root_checked = False
        self.remaining: int | None = None  # what the last page's Warning 299 counted

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
        check_auth(response)
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
    ) -> list[dict[str, Any]] | None: ...

    @overload
    async def fetch_all(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        keep: Callable[[dict[str, Any]], T | None],
    ) -> list[T] | None: ...

    async def fetch_all(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        keep: Callable[[dict[str, Any]], Any] = _whole,
    ) -> list[Any] | None:
        """What `keep` makes of each distinct result of the query keyed by `key_tag` (results
        it makes None of count, but are not returned); None when the URL is 404.
        IncompleteListingError when the server announces more than paging can get."""
        kept: list[Any] = []

        def each(item: dict[str, Any]) -> None:
            value = keep(item)
            if value is not None:
                kept.append(value)

        return kept if await self.walk(url, params, key_tag, expected, each=each) else None

    async def walk(
        self,
        url: str,
        params: list[tuple[str, str]],
        key_tag: str,
        expected: int | None = None,
        *,
        each: Callable[[dict[str, Any]], None],
    ) -> bool:
        """Call `each` with every distinct result of the query keyed by `key_tag`, page after
        page; False when the URL is 404.

        Each page's parsed JSON is dropped once `each` has read it: a listing of a million
        instances holds a million small values, not a million DICOM JSON objects.
        IncompleteListingError when the server announces more than paging can get."""
        seen: set[str] = set()
        offset = 0
        while True:
            page_params = [*params, ("limit", str(self.page_size)), ("offset", str(offset))]
            page = await self.get_page(url, page_params)
            if page is None:
                await self.check_root()
                return False
            items, truncated = page
            count, repeated = len(items), bool(items)
            new = 0
            for item in items:
                key = first_value(item, key_tag)
                if key is not None and key not in seen:
                    seen.add(key)
                    new += 1
                    each(item)
            del page, items  # the next page is awaited without this one's JSON
            if new == 0:
                short_of = expected is not None and repeated and len(seen) < expected
                if truncated or short_of:
                    raise _incomplete(url, len(seen), expected, repeated=repeated)
                if repeated and offset:
                    log.info("%s repeats a page: server ignores offset", redact_url(url))
                break
            if len(seen) > MAX_RESULTS:
                shown = redact_url(url)
                raise IncompleteListingError(
                    f"could not list {shown} completely: more than {MAX_RESULTS:,} results, "
                    "and the server keeps sending new ones",
                    url=shown,
                )
            offset += count
            if truncated or (expected is not None and len(seen) < expected):
                continue
            if count < self.page_size:
                break
            if count > self.page_size and expected is not None:
                # More than asked for, as many as the count said: a server that ignores limit
                # (a static DICOMweb tree) sent everything; asking again would fetch it twice.
                break
        return True

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
        check_auth(response)
        self.remaining = _remaining(response.headers)
        shown = redact_url(str(response.url))
        if response.status_code == 204:
            return [], False
        if response.status_code not in (200, 206):
            raise HttpStatusError(
                f"HTTP {response.status_code} on {shown}",
                status_code=response.status_code,
                url=shown,
                retryable=response.status_code in RETRYABLE_STATUS,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if not response.content.strip():
            return [], False
        try:
            data = response.json()
        except RecursionError as exc:  # arrays nested thousands deep: no QIDO answer
            raise ServerError(
                f"QIDO answer nests too deep to be DICOM JSON on {shown}", url=shown
            ) from exc
        except ValueError as exc:
            what = describe_answer(response)
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
        truncated = response.status_code == 206 or _has_more_warning(response.headers)
        return data, truncated


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
        f"could not list {shown} completely: {listed} results, {announced}, but {why}",
        url=shown,
    )


ROOT_HINT = "DICOMweb roots usually end in /dicomweb, /dicom-web, /wado-rs or /rs"
_JSON_TYPES = ("application/dicom+json", "application/json")


def root_problem(response: httpx.Response) -> str | None:
    """What is wrong with a study search's answer for a DICOMweb root, or None."""
    if response.status_code == 204:
        return None
    if response.status_code == 200 and _mime(response) in _JSON_TYPES:
        try:
            data = response.json()
        except (ValueError, RecursionError):
            return "HTTP 200 with a body that is not JSON"
        if isinstance(data, list | dict):
            return None
        return "HTTP 200 with JSON that is no list of studies"
    return describe_answer(response)


def describe_answer(response: httpx.Response) -> str:
    """`HTTP 404 (an HTML page)`, `HTTP 200 (text/plain)` and the like."""
    mime = _mime(response)
    kind = "an HTML page" if mime == "text/html" else (mime or "no content type")
    return f"HTTP {response.status_code} ({kind})"


def _mime(response: httpx.Response) -> str:
    return parse_media_type(response.headers.get("content-type", "")).mime


_ADDITIONAL = re.compile(r"(\d+)\s+additional", re.IGNORECASE)


def _remaining(headers: httpx.Headers) -> int | None:
    """N of `Warning: 299 <host>: There are N additional results that can be requested`."""
    for value in headers.get_list("warning"):
        match = _ADDITIONAL.search(value)
        if value.strip().startswith("299") and match:
            return int(match.group(1))
    return None


def _has_more_warning(headers: httpx.Headers) -> bool:
    # PS3.18: `Warning: 299 <host>: There are N additional results that can be requested`.
    return any(
        value.strip().startswith("299") and "additional" in value.lower()
        for value in headers.get_list("warning")
    )
