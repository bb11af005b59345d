"""examples/slurm-array.sh under a real SLURM: a one-node cluster on this machine (see
tests/fixtures/slurm.py) runs the documented job script as a 4-task array against a virtual archive
(`serve --virtual`); `--shard auto` must give each task its own studies, together all of them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dlstudy.dicomweb.shard import Shard
from dlstudy.server import VirtualArchive, VirtualSpec

from ..cli_helpers import DLSTUDY, PROXY_VARIABLES
from ..fixtures.embedded_server import StartServer
from ..fixtures.slurm import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "slurm-array.sh"
TASKS = 4
EVERY_TASK = range(TASKS)
JOB_TIMEOUT_S = 300.0


def _job_environment(config: Path, out: Path, cluster: SlurmCluster) -> dict[str, str]:
    """sbatch hands its own environment to every task (--export=ALL): the `dlstudy` users run
    (this venv's, first on PATH), the config with the `pacs` profile, and the output folder;
    no proxy and none of the developer's DLSTUDY_ settings."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in PROXY_VARIABLES and not name.startswith("DLSTUDY_")
    }
    path = f"{Path(DLSTUDY).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **clean,
        **cluster.env,
        "PATH": path,
        "DLSTUDY_CONFIG": str(config),
        "DLSTUDY_COHORT_DIR": str(out),
    }


def _task_logs(folder: Path) -> str:
    return "\n".join(
        f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(folder.glob("*.log"))
    )


def _run_array(
    cluster: SlurmCluster,
    cohort: Path,
    env: dict[str, str],
    job: Path,
    tasks: range = EVERY_TASK,
) -> None:
    """`sbatch --wait` the example as an array of `tasks`. `--array` overrides the script's
    0-15%8. The node has the CPUs of this machine (2 in CI): one per task instead of the
    script's two lets tasks run side by side."""
    command = ["sbatch", "--wait", f"--array={tasks[0]}-{tasks[-1]}", "--cpus-per-task=1"]
    try:
        result = subprocess.run(
            [*command, str(SCRIPT), str(cohort)],
            cwd=job,
            env=env,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the job array did not end within {JOB_TIMEOUT_S:.0f} s\n"
            f"{cluster.run('squeue')}\n{_task_logs(job)}\n{cluster.log_tails()}"
        )
    assert result.returncode == 0, (
        f"sbatch --wait exited {result.returncode}: {result.stderr}\n"
        f"{_task_logs(job)}\n{cluster.log_tails()}"
    )
    submitted = re.search(r"Submitted batch job (\d+)", result.stdout)
    assert submitted is not None, result.stdout
    job_id = submitted.group(1)
    logs = {log.name for log in job.glob(f"dlstudy-{job_id}_*.log")}
    assert logs == {f"dlstudy-{job_id}_{task}.log" for task in tasks}, _task_logs(job)


def _summaries(out: Path) -> list[dict[str, Any]]:
    """Each task's `--json` summary, in task order; every task must have succeeded."""
    summaries = []
    for task in range(TASKS):
        summary: dict[str, Any] = json.loads((out / f"summary-{task}.json").read_text())
        assert summary["exit_status"] == 0, summary
        assert summary["instances"]["failed"] == 0, summary
        summaries.append(summary)
    return summaries


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_slurm_array_example_downloads_each_study_once_across_its_tasks(
    slurm_cluster: SlurmCluster, embedded_server: StartServer, tmp_path: Path
) -> None:
    spec = VirtualSpec(12, seed=11, mix="mimic")  # 12 studies of 1-4 radiographs
    archive = VirtualArchive(spec)
    studies = sorted(archive.study_uids())
    instances = [i for study in studies for i in archive.instances_of(study)]
    url = embedded_server(None, virtual=spec)

    def assert_same_files(wanted: list[tuple[str, str, str]], folder: Path) -> None:
        """Every instance of `wanted` under `folder`, byte for byte, and nothing else."""
        for st, se, sop in wanted:
            path = folder / st / se / f"{sop}.dcm"
            assert path.read_bytes() == archive.expected_bytes(st, se, sop), path
        kept = [p for p in folder.rglob("*.dcm") if ".dlstudy" not in p.parts]
        assert len(kept) == len(wanted), folder

    cohort = tmp_path / "cohort.txt"
    cohort.write_text("\n".join(studies) + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f'[servers.pacs]\nurl = "{url}"\n')
    out = tmp_path / "cohort"
    job = tmp_path / "job"  # sbatch's working folder: the tasks' logs land here
    job.mkdir()
    env = _job_environment(config, out, slurm_cluster)

    _run_array(slurm_cluster, cohort, env, job)
    shards: list[set[str]] = []
    for task, summary in enumerate(_summaries(out)):
        got = set(summary["study_uids"])
        # SLURM_ARRAY_TASK_ID 0..3 became --shard 1/4..4/4.
        assert got == set(Shard(task + 1, TASKS).select(studies)), task
        on_disk = {p.name for p in (out / f"shard-{task}").iterdir() if p.name != ".dlstudy"}
        assert on_disk == got, task
        shards.append(got)
    assert sum(len(shard) for shard in shards) == len(studies)  # disjoint ...
    assert set().union(*shards) == set(studies)  # ... and together the whole cohort
    assert sum(1 for shard in shards if shard) >= 2  # the work was split, not done by one task
    for task, shard in enumerate(shards):  # every file byte for byte, none more
        mine = [instance for instance in instances if instance[0] in shard]
        assert_same_files(mine, out / f"shard-{task}")

    # A task that failed half-way (here: one file gone) is retried as the script says, by
    # submitting the same array again: that task fetches what is missing, the others nothing.
    task = next(task for task, shard in enumerate(shards) if shard)
    lost_study, lost_series, lost_sop = next(i for i in instances if i[0] in shards[task])
    lost = out / f"shard-{task}" / lost_study / lost_series / f"{lost_sop}.dcm"
    lost.unlink()
    _run_array(slurm_cluster, cohort, env, job)
    downloaded = [summary["instances"]["downloaded"] for summary in _summaries(out)]
    assert downloaded == [1 if t == task else 0 for t in range(TASKS)]
    for t, shard in enumerate(shards):
        assert_same_files([i for i in instances if i[0] in shard], out / f"shard-{t}")

    # One task alone, its shard given as the script says: SLURM calls it a one-task array.
    lost.unlink()
    (out / f"summary-{task}.json").unlink()
    _run_array(
        slurm_cluster,
        cohort,
        {**env, "DLSTUDY_SHARD": f"{task + 1}/{TASKS}"},
        job,
        range(task, task + 1),
    )
    alone = json.loads((out / f"summary-{task}.json").read_text())
    assert alone["exit_status"] == 0 and alone["instances"]["downloaded"] == 1, alone
    assert set(alone["study_uids"]) == shards[task]
    assert_same_files([i for i in instances if i[0] in shards[task]], out / f"shard-{task}")
