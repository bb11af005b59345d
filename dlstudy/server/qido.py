"""QIDO-RS: parse a search, match it against the index, answer DICOM JSON with paging.

Matching follows PS3.18 §8.3.4 / PS3.4 C.2.2.2 as far as a folder needs: UID lists, `*`/`?`
wildcards (person names case-insensitive), date/time ranges, universal matching on an empty
value. Keys the server cannot match on are ignored and named in a `Warning: 299` header.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from pydicom.datadict import dictionary_VR

from . import attributes as at
from .attributes import Json, key, resolve, texts
from .index import Index, Instance, Series, Study, header_json
from .wado import bulkdata_url

Level = Literal["study", "series", "instance"]

# Parameters that are not matching keys (PS3.18 Table 8.3.4-1).
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset", "orderby"}
# The levels whose attributes a query at each level may match on.
_MATCHABLE: dict[Level, tuple[Level, ...]] = {
    "study": ("study",),
    "series": ("study", "series"),
    "instance": ("study", "series", "instance"),
}


class QueryError(ValueError):
    """A malformed search: answered 400 with this message."""


@dataclass(frozen=True)
class Query:
    level: Level
    filters: list[tuple[int, str]] = field(default_factory=list)
    includes: frozenset[int] = frozenset()
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    unsupported: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    results: list[Json]
    remaining: int  # matches after this page
    truncated: bool  # the server's page cap, not the client's limit, ended the page
    unsupported: list[str]


def parse_query(params: list[tuple[str, str]], level: Level) -> Query:
    filters: list[tuple[int, str]] = []
    includes: set[int] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    unsupported: list[str] = []
    allowed = set().union(*(at.LEVEL_TAGS[lv] for lv in _MATCHABLE[level]))
    for name, value in params:
        if name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item.lower() == "all":
                    include_all = True
                else:
                    includes.add(_tag(item))
        elif name == "limit":
            limit = _non_negative(name, value) or None  # limit=0: no limit
        elif name == "offset":
            offset = _non_negative(name, value)
        elif name.lower() in _CONTROL:
            continue
        else:
            tag = _tag(name)
            if tag in allowed:
                _check_readable(name, vr_of(tag), value)
                filters.append((tag, value))
            else:
                unsupported.append(name)
    return Query(level, filters, frozenset(includes), include_all, limit, offset, unsupported)


T = TypeVar("T")


def cut_page(
    total: int,
    query: Query,
    take: Callable[[int, int], Sequence[T]],
    *,
    max_page_size: int | None,
    ignore_offset: bool,
) -> tuple[Sequence[T], int, bool]:
    """The page of `total` matches that the query's limit and offset and the server's page cap
    select (`take(offset, size)` gives it), the matches after it, and whether the server's cap,
    not the client's limit, ended it (which a `Warning: 299` then says)."""
    offset = 0 if ignore_offset else query.offset
    client_cap = query.limit or total
    server_cap = max_page_size or total
    page = take(offset, min(client_cap, server_cap))
    remaining = max(0, total - offset - len(page))
    return page, remaining, remaining > 0 and server_cap < client_cap


def search(
    index: Index,
    query: Query,
    *,
    study_uid: str | None,
    series_uid: str | None,
    base_url: str,
    max_page_size: int | None,
    ignore_offset: bool,
) -> Page:
    """One page of results, ordered as the index is (stable across requests)."""
    records = [r for r in _records(index, query.level, study_uid, series_uid) if _match(r, query)]
    page, remaining, truncated = cut_page(
        len(records),
        query,
        lambda offset, size: records[offset : offset + size],
        max_page_size=max_page_size,
        ignore_offset=ignore_offset,
    )
    # Unscoped series and instance searches also return the study's attributes (PS3.18 10.6.3).
    with_study = query.level == "study" or query.include_all or study_uid is None
    results = [_render(r, query, base_url, with_study) for r in page]
    return Page(results, remaining, truncated, query.unsupported)


