"""`--shard K/N|auto`: parsing, the scheduler variables, and a stable, disjoint, complete split."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlstudy.dicomweb.shard import Shard, parse_shard, shard_of
from dlstudy.errors import UsageError

UIDS = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 401)]
uid_lists = st.lists(st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,6}){1,6}", fullmatch=True))


def test_no_shard() -> None:
    assert parse_shard(None, {}) is None
    assert parse_shard("  ", {}) is None


@pytest.mark.parametrize(
    ("text", "expected"), [("1/1", (1, 1)), ("3/8", (3, 8)), (" 8/8 ", (8, 8))]
)
def test_k_of_n_is_one_based(text: str, expected: tuple[int, int]) -> None:
    shard = parse_shard(text, {})
    assert shard is not None and (shard.number, shard.count) == expected
    assert str(shard) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0/4", "K must be between 1 and 4"),
        ("5/4", "K must be between 1 and 4"),
        ("1/0", "N must be between 1"),
        ("2", "must look like K/N"),
        ("a/b", "must look like K/N"),
        ("-1/4", "must look like K/N"),
    ],
)
def test_bad_shards_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_shard(text, {})


def test_assignment_is_the_documented_formula() -> None:
    """Other tools can reproduce the split: int(sha256(uid)) % N + 1."""
    for uid in UIDS[:50]:
        expected = int(hashlib.sha256(uid.encode()).hexdigest(), 16) % 7 + 1
        assert shard_of(uid, 7) == expected
    assert shard_of("1.2.3", 1) == 1


def test_split_is_complete_disjoint_order_free_and_roughly_even() -> None:
    shards = [Shard(k, 4) for k in range(1, 5)]
    parts = [shard.select(UIDS) for shard in shards]
    reversed_parts = [shard.select(list(reversed(UIDS))) for shard in shards]
    assert sorted(uid for part in parts for uid in part) == sorted(UIDS)
    assert [sorted(p) for p in parts] == [sorted(p) for p in reversed_parts]
    assert all(60 <= len(part) <= 140 for part in parts), [len(p) for p in parts]
    assert parts[0] == [uid for uid in UIDS if uid in set(parts[0])]  # original order kept


@given(uids=uid_lists, count=st.integers(min_value=1, max_value=12))
def test_every_uid_is_in_exactly_one_shard(uids: list[str], count: int) -> None:
    owners = {uid: [k for k in range(1, count + 1) if Shard(k, count).owns(uid)] for uid in uids}
    assert all(len(found) == 1 for found in owners.values())


def test_auto_from_a_kubernetes_indexed_job() -> None:
    env = {"JOB_COMPLETION_INDEX": "0", "DLSTUDY_SHARD_COUNT": "4"}
    assert parse_shard("auto", env) == Shard(1, 4)
    env = {"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "4"}
    assert parse_shard("AUTO", env) == Shard(4, 4)


def test_auto_prefers_an_explicit_count() -> None:
    env = {"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2", "DLSTUDY_SHARD_COUNT": "3"}
    assert parse_shard("auto", env) == Shard(2, 3)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"}, Shard(1, 8)),
        (  # --array=1-8
            {
                "SLURM_ARRAY_TASK_ID": "8",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "8",
            },
            Shard(8, 8),
        ),
        (  # --array=10-16:2 -> 10 12 14 16
            {
                "SLURM_ARRAY_TASK_ID": "14",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            Shard(3, 4),
        ),
    ],
)
def test_auto_from_a_slurm_job_array(env: dict[str, str], expected: Shard) -> None:
    assert parse_shard("auto", env) == expected


def test_a_blank_slurm_min_or_step_is_unset_as_a_blank_index_is() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4",
           "SLURM_ARRAY_TASK_MIN": " ", "SLURM_ARRAY_TASK_STEP": ""}  # fmt: skip
    assert parse_shard("auto", env) == Shard(3, 4)  # (' ' was "not a number")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no shard index in the environment"),
        ({"JOB_COMPLETION_INDEX": "0"}, "no shard count in the environment"),
        ({"JOB_COMPLETION_INDEX": "4", "JOB_COMPLETIONS": "4"}, "outside 0..3"),
        ({"JOB_COMPLETION_INDEX": "x", "JOB_COMPLETIONS": "4"}, "is not a number"),
        # (it said "outside 0..-1")
        (
            {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"},
            "SLURM_ARRAY_TASK_COUNT=0: a job has at least 1 task",
        ),
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_STEP": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
            },
            "not on the array's",
        ),
    ],
)
def test_auto_without_usable_variables_is_a_usage_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_shard("auto", env)
