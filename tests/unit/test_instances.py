"""Instances: a run's long list of InstanceRefs, held by series, read back exactly as added."""

from __future__ import annotations

import pickle

from dlstudy.model import InstanceRef, Instances

A = InstanceRef("1.1", "1.1.1", "1.1.1.1", "CT")
B = InstanceRef("1.1", "1.1.2", "1.1.2.1", "SEG")
C = InstanceRef("1.1", "1.1.1", "1.1.1.2", "CT")
D = InstanceRef("1.2", "1.2.1", "1.2.1.1", "")


def test_refs_read_back_in_the_order_added_even_when_series_interleave() -> None:
    refs = Instances([A, B, C, D])

    assert list(refs) == [A, B, C, D]
    assert len(refs) == 4
    assert [refs[i] for i in range(4)] == [A, B, C, D]
    assert refs[-1] == D
    assert list(refs[1:]) == [B, C, D]
    assert list(refs[::2]) == [A, C]
    assert list(refs.sop_uids()) == [A.sop_uid, B.sop_uid, C.sop_uid, D.sop_uid]


def test_the_series_strings_are_shared_by_their_instances() -> None:
    refs = Instances()
    refs.add("1.1", "1.1.1", "1.1.1.1", "CT")
    refs.add("1.1", "1.1.1", "1.1.1.2", "CT")

    first, second = refs
    assert first.series_uid is second.series_uid
    assert refs.series_counts() == {("1.1", "1.1.1"): 2}


def test_extend_takes_lists_and_instances() -> None:
    refs = Instances([A])
    refs.extend(Instances([B, C]))
    refs.extend([D])

    assert list(refs) == [A, B, C, D]
    assert refs.series_counts() == {("1.1", "1.1.1"): 2, ("1.1", "1.1.2"): 1, ("1.2", "1.2.1"): 1}


def test_by_sop_gives_each_instance_its_series() -> None:
    assert Instances([A, B]).by_sop() == {
        A.sop_uid: ("1.1", "1.1.1", "CT"),
        B.sop_uid: ("1.1", "1.1.2", "SEG"),
    }


def test_split_groups_in_order_and_copies_nothing_when_all_fall_in_one_group() -> None:
    refs = Instances([A, B, C, D])

    by_study = refs.split(lambda study, _series: study)
    by_series = refs.split(lambda _study, series: series)

    assert {k: list(v) for k, v in by_study.items()} == {"1.1": [A, B, C], "1.2": [D]}
    assert list(by_series) == ["1.1.1", "1.1.2", "1.2.1"]
    assert list(by_series["1.1.1"]) == [A, C]
    one_study = by_study["1.1"]
    assert one_study.split(lambda study, _series: study)["1.1"] is one_study
    assert Instances().split(lambda study, _series: study) == {}


def test_a_copy_made_by_slicing_does_not_change_the_original() -> None:
    refs = Instances([A, B])
    rest = refs[1:]
    rest.append(D)

    assert list(refs) == [A, B]
    assert list(rest) == [B, D]


def test_instances_cross_to_worker_processes() -> None:
    refs = Instances([A, B, C])

    assert list(pickle.loads(pickle.dumps(refs))) == [A, B, C]
