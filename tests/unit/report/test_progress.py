"""Progress sinks render what happened, with an injected console and clock."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from dlstudy.model import InstanceRef
from dlstudy.report.progress import NullProgress, PlainProgress
from dlstudy.report.progress_rich import RichProgress

from ...cli_helpers import run_on_a_terminal
from ...fixtures.embedded_server import StartServer, SynthStudy

REF = InstanceRef("1.2", "1.2.3", "1.2.3.4")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_logs_periodically_with_counts_rate_and_eta() -> None:
    clock = FakeClock()
    out = io.StringIO()
    sink = PlainProgress(out, interval=5.0, clock=clock)
    sink.resolving("1.2")
    sink.start(total=12, skipped=2)
    sink.advance(5_000_000)
    sink.instance_done(REF, 5_000_000)
    assert out.getvalue().count("\n") == 2  # nothing periodic yet
    clock.now += 5.0
    sink.advance(5_000_000)
    sink.instance_done(REF, 5_000_000)
    sink.instance_failed(REF, "instance 1.2.3.4: HTTP 404")
    sink.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "dlstudy: resolving study 1.2"
    assert lines[1] == "dlstudy: downloading 10 of 12 instances (2 already present)"
    assert "dlstudy: 2/10 instances, 10.0 MB, 2.0 MB/s, ETA 0:20" in lines
    assert "dlstudy: failed: instance 1.2.3.4: HTTP 404" in lines


def test_plain_progress_grows_its_total_as_later_parts_are_resolved() -> None:
    """A long list's parts: `start` again with the totals so far; one "downloading" line,
    and the periodic line counts against the grown total."""
    clock = FakeClock()
    out = io.StringIO()
    sink = PlainProgress(out, interval=5.0, clock=clock)
    sink.start(total=10, skipped=0)
    sink.instance_done(REF, 1)
    sink.start(total=25, skipped=3)  # the second part: 15 more, 3 of them present
    sink.resolving("1.3")  # a third part resolving meanwhile, within the interval
    clock.now += 5.0
    sink.instance_done(REF, 1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "dlstudy: downloading 10 of 10 instances"
    assert sum("downloading" in line for line in lines) == 1
    assert lines[-1].startswith("dlstudy: 2/22 instances, ")


def test_plain_progress_of_a_partly_resolved_list_says_so_and_estimates_its_eta() -> None:
    """While later parts of a long list are still to be resolved, the totals cover only what
    was resolved: the lines say how much, and the ETA extrapolates to the whole list."""
    clock = FakeClock()
    out = io.StringIO()
    sink = PlainProgress(out, interval=5.0, clock=clock)
    sink.start(total=10, skipped=0, listed=(2_000, 8_000))
    for _ in range(5):
        sink.instance_done(REF, 1)
    clock.now += 5.0
    sink.instance_done(REF, 1)  # 6 done in 5 s; about 40 in all
    sink.start(total=40, skipped=0, listed=(8_000, 8_000))  # the last part: all resolved
    clock.now += 5.0
    sink.instance_done(REF, 1)  # 7 done in 10 s; 33 left
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "dlstudy: downloading 10 of 10 instances so far (2,000 of 8,000 list entries resolved)"
    )
    assert lines[1].startswith("dlstudy: 6/10 instances (2,000 of 8,000 list entries resolved), ")
    assert lines[1].endswith(", ETA ~0:28")  # 34 left of ~40, at 1.2 a second
    assert lines[2].startswith("dlstudy: 7/40 instances, ")
    assert lines[2].endswith(", ETA 0:47")  # 33 left at 0.7 a second


def test_rich_progress_keeps_downloading_while_later_parts_resolve() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    sink = RichProgress(console, clock=FakeClock())
    sink.start(total=4, skipped=1)
    sink.resolving("1.3")
    sink.start(total=9, skipped=2)
    sink.progress.refresh()
    sink.close()
    text = out.getvalue()
    assert "resolving 1.3" not in text
    assert text.count("already present") == 1
    assert "0/7 instances" in text


def test_rich_progress_renders_instances_bytes_rate_and_failures() -> None:
    clock = FakeClock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    sink = RichProgress(console, clock=clock)
    sink.start(total=4, skipped=0)
    clock.now += 2.0
    sink.advance(4_000_000)
    sink.instance_done(REF, 4_000_000)
    sink.instance_failed(REF, "instance 1.2.3.4: [bad] HTTP 500")
    sink.progress.refresh()
    clock.now += 1.0
    sink.instance_done(REF, 0)
    sink.instance_done(REF, 0)
    sink.close()
    text = out.getvalue()
    assert "1/4 instances (1 failed)" in text
    assert "3/4 instances (1 failed)" in text and "in 0:03" in text  # elapsed once complete
    assert "4.0 MB" in text and "2.0 MB/s" in text
    # Failures are counted on the bar and listed once, by the summary at the end.
    assert "HTTP 500" not in text
    assert _last_line(text).startswith("1 failed ")


def _final_label(events: list[str]) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    sink = RichProgress(console, clock=FakeClock())
    uid = "1.2.826.0.1.3680043.8.498.10368276145766581392437474382614256379"
    sink.resolving(uid)
    sink.progress.refresh()
    assert f"resolving {uid}" in out.getvalue()  # the whole UID, not its tail
    sink.start(total=2, skipped=0)
    for event in events:
        if event == "done":
            sink.instance_done(REF, 1)
        else:
            sink.instance_failed(REF, "x")
    sink.close()
    return _last_line(out.getvalue()).split()[0]


def _last_line(text: str) -> str:
    """The last line drawn (cursor codes and carriage-return redraws dropped)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return [line for line in re.split(r"[\r\n]", text) if line.strip()][-1]


