"""`dlstudy bench`: measure a DICOMweb server the way an operator would want it measured.

The matrix is strategy x concurrency x HTTP version, each cell run `repeat` times (the repeats
interleaved: every cell once, then every cell again, so a warming cache or a noisy neighbour
spreads over all cells instead of favouring the first). Strategies:

    single-part          one request per instance, Accept: application/dicom; transfer-syntax=*
    multipart-instance   one request per instance, Accept: multipart/related; type=...
    series               one multipart request per series
    study                one multipart request for the whole study (concurrency 1 only)

Every run of a cell resolves the study with QIDO-RS on a fresh `Transport` (each request's
latency is recorded), closes it, then times the transfers alone on another fresh one (every cell
opens its connections inside the timed window alike): wall time, payload bytes, instances, and
per request the time to first byte (from sending the request to having the response headers).
Nothing ever has more requests in flight than the cell's concurrency: transfers run in a pool of
exactly that many workers, the QIDO phase uses at most that many too, and a gauge around every
request proves it (`max_in_flight`). There are no retries: a benchmark reports what the server
does. A server refusing connections is connected to again for `timeout` seconds, as download
does; a request still refused fails, and a server still refusing `timeout` seconds later is
gone: the bench stops (ConnectError) instead of failing every request left, one `timeout` each.

Bytes are counted and dropped unless `keep` names a folder: then each instance is written raw
to `keep/<SOPInstanceUID>.dcm` (temp file, atomic rename). A strategy the server refuses on its
first requests, three different ones before any success (400/406/415 for every form of the
Accept header, e.g. Orthanc's 400 on single-part; 404/405/501, e.g. a static server without
series URLs), makes its cells
"unsupported (HTTP 400)"; an HTTP version the server does not speak makes its cells
"unsupported (no HTTP/2: ...)". Neither is an error.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import anyio

from ..dicomweb.media import DICOM_JSON
from ..dicomweb.negotiate import NEGOTIABLE_STATUS, Negotiator, Retrieval, candidates
from ..dicomweb.qido import QIDO_CONCURRENCY
from ..dicomweb.resolve import Resolver
from ..engine.refusals import REFUSALS_FOR_UNSUPPORTED
from ..errors import (
    AuthError,
    ConnectError,
    DlstudyError,
    HttpStatusError,
    NothingMatchedError,
    OutputError,
    ServerError,
    TransferError,
    UsageError,
    how_stopped,
)
from ..flow.pool import run_pool
from ..flow.retry import RetryPolicy
from ..flow.signals import stop_on_signals
from ..http.auth import RefreshingBearerAuth, auth_from_settings
from ..http.client import Transport, http2_forwarding_proxy
from ..http.failures import check_auth
from ..http.proxy import shown
from ..http.urls import (
    NOT_ASKED_FOR,
    base_url_problem,
    can_be_asked_for,
    instance_url,
    is_valid_uid,
    redact_url,
    series_url,
    study_url,
)
from ..jobs.download import MAX_CONCURRENCY
from ..model import InstanceRef
from ..settings import HttpVersion, Settings
from ..store.files import TEMP_SUFFIX
from ..store.orphans import remove_orphans
from .cell import CellRun, Gauge, TimedTransport
from .report import (
    DEFAULT_CONCURRENCY,
    DEFAULT_REPEAT,
    HTTP_NAMES,
    MAX_REPEAT,
    STRATEGIES,
    BenchReport,
    CellResult,
)

log = logging.getLogger(__name__)

# QIDO pages are retried a little (a 503 on a search is not what is being measured); transfers
# are not retried at all.
QIDO_RETRIES = 2
QIDO_RETRY_BUDGET = 30.0

CellDone = Callable[[CellResult, int, int], None]
# Answers to a strategy's first request that mean "not served this way": every form refused
# (400/406/415), or no such resource at all (404/405/501: a static server has no series URLs).
UNSUPPORTED_STATUS = NEGOTIABLE_STATUS | {404, 405, 501}
# Such answers to REFUSALS_FOR_UNSUPPORTED different requests (download's rule for bulk
# retrieval), before any success, make the strategy unsupported (fewer when the run has fewer
# requests): one missing instance (404), or one the server cannot send in any form (400), is a
# failure of that instance, not of the strategy.


@dataclass(frozen=True)
class BenchPlan:
    """What to measure. `settings` carries the server, auth, TLS and `timeout`."""

    study_uid: str
    strategies: tuple[str, ...] = STRATEGIES
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    http: tuple[HttpVersion, ...] = ("1.1", "2")
    repeat: int = DEFAULT_REPEAT
    limit: int | None = None  # only the first N instances (QIDO order)
    keep: Path | None = None  # write instances here instead of dropping them

    def cells(self) -> list[tuple[str, int, HttpVersion, int]]:
        """(strategy, concurrency, http, repeat) in run order; `study` at concurrency 1 only."""
        order: list[tuple[str, int, HttpVersion, int]] = []
        for repeat in range(self.repeat):
            for http in self.http:
                for strategy in self.strategies:
                    levels = (1,) if strategy == "study" else self.concurrency
                    order.extend((strategy, level, http, repeat) for level in levels)
        return order


def validate(settings: Settings, plan: BenchPlan) -> None:
    if not is_valid_uid(plan.study_uid):
        raise UsageError(
            f"invalid study UID {plan.study_uid[:80]!r}: digits and dots, at most 64 characters"
        )
    if (problem := base_url_problem(settings.url)) is not None:
        raise UsageError(problem)
    for strategy in plan.strategies:
        if strategy not in STRATEGIES:
            raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    for http in plan.http:
        if http not in HTTP_NAMES:
            raise UsageError(f"--http must be 1.1, 2 or 3, not {http!r}")
    for level in plan.concurrency:
        if not 1 <= level <= MAX_CONCURRENCY:
            raise UsageError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}, not {level}")
    if not (plan.strategies and plan.concurrency and plan.http):
        raise UsageError("the matrix is empty: give at least one strategy, concurrency and http")
    if not 1 <= plan.repeat <= MAX_REPEAT:
        raise UsageError(f"--repeat must be between 1 and {MAX_REPEAT}, not {plan.repeat}")
    if plan.limit is not None and plan.limit < 1:
        raise UsageError("--limit must be 1 or more")
    if settings.timeout <= 0:
        raise UsageError("--timeout must be positive")


def run_bench(settings: Settings, plan: BenchPlan, on_cell: CellDone | None = None) -> BenchReport:
    """Run the whole matrix; fatal errors raise a DlstudyError, and SIGINT / SIGTERM / SIGHUP
    a KeyboardInterrupt / Terminated / HungUp, with the partial `.report` (the runs that
    finished)."""
    return anyio.run(bench_async, settings, plan, on_cell)


async def bench_async(
    settings: Settings, plan: BenchPlan, on_cell: CellDone | None = None
) -> BenchReport:
    plan = replace(
        plan,
        strategies=tuple(dict.fromkeys(plan.strategies)),
        concurrency=tuple(sorted(set(plan.concurrency))),
        http=tuple(dict.fromkeys(plan.http)),
    )
    report = BenchReport(
        url=redact_url(settings.url),
        study_uid=plan.study_uid,
        strategies=plan.strategies,
        concurrency=plan.concurrency,
        http=plan.http,
        repeat=plan.repeat,
        limit=plan.limit,
        keep=str(plan.keep) if plan.keep else None,
    )
    started = time.perf_counter()
    try:
        validate(settings, plan)
        if plan.keep is not None:
            _prepare_folder(plan.keep)
        bench = _Bench(settings, plan, report, await auth_from_settings(settings))
        await stop_on_signals(bench.run(on_cell))  # a cell cut short is left out
    except BaseException as exc:
        if isinstance(exc, DlstudyError):
            report.error = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            report.error, _ = how_stopped(exc)
        exc.report = report  # type: ignore[attr-defined]
        raise
    finally:
        report.seconds = time.perf_counter() - started
    return report


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create --keep folder {str(folder)!r}: {exc.strerror or exc}", path=str(folder)
        ) from exc
    remove_orphans(folder, _TEMP_NAME)  # what a killed bench (`kill -9`) left in --keep


# The temp files TempFile names, `.<file>.<pid>-<n>.part`: the pid says whose it is.
_TEMP_NAME = re.compile(r"\..+\.([0-9]+)-[0-9]+" + re.escape(TEMP_SUFFIX))


class _Unsupported(Exception):
    """The server refuses every form of this strategy's request."""


