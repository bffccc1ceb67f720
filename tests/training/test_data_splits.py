"""Subject-independent splits: no identity on both sides, every record tested exactly once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import (
    DataError,
    FaceRecord,
    fixed_split,
    holdout_split,
    predefined_split,
    subject_kfold,
)

PIXELS = np.zeros((4, 4, 3), dtype=np.uint8)


def make_records(sizes: list[int], seed: int = 0) -> list[FaceRecord]:
    """Subjects with the given numbers of images, interleaved, random labels."""
    rng = np.random.default_rng(seed)
    records = [
        FaceRecord(label=int(rng.integers(7)), subject=f"s{s:03d}", pixels=PIXELS)
        for s, n in enumerate(sizes)
        for _ in range(n)
    ]
    return [records[i] for i in rng.permutation(len(records))]


def subjects(records: list[FaceRecord], idx: np.ndarray) -> set[str]:
    return {records[i].subject for i in idx}


@pytest.mark.parametrize("k", [2, 5, 10])
def test_kfold_keeps_every_subject_out_of_its_training_folds(k: int) -> None:
    rng = np.random.default_rng(k)
    records = make_records(list(rng.integers(1, 12, size=37)))
    folds = subject_kfold(records, k=k, seed=3)
    assert len(folds) == k
    for train, test in folds:
        assert not subjects(records, train) & subjects(records, test)
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(records)))
    # no subject appears in two test folds (the original MSD-E code's off-by-one)
    for a in range(k):
        for b in range(a + 1, k):
            assert not subjects(records, folds[a][1]) & subjects(records, folds[b][1])


@pytest.mark.parametrize("k", [2, 5, 10])
def test_every_record_is_tested_exactly_once(k: int) -> None:
    records = make_records([3] * 25 + [7] * 5)
    tested = np.concatenate([test for _, test in subject_kfold(records, k=k)])
    assert sorted(tested.tolist()) == list(range(len(records)))


def test_kfold_fold_sizes_are_balanced() -> None:
    sizes = [9, 8, 8, 7, 6, 5, 5, 4, 3, 3, 2, 2, 1, 1, 1] * 4
    records = make_records(sizes)
    counts = [len(test) for _, test in subject_kfold(records, k=10)]
    assert max(counts) - min(counts) <= max(sizes)
    assert sum(counts) == len(records)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 15), min_size=10, max_size=60),
    k=st.integers(2, 10),
    seed=st.integers(0, 1000),
)
def test_kfold_has_no_leakage_for_any_subject_sizes(sizes: list[int], k: int, seed: int) -> None:
    records = make_records(sizes, seed)
    folds = subject_kfold(records, k=k, seed=seed)
    owner: dict[str, int] = {}
    for f, (train, test) in enumerate(folds):
        assert len(test) > 0
        for i in test:
            assert owner.setdefault(records[i].subject, f) == f
        assert not subjects(records, train) & subjects(records, test)
    assert len(owner) == len(sizes)


def test_kfold_is_deterministic_per_seed() -> None:
    records = make_records([2, 3, 4, 5] * 8)
    a = subject_kfold(records, k=4, seed=1)
    b = subject_kfold(records, k=4, seed=1)
    c = subject_kfold(records, k=4, seed=2)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_kfold_with_fewer_subjects_than_folds_is_refused() -> None:
    with pytest.raises(DataError, match="at least 10 subjects"):
        subject_kfold(make_records([5] * 4), k=10)


def test_fixed_split_parts_are_disjoint_by_subject_and_cover_everything() -> None:
    records = make_records([4] * 100)
    train, val, test = fixed_split(records, val=0.1, test=0.2, seed=0)
    assert not subjects(records, train) & subjects(records, val)
    assert not subjects(records, train) & subjects(records, test)
    assert not subjects(records, val) & subjects(records, test)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(records)))
    assert abs(len(test) / len(records) - 0.2) < 0.03
    assert abs(len(val) / len(records) - 0.1) < 0.03


def test_fixed_split_rejects_impossible_fractions() -> None:
    with pytest.raises(ValueError):
        fixed_split(make_records([1] * 10), val=0.6, test=0.5)


def test_predefined_split_follows_the_data_set() -> None:
    records = [
        FaceRecord(label=0, subject=f"r{i}", pixels=PIXELS, split=split)
        for i, split in enumerate(["train", "val", "test", "train"])
    ]
    train, val, test = predefined_split(records)
    assert train.tolist() == [0, 3] and val.tolist() == [1] and test.tolist() == [2]


def test_predefined_split_without_split_information_is_an_error() -> None:
    with pytest.raises(DataError, match="no predefined split"):
        predefined_split(make_records([1, 1]))


def _with_reserved(records: list[FaceRecord], reserved: set[str]) -> list[FaceRecord]:
    return [replace(r, split="test") if r.subject in reserved else r for r in records]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_holdout_split_tests_the_reserved_records_whatever_the_seed(seed: int) -> None:
    records = _with_reserved(make_records([3, 1, 2, 5, 1, 1, 4, 2, 1, 3]), {"s001", "s004"})
    train, val, test = holdout_split(records, val=0.2, seed=seed)
    assert subjects(records, test) == {"s001", "s004"}
    assert not subjects(records, train) & subjects(records, val)
    assert sorted([*train, *val, *test]) == list(range(len(records)))


def test_holdout_split_needs_reserved_records_and_whole_subjects() -> None:
    with pytest.raises(DataError, match="reserves"):
        holdout_split(make_records([2, 2, 2]))
    records = make_records([2, 2, 2])
    half = [replace(records[0], split="test"), *records[1:]]  # one of s00x's two records
    with pytest.raises(DataError, match="both reserved"):
        holdout_split(half)