def test_the_bar_ends_saying_how_the_run_ended() -> None:
    assert _final_label(["done", "done"]) == "done"
    assert _final_label(["done", "failed"]) == "1"  # "1 failed ..."
    assert _final_label(["done"]) == "stopped"  # interrupted, or stopped by a fatal error


def test_null_progress_accepts_everything_silently() -> None:
    sink = NullProgress()
    sink.resolving("1.2")
    sink.start(1, 0)
    sink.advance(1)
    sink.instance_done(REF, 1)
    sink.instance_failed(REF, "x")
    sink.close()


@pytest.mark.integration
def test_on_a_terminal_the_bar_says_how_the_run_ended_and_lists_nothing_twice(
    tmp_path: Path, synth_study: SynthStudy, embedded_server: StartServer
) -> None:
    good = embedded_server(synth_study.root)
    code, text = run_on_a_terminal(
        "download", synth_study.study_uid, "--url", good, "-o", str(tmp_path / "a")
    )
    assert code == 0, text
    assert _last_bar(text).startswith("done "), text
    # One rate: the bar's last MB/s is the summary's (both over the run since it started).
    bar_rate = float(re.findall(r"([0-9.,]+) MB/s", _last_bar(text))[-1].replace(",", ""))
    summary_rate = float(re.findall(r"\(([0-9.]+) MB/s\)", text)[-1])
    assert abs(bar_rate - summary_rate) <= 0.15 * summary_rate, (bar_rate, summary_rate)

    # 404 is final: a share of the instances fail, each listed once, by the summary.
    broken = embedded_server(synth_study.root, fault_rate=0.2, fault_status=404, seed=5)
    code, text = run_on_a_terminal(
        "download", synth_study.study_uid, "--url", broken, "-o", str(tmp_path / "b"),
        "--mode", "instance",
    )  # fmt: skip
    assert code == 1, text
    failed = [line for line in text.splitlines() if line.startswith("dlstudy: error: instance")]
    assert failed and len(failed) == len(set(failed))
    assert _last_bar(text).startswith(f"{len(failed)} failed ")


def _last_bar(text: str) -> str:
    """The last state of the progress bar (its line redrawn in place)."""
    bars = [
        part
        for line in text.splitlines()
        for part in line.split("\r")
        if " instances" in part and " • " in part
    ]
    return bars[-1].strip()


def test_plain_progress_stays_a_line_per_interval_for_big_jobs() -> None:
    """10,000 studies to list and 5,000 failures: not a line each, but a few lines in all."""
    clock = FakeClock()
    out = io.StringIO()
    sink = PlainProgress(out, interval=5.0, clock=clock)
    for number in range(10_000):
        sink.resolving(f"1.2.{number}")
        clock.now += 0.001  # 10 s for the whole list
    assert out.getvalue().count("resolving") == 2  # the first, then one per 5 s
    assert "(5,001 listed so far)" in out.getvalue()
    sink.start(total=5_000, skipped=0)
    before = out.getvalue().count("\n")
    for _ in range(5_000):
        sink.instance_failed(REF, "instance 1.2.3.4: HTTP 500")
        clock.now += 0.002
    lines = out.getvalue().splitlines()[before:]
    assert sum(line.startswith("dlstudy: failed:") for line in lines) == 20
    assert len(lines) <= 20 + 3  # and a periodic line per 5 s, counting them
    assert "failed" in lines[-1] and "/5000 instances, " in lines[-1]