def _forms(strategy: str) -> list[Retrieval]:
    """Request forms to try, in order; the first the server accepts is kept for the run."""
    if strategy == "single-part":
        return [Retrieval(True, "*"), Retrieval(True, None)]
    return candidates("*", single_part=False)


def _none_supported(results: list[CellResult]) -> str:
    """The line for a matrix none of whose cells the server took: it measured nothing, so it
    is no finding to exit 0 on (as a server speaking none of the HTTP versions asked for)."""
    strategies: dict[str, dict[str, None]] = {}  # reason -> its strategies, in order
    for result in results:
        reason = (result.unsupported or "").removeprefix("unsupported (").removesuffix(")")
        strategies.setdefault(reason, {})[result.strategy] = None
    why = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in strategies.items())
    return f"nothing was measured: the server takes none of the strategies asked for ({why})"


class _Bench:
    def __init__(
        self,
        settings: Settings,
        plan: BenchPlan,
        report: BenchReport,
        auth: RefreshingBearerAuth | None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.report = report
        self.auth = auth
        self.policy = RetryPolicy(QIDO_RETRIES, QIDO_RETRY_BUDGET, settings.timeout)
        self.negotiators = {s: Negotiator(_forms(s)) for s in plan.strategies}
        self.unsupported: dict[tuple[str, str], str] = {}  # (strategy or "*", http) -> reason
        self.refused: dict[tuple[str, str], set[str]] = {}  # (strategy, http) -> what was
        self.probing = anyio.Lock()  # one "is the server still there?" at a time
        self.answered_at = 0.0  # when that question last found the server (monotonic)

    async def run(self, on_cell: CellDone | None) -> None:
        await self._probe_protocols()
        cells = self.plan.cells()
        for index, (strategy, concurrency, http, repeat) in enumerate(cells, start=1):
            result = CellResult(strategy, concurrency, http, repeat)
            known = self.unsupported.get(("*", http)) or self.unsupported.get((strategy, http))
            if known:
                result.unsupported, result.ran = known, False
            else:
                await self._run_cell(result)
            self.report.results.append(result)
            if on_cell is not None:
                on_cell(result, index, len(cells))
        if all(result.unsupported for result in self.report.results):
            raise ServerError(_none_supported(self.report.results), url=self.report.url)

    def _transport(
        self, http: HttpVersion, concurrency: int, gauge: Gauge, latencies: list[float]
    ) -> TimedTransport:
        settings = replace(self.settings, http=http, concurrency=concurrency)
        # The protocol probe found the server answering: a connection it refuses later (a
        # restart) is tried again for --timeout seconds, by a run's first request too.
        return TimedTransport(
            settings, auth=self.auth, gauge=gauge, latencies=latencies, answered=True
        )

    async def _probe_protocols(self) -> None:
        """One search per HTTP version: a version that fails is unsupported, all failing is fatal.

        401/403 end the bench at once (exit 3), as does a server no version can reach.
        """
        errors: list[ServerError | TransferError] = []
        for http in self.plan.http:
            settings = replace(self.settings, http=http, concurrency=1)
            if http == "2" and (proxy := http2_forwarding_proxy(settings)) is not None:
                self.unsupported[("*", http)] = "unsupported (no HTTP/2)"
                self.report.notes.append(
                    f"HTTP/2: the proxy {shown(proxy)} forwards http:// requests over HTTP/1.1"
                )
                continue
            transport = Transport(settings, auth=self.auth)
            try:
                response = await transport.get(
                    transport.base_url + "/studies",
                    headers={"Accept": DICOM_JSON},
                    params={"limit": "1"},
                )
                check_auth(response, search=True)
                answered = response.http_version
            except AuthError:
                raise
            except (ServerError, TransferError) as exc:
                errors.append(exc)
                name = HTTP_NAMES[http]
                self.unsupported[("*", http)] = f"unsupported (no {name})"
                log.info("%s probe failed: %s", name, exc)
                self.report.notes.append(f"{name}: {exc}")
                continue
            finally:
                await transport.aclose()
            if http != "1.1" and answered != (name := HTTP_NAMES[http]):
                self.unsupported[("*", http)] = f"unsupported (no {name})"
                self.report.notes.append(f"{name}: asked for it, the server answered {answered}")
        if len(errors) == len(self.plan.http):
            first = errors[0]
            if all(isinstance(error, ConnectError) for error in errors):
                raise first  # down, unknown, TLS: the first error says it best
            raise ServerError(
                "the server speaks none of the HTTP versions asked for: "
                + "; ".join(self.report.notes),
                url=first.url,
            ) from first

    async def _run_cell(self, result: CellResult) -> None:
        gauge = Gauge()
        http = cast(HttpVersion, result.http)  # one of HTTP_NAMES (validate)
        refs = await self._listing(http, result, gauge)
        # The transfers get their own client, so every cell opens all its connections inside
        # the timed window alike: on the listing's (as many as its searches had at once, up to
        # 4 as the study's series allow) concurrency 1 would pay no connection set-up, 16 twelve.
        transport = self._transport(http, result.concurrency, gauge, result.qido)
        try:
            if self.report.instances_in_study is None:
                self.report.instances_in_study = len(refs)
            work = refs[: self.plan.limit] if self.plan.limit else refs
            cut = len(work) < len(refs)  # stop bulk responses once they brought the work
            run = CellRun(transport, gauge, result, self.plan.keep)
            negotiator = self.negotiators[result.strategy]
            started = time.perf_counter()
            try:
                await self._transfer(run, negotiator, work, cut)
            except _Unsupported as exc:
                result.unsupported = str(exc)
                self.unsupported[(result.strategy, result.http)] = str(exc)
            result.seconds = time.perf_counter() - started
            result.http_version = transport.http_version
            result.max_in_flight = gauge.peak
            if negotiator.settled:
                result.accept = negotiator.current.accept
        finally:
            await transport.aclose()

    async def _listing(
        self, http: HttpVersion, result: CellResult, gauge: Gauge
    ) -> list[InstanceRef]:
        """The run's QIDO phase, on a client of its own closed before the transfers start."""
        transport = self._transport(http, result.concurrency, gauge, result.qido)
        try:
            return await self._resolve(transport, result.concurrency)
        except ConnectError as exc:  # refused for --timeout seconds: gone for good
            raise _gone(exc) from exc
        finally:
            await transport.aclose()

    async def _resolve(self, transport: Transport, concurrency: int) -> list[InstanceRef]:
        """The study's instances in QIDO order, never more than `concurrency` searches at once."""
        resolver = Resolver(transport, page_size=self.settings.qido_page_size, policy=self.policy)
        all_series = await resolver.series_of(self.plan.study_uid)
        found: list[Sequence[InstanceRef]] = [[] for _ in all_series]

        async def one(index: int) -> None:
            found[index] = await resolver.instances_of(all_series[index])

        await run_pool(range(len(all_series)), one, min(concurrency, QIDO_CONCURRENCY))
        refs = [ref for group in found for ref in group]
        if not refs:
            raise NothingMatchedError(f"study {self.plan.study_uid} has no instances on the server")
        return refs

    async def _transfer(
        self, run: CellRun, negotiator: Negotiator, work: list[InstanceRef], cut: bool
    ) -> None:
        base = run.transport.base_url
        strategy = run.result.strategy
        per_instance = strategy in ("single-part", "multipart-instance")
        groups: dict[str, list[InstanceRef]] = {}
        for ref in [] if per_instance else work:
            if strategy == "series":
                url = series_url(base, ref.study_uid, ref.series_uid)
            else:
                url = study_url(base, ref.study_uid)
            groups.setdefault(url, []).append(ref)
        requests = len(work) if per_instance else len(groups)
        refused = self.refused.setdefault((strategy, run.result.http), set())

        async def guarded(what: str, attempt: Callable[[Retrieval], Awaitable[None]]) -> None:
            run.result.asked += 1
            try:
                await negotiator.run(attempt)
            except HttpStatusError as exc:
                if exc.status_code in UNSUPPORTED_STATUS and not negotiator.settled:
                    refused.add(what)
                    if len(refused) >= min(REFUSALS_FOR_UNSUPPORTED, requests):
                        raise _Unsupported(f"unsupported (HTTP {exc.status_code})") from exc
                run.result.fail(_naming(what, exc))
            except TransferError as exc:
                run.result.fail(_naming(what, exc))
            except ConnectError as exc:
                # Refused for --timeout seconds already (the transport connects again until
                # then): a failure of this request, and the bench goes on if the server is back.
                failed_at = time.monotonic()
                run.result.fail(_naming(what, exc))
                await self._check_still_there(run, failed_at)

        async def one_instance(ref: InstanceRef) -> None:
            if not can_be_asked_for(ref.sop_uid):  # never a request's path, nor --keep's file
                run.result.asked += 1
                run.result.fail(
                    f"the server lists an instance with the UID {ref.sop_uid[:80]!r}, "
                    f"{NOT_ASKED_FOR}"
                )
                return
            url = instance_url(base, ref.study_uid, ref.series_uid, ref.sop_uid)
            what = f"instance {ref.sop_uid}"
            await guarded(what, lambda form: run.request(url, form, what, 1, ref.sop_uid))

        async def one_group(item: tuple[str, list[InstanceRef]]) -> None:
            url, refs = item
            what = f"{strategy} {url.rsplit('/', 1)[-1]}"
            wanted = len(refs)
            await guarded(what, lambda form: run.request(url, form, what, wanted, None, stop=cut))

        if per_instance:
            await run_pool(work, one_instance, run.result.concurrency)
        else:
            await run_pool(list(groups.items()), one_group, run.result.concurrency)

    async def _check_still_there(self, run: CellRun, failed_at: float) -> None:
        """Raise ConnectError when the server still refuses connections after --timeout more
        seconds: gone for good, the bench stops rather than fail every request left, each after
        its own --timeout. Asked in the failed request's slot, so within the cell's concurrency;
        not again for requests refused before it last found the server."""
        async with self.probing:
            if self.answered_at > failed_at:
                return
            http = cast(HttpVersion, run.result.http)
            settings = replace(self.settings, http=http, concurrency=1)
            transport = Transport(settings, auth=self.auth, answered=True)
            url = transport.base_url + "/studies"
            try:
                with run.gauge.hold():
                    await transport.get(url, headers={"Accept": DICOM_JSON}, params={"limit": "1"})
            except ConnectError as exc:
                raise _gone(exc) from exc
            except TransferError:
                pass  # it accepted the connection: there, whatever it answered
            finally:
                await transport.aclose()
            self.answered_at = time.monotonic()


def _gone(exc: ConnectError) -> ConnectError:
    return ConnectError(
        f"the server stopped accepting connections during the bench: {exc}", url=exc.url
    )


def _naming(what: str, exc: DlstudyError) -> str:
    """The failure's message, led by what failed (once: most errors name it already)."""
    text = str(exc)
    return text if text.startswith(what) else f"{what}: {text}"
