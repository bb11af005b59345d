"""Study-level QIDO-RS search: filters in, one small record per matching study out.

Paging is `qido.Pager`'s (limit/offset, truncation warnings, servers that ignore offset). Filter
keys are DICOM keywords or tags (`PatientID`, `00100020`, `(0010,0020)`), checked against
pydicom's dictionary before anything is sent. Several `--modality` values are searched one by
one and merged: servers disagree on what a list of values means for ModalitiesInStudy.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import IncompleteListingError, UsageError
from ..flow.retry import RetryPolicy
from ..http.auth import auth_from_settings
from ..http.client import Transport, require_asyncio
from ..http.credentials import is_pair
from ..settings import Pairs, Settings, Texts, check_types, pairs, values
from .qido import (
    TAG_STUDY_DATE,
    TAG_STUDY_TIME,
    TAG_STUDY_UID,
    Pager,
    first_count,
    first_value,
    unpadded,
)
from .silent_cut import ListedDates, check_whole

TAG_ACCESSION = "00080050"
TAG_MODALITIES = "00080061"
TAG_DESCRIPTION = "00081030"
TAG_PATIENT_NAME = "00100010"
TAG_PATIENT_ID = "00100020"
TAG_STUDY_SERIES = "00201206"  # NumberOfStudyRelatedSeries
TAG_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
# Asked for explicitly: servers need not return them by default (one per parameter: Orthanc).
INCLUDE_FIELDS = (TAG_DESCRIPTION, TAG_MODALITIES, TAG_STUDY_SERIES, TAG_STUDY_INSTANCES)

# ASCII digits only: \d also matches other scripts' digits, which int() reads (`٣d` was 3d).
_DATE_RE = re.compile(r"\d{8}", re.ASCII)
_RELATIVE_DAYS_RE = re.compile(r"(\d{1,4})d", re.ASCII)
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_ISO_RANGE_RE = re.compile(r"(\d{4}-\d{2}-\d{2})?[-/](\d{4}-\d{2}-\d{2})?", re.ASCII)
_TAG_RE = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")
_CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}
# The StudyQuery fields that set one matching key each: (field, the option that sets it, key).
NAMED_FILTERS = (
    ("patient_id", "--patient-id", "PatientID"),
    ("patient_name", "--patient-name", "PatientName"),
    ("study_date", "--study-date", "StudyDate"),
    ("accession", "--accession", "AccessionNumber"),
    ("modalities", "--modality", "ModalitiesInStudy"),
)


@dataclass(frozen=True)
class StudyQuery:
    """What to search for; every field is optional (no filter = every study)."""

    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None  # DICOM form: 20260101, 20260101-20260131, -20260131
    accession: str | None = None
    modalities: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()  # (keyword or 8 hex digits, value)

    if TYPE_CHECKING:
        # As Settings's: what mypy reads, `modalities` and `filters` as a script may pass them.
        def __init__(
            self,
            patient_id: str | None = ...,
            patient_name: str | None = ...,
            study_date: str | None = ...,
            accession: str | None = ...,
            modalities: Texts = ...,
            filters: Pairs = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # As Settings takes them from a library caller: `modalities="CT"`, `filters={...}`;
        # checked, and dates and keys made what is sent, as for the CLI's options.
        try:
            object.__setattr__(self, "modalities", values(self.modalities))
        except TypeError:  # (`modalities=5`)
            raise UsageError("modalities must be text or a list of text") from None
        try:
            filters = pairs(self.filters)
        except TypeError:  # (`filters=None`)
            filters = (None,)  # no pair: refused below
        check_types(self)  # (`patient_id=5` was sent as a TypeError from deep in urllib)
        if not all(is_pair(one) for one in filters):
            raise UsageError("filters must be (keyword, value) pairs of text, or a dict")
        self._check_none_empty()
        object.__setattr__(self, "filters", checked_filters(filters))
        self._check_keys_once()
        modalities = dict.fromkeys(one.strip().upper() for one in self.modalities)
        object.__setattr__(self, "modalities", tuple(modalities))
        if self.study_date is not None:
            object.__setattr__(self, "study_date", parse_study_date(self.study_date))

    def _check_none_empty(self) -> None:
        """An empty value is a usage error, not "no filter": `--study-date "$DAY"` or
        `patient_id=os.environ.get("PID", "")` with it unset must not match every study."""
        for name, flag, _ in NAMED_FILTERS:
            value = getattr(self, name)
            if value is not None and any(not one.strip() for one in values(value)):
                raise UsageError(
                    f"{flag} is empty: give a value, or leave the option out to match any"
                )

    def _check_keys_once(self) -> None:
        named = {key: flag for name, flag, key in NAMED_FILTERS if getattr(self, name)}
        for key, _ in self.filters:
            if key in named:
                raise UsageError(
                    f"{named[key]} and --filter {key}=... both set {key}: give each key once"
                )

    def params(self, modality: str | None = None) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        for key, value in (
            ("PatientID", self.patient_id),
            ("PatientName", self.patient_name),
            ("StudyDate", self.study_date),
            ("AccessionNumber", self.accession),
            ("ModalitiesInStudy", modality),
        ):
            if value is not None:
                params.append((key, value))
        params += self.filters
        params += [("includefield", tag) for tag in INCLUDE_FIELDS]
        return params


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """One study as the study-level search described it: the fields dlstudy uses, not the
    whole DICOM JSON (100,000 of those held by `sync` took most of a gigabyte)."""

    study_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession: str | None = None
    description: str | None = None
    modalities: tuple[str, ...] = ()
    series: int | None = None
    instances: int | None = None  # NumberOfStudyRelatedInstances; None when not reported

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> StudyRecord | None:
        uid = first_value(item, TAG_STUDY_UID)
        if not uid:
            return None
        return cls(
            study_uid=uid,
            patient_id=joined_values(item, TAG_PATIENT_ID),
            patient_name=person_name(item, TAG_PATIENT_NAME),
            study_date=first_value(item, TAG_STUDY_DATE),
            study_time=first_value(item, TAG_STUDY_TIME),
            accession=joined_values(item, TAG_ACCESSION),
            description=joined_values(item, TAG_DESCRIPTION),
            modalities=all_values(item, TAG_MODALITIES),
            series=first_count(item, TAG_STUDY_SERIES),
            instances=first_count(item, TAG_STUDY_INSTANCES),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "patient_name": self.patient_name,
            "study_date": self.study_date,
            "study_time": self.study_time,
            "accession": self.accession,
            "description": self.description,
            "modalities": list(self.modalities),
            "series": self.series,
            "instances": self.instances,
        }


def person_name(item: dict[str, Any], tag: str) -> str | None:
    """A PN element as a name: each value's first form it has (alphabetic, else ideographic,
    else phonetic; DICOM JSON puts them in an object), several values joined by `\\`, as
    DICOM writes them."""
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list):
        return None
    return "\\".join(name for name in map(_name_of, values) if name) or None


_PN_FORMS = ("Alphabetic", "Ideographic", "Phonetic")


def _name_of(value: Any) -> str | None:
    if isinstance(value, dict):
        forms = (value.get(form) for form in _PN_FORMS)
        # A form of empty components (`^`, as Orthanc sends a name it could not decode) is none.
        value = next((form for form in forms if isinstance(form, str) and form.strip("^ ")), None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def joined_values(item: dict[str, Any], tag: str) -> str | None:
    """A text element's values joined by `\\`, as DICOM writes several (an AccessionNumber or
    PatientID of two, which a server sends as it has them): the first alone lost the others."""
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list):
        return None
    texts = (unpadded(str(v)) for v in values if v is not None and not isinstance(v, dict | list))
    return "\\".join(text for text in texts if text) or None


def all_values(item: dict[str, Any], tag: str) -> tuple[str, ...]:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list):
        return ()
    return tuple(str(v).strip() for v in values if isinstance(v, str | int) and str(v).strip())


def attribute_id(name: str) -> str:
    """A filter key as sent: the keyword if pydicom knows it, else the tag's 8 hex digits."""
    # pydicom is slow to import: only with --filter.
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    name = name.strip()
    match = _TAG_RE.fullmatch(name)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        return keyword_for_tag(tag) or f"{tag:08X}"
    if tag_for_keyword(name) is None:
        raise UsageError(
            f"--filter: {name[:40]!r} is neither a DICOM keyword (e.g. PatientSex) "
            "nor a tag (e.g. 00100040)"
        )
    return name