@dataclass(frozen=True)
class _Record:
    study: Study
    series: Series | None = None
    instance: Instance | None = None

    def entry(self, tag: int) -> Json | None:
        k = key(tag)
        if tag == at.MODALITIES_IN_STUDY:
            return at.computed("CS", *self.study.modalities)
        for attrs in (self.instance and self.instance.attrs, self.series and self.series.attrs):
            if attrs and k in attrs:
                entry: Json = attrs[k]
                return entry
        return self.study.attrs.get(k)


def _records(
    index: Index, level: Level, study_uid: str | None, series_uid: str | None
) -> Iterator[_Record]:
    studies = (
        index.studies if study_uid is None else [s for s in [index.by_uid.get(study_uid)] if s]
    )
    for study in studies:
        if level == "study":
            yield _Record(study)
            continue
        for series in study.series:
            if series_uid is not None and series.uid != series_uid:
                continue
            if level == "series":
                yield _Record(study, series)
            else:
                for instance in series.instances:
                    yield _Record(study, series, instance)


def _match(record: _Record, query: Query) -> bool:
    return all(matches(tag, record.entry(tag), value) for tag, value in query.filters)


def matches(tag: int, entry: Json | None, wanted: str) -> bool:
    """Whether an attribute's DICOM JSON entry (None: absent) matches a query value."""
    if wanted in ("", "*"):
        return True  # universal matching
    have = texts(entry)
    vr = (entry or {}).get("vr") or vr_of(tag)
    if vr == "UI" or vr == "CS":
        options = {v.strip() for v in re.split(r"[,\\]", wanted)}
        if vr == "UI" or not any(c in wanted for c in "*?"):
            return any(v in options for v in have)
        return any(wildcard_match(o, v) for o in options for v in have)
    if vr in ("DA", "TM", "DT"):
        return any(_in_range(vr, v, wanted) for v in have)
    if vr == "PN":
        return any(wildcard_match(wanted.lower(), v.lower()) for v in have)
    return any(wildcard_match(wanted, v) for v in have)


def wildcard_match(pattern: str, value: str) -> bool:
    """Whether all of `value` matches `pattern`, where `*` is any run of characters and `?` any
    one. Each `*` is tried at one place after another, the last one only: time grows with the
    product of the two lengths. (A regular expression of many `.*` backtracks exponentially on
    a value it does not match: one `PatientName=**...*x` search froze the whole server.)"""
    p = v = 0
    star = -1  # the position in `pattern` of the last `*` met, and where it began in `value`
    star_from = 0
    while v < len(value):
        if p < len(pattern) and pattern[p] == "*":
            star, star_from = p, v
            p += 1
        elif p < len(pattern) and pattern[p] in ("?", value[v]):
            p += 1
            v += 1
        elif star >= 0:  # let the last `*` take one more character, and go on after it
            star_from += 1
            p, v = star + 1, star_from
        else:
            return False
    return pattern[p:].strip("*") == ""


def _in_range(vr: str, value: str, wanted: str) -> bool:
    value = _normal(vr, value, "0")
    if "-" not in wanted:
        return value == _normal(vr, wanted, "0")
    low, _, high = wanted.partition("-")
    return (not low or value >= _normal(vr, low, "0")) and (
        not high or value <= _normal(vr, high, "9")
    )


def _normal(vr: str, value: str, pad: str) -> str:
    # "2026.01.05" (old form) -> "20260105". A time as HHMMSS.FFFFFF, its missing digits
    # `pad`: "0900" compares with "090030.5", and an upper bound holds every instant of its
    # precision ("115959" is up to 11:59:59.999999, so 11:59:59.5 is in "000000-115959").
    if vr == "TM":
        whole, _, fraction = value.strip().replace(":", "").partition(".")
        return f"{whole.ljust(6, pad)}.{fraction.ljust(6, pad)}"
    return value.strip().replace(".", "") if vr == "DA" else value.strip()


