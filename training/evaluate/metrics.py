"""Per-mask-state metrics as pure functions of numpy arrays (scikit-learn where it has them).

Conventions (also in ``docs/evaluation.md``): labels follow
``handler.contract.EXPRESSION_LABELS``, ``-1`` = unlabelled and excluded from every label
metric; a class absent from a split's labels has recall NaN and is left out of the macro-F1;
confusion matrices are row-normalised (row = true class), absent rows NaN; k-fold aggregates
are mean ± sample standard deviation (ddof=1) over folds; proportions carry a 95% Wilson
interval, so 20 reserved faces are not read as more than they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from handler.contract import EXPRESSION_LABELS, MASK_LABELS
from handler.postprocess import softmax
from training.calibrate import ece, wilson_interval

NUM_CLASSES = len(EXPRESSION_LABELS)
VIEWS: tuple[str, ...] = MASK_LABELS  # the two images of a pair, named by their mask state
STATES: tuple[str, ...] = (*VIEWS, "all")
SCALARS: tuple[str, ...] = ("accuracy", "macro_f1", "ece", "mask_accuracy")


def _labelled(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ")
    known = labels >= 0
    return labels[known], preds[known]


def finite(x: float) -> float | None:
    """JSON has no NaN: undefined metrics are written as null."""
    return float(x) if np.isfinite(x) else None


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of labelled samples predicted right; NaN without labelled samples."""
    y, p = _labelled(labels, preds)
    return float(accuracy_score(y, p)) if len(y) else float("nan")


def confusion_counts(
    labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(K, K) int64 counts, row = true class, column = predicted class; -1 labels skipped."""
    y, p = _labelled(labels, preds)
    if len(y) and (y.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels/predictions outside 0..{num_classes - 1}")
    return confusion_matrix(y, p, labels=np.arange(num_classes)).astype(np.int64)


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Row-normalised confusion; rows of classes with no samples are NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    out = np.full_like(counts, np.nan)
    np.divide(counts, rows, out=out, where=rows > 0)
    return out


def confusion(
    labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Row-normalised confusion matrix (row = true class); absent classes' rows are NaN."""
    return normalise_rows(confusion_counts(labels, preds, num_classes))


def per_class_recall(
    labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(K,) recall per true class; NaN for classes absent from ``labels``."""
    y, p = _labelled(labels, preds)
    return recall_score(y, p, labels=np.arange(num_classes), average=None,
                        zero_division=np.nan).astype(np.float64)


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in ``labels`` (-1 skipped).

    Predictions of an absent class still cost the recall of the true class.
    """
    y, p = _labelled(labels, preds)
    if not len(y):
        return float("nan")
    return float(f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0.0))


@dataclass(frozen=True)
class Majority:
    """The most frequent label of a split: what always answering it would score."""

    label: int
    k: int  # samples with that label
    n: int  # labelled samples

    @property
    def accuracy(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"label": EXPRESSION_LABELS[self.label] if self.n else None, "k": self.k,
                "n": self.n, "accuracy": finite(self.accuracy),
                "ci95": wilson_interval(self.k, self.n)}


def majority_baseline(labels: np.ndarray) -> Majority:
    """The majority-class baseline of ``labels`` (-1 skipped; ties: the first class)."""
    y = np.asarray(labels, dtype=np.int64)
    y = y[y >= 0]
    counts = np.bincount(y, minlength=NUM_CLASSES)
    return Majority(int(counts.argmax()), int(counts.max()), len(y))


@dataclass(frozen=True)
class StateMetrics:
    """The label metrics of one mask state; ``counts`` is the un-normalised confusion."""

    n: int  # labelled samples
    accuracy: float
    macro_f1: float
    ece: float
    mask_accuracy: float  # mask head vs. the known state, over all samples (labelled or not)
    counts: np.ndarray  # (K, K) int64

    @property
    def correct(self) -> int:
        return int(np.trace(self.counts))

    @property
    def accuracy_ci95(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def recall(self) -> np.ndarray:
        return np.diag(normalise_rows(self.counts)).copy()

    @property
    def confusion(self) -> np.ndarray:
        return normalise_rows(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": finite(self.accuracy),
            "accuracy_ci95": self.accuracy_ci95,
            "macro_f1": finite(self.macro_f1),
            "ece": finite(self.ece),
            "mask_accuracy": finite(self.mask_accuracy),
            "per_class_recall": {
                name: finite(r) for name, r in zip(EXPRESSION_LABELS, self.recall, strict=True)
            },
            "predicted": dict(zip(EXPRESSION_LABELS, self.counts.sum(axis=0).tolist(),
                                  strict=True)),
            "confusion_counts": self.counts.tolist(),
        }


def state_metrics(
    expr_logits: np.ndarray,
    labels: np.ndarray,
    mask_logits: np.ndarray,
    mask_state: np.ndarray,
    n_bins: int = 15,
) -> StateMetrics:
    """Metrics of one mask state from raw outputs; ``mask_state`` is 0/1 per sample."""
    preds = np.asarray(expr_logits).argmax(axis=1)
    mask_preds = np.asarray(mask_logits).argmax(axis=1)
    return StateMetrics(
        n=int((np.asarray(labels) >= 0).sum()),
        accuracy=accuracy(labels, preds),
        macro_f1=macro_f1(labels, preds),
        ece=ece(softmax(expr_logits), labels, n_bins),
        mask_accuracy=float((mask_preds == mask_state).mean()) if len(mask_preds) else math.nan,
        counts=confusion_counts(labels, preds),
    )


@dataclass(frozen=True)
class ViewOutputs:
    """What a model produced for one view (unmasked or masked) of every pair."""

    expr_logits: np.ndarray  # (N, 7)
    mask_logits: np.ndarray  # (N, 2)
    embeddings: np.ndarray | None  # (N, D); None when the model has no ``embed``


def metrics_from_views(
    views: Mapping[str, ViewOutputs], labels: np.ndarray
) -> dict[str, StateMetrics]:
    """Per-view metrics plus "all" (both views stacked; mask target = the view's state)."""
    n = len(labels)
    out = {
        v: state_metrics(views[v].expr_logits, labels, views[v].mask_logits, np.full(n, s))
        for s, v in enumerate(VIEWS)
    }
    out["all"] = state_metrics(
        np.concatenate([views[v].expr_logits for v in VIEWS]),
        np.concatenate([labels for _ in VIEWS]),
        np.concatenate([views[v].mask_logits for v in VIEWS]),
        np.concatenate([np.full(n, s) for s in range(len(VIEWS))]),
    )
    return out


# --------------------------------------------------------------------------- over folds


class Evaluated(Protocol):
    """Anything holding per-state metrics (an ``EvalResult``, one per fold)."""

    @property
    def metrics(self) -> Mapping[str, StateMetrics]: ...


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for a single fold) over folds, ignoring NaN folds."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def aggregate(results: Sequence[Evaluated]) -> dict[str, dict[str, tuple[float, float]]]:
    """state -> metric -> (mean, std) over folds, including per-class recall."""
    agg: dict[str, dict[str, tuple[float, float]]] = {}
    for s in STATES:
        per_state = {m: mean_std(getattr(r.metrics[s], m) for r in results) for m in SCALARS}
        for c, name in enumerate(EXPRESSION_LABELS):
            per_state[f"recall_{name}"] = mean_std(r.metrics[s].recall[c] for r in results)
        agg[s] = per_state
    return agg


def pooled_counts(results: Sequence[Evaluated], state: str) -> np.ndarray:
    """Confusion counts summed over folds: every face is tested exactly once in k-fold."""
    return np.sum([r.metrics[state].counts for r in results], axis=0)