def test_the_json_summary_of_any_job_stays_under_a_megabyte() -> None:
    import json

    from dlstudy.model import Failure
    from dlstudy.report.summary import LIST_LIMIT, Summary

    summary = Summary(url="http://pacs/dicomweb", output="out")
    summary.studies = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(100_000)]
    summary.failures = [
        Failure(uid, f"{uid}.1", f"{uid}.1.1", f"instance {uid}.1.1: HTTP 500 on http://pacs/x")
        for uid in summary.studies[:20_000]
    ]
    data = summary.as_dict()
    assert len(json.dumps(data, indent=2)) < 1_000_000
    assert data["studies"] == 100_000 and len(data["study_uids"]) == LIST_LIMIT
    assert data["instances"]["failed"] == 20_000 and len(data["failures"]) == LIST_LIMIT
    assert data["omitted"] == {"study_uids": 99_000, "failures": 19_000}
    small = Summary(url="u", output="o", studies=["1.2"]).as_dict()
    assert "omitted" not in small and small["study_uids"] == ["1.2"]


def test_the_summary_says_how_many_attempts_were_retried() -> None:
    from dlstudy.flow.retry import RetryTally
    from dlstudy.report.summary import Summary

    summary = Summary(url="u", output="o", studies=["1.2"], total=3, downloaded=3)
    assert summary.as_dict()["retried"] == 0
    assert "retr" not in summary.one_line()  # a run without retries says nothing of them
    summary.retries = RetryTally()
    summary.retries.retried = 1
    assert summary.one_line().endswith("; 1 retry")
    summary.retries.retried = 23
    assert summary.as_dict()["retried"] == 23
    assert summary.one_line().endswith("; 23 retries")


def test_a_sync_summary_counts_every_study_and_keeps_only_what_json_prints() -> None:
    """A night of 100,000 studies: sync's summary keeps LIST_LIMIT UIDs, the first ones, and
    reports the rest as omitted, as a download's summary of that size does."""
    from dlstudy.jobs.sync import SyncSummary
    from dlstudy.report.summary import LIST_LIMIT

    summary = SyncSummary(url="http://pacs/dicomweb", output="out", matched=100_000)
    uids = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(100_000)]
    for uid in uids:
        summary.add_study(uid)
    summary.already_complete = 99_990

    assert summary.studies == uids[:LIST_LIMIT]
    data = summary.as_dict()
    assert data["studies"] == 100_000 and data["study_uids"] == uids[:LIST_LIMIT]
    assert data["omitted"] == {"study_uids": 100_000 - LIST_LIMIT}
    assert data["sync"] == {"matched": 100_000, "shard": None, "in_shard": 100_000,
                            "already_complete": 99_990, "synced": 10}  # fmt: skip
    assert summary.one_line().startswith("sync: 100000 studies matched, 99990 already complete")
    assert " instances in 100000 studies;" in summary.one_line()


def test_one_instance_is_said_in_the_singular() -> None:
    from dlstudy.engine.strategy import choose
    from dlstudy.report.summary import Summary

    summary = Summary(url="u", output="o", studies=["1.2"], total=1, downloaded=1)
    assert "0 failed of 1 instance in 1 study;" in summary.one_line()
    summary = Summary(url="u", output="o", studies=["1.2", "1.3"], total=2, downloaded=2)
    assert "0 failed of 2 instances in 2 studies;" in summary.one_line()
    out = io.StringIO()
    PlainProgress(out, interval=5.0, clock=FakeClock()).start(total=1, skipped=0)
    assert out.getvalue().splitlines()[0] == "dlstudy: downloading 1 of 1 instance"
    assert choose("1.2", 1, None).why == "1 instance: too few to be worth a probe"
    assert choose("1.2", 2, None).why == "2 instances: too few to be worth a probe"
