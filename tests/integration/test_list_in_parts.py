"""A long list goes in parts, each part listed while the one before it downloads
(jobs/parts.py): every instance is fetched and counted once whichever parts name it, every
study is recorded complete with its whole count, and "nothing matched" still means the whole
list. Against the embedded server's virtual archive."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import dlstudy
from dlstudy import CohortItem
from dlstudy.errors import NothingMatchedError
from dlstudy.jobs import parts
from dlstudy.server import VirtualArchive, VirtualSpec
from dlstudy.store.manifest import Manifest

from ..cli_helpers import download_list, instance_counts, run_installed
from ..cohort_helpers import assert_byte_exact
from ..fixtures.embedded_server import SeenRequests, StartServer

pytestmark = pytest.mark.integration


def recorded_complete(out: Path, studies: list[str]) -> dict[str, int]:
    manifest = Manifest(out, out / ".dlstudy", read_only=True)
    try:
        found = {study: manifest.completion(study) for study in studies}
        return {study: c.instances for study, c in found.items() if c is not None}
    finally:
        manifest.close()


@pytest.mark.slow
def test_a_list_longer_than_a_part_downloads_every_instance_once(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    count = parts.PART_ITEMS + 1
    spec = VirtualSpec(count, seed=7, mix="mimic")
    archive = VirtualArchive(spec)
    studies = list(archive.study_uids())
    _, first_series, _ = next(iter(archive.instances_of(studies[0])))
    url = embedded_server(None, virtual=spec)

    # The first study's series once more, in the second part: the first part had them.
    summary, out = download_list(url, [*studies, first_series], tmp_path, timeout=900)

    total = sum(archive.study_size)
    assert summary["instances"] == instance_counts(total, downloaded=total)
    assert summary["studies"] == count
    assert assert_byte_exact(archive, studies, out) == total
    # Each instance was asked for once; every study is recorded complete, with its count.
    fetched = [path for path, _ in seen_requests.requests if "/instances/" in path]
    assert len(fetched) == len(set(fetched)) == total
    sizes = dict(zip(studies, archive.study_size, strict=True))
    assert recorded_complete(out, studies) == sizes


@pytest.mark.slow
def test_the_progress_lines_of_a_list_in_parts_say_how_much_is_resolved(
    embedded_server: StartServer, tmp_path: Path
) -> None:
    """Without a terminal, the installed CLI's first line counts the first part's instances
    "so far" and says how much of the list that covers (the studies already complete in the
    output folder count as resolved); the last line counts them all."""
    done_before = 3
    count = done_before + parts.PART_ITEMS + 1
    spec = VirtualSpec(count, seed=11, mix="mimic")
    archive = VirtualArchive(spec)
    studies = list(archive.study_uids())
    url = embedded_server(None, virtual=spec)
    out = tmp_path / "out"

    def download(uids: list[str]) -> list[str]:
        listing = tmp_path / "uids.txt"
        listing.write_text("\n".join(uids) + "\n")
        result = run_installed(
            "download", "--from-file", str(listing), "--url", url, "-o", str(out), timeout=900
        )
        assert result.returncode == 0, result.stderr
        return [line for line in result.stderr.splitlines() if line.startswith("dlstudy: ")]

    download(studies[:done_before])
    lines = download(studies)

    sizes = archive.study_size
    present, total = sum(sizes[:done_before]), sum(sizes[done_before:])
    first_part = sum(sizes[done_before : done_before + parts.PART_ITEMS])
    starts = [line for line in lines if "downloading" in line]
    assert starts == [
        f"dlstudy: downloading {first_part} of {first_part + present} instances "
        f"({present} already present) so far "
        f"({done_before + parts.PART_ITEMS:,} of {count:,} list entries resolved)"
    ]
    last = next(line for line in reversed(lines) if " instances" in line and "/" in line)
    assert last.startswith(f"dlstudy: {total}/{total} instances, ")
    assert " in " in last and "list entries" not in last


@pytest.mark.parametrize("series_first", [True, False], ids=["series-first", "study-first"])
def test_a_study_and_its_series_in_two_parts_count_once(
    embedded_server: StartServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    series_first: bool,
) -> None:
    monkeypatch.setattr(parts, "PART_ITEMS", 2)
    spec = VirtualSpec(4, seed=8, mix="mimic")  # its first study has two series
    archive = VirtualArchive(spec)
    studies = list(archive.study_uids())
    study = studies[0]
    instances = list(archive.instances_of(study))
    series = instances[0][1]
    in_series = [sop for _, se, sop in instances if se == series]
    assert 0 < len(in_series) < len(instances)
    whole, part = CohortItem(study_uid=study), CohortItem(study_uid=study, series_uid=series)
    first, last = (part, whole) if series_first else (whole, part)
    items = [first, CohortItem(study_uid=studies[1]), CohortItem(study_uid=studies[2]), last]
    url = embedded_server(None, virtual=spec)
    out = tmp_path / "out"

    summary = dlstudy.download(items, url, output=out)

    assert summary.exit_status == 0
    expected = sum(archive.study_size[:3])
    assert summary.total == summary.downloaded == expected
    assert summary.skipped == 0
    assert assert_byte_exact(archive, studies[:3], out) == expected
    # The study's record counts all its instances, those the other part listed included.
    sizes = dict(zip(studies[:3], archive.study_size[:3], strict=True))
    assert recorded_complete(out, studies) == sizes


def test_nothing_matched_means_in_every_part(
    embedded_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parts, "PART_ITEMS", 2)
    spec = VirtualSpec(2, seed=9, mix="mimic")
    archive = VirtualArchive(spec)
    url = embedded_server(None, virtual=spec)
    missing = [CohortItem(study_uid=f"1.2.3.{n}") for n in range(3)]
    found = CohortItem(study_uid=archive.study_uid(1))

    summary = dlstudy.download([*missing, found], url, output=tmp_path / "some")

    assert summary.exit_status == 1  # the three missing studies are failures of their own
    assert summary.downloaded == summary.total == archive.study_size[1]
    assert [f.study_uid for f in summary.failures] == [item.study_uid for item in missing]

    with pytest.raises(NothingMatchedError, match="none of the 4 studies"):
        dlstudy.download([*missing, CohortItem(study_uid="1.2.3.9")], url, output=tmp_path / "no")


def listing_in_two_parts(archive: VirtualArchive, tmp_path: Path) -> Path:
    """A cohort list of the archive's one series: part one names its first PART_ITEMS
    instances one by one, part two the series (the rest of its instances are new there)."""
    study = archive.study_uid(0)
    instances = list(archive.instances_of(study))
    rows = [f"{st},{se},{sop}" for st, se, sop in instances[: parts.PART_ITEMS]]
    rows.append(f"{study},{instances[0][1]},")
    listing = tmp_path / "cohort.csv"
    listing.write_text("StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID\n" + "\n".join(rows))
    return listing


@pytest.mark.slow
def test_worker_processes_serve_every_part(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """The first part takes the workers forked before the event loop; the next part, with
    none left standing by, starts its own (multiprocessing's fork server)."""
    count = parts.PART_ITEMS + 200
    spec = VirtualSpec(1, seed=11, study_size=count)
    archive = VirtualArchive(spec)
    study = archive.study_uid(0)
    listing = listing_in_two_parts(archive, tmp_path)
    url = embedded_server(None, virtual=spec)
    out, log = tmp_path / "out", tmp_path / "run.log"

    result = run_installed(
        "download", "--from-file", str(listing), "--url", url, "-o", str(out), "--json",
        "--workers", "2", "--mode", "instance", "--log-file", str(log), timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"] == instance_counts(count, downloaded=count)
    assert summary["processes"] == 2  # (the last part's)
    assert assert_byte_exact(archive, [study], out) == count
    fetched = [path for path, _ in seen_requests.requests if "/instances/" in path]
    assert len(fetched) == len(set(fetched)) == count
    started = re.findall(
        r"1 worker processes (forked before the event loop|started by)", log.read_text()
    )
    assert started == ["forked before the event loop", "started by"]


@pytest.mark.slow
def test_worker_processes_log_as_the_parent_does(
    embedded_server: StartServer, seen_requests: SeenRequests, tmp_path: Path
) -> None:
    """With -v and --log-file, every retry a worker made is a line of the log file and of
    stderr, in the parent's format: the worker forked before the event loop (part one) and
    the one the fork server started (part two, long enough for it to take a share), which
    has none of the parent's logging set-up of its own."""
    count = parts.PART_ITEMS + 2000
    spec = VirtualSpec(1, seed=11, study_size=count)
    archive = VirtualArchive(spec)
    listing = listing_in_two_parts(archive, tmp_path)
    url = embedded_server(None, virtual=spec, fault_rate=0.05, retry_after=0, seed=5)
    out, log = tmp_path / "out", tmp_path / "run.log"

    result = run_installed(
        "download", "--from-file", str(listing), "--url", url, "-o", str(out), "--json",
        "--workers", "2", "--mode", "instance", "-v", "--log-file", str(log), timeout=900,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["instances"] == instance_counts(count, downloaded=count)
    assert "1 worker processes started by forkserver" in log.read_text()
    retried = seen_requests.instance_statuses[503]
    assert summary["retried"] == retried > 0
    retry_line = re.compile(r"^\S+ \S+ INFO dlstudy\.flow\.retry: retrying in .*: HTTP 503$")
    for text in (log.read_text(), result.stderr):
        lines = [line for line in text.splitlines() if "retrying in" in line]
        assert len(lines) == retried
        assert all(retry_line.match(line) for line in lines), lines[:3]