def matching_key(name: str) -> str:
    """A filter key as sent (see attribute_id), if it is one a search may match on."""
    attribute = attribute_id(name)
    if attribute.lower() in _CONTROL_KEYS:
        raise UsageError(f"--filter: {attribute} is not a matching key")
    return attribute


def parse_filter(text: str) -> tuple[str, str]:
    """`KEY=VALUE` as a (key, value) pair, which StudyQuery checks (checked_filters)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--filter must look like KEY=VALUE, not {text[:60]!r}")
    return key, value


def checked_filters(filters: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """(key, value) pairs as sent: each key a DICOM keyword or tag a search matches on,
    given once, with a value."""
    checked = []
    for key, value in filters:
        attribute = matching_key(key)
        if not value.strip():  # an empty value matches anything: "$VAR" unset, most likely
            raise UsageError(f"--filter {attribute}= is empty: give a value, or leave it out")
        checked.append((attribute, value.strip()))
    keys = [key for key, _ in checked]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise UsageError(f"--filter {repeated[0]} given more than once")
    return tuple(checked)


def parse_study_date(text: str, today: dt.date | None = None) -> str:
    """`20260105`, a range (`20260101-20260131`, `-20260131`, `20260101-`), `today`,
    `yesterday`, or `Nd`: the last N days up to today (`7d`). Returns the DICOM form."""
    today = today or dt.date.today()
    value = text.strip().lower()
    if value == "today":
        return today.strftime("%Y%m%d")
    if value == "yesterday":
        return (today - dt.timedelta(days=1)).strftime("%Y%m%d")
    relative = _RELATIVE_DAYS_RE.fullmatch(value)
    if relative:
        start = today - dt.timedelta(days=int(relative.group(1)))
        return f"{start:%Y%m%d}-{today:%Y%m%d}"
    iso = _ISO_RANGE_RE.fullmatch(value)
    if _ISO_DATE_RE.fullmatch(value):
        value = value.replace("-", "")
    elif iso:  # 2026-01-01-2026-01-31, 2026-01-01/2026-01-31 (ISO 8601), open ends too
        value = f"{(iso.group(1) or '').replace('-', '')}-{(iso.group(2) or '').replace('-', '')}"
    low, sep, high = value.partition("-")
    parts = [p for p in (low, high) if p] if sep else [low]
    no_day = next((p for p in parts if _DATE_RE.fullmatch(p) and not _is_date(p)), None)
    if no_day is not None:  # the form is right: say what is wrong with it
        raise UsageError(f"--study-date {text[:40]!r}: {no_day} is no day of the calendar")
    if parts and all(_is_date(p) for p in parts) and sep and low and high and low > high:
        raise UsageError(
            f"--study-date {text[:40]!r}: the range ends before it begins ({low} > {high})"
        )
    if not parts or not all(_is_date(p) for p in parts):
        raise UsageError(
            f"--study-date must be YYYYMMDD or YYYY-MM-DD, a range YYYYMMDD-YYYYMMDD or "
            f"YYYY-MM-DD/YYYY-MM-DD (either end may be open), today, yesterday or Nd (N up to "
            f"9999), not {text[:40]!r}"
        )
    return value


def is_relative_date(text: str) -> bool:
    """`today`, `yesterday` or `Nd`: a --study-date that means other days tomorrow."""
    value = text.strip().lower()
    return value in ("today", "yesterday") or bool(_RELATIVE_DAYS_RE.fullmatch(value))


def _is_date(text: str) -> bool:
    if not _DATE_RE.fullmatch(text):
        return False
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


async def walk_studies(
    transport: Transport,
    query: StudyQuery,
    *,
    page_size: int,
    policy: RetryPolicy,
    each: Callable[[StudyRecord], object],
    keyless: Callable[[], object] | None = None,
    page_read: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Call `each` with every study matching `query`, in the server's order, each once, as its
    page arrives (while the server makes the next page); nothing is kept but the UIDs listed,
    which tell a repeated result from a new one. `page_read` is awaited once each page is
    read: a caller that writes the page out waits there, not in `each`. A result without a
    Study Instance UID is an IncompleteListingError, or a call of `keyless` (the caller says
    what the search missed)."""
    sent = query.params(query.modalities[0] if query.modalities else None)
    keys = [key for key, _ in sent if key != "includefield"]
    pager = Pager(transport, page_size, policy, matching_keys=keys)
    url = f"{transport.base_url}/studies"
    # The pager lists each result of one search once; a study with two of the modalities
    # searched one by one is found by two searches.
    listed: set[str] | None = set() if len(query.modalities) > 1 else None
    # Its own pager: a window's StudyDate is no key the user asked the server to apply.
    checker = Pager(transport, page_size, policy)

    def keep(item: dict[str, Any]) -> None:  # each page's JSON is read as it arrives, not kept
        record = StudyRecord.from_json(item)
        if record is None:
            return
        dates.add(record.study_date, record.study_time)
        if listed is not None:
            if record.study_uid in listed:
                return
            listed.add(record.study_uid)
        each(record)

    for modality in query.modalities or (None,):
        dates = ListedDates()
        try:
            # False (404) is what some servers answer for "no match".
            if await pager.walk(
                url, query.params(modality), TAG_STUDY_UID, each=keep, keyless=keyless,
                page_read=page_read,
            ):  # fmt: skip
                await check_whole(checker, url, query.params(modality), pager.last_listed, dates)
        except IncompleteListingError as exc:  # what was handed on, for a caller that goes on
            exc.listed = listed if listed is not None else pager.last_listed
            raise


