"""Subject-independent splits: no identity is ever on both sides of a train/test boundary.

Expression classifiers learn identities quickly; a face seen in training and again in test
inflates accuracy. The original MSD-E code built its folds with an off-by-one that put one
subject in two folds; here folds are built from whole subjects and checked.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from training.data.records import DataError, FaceRecord


def _subject_groups(records: Sequence[FaceRecord]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.subject].append(i)
    return dict(groups)


def _shuffled_subjects(groups: dict[str, list[int]], seed: int) -> list[str]:
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order]


def subject_kfold(
    records: Sequence[FaceRecord], k: int = 10, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, test_idx) folds; each subject's records are in exactly one test fold.

    Subjects are placed largest first into the fold with the fewest records so far (ties:
    the fold holding fewest of the subject's most common label), which balances fold sizes
    and, loosely, labels.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    groups = _subject_groups(records)
    if len(groups) < k:
        raise DataError(f"{k}-fold split needs at least {k} subjects, the data has {len(groups)}")
    labels = np.array([r.label for r in records], dtype=np.int64)
    subjects = _shuffled_subjects(groups, seed)
    subjects.sort(key=lambda s: -len(groups[s]))  # stable: shuffled order breaks ties
    fold_size = np.zeros(k, dtype=np.int64)
    fold_labels = np.zeros((k, int(labels.max()) + 1 if len(labels) else 1), dtype=np.int64)
    fold_of: dict[str, int] = {}
    for s in subjects:
        idx = groups[s]
        main_label = Counter(labels[idx].tolist()).most_common(1)[0][0]
        candidates = np.flatnonzero(fold_size == fold_size.min())
        fold = int(candidates[np.argmin(fold_labels[candidates, main_label])])
        fold_of[s] = fold
        fold_size[fold] += len(idx)
        np.add.at(fold_labels[fold], labels[idx], 1)
    assignment = np.array([fold_of[r.subject] for r in records], dtype=np.int64)
    return [
        (np.flatnonzero(assignment != f), np.flatnonzero(assignment == f)) for f in range(k)
    ]


def fixed_split(
    records: Sequence[FaceRecord], val: float = 0.1, test: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_idx, val_idx, test_idx) with whole subjects in each part, sizes near the fractions.

    Subjects are walked in a seeded random order and cut where the running record count
    crosses ``test`` then ``test + val`` of the total.
    """
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise ValueError(f"need 0 <= val, test and val + test < 1, got val={val} test={test}")
    groups = _subject_groups(records)
    needed = 1 + (val > 0) + (test > 0)
    if len(groups) < needed:
        raise DataError(f"a train/val/test split needs {needed} subjects, got {len(groups)}")
    total = len(records)
    part_of: dict[str, int] = {}
    seen = 0
    for s in _shuffled_subjects(groups, seed):
        start = seen / total
        part_of[s] = 2 if start < test else 1 if start < test + val else 0
        seen += len(groups[s])
    part = np.array([part_of[r.subject] for r in records], dtype=np.int64)
    return np.flatnonzero(part == 0), np.flatnonzero(part == 1), np.flatnonzero(part == 2)


def predefined_split(
    records: Sequence[FaceRecord],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_idx, val_idx, test_idx) as the data set prescribes (``FaceRecord.split``).

    FER2013's ``Usage`` split is the benchmark convention but not subject-independent: its
    identities are unknown.
    """
    missing = [r.name for r in records if r.split is None]
    if missing:
        raise DataError(
            f"{len(missing)} records have no predefined split; use fixed_split instead", missing
        )
    split = np.array([r.split for r in records])
    return (
        np.flatnonzero(split == "train"),
        np.flatnonzero(split == "val"),
        np.flatnonzero(split == "test"),
    )


SplitKind = Literal["fixed", "kfold", "predefined", "holdout"]


class SplitSettings(Protocol):
    """The split fields of a training config (``training.config.TrainConfig``)."""

    split: SplitKind
    folds: int
    fold: int
    val_fraction: float
    test_fraction: float
    seed: int


@dataclass(frozen=True)
class Splits:
    """Record indices of each part of a split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def holdout_split(
    records: Sequence[FaceRecord], val: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test = the records the data set reserves (``split == "test"``); train / val by subject
    over the rest, as ``fixed_split`` cuts them.

    For a data set with a group that must never be trained, tuned or selected on (the face
    pool's reserved evaluation sources), whatever the seed.
    """
    reserved = np.array([r.split == "test" for r in records], dtype=bool)
    test, rest = np.flatnonzero(reserved), np.flatnonzero(~reserved)
    if not len(test):
        raise DataError("a holdout split needs records the data set reserves for testing")
    shared = {records[i].subject for i in test} & {records[i].subject for i in rest}
    if shared:
        raise DataError(f"{len(shared)} subject(s) both reserved for testing and not",
                        sorted(shared))
    train, val_idx, _ = fixed_split([records[i] for i in rest], val, 0.0, seed)
    return rest[train], rest[val_idx], test


def split_records(records: Sequence[FaceRecord], cfg: SplitSettings) -> Splits:
    """Subject-independent train / val / test indices as the config asks.

    k-fold: the fold's test subjects are held out; validation subjects are carved out of
    the remaining ones (``val_fraction``), so model selection never sees the test fold.
    """
    if cfg.split == "fixed":
        return Splits(*fixed_split(records, cfg.val_fraction, cfg.test_fraction, cfg.seed))
    if cfg.split == "predefined":
        return Splits(*predefined_split(records))
    if cfg.split == "holdout":
        return Splits(*holdout_split(records, cfg.val_fraction, cfg.seed))
    train_val, test = subject_kfold(records, cfg.folds, cfg.seed)[cfg.fold]
    inner_train, inner_val, _ = fixed_split(
        [records[i] for i in train_val], cfg.val_fraction, 0.0, cfg.seed
    )
    return Splits(train_val[inner_train], train_val[inner_val], test)
