"""`import dlstudy` as a script, notebook or service uses it, against the embedded server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import dlstudy
from dlstudy.report.progress import Listed, NullProgress
from dlstudy.server.synth import SynthSpec, generate

from ..cli_helpers import assert_same_files, run_installed
from ..fixtures.embedded_server import StartServer, SynthStudy

pytestmark = pytest.mark.integration


class HeldAtStart(NullProgress):
    """A progress sink that keeps its run waiting, output folder locked, once it starts."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None:
        self.started.set()
        self.release.wait(60)


def test_a_second_run_into_a_folder_in_use_in_this_process_is_refused(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """One run per output folder holds within one process too: a service's second thread
    downloading into the folder a first one is filling gets LockedError, as another process
    would, not a second run writing the same files and manifest."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    held = HeldAtStart()
    results: list[object] = []

    def first() -> None:
        results.append(dlstudy.download([synth_study.study_uid], url, output=out, progress=held))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert held.started.wait(60)
        with pytest.raises(dlstudy.DlstudyError) as refused:
            dlstudy.download([synth_study.study_uid], url, output=out)
    finally:
        held.release.set()
        thread.join(60)
    assert refused.value.exit_status == dlstudy.ExitStatus.LOCKED
    assert "in use by another dlstudy run" in str(refused.value)
    [summary] = results
    assert isinstance(summary, dlstudy.Summary) and summary.downloaded == 60
    assert_same_files(synth_study.instances, out)


def test_a_download_leaves_the_callers_garbage_to_the_collector(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Workers forked before the event loop share what is frozen out of the collector's reach
    for the run; a library caller's objects are given back after it: garbage of that moment
    (a cycle the collector had not reached yet) is collected, not kept for good."""
    url = embedded_server(synth_study.root)
    script = (
        "import gc, sys, weakref, dlstudy\n"
        "class Node: pass\n"
        "gc.disable()  # the cycle below is garbage the collector has not reached yet\n"
        "node = Node(); node.me = node; ref = weakref.ref(node); del node\n"
        "s = dlstudy.download([sys.argv[1]], sys.argv[2], output=sys.argv[3], workers=2,\n"
        "                     mode='instance')\n"
        "gc.enable(); gc.collect()\n"
        "print(s.downloaded, gc.get_freeze_count(), ref() is None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, synth_study.study_uid, url, str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["60", "0", "True"]


USER_SCRIPT = """
import dlstudy
from dlstudy import ProgressSink, StudyQuery, StudyRecord, Summary, search_async, sync, sync_async


async def records(settings: dlstudy.Settings) -> list[StudyRecord]:
    return await search_async(settings, StudyQuery())


def main(progress: ProgressSink) -> None:
    summary: Summary = dlstudy.download(
        ["1.2.3"], "http://127.0.0.1:9/dicomweb", output="studies", progress=progress
    )
    print(summary.downloaded, summary.failed, summary.as_dict())
    settings = dlstudy.Settings(
        url="http://127.0.0.1:9/dicomweb", output="studies", series=["1.2"], modalities="CT",
        headers={"X-Trace": "1"}, report="landed.csv",
    )  # fmt: skip
    query = StudyQuery(study_date="7d", modalities="CT", filters={"PatientID": "7"})
    try:
        sync(settings, query)
    except dlstudy.DlstudyError as failed:
        print(failed.exit_status, failed.summary.total if failed.summary else None)
    reveal_type(sync)
    reveal_type(sync_async)
    reveal_type(dlstudy.ProgressSink)
"""


def test_a_users_script_is_type_checked_against_dlstudys_hints(tmp_path: Path) -> None:
    """dlstudy ships its hints (py.typed), and the names imported when first used have them
    too: mypy --strict checks a script against them, none is Any. Settings and StudyQuery take
    paths as text and one string or a dict as download() does (mypy said `expected "Path"`),
    and a DlstudyError's `.summary` is known (mypy said it has no such attribute)."""
    (tmp_path / "script.py").write_text(USER_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "script.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    revealed = [line for line in result.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 3 and not any('"Any"' in line for line in revealed), revealed
    assert "-> dlstudy.jobs.sync.SyncSummary" in revealed[0]


def test_dir_lists_every_public_name_before_any_is_used() -> None:
    """dir(dlstudy), and so help(dlstudy) and completion in a notebook, show the names
    imported when first used, without importing them."""
    script = (
        "import sys, dlstudy\n"
        "missing = sorted(set(dlstudy.__all__) - set(dir(dlstudy)))\n"
        "print(missing, 'dlstudy.jobs.sync' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False"]


def test_one_string_where_a_list_goes_is_one_value(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A script passes one study UID, one series, one modality as a string, and headers or
    filters as a dict: each is that one value (not a UID or modality per character), and a
    dict is its (name, value) pairs."""
    url = embedded_server(synth_study.root)
    series = synth_study.series_uids[0]
    summary = dlstudy.download(
        synth_study.study_uid, url, output=tmp_path / "out", series=series, modalities="CT",
        headers={"X-Trace": "1"},
    )  # fmt: skip
    assert (summary.studies, summary.downloaded, summary.failed) == ([synth_study.study_uid], 20, 0)
    assert_same_files(
        [i for i in synth_study.instances if i.series_uid == series], tmp_path / "out"
    )

    wanted = {"StudyInstanceUID": synth_study.study_uid}
    query = dlstudy.StudyQuery(modalities="CT", filters=wanted)
    records = anyio.run(dlstudy.search_async, dlstudy.Settings(url=url), query)
    assert [record.study_uid for record in records] == [synth_study.study_uid]

    with pytest.raises(dlstudy.DlstudyError) as refused:
        dlstudy.download(synth_study.study_uid, url, output=tmp_path, headers=["X-Key: secret"])
    assert refused.value.exit_status == 2 and "secret" not in str(refused.value)
    with pytest.raises(dlstudy.DlstudyError) as refused:
        dlstudy.StudyQuery(filters=["PatientID=7"])  # type: ignore[arg-type]
    assert refused.value.exit_status == 2


def test_download_and_sync_run_where_an_event_loop_already_runs(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A notebook's cell runs in a thread whose asyncio loop is running, which cannot run a
    second: download() and sync() run theirs beside it, as the README's example expects."""
    url = embedded_server(synth_study.root)

    async def cell() -> tuple[int, int]:
        downloaded = dlstudy.download([synth_study.study_uid], url, output=tmp_path / "d")
        synced = dlstudy.sync(
            dlstudy.Settings(url=url, output=tmp_path / "s"), dlstudy.StudyQuery()
        )
        return downloaded.downloaded, synced.downloaded

    assert asyncio.run(cell()) == (60, 60)
    assert_same_files(synth_study.instances, tmp_path / "d")
    assert_same_files(synth_study.instances, tmp_path / "s")


IN_A_POOL = """
import multiprocessing, sys, dlstudy

def job(args):
    url, study, out = args
    return dlstudy.download(study, url, output=out).downloaded

if __name__ == "__main__":
    with multiprocessing.get_context(sys.argv[4]).Pool(1) as pool:
        print(pool.map(job, [tuple(sys.argv[1:4])])[0])
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_download_in_a_pools_daemonic_worker_runs_in_that_process(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer, start: str
) -> None:
    """A multiprocessing.Pool's worker is daemonic, and may start no process: download()
    there forked its standby workers and died in multiprocessing's bare `AssertionError:
    daemonic processes are not allowed to have children`. It runs in one process."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    script = tmp_path / "pooled.py"
    script.write_text(IN_A_POOL)
    result = subprocess.run(
        [sys.executable, str(script), url, synth_study.study_uid, str(out), start],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(synth_study.instances))]
    assert_same_files(synth_study.instances, out)


INTERRUPTED_IN_A_CELL = """
import asyncio, signal, sys, threading, time, dlstudy
from pathlib import Path

class InterruptAtFirst:
    interrupted = False
    def __getattr__(self, name):
        return lambda *args: None
    def instance_done(self, ref, nbytes):
        if not self.interrupted:  # Ctrl-C, as a notebook's kernel gets it
            self.interrupted = True
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(2)  # the run's loop waits: the cancellation comes before more is done

async def cell():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a kernel has it
    try:
        dlstudy.download(
            [sys.argv[1]], sys.argv[2], output=sys.argv[3], progress=InterruptAtFirst()
        )
    except KeyboardInterrupt as stop:
        ended = stop.summary.as_dict()
        print("interrupted", stop.summary.downloaded, len(list(Path(sys.argv[3]).rglob("*.part"))))
        print(ended["exit_status"], ended["error"])
    again = dlstudy.download([sys.argv[1]], sys.argv[2], output=sys.argv[3])
    print(again.skipped, again.downloaded, again.failed)

asyncio.run(cell())
"""


def test_an_interrupted_download_in_a_running_loop_cleans_up(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Ctrl-C while download() waits in a notebook's cell cancels the run on its thread: the
    KeyboardInterrupt carries what was done (its summary's status that of an interrupt), no
    temp file is left, the folder is unlocked, and
    the next call completes the study."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IN_A_CELL, synth_study.study_uid, url, str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    interrupted, before, temp_files, status, error, skipped, downloaded, failed = (
        result.stdout.split()
    )
    assert (interrupted, temp_files, failed) == ("interrupted", "0", "0")
    assert (status, error) == ("130", "interrupted")  # as the CLI's --json says (it said 0, None)
    assert int(before) == int(skipped) < 60 and int(skipped) + int(downloaded) == 60
    assert_same_files(synth_study.instances, out)


def test_a_search_takes_the_clis_forms_and_refuses_what_no_server_should_see(
    synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """StudyQuery takes a date and filter keys as --study-date and --filter do (an ISO date, a
    tag), and refuses what they refuse with a usage error (exit 2) before any request: an
    unknown keyword or an impossible date was sent, and came back as the server's HTTP 400
    (exit 3) or as no match; a page size below 1 was sent as `limit=-1`."""
    url = embedded_server(synth_study.root)
    settings = dlstudy.Settings(url=url)
    [found] = anyio.run(dlstudy.search_async, settings, dlstudy.StudyQuery())
    assert found.study_date is not None and found.patient_id is not None
    iso_date = f"{found.study_date[:4]}-{found.study_date[4:6]}-{found.study_date[6:]}"
    query = dlstudy.StudyQuery(study_date=iso_date, filters=(("(0010,0020)", found.patient_id),))
    records = anyio.run(dlstudy.search_async, settings, query)
    assert [record.study_uid for record in records] == [synth_study.study_uid]

    refused: list[Callable[[], object]] = [
        lambda: dlstudy.StudyQuery(filters=(("NoSuchKeyword", "1"),)),
        lambda: dlstudy.StudyQuery(study_date="2026/13/01"),
        lambda: anyio.run(
            dlstudy.search_async, dlstudy.Settings(url=url, qido_page_size=-1), query
        ),
        lambda: dlstudy.download(synth_study.study_uid, url, qido_page_size=0),
    ]
    for call in refused:
        with pytest.raises(dlstudy.DlstudyError) as usage:
            call()
        assert usage.value.exit_status == dlstudy.ExitStatus.USAGE, usage.value


def test_an_empty_or_repeated_search_value_is_refused_as_the_cli_refuses_it(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """StudyQuery checks its fields as the CLI checks its options. `patient_id=""` (a cron
    script's `os.environ.get("PID", "")` with PID unset) and an empty filter value were sent as
    no filter: sync() downloaded every study of the archive, exit 0. A blank filter value (sent
    as it was), an empty modality, a key given twice were accepted too. Each is now the CLI's
    usage error, before the output folder is made; so is download()'s empty modality (exit 4,
    "no instance matched"), and a modality is matched as --modality's (`" ct"`: CT)."""
    url = embedded_server(synth_study.root)
    settings = dlstudy.Settings(url=url, output=tmp_path / "out")
    refused: list[tuple[dict[str, Any], str]] = [
        ({"patient_id": "", "filters": {"AccessionNumber": ""}},
         "--patient-id is empty: give a value, or leave the option out to match any"),
        ({"accession": " "}, "--accession is empty"),
        ({"modalities": ["CT", ""]}, "--modality is empty"),
        ({"filters": {"PatientSex": "  "}},
         "--filter PatientSex= is empty: give a value, or leave it out"),
        ({"filters": [("PatientSex", "M"), ("00100040", "F")]},
         "--filter PatientSex given more than once"),
        ({"patient_id": "1", "filters": {"PatientID": "2"}},
         "--patient-id and --filter PatientID=... both set PatientID: give each key once"),
    ]  # fmt: skip
    for fields, said in refused:
        with pytest.raises(dlstudy.DlstudyError) as usage:
            dlstudy.sync(settings, dlstudy.StudyQuery(**fields))
        assert usage.value.exit_status == dlstudy.ExitStatus.USAGE, fields
        assert str(usage.value).startswith(said), usage.value
    with pytest.raises(dlstudy.DlstudyError) as usage:
        dlstudy.download(synth_study.study_uid, settings=settings, modalities=[""])
    assert usage.value.exit_status == dlstudy.ExitStatus.USAGE
    assert str(usage.value).startswith("--modality is empty"), usage.value
    assert not settings.output.exists()

    query = dlstudy.StudyQuery(modalities=" ct", filters={"StudyInstanceUID": " 1.2 "})
    assert (query.modalities, query.filters) == (("CT",), (("StudyInstanceUID", "1.2"),))


def test_sync_takes_its_catalog_file_as_text_alone_or_with_a_where(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """sync's `catalog=` takes the file as text or a Path, alone or with a --where, as every
    other path argument: `("c.duckdb", None)` was `AttributeError: 'str' object has no
    attribute 'exists'`, `"c.duckdb"` a TypeError from inside. A wrong shape is a UsageError
    naming the argument, before the output folder is made."""
    url = embedded_server(synth_study.root)
    db = tmp_path / "c.duckdb"
    pulled = run_installed("catalog", "pull", "--url", url, "--db", str(db))
    assert pulled.returncode == 0, pulled.stderr
    settings = dlstudy.Settings(url=url, output=tmp_path / "out")
    query = dlstudy.StudyQuery()

    refused: list[tuple[object, str]] = [
        (5, "catalog must be a catalog file (str or Path) or a (file, where) pair, not int"),
        ((str(db), None, None), "or a (file, where) pair, not tuple"),
        ((str(db), 5), "catalog's where must be text or None, not int"),
        ("", "catalog is empty"),
    ]
    for catalog, said in refused:
        with pytest.raises(dlstudy.DlstudyError) as usage:
            dlstudy.sync(settings, query, catalog=catalog)  # type: ignore[arg-type]
        assert usage.value.exit_status == dlstudy.ExitStatus.USAGE, catalog
        assert said in str(usage.value), usage.value
    assert not settings.output.exists()

    synced = dlstudy.sync(settings, query, catalog=(str(db), "modalities IS NOT NULL"))
    assert (synced.matched, synced.downloaded) == (1, 60)
    assert_same_files(synth_study.instances, settings.output)
    again = dlstudy.sync(settings, query, catalog=str(db))
    assert (again.matched, again.already_complete, again.downloaded) == (1, 1, 0)


def test_arguments_of_the_wrong_kind_are_usage_errors_naming_them(
    tmp_path: Path,
    synth_study: SynthStudy,
    embedded_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each was a TypeError or AttributeError from deep inside (urllib, anyio, the run), or
    worse: `output=""` downloaded into the working folder, a timeout of 0 was sent by
    search_async and failed as a stalled server (exit 3), and a proxy URL that does not
    parse was exit 3 after the output folder was made."""
    monkeypatch.chdir(tmp_path)
    url = embedded_server(synth_study.root)
    settings = dlstudy.Settings(url=url, output=tmp_path / "out")
    query = dlstudy.StudyQuery()

    class HalfASink:
        def close(self) -> None: ...

    refused: list[tuple[Callable[[], object], str]] = [
        (lambda: dlstudy.StudyQuery(patient_id=5), "patient_id must be text or None, not int"),
        (lambda: dlstudy.StudyQuery(study_date=20260101), "study_date must be text or None"),
        (lambda: dlstudy.StudyQuery(modalities=5), "modalities must be text or a list of text"),
        (lambda: dlstudy.StudyQuery(filters=None), "filters must be (keyword, value) pairs"),
        (lambda: dlstudy.Shard("1", 2), "a Shard's number and count are whole numbers"),
        (lambda: dlstudy.Shard(True, 2), "a Shard's number and count are whole numbers"),
        (lambda: dlstudy.sync(settings, query, shard=(1, 2)), "shard must be a dlstudy.Shard"),
        (lambda: dlstudy.sync(settings, None), "query must be a dlstudy.StudyQuery, not NoneType"),
        (lambda: dlstudy.download(synth_study.study_uid, url, progress=5),
         "progress must have ProgressSink's methods: int has no resolving()"),
        (lambda: dlstudy.download(synth_study.study_uid, progress=HalfASink(), settings=settings),
         "HalfASink has no resolving()"),
        (lambda: dlstudy.download(synth_study.study_uid, settings={"url": url}),
         "settings must be a dlstudy.Settings, not dict"),
        (lambda: dlstudy.download(synth_study.study_uid, url, output=""), "output is empty"),
        (lambda: dlstudy.download(synth_study.study_uid, url, modalities="CT "),
         "--modality must be one modality such as CT"),
        (lambda: dlstudy.download(synth_study.study_uid, url, proxy="http://127.0.0.1:99999"),
         "--proxy"),
        (lambda: anyio.run(dlstudy.search_async, dlstudy.Settings(url=url, timeout=0), query),
         "--timeout must be a number of seconds above 0"),
        (lambda: anyio.run(dlstudy.search_async, settings, {"patient_id": "x"}),
         "query must be a dlstudy.StudyQuery, not dict"),
    ]  # fmt: skip
    for call, said in refused:
        with pytest.raises(dlstudy.DlstudyError) as usage:
            call()
        assert usage.value.exit_status == dlstudy.ExitStatus.USAGE, usage.value
        assert said in str(usage.value), usage.value
    assert list(tmp_path.iterdir()) == []  # no output folder made, the working folder empty


def test_a_run_a_progress_sink_stopped_does_not_claim_success(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A caller's sink raising in `instance_done`: its exception came with a `.summary` of
    exit_status 0 and no error, a success for a run that stopped part way."""

    class Failing:
        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args: None

        def instance_done(self, *args: object) -> None:
            raise RuntimeError("the caller's own bug")

    url = embedded_server(synth_study.root)
    with pytest.raises(RuntimeError) as stopped:
        dlstudy.download(synth_study.study_uid, url, output=tmp_path / "o", progress=Failing())
    ended = stopped.value.summary.as_dict()  # type: ignore[attr-defined]
    assert (ended["exit_status"], ended["error"]) == (1, "stopped by RuntimeError")


def test_the_readmes_async_and_sharded_calls_run_as_written(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """`await dlstudy.download_async(uids, settings)` needs no progress sink, and
    `dlstudy.sync(settings, query, shard=...)` takes a `dlstudy.Shard`, as the README has it."""
    url = embedded_server(synth_study.root)
    settings = dlstudy.Settings(url=url, output=tmp_path / "async")
    summary = asyncio.run(dlstudy.download_async([synth_study.study_uid], settings))
    assert summary.downloaded == 60

    owner = 1 if dlstudy.Shard(1, 2).owns(synth_study.study_uid) else 2
    for number, expected in ((owner, 60), (3 - owner, 0)):
        sharded = dlstudy.Settings(url=url, output=tmp_path / f"shard-{number}")
        synced = dlstudy.sync(sharded, dlstudy.StudyQuery(), shard=dlstudy.Shard(number, 2))
        assert synced.downloaded == expected


def test_under_trio_the_async_functions_say_they_need_asyncio(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """anyio runs on trio too, but libcurl's transfers are driven from asyncio's loop: in
    trio's, download_async and search_async stop with a usage error saying what to do, before
    the output folder is made, not with a RuntimeError from inside the first request; so do
    download() and sync() called in a trio task (a bare `RuntimeError: Already running trio in
    this thread`, from the loop of their own they start). In a worker thread download() runs."""
    trio = pytest.importorskip("trio")
    url = embedded_server(synth_study.root)
    settings = dlstudy.Settings(url=url, output=tmp_path / "out")

    async def blocking_download() -> dlstudy.Summary:
        return dlstudy.download([synth_study.study_uid], settings=settings)

    async def blocking_sync() -> dlstudy.Summary:
        return dlstudy.sync(settings, dlstudy.StudyQuery())

    calls = [
        lambda: dlstudy.download_async([synth_study.study_uid], settings),
        lambda: dlstudy.search_async(settings, dlstudy.StudyQuery()),
        blocking_download,
        blocking_sync,
    ]
    for call in calls:
        with pytest.raises(dlstudy.DlstudyError) as refused:
            trio.run(call)
        assert refused.value.exit_status == dlstudy.ExitStatus.USAGE
        assert "worker thread" in str(refused.value)
    assert not (tmp_path / "out").exists()

    async def in_a_thread() -> dlstudy.Summary:
        summary: dlstudy.Summary = await trio.to_thread.run_sync(
            lambda: dlstudy.download([synth_study.study_uid], settings=settings)
        )
        return summary

    assert trio.run(in_a_thread).downloaded == 60


def test_a_setting_of_the_wrong_type_is_named_before_any_request(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """A script passing a number as text, a boolean as text or the HTTP version as a number
    gets a usage error naming the field and what it takes: `concurrency="8"` was a
    `TypeError: '<=' not supported between instances of 'int' and 'str'`, `verify="no"` a
    re-verification (any text is true), and `http=2` said `--http must be auto, 1.1 or 2, not
    2`. A secret's value is never shown."""
    url = embedded_server(synth_study.root)
    out = tmp_path / "out"
    wrong = [
        ({"concurrency": "8"}, "concurrency must be an int, not str"),
        ({"timeout": "30"}, "timeout must be a number, not str"),
        ({"verify": "no"}, "verify must be True or False, not str"),
        ({"http": 2}, "http must be text ('auto', '1.1', '2' or '3'), not int"),
        ({"workers": True}, "workers must be an int, not bool"),
        ({"modalities": ["CT", 1]}, "modalities must be text or a list of text, not int"),
        ({"output": 7}, "output must be a path (str or Path), not int"),
        ({"token": 12345678}, "token must be text or None, not int"),
        # These were TypeErrors and AttributeErrors from deep inside.
        ({"series": None}, "series must be text or a list of text, not NoneType"),
        ({"series": 5}, "series must be text or a list of text, not int"),
        (
            {"headers": None},
            "headers must be a dict or a list of (name, value) pairs, not NoneType",
        ),
        ({"in_shard": "1/2"}, "in_shard must be None or (K, N), whole numbers with 1 <= K <= N"),
        ({"concurency": 8}, "'concurency' is no dlstudy.Settings field"),
        # A header name the CLI refuses was sent, and the server's 400 blamed (exit 3).
        (
            {"headers": {"X Bad": "12345678"}},
            "--header number 1 has no header name (text without spaces or ':'): not shown, it "
            "may hold a secret",
        ),
    ]
    for options, message in wrong:
        with pytest.raises(dlstudy.DlstudyError) as refused:
            dlstudy.download(synth_study.study_uid, url, **{"output": out, **options})
        assert refused.value.exit_status == dlstudy.ExitStatus.USAGE
        assert str(refused.value) == message, options
        assert "12345678" not in str(refused.value)
    for uids, said in [
        (None, "study_uids must be a UID or a list of UIDs (text), not NoneType"),
        ([123], "a study UID must be text, not int"),
        (b"1.2", "study_uids must be a UID or a list of UIDs (text), not bytes"),
    ]:
        with pytest.raises(dlstudy.DlstudyError) as refused:
            dlstudy.download(uids, url, output=out)  # type: ignore[arg-type]
        assert refused.value.exit_status == dlstudy.ExitStatus.USAGE
        assert str(refused.value) == said
    assert not out.exists()


CONCURRENT_RUNS = """
import asyncio, signal, sys, dlstudy

def own_handler(signum, frame):
    pass

uid, url, out = sys.argv[1:]
dlstudy.download([uid], url, output=out + "/0")  # the first of the two then has nothing to do
signal.signal(signal.SIGINT, own_handler)
signal.signal(signal.SIGTERM, own_handler)

async def main():
    runs = [dlstudy.download_async([uid], dlstudy.Settings(url=url, output=out + f"/{n}"))
            for n in range(2)]
    return [summary.skipped + summary.downloaded for summary in await asyncio.gather(*runs)]

print(*asyncio.run(main()), *(signal.getsignal(s) is own_handler for s in (2, 15)))
"""


def test_two_runs_at_once_in_one_loop_give_the_callers_handlers_back(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    """Two download_async at once in the main thread's loop (asyncio.gather): each watches
    SIGINT and SIGTERM while it runs, and the caller's own handlers are back after both. The
    second took asyncio's handler for the caller's and, ending last, put it back: Ctrl-C was
    ignored for good, the process no longer stoppable by it."""
    url = embedded_server(synth_study.root)
    result = subprocess.run(
        [sys.executable, "-c", CONCURRENT_RUNS, synth_study.study_uid, url, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["60", "60", "True", "True"]


INTERRUPTED_WITH_WORKERS = """
import os, signal, sys, dlstudy
from dlstudy.report.progress import NullProgress

class InterruptAtFifth(NullProgress):
    done = 0
    def instance_done(self, ref, nbytes):
        self.done += 1
        if self.done == 5:
            os.kill(os.getpid(), signal.SIGINT)

def open_files():
    return set(os.listdir("/proc/self/fd"))

uid, url, out = sys.argv[1:]
options = dict(workers=2, mode="instance")
dlstudy.download([uid], url, output=out + "/first", **options)  # what one opens for good
# The fork server and its resource tracker, started by whichever run first needs them (the
# first run's workers may all come forked before its event loop), keep a pipe each for good.
import multiprocessing
from multiprocessing import forkserver
multiprocessing.get_context("forkserver").set_forkserver_preload(["dlstudy.engine.worker_process"])
forkserver.ensure_running()
before = open_files()
try:
    dlstudy.download([uid], url, output=out + "/second", progress=InterruptAtFifth(), **options)
except KeyboardInterrupt as stop:
    kept = stop  # as a notebook keeps the last one (sys.last_value) with its traceback
    print(kept.summary.as_dict()["processes"], len(open_files() - before))
"""


def test_an_interrupted_run_with_workers_leaves_no_file_open(
    tmp_path: Path, embedded_server: StartServer
) -> None:
    """Ctrl-C in a download whose worker processes had started: the pipes to them are closed
    even while the caller keeps the KeyboardInterrupt (a notebook keeps the last one, and its
    traceback holds the run's frames); two stayed open per interrupted run until then."""
    # One series long enough to be shared with a worker (MIN_INSTANCES_PER_WORKER).
    [first, *_] = generate(tmp_path / "data", SynthSpec(series=1, instances=150, size=4096))
    url = embedded_server(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_WITH_WORKERS, first.study_uid, url, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "0"]