async def search_async(
    settings: Settings,
    query: StudyQuery,
    each: Callable[[StudyRecord], object] | None = None,
    policy: RetryPolicy | None = None,
    keyless: Callable[[], object] | None = None,
) -> list[StudyRecord]:
    """Every study matching `query`, in the server's order, each once: stream_async, kept.
    `each` is called with every one as its page arrives; `policy`: the retries, when the
    caller counts them (its tally); `keyless`: as for walk_studies."""
    found: list[StudyRecord] = []

    def keep(record: StudyRecord) -> None:
        found.append(record)
        if each is not None:
            each(record)

    await stream_async(settings, query, keep, keyless, policy=policy)
    return found


async def stream_async(
    settings: Settings,
    query: StudyQuery,
    each: Callable[[StudyRecord], object],
    keyless: Callable[[], object] | None = None,
    page_read: Callable[[], Awaitable[object]] | None = None,
    *,
    policy: RetryPolicy | None = None,
) -> None:
    """Open a transport for `settings` (auth, TLS, HTTP version), walk the search, close;
    nothing is kept: memory stays flat however many studies match, but for their UIDs.
    `each`, `keyless` and `page_read` as for walk_studies; `policy` as for search_async."""
    require_asyncio()
    if policy is None:
        policy = RetryPolicy(settings.retries, settings.retry_budget, settings.timeout)
    transport = Transport(settings, auth=await auth_from_settings(settings))
    try:
        await walk_studies(
            transport,
            query,
            page_size=settings.qido_page_size,
            policy=policy,
            each=each,
            keyless=keyless,
            page_read=page_read,
        )
    finally:
        await transport.aclose()


def search(
    settings: Settings, query: StudyQuery, keyless: Callable[[], object] | None = None
) -> list[StudyRecord]:
    """Blocking form of `search_async`, for scripts: `dlstudy.search.search(settings, q)`."""
    return anyio.run(search_async, settings, query, None, None, keyless)


def stream(
    settings: Settings,
    query: StudyQuery,
    each: Callable[[StudyRecord], object],
    keyless: Callable[[], object] | None = None,
    page_read: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Blocking form of `stream_async` (`dlstudy query`)."""
    anyio.run(stream_async, settings, query, each, keyless, page_read)
