"""All options of a download run in one frozen dataclass, shared by the library and the CLI."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import NoneType
from typing import TYPE_CHECKING, Any, Literal

from .errors import UsageError

HttpVersion = Literal["auto", "1.1", "2", "3"]
Mode = Literal["auto", "instance", "series", "study"]
# What a script may pass for paths, lists of text and (name, value) pairs; made Path and tuples.
PathLike = str | os.PathLike[str]
Texts = str | Iterable[str]
Pairs = Mapping[str, str] | Iterable[tuple[str, str]]

DEFAULT_LAYOUT = "{study}/{series}/{sop}.dcm"
# `--concurrency 0` (the default): HTTP/2 streams are cheap for client and server alike, and
# far from the server each 512 KiB instance costs two round trips (libcurl opens a stream's
# window past 64 KiB once the response head is in), so many streams keep the link full; over
# HTTP/1.1 each transfer is a connection the server holds, and a request costs a round trip
# of its own: 16, as many as the curl --parallel it is measured against.
AUTO_CONCURRENCY_HTTP2 = 64
AUTO_CONCURRENCY_HTTP1 = 16
# What --concurrency and --workers accept (0: chosen, see above and engine/workers.py); here,
# where the CLI's options can check them without importing the engine.
MAX_CONCURRENCY = 256
MAX_WORKERS = 64
# Under --max-rate, one transfer at a time per this many bytes per second of the cap. Many
# more would each be held back, while an HTTP/2 server sends each the window it has open
# (libcurl keeps it near the cap): a second or two of the cap per transfer, which arrives at
# once and waits, unread, in the client. A server that closes a connection idle for 5 s
# (Apache, hypercorn, uvicorn) then cut every transfer still waiting on it.
RATE_PER_TRANSFER = 512 * 1024


@dataclass(frozen=True)
class Settings:
    """How to talk to the server and where to put what comes back.

    Secrets (`token`, `password`, header values, and the URL and proxy, which may hold a
    password or an API key) live here but are never rendered: `__repr__` is generated without
    them so a stray log line or traceback cannot leak them.
    """

    url: str = field(repr=False)
    output: Path = Path("studies")
    concurrency: int = 0  # 0: chosen by protocol, see concurrency_for()
    workers: int = 0  # processes sharing the per-instance pool; 0: one per core (engine/workers.py)
    http: HttpVersion = "auto"
    mode: Mode = "auto"
    transfer_syntax: str = "*"
    layout: str = DEFAULT_LAYOUT
    series: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    ca_bundle: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    # else HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY apply; "": no proxy at all
    proxy: str | None = field(default=None, repr=False)
    token_command: str | None = field(default=None, repr=False)
    retries: int = 6
    retry_budget: float = 600.0  # seconds one instance may spend being retried
    timeout: float = 30.0
    max_rate: int = 0  # bytes per second every response body of the run shares; 0: no cap
    qido_page_size: int = 1000
    verify: bool = False  # re-hash files already on disk against the manifest
    recheck: bool = False  # list studies the manifest calls complete from the server again
    wait_for_lock: bool = False
    report: Path | None = None  # --report: a row per instance, CSV or JSON lines (report/landed.py)
    # --shard K/N as (K, N): only the studies of shard K of N (dicomweb/shard.py). A line that
    # names a series or instance but no study is looked up by every shard and kept by the one
    # that owns its study.
    in_shard: tuple[int, int] | None = None

    if TYPE_CHECKING:
        # The __init__ mypy reads: the fields as a script may pass them (wider than what is
        # kept, see __post_init__). At run time the dataclass makes its own. Same names and
        # order as the fields (tests/unit/test_settings.py).
        def __init__(
            self,
            url: str,
            output: PathLike = ...,
            concurrency: int = ...,
            workers: int = ...,
            http: HttpVersion = ...,
            mode: Mode = ...,
            transfer_syntax: str = ...,
            layout: str = ...,
            series: Texts = ...,
            modalities: Texts = ...,
            token: str | None = ...,
            user: str | None = ...,
            password: str | None = ...,
            headers: Pairs = ...,
            ca_bundle: PathLike | None = ...,
            cert: PathLike | None = ...,
            key: PathLike | None = ...,
            insecure: bool = ...,
            proxy: str | None = ...,
            token_command: str | None = ...,
            retries: int = ...,
            retry_budget: float = ...,
            timeout: float = ...,
            max_rate: int = ...,
            qido_page_size: int = ...,
            verify: bool = ...,
            recheck: bool = ...,
            wait_for_lock: bool = ...,
            report: PathLike | None = ...,
            in_shard: tuple[int, int] | None = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # Library callers pass paths as strings (`output="studies"`), as download() takes
        # them; the rest of dlstudy joins them with `/`.
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                # (`output=os.environ.get("OUT", "")`: Path("") is `.`, the working folder)
                raise UsageError(f"{name} is empty: give a path, or leave the keyword out")
            if isinstance(value, str | os.PathLike) and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for name, convert, what in _CONVERTED:
            given = getattr(self, name)
            try:
                object.__setattr__(self, name, convert(given))
            except (TypeError, ValueError):
                raise UsageError(f"{name} must be {what}, not {type(given).__name__}") from None
        check_types(self)
        shard = self.in_shard
        if shard is not None and not (
            isinstance(shard, tuple) and len(shard) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shard)
            and 1 <= shard[0] <= shard[1]
        ):  # fmt: skip
            raise UsageError("in_shard must be None or (K, N), whole numbers with 1 <= K <= N")


_PATH_FIELDS = tuple(f.name for f in fields(Settings) if "Path" in str(f.type))
FIELD_NAMES = frozenset(f.name for f in fields(Settings))


def check_fields(given: Mapping[str, Any]) -> None:
    """A UsageError naming a keyword that is no Settings field (a typo, `concurency=`)."""
    unknown = sorted(set(given) - FIELD_NAMES)
    if unknown:
        raise UsageError(f"{unknown[0]!r} is no dlstudy.Settings field")


# What a field of each hint takes at run time, as a usage error says it. A script's
# `concurrency="8"` failed deep inside as a TypeError, and `verify="no"` was true.
TAKES: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an int"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "True or False"),
    "str": ((str,), "text"),
    "str | None": ((str, NoneType), "text or None"),
    "HttpVersion": ((str,), "text ('auto', '1.1', '2' or '3')"),
    "Mode": ((str,), "text ('auto', 'instance', 'series' or 'study')"),
    "Path": ((Path,), "a path (str or Path)"),
    "Path | None": ((Path, NoneType), "a path (str or Path) or None"),
    "tuple[str, ...]": ((str,), "text or a list of text"),  # each value
}


def check_types(settings: Any) -> None:
    """Refuse a value of the wrong type, naming the field (never the value: it may be a
    secret), in Settings or another dataclass of the API (StudyQuery). `headers` and
    `in_shard` are checked where they are used."""
    for f in fields(settings):
        if f.type not in TAKES:
            continue
        types, what = TAKES[str(f.type)]
        value = getattr(settings, f.name)
        for one in value if f.type == "tuple[str, ...]" else (value,):
            if not isinstance(one, types) or (isinstance(one, bool) and bool not in types):
                raise UsageError(f"{f.name} must be {what}, not {type(one).__name__}")


def values(given: Texts) -> tuple[str, ...]:
    """A tuple of strings from what a library caller may pass: a list, or one string as one
    value (`modalities="CT"`), which a tuple of its characters would silently not match."""
    return (given,) if isinstance(given, str) else tuple(given)


def pairs(given: Pairs) -> tuple[Any, ...]:
    """(name, value) pairs from a dict (`headers={"X-Api-Key": "..."}`), or as given: what is
    no pair is refused where it is used (http/credentials.py, dicomweb/search.py)."""
    items = given.items() if isinstance(given, Mapping) else given
    return tuple(tuple(item) if isinstance(item, list) else item for item in items)


_CONVERTED: tuple[tuple[str, Callable[[Any], tuple[Any, ...]], str], ...] = (
    ("series", values, "text or a list of text"),
    ("modalities", values, "text or a list of text"),
    ("headers", pairs, "a dict or a list of (name, value) pairs"),
)


def modality_problem(value: str) -> str | None:
    """Why a download --modality value would match no series, or None. It is compared with
    each series' Modality as is (upper case): a stray space, a wildcard or a list (which a
    search of studies would read as such) made the run exit 4, "no instance matched"."""
    if any(char.isspace() for char in value):
        why = "no spaces"
    elif "*" in value or "?" in value:
        why = "no wildcards (* ?)"
    elif "," in value or "\\" in value:
        why = "one value (repeat --modality for more)"
    else:
        return None
    return (
        "must be one modality such as CT, matched exactly against each series' Modality: "
        f"{why}, got {value[:40]!r}"
    )


def concurrency_for(settings: Settings, http_version: str | None) -> int:
    """--concurrency as given, or, for 0, as the protocol the server speaks suggests; under
    --max-rate at most one transfer per RATE_PER_TRANSFER of it (see there)."""
    multiplexed = http_version in ("HTTP/2", "HTTP/3")
    auto = AUTO_CONCURRENCY_HTTP2 if multiplexed else AUTO_CONCURRENCY_HTTP1
    chosen = settings.concurrency or auto
    if settings.max_rate:
        chosen = max(1, min(chosen, settings.max_rate // RATE_PER_TRANSFER))
    return chosen


def processes_for(settings: Settings) -> int:
    """--workers as given; 0 (one per core, when the run is CPU-bound) is one process under
    --max-rate, which bounds the run before any core does. One in a daemonic process (a
    multiprocessing.Pool's worker calling the library), which may start none: multiprocessing
    refused it with a bare AssertionError."""
    if _daemonic():
        return 1
    return settings.workers or (1 if settings.max_rate else 0)


def _daemonic() -> bool:
    # (no multiprocessing imported: this process is none of its children)
    process = sys.modules.get("multiprocessing.process")
    return process is not None and bool(process.current_process().daemon)