def _render(record: _Record, query: Query, base_url: str, with_study: bool) -> Json:
    study, series, instance = record.study, record.series, record.instance
    out: Json = {}
    if with_study:
        out.update(study.attrs)
        out[key(at.MODALITIES_IN_STUDY)] = at.computed("CS", *study.modalities)
        out[key(at.NUMBER_OF_STUDY_RELATED_SERIES)] = at.computed("IS", len(study.series))
        out[key(at.NUMBER_OF_STUDY_RELATED_INSTANCES)] = at.computed("IS", study.instance_count)
    else:
        out[key(0x0020000D)] = at.computed("UI", study.uid)
    url = f"{base_url}/studies/{study.uid}"
    if series is not None:
        out.update(series.attrs)
        out[key(0x0020000E)] = at.computed("UI", series.uid)
        out[key(at.NUMBER_OF_SERIES_RELATED_INSTANCES)] = at.computed("IS", len(series.instances))
        url += f"/series/{series.uid}"
    if instance is not None:
        out.update(instance.attrs)
        out[key(at.AVAILABLE_TRANSFER_SYNTAX)] = at.computed("UI", instance.transfer_syntax)
        url += f"/instances/{instance.sop_uid}"
    out[key(at.RETRIEVE_URL)] = at.computed("UR", url)
    out[key(at.INSTANCE_AVAILABILITY)] = at.computed("CS", "ONLINE")
    for tag, _ in query.filters:  # matched attributes are returned, even if empty
        out.setdefault(key(tag), record.entry(tag) or {"vr": vr_of(tag)})
    _include(out, record, query, base_url)
    return dict(sorted(out.items()))


def _include(out: Json, record: _Record, query: Query, base_url: str) -> None:
    """`includefield`: stored attributes first, then the file of a representative instance."""
    missing = [t for t in query.includes if key(t) not in out]
    for tag in list(missing):
        entry = record.entry(tag)
        if entry is not None:
            out[key(tag)] = entry
            missing.remove(tag)
    want_file = missing or (query.include_all and record.instance is not None)
    if not want_file:
        return
    instance = record.instance
    if instance is None:
        series = record.series or record.study.series[0]
        instance = series.instances[0]
    try:
        header = header_json(instance, bulkdata_url(instance, base_url))
    except Exception:  # the file changed since indexing: answer with what is known
        return
    if query.include_all and record.instance is not None:
        for k, v in header.items():
            out.setdefault(k, v)
    for tag in missing:
        if key(tag) in header:
            out[key(tag)] = header[key(tag)]


# A date (or its old form with dots) and a time (HH, HHMM, HHMMSS, fraction; old form with colons)
# as PS3.5 6.2 gives them. Others are not read: they never match, and 204 would hide the typo.
_DATE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TIME = re.compile(r"([01]\d|2[0-3])(?::?([0-5]\d)(?::?([0-5]\d|60)(\.\d{1,6})?)?)?")
_FORMS = {"DA": "a date YYYYMMDD", "TM": "a time HHMMSS"}


def _check_readable(name: str, vr: str, value: str) -> None:
    """A QueryError unless a date or time key's value is one, or a range of them (PS3.4
    C.2.2.2.5), or universal matching."""
    if vr not in _FORMS or value in ("", "*"):
        return
    low, dash, high = value.strip().partition("-")
    bounds = [low, high] if dash else [low]
    if any(bound and not _readable(vr, bound) for bound in bounds) or not any(bounds):
        raise QueryError(
            f"{name}: cannot read {value!r} as {_FORMS[vr]} or a range of them (A-B, A-, -B)"
        )


def _readable(vr: str, value: str) -> bool:
    if vr == "TM":
        return _TIME.fullmatch(value) is not None
    found = _DATE.fullmatch(value)
    if found is None:
        return False
    try:
        datetime.date(*(int(part) for part in found.groups()))
    except ValueError:  # 20240145: no such day
        return False
    return True


def _tag(name: str) -> int:
    tag = resolve(name)
    if tag is None:
        raise QueryError(f"unknown attribute {name!r}")
    return tag


def vr_of(tag: int) -> str:
    """The tag's VR from the dictionary (the first of several), UN if unknown."""
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return number
