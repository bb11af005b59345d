"""`--shard K/N`: split a list of studies across N independent processes, each study exactly once.

A study belongs to shard `int(sha256(uid).hexdigest(), 16) % N + 1`: it depends on the UID and
N only, never on the order of the list or on the machine, so N processes given the same list
(or the same query) download disjoint parts that together are the whole. Shards are numbered
1..N on the command line, like `split -n K/N`.

Schedulers number their tasks from 0, so `--shard auto` converts: it reads the 0-based index
from `JOB_COMPLETION_INDEX` (Kubernetes Indexed Job) or `SLURM_ARRAY_TASK_ID` (SLURM job array,
relative to `SLURM_ARRAY_TASK_MIN` and `SLURM_ARRAY_TASK_STEP`), and the count from
`DLSTUDY_SHARD_COUNT`, `JOB_COMPLETIONS` or `SLURM_ARRAY_TASK_COUNT`, first found wins.
Kubernetes does not put the completion count in the environment: the manifest sets it. Other
schedulers pass `--shard K/N` (or `DLSTUDY_SHARD=K/N`) themselves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass

from ..errors import UsageError

INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID")
COUNT_VARIABLES = ("DLSTUDY_SHARD_COUNT", "JOB_COMPLETIONS", "SLURM_ARRAY_TASK_COUNT")
# More shards than this is a typo, not a cluster.
MAX_SHARDS = 1_000_000
# ASCII digits only: str.isdigit() passes '¹', which int() refuses, and int() reads '١'.
_NUMBER = re.compile(r"\s*([0-9]+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard `number` (1-based) of `count`."""

    number: int
    count: int

    def __post_init__(self) -> None:
        for value in (self.number, self.count):  # (`Shard("1", 2)`: a TypeError, `1.0` taken)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"a Shard's number and count are whole numbers, not {value!r}")
        if not 1 <= self.count <= MAX_SHARDS:
            raise UsageError(f"--shard: N must be between 1 and {MAX_SHARDS}, not {self.count}")
        if not 1 <= self.number <= self.count:
            raise UsageError(
                f"--shard {self.number}/{self.count}: K must be between 1 and {self.count}"
            )

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"

    def owns(self, study_uid: str) -> bool:
        return shard_of(study_uid, self.count) == self.number

    def select(self, study_uids: Iterable[str]) -> list[str]:
        """The UIDs of this shard, in their original order."""
        return [uid for uid in study_uids if self.owns(uid)]


def shard_of(study_uid: str, count: int) -> int:
    """The shard (1..count) a study belongs to."""
    digest = hashlib.sha256(study_uid.strip().encode("ascii", "replace")).hexdigest()
    return int(digest, 16) % count + 1


def parse_shard(text: str | None, env: Mapping[str, str]) -> Shard | None:
    """`None`/`""` (no sharding), `K/N` (1-based), or `auto` (from the scheduler's variables)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.lower() == "auto":
        return _from_environment(env)
    number, sep, count = text.partition("/")
    number_found, count_found = _NUMBER.fullmatch(number), _NUMBER.fullmatch(count)
    if not sep or number_found is None or count_found is None:
        raise UsageError(
            f"--shard must look like K/N (e.g. 2/8) or be 'auto', not {_shown(text)!r}"
        )
    digits = number_found.group(1), count_found.group(1)
    if any(len(one.lstrip("0")) > len(str(MAX_SHARDS)) for one in digits):
        # (before int(), which refuses 4,300 digits or more)
        raise UsageError(f"--shard {_shown(text)}: K and N must be between 1 and {MAX_SHARDS}")
    return Shard(int(digits[0]), int(digits[1]))


def _shown(text: str, most: int = 60) -> str:
    """`text` as an error line quotes it: whole, or its start marked as cut."""
    return text if len(text) <= most else text[: most - 1] + "…"


def _from_environment(env: Mapping[str, str]) -> Shard:
    index_name = next((name for name in INDEX_VARIABLES if env.get(name, "").strip()), None)
    count_name = next((name for name in COUNT_VARIABLES if env.get(name, "").strip()), None)
    if index_name is None or count_name is None:
        missing = "index" if index_name is None else "count"
        wanted = INDEX_VARIABLES if index_name is None else COUNT_VARIABLES
        raise UsageError(
            f"--shard auto: no shard {missing} in the environment (set one of {', '.join(wanted)})"
        )
    index = _integer(env, index_name)
    count = _integer(env, count_name)
    if index_name == "SLURM_ARRAY_TASK_ID":
        # `--array=1-8` or `--array=0-30:2`: task IDs need not start at 0 or be consecutive.
        set_min = env.get("SLURM_ARRAY_TASK_MIN", "").strip()  # (blank: unset, as for the others)
        set_step = env.get("SLURM_ARRAY_TASK_STEP", "").strip()
        first = _integer(env, "SLURM_ARRAY_TASK_MIN") if set_min else 0
        step = _integer(env, "SLURM_ARRAY_TASK_STEP") if set_step else 1
        offset = index - first
        if step < 1 or offset % step:
            raise UsageError(
                f"--shard auto: SLURM_ARRAY_TASK_ID={index} is not on the array's "
                f"min {first} / step {step}"
            )
        index = offset // step
    if count < 1:
        raise UsageError(f"--shard auto: {count_name}={count}: a job has at least 1 task")
    if not 0 <= index < count:
        raise UsageError(
            f"--shard auto: {index_name} gives index {index}, outside 0..{count - 1} "
            f"({count_name}={count})"
        )
    return Shard(index + 1, count)


def _integer(env: Mapping[str, str], name: str) -> int:
    """The variable's ASCII digits, as `--shard K/N` takes them: int() alone reads '١' as 1."""
    value = env.get(name, "").strip()
    found = _NUMBER.fullmatch(value)
    with suppress(ValueError):  # 4,300 digits or more, which int() refuses
        if found is not None:
            return int(found.group(1))
    raise UsageError(f"--shard auto: {name}={_shown(value, 20)!r} is not a number (digits 0-9)")
