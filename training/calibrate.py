"""Per-mask-state confidence calibration: temperatures, abstention thresholds, confusable classes.

A student trained on paired faces is typically over-confident on masked faces (half the face
is gone, yet the logits stay large). The handler therefore divides the expression logits by a
temperature chosen for the predicted mask state and answers ``"uncertain"`` when the
calibrated top probability falls below that state's threshold. This module fits both numbers
on a validation split and packs them into ``handler.contract.Calibration``, the object that
``msde-export --calibration calibration.json`` embeds into the exported model.

The soft mixing over mask states (weights = the mask head's probabilities) lives in the
handler only; here every state is fitted on faces *known* to be in that state, which is the
per-state quantity the mixture is made of.

CLI (refit from saved validation outputs, e.g. for another target precision)::

    python -m training.calibrate report_dir/val_outputs.npz --target-precision 0.9 \
        --out calibration.json
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import binomtest

from handler.contract import EXPRESSION_LABELS, MASK_LABELS, Calibration
from handler.postprocess import group_probs, softmax

LOG = logging.getLogger(__name__)

# Search range for the temperature. Below 0.05 or above 20 the softmax is a one-hot or a
# uniform distribution for any realistic logit scale, so nothing is gained by going further.
T_MIN, T_MAX = 0.05, 20.0
# Threshold returned when the target precision is never reached: abstain on (almost) everything.
NEVER_MET_THRESHOLD = 1.0


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log of ``handler.postprocess.softmax``, computed without underflow for the NLL."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _targets(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Hard labels (N,) with -1 = unlabelled, or soft targets (N, K) -> (N, K) distributions.

    Unlabelled rows become all-zero rows, so they contribute nothing to the NLL.
    """
    t = np.asarray(targets)
    if t.ndim == 2:
        if t.shape[1] != num_classes:
            raise ValueError(f"soft targets have {t.shape[1]} classes, logits {num_classes}")
        if np.any(t < 0):
            raise ValueError("soft targets must be non-negative")
        sums = t.sum(axis=1, keepdims=True)
        return np.divide(t, sums, out=np.zeros_like(t, dtype=np.float64), where=sums > 0)
    if t.ndim != 1:
        raise ValueError(f"targets must be (N,) labels or (N, K) distributions, got {t.shape}")
    labels = t.astype(np.int64)
    if np.any(labels >= num_classes) or np.any(labels < -1):
        raise ValueError(f"labels must be in [-1, {num_classes - 1}]")
    onehot = np.zeros((len(labels), num_classes), dtype=np.float64)
    known = labels >= 0
    onehot[np.flatnonzero(known), labels[known]] = 1.0
    return onehot


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy against hard or soft targets)."""
    logits = np.asarray(logits, dtype=np.float64)
    q = _targets(targets, logits.shape[1])
    used = q.sum(axis=1) > 0
    if not used.any():
        raise ValueError("no labelled samples to compute the NLL on")
    return float(-(q[used] * log_softmax(logits[used], temperature)).sum(axis=1).mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` on validation data.

    ``targets`` are hard labels (N,) (-1 = unlabelled, ignored) or soft targets (N, K), e.g. a
    teacher's probabilities on unlabelled faces: fitting against them calibrates the student
    to *agree* with the teacher's confidence ("agreement calibration"), which is only as good
    as the teacher's own calibration.

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded 1-D search on log T finds
    the global optimum (within [T_MIN, T_MAX]).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty (N, K) array, got {logits.shape}")
    q = _targets(targets, logits.shape[1])
    used = q.sum(axis=1) > 0
    if not used.any():
        raise ValueError("no labelled samples to fit a temperature on")
    z, q = logits[used], q[used]

    def objective(log_t: float) -> float:
        return float(-(q * log_softmax(z, math.exp(log_t))).sum(axis=1).mean())

    res = minimize_scalar(
        objective,
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    t = float(math.exp(res.x))
    if not T_MIN * 1.01 < t < T_MAX * 0.99:
        LOG.warning(
            "temperature %.3f is at the search bound [%g, %g]: the logits carry (almost) no "
            "information about the labels, or the labels are (almost) all predicted right",
            t, T_MIN, T_MAX,
        )
    return t


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n ((0, 1) when n is 0)."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins on [0, 1].

    ECE = sum over bins of (bin size / N) * |accuracy in bin - mean confidence in bin|.
    Samples labelled -1 are excluded; NaN when no labelled sample is left.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    known = labels >= 0
    if not known.any():
        return float("nan")
    p, y = probs[known], labels[known]
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to bin 0
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(total / len(y))


def fit_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float) -> float:
    """Smallest t such that predictions with top probability >= t reach ``target_precision``.

    Candidates are the observed top probabilities (and 0.0). Precision need not grow with t,
    so the *smallest* qualifying t is taken: the most answers the handler can give while the
    answers it gives still meet the target. 0.0 when all predictions already meet it;
    ``NEVER_MET_THRESHOLD`` (abstain on almost everything) with a warning when no t does.
    Samples labelled -1 are ignored.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    known = labels >= 0
    if not known.any():
        raise ValueError("no labelled samples to fit a threshold on")
    conf = probs[known].max(axis=1)
    correct = (probs[known].argmax(axis=1) == labels[known]).astype(np.float64)
    if correct.mean() >= target_precision:
        return 0.0
    # sort by confidence, descending: the answered set for threshold conf[i] is a prefix
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # a threshold t keeps every sample with conf >= t, i.e. the prefix up to the last tie
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    ok = np.flatnonzero(last_of_tie & (precision >= target_precision))
    if len(ok) == 0:
        LOG.warning(
            "target precision %.3f is never reached (best %.3f); threshold capped at %.2f",
            target_precision,
            precision.max(),
            NEVER_MET_THRESHOLD,
        )
        return NEVER_MET_THRESHOLD
    return float(conf[ok.max()])


@dataclass(frozen=True)
class StateCalibration:
    """Everything fitted for one mask state, kept for the evaluation report."""

    temperature: float
    threshold: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int


def fit_state(
    logits: np.ndarray, labels: np.ndarray, target_precision: float, n_bins: int = 15
) -> StateCalibration:
    """Temperature, then the abstention threshold on the temperature-scaled probabilities."""
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    return StateCalibration(
        temperature=t,
        threshold=fit_threshold(after, labels, target_precision),
        ece_before=ece(before, labels, n_bins),
        ece_after=ece(after, labels, n_bins),
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, t),
        n=int((np.asarray(labels) >= 0).sum()),
    )


def fit_states(
    logits_by_state: Mapping[str, np.ndarray],
    labels_by_state: Mapping[str, np.ndarray],
    target_precision: float = 0.8,
) -> dict[str, StateCalibration]:
    """``fit_state`` for each mask state in ``MASK_LABELS``."""
    missing = set(MASK_LABELS) - set(logits_by_state) | set(MASK_LABELS) - set(labels_by_state)
    if missing:
        raise ValueError(f"missing mask states {sorted(missing)}")
    fits = {}
    for s in MASK_LABELS:
        fits[s] = fit = fit_state(logits_by_state[s], labels_by_state[s], target_precision)
        LOG.info(
            "%s: n=%d T=%.3f threshold=%.3f ECE %.4f -> %.4f",
            s, fit.n, fit.temperature, fit.threshold, fit.ece_before, fit.ece_after,
        )
    return fits


def to_calibration(states: Mapping[str, StateCalibration], fitted_on: str) -> Calibration:
    """The handler's view of the fit; ``fitted_on`` says which data (None would mean identity)."""
    sizes = ", ".join(f"{s} n={states[s].n}" for s in MASK_LABELS)
    return Calibration(
        fitted_on=f"{fitted_on} ({sizes})",
        temperature={s: states[s].temperature for s in MASK_LABELS},
        abstain_threshold={s: states[s].threshold for s in MASK_LABELS},
    )


def fit_calibration(
    logits_by_state: Mapping[str, np.ndarray],
    labels_by_state: Mapping[str, np.ndarray],
    target_precision: float = 0.8,
    fitted_on: str = "validation split",
) -> Calibration:
    """Per-mask-state temperature + abstention threshold, fitted on validation outputs.

    ``logits_by_state["masked"]`` are the expression logits of faces known to be masked (the
    masked view of each validation pair), likewise for ``"unmasked"``.
    """
    states = fit_states(logits_by_state, labels_by_state, target_precision)
    return to_calibration(states, f"{fitted_on}, target precision {target_precision:g}")


# The grouped answer (``handler.contract.Grouping``). Why these groups: under a synthetic
# mask the students' and the teachers' errors stay mostly inside them (the masked confusion
# of the validation split, docs/model_card.md): the negative expressions are read from the
# brows and eyes alike and swap among themselves, while happiness (crow's feet, raised
# cheeks), surprise (raised brows, open eyes) and neutral are told apart from them and from
# each other more often than not. The group names are what a client shows.
ANSWER_GROUPS: dict[str, tuple[str, ...]] = {
    "positive": ("happiness",),
    "negative": ("fear", "disgust", "sadness", "anger"),
    "surprised": ("surprise",),
    "neutral": ("neutral",),
}
GROUP_PRECISION = 0.70  # the least precision a grouped answer must reach on the answered faces


def group_labels(labels: np.ndarray, groups: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Expression labels (msde order, -1 = unlabelled) -> group indices (in ``groups`` order)."""
    lookup = np.full(len(EXPRESSION_LABELS), -1, dtype=np.int64)
    for g, members in enumerate(groups.values()):
        lookup[[EXPRESSION_LABELS.index(m) for m in members]] = g
    y = np.asarray(labels, dtype=np.int64)
    return np.where(y >= 0, lookup[np.clip(y, 0, None)], -1)


@dataclass(frozen=True)
class GroupFit:
    """The grouped answer of one mask state on the validation split, and why it is (not)
    answered: ``threshold`` 1.0 = the state gets no group answer."""

    threshold: float
    n: int  # labelled faces
    answered: int  # faces whose top group reaches the selective threshold
    correct: int  # of the answered
    majority: float  # share of the most frequent group among the answered faces
    reason: str

    @property
    def precision(self) -> float:
        return self.correct / self.answered if self.answered else math.nan


def fit_group(
    probs: np.ndarray,
    labels: np.ndarray,
    groups: Mapping[str, Sequence[str]] = ANSWER_GROUPS,
    target_precision: float = GROUP_PRECISION,
) -> GroupFit:
    """Selective threshold on the group probabilities of calibrated expression ``probs``.

    The smallest threshold whose answered faces reach ``target_precision`` (``fit_threshold``
    on the groups); it stands only if those answers clearly beat always answering the most
    frequent group on the same faces (the lower end of the 95% Wilson interval of their
    precision is above that group's share), the rule ``abstain_unless_better_than_majority``
    applies to the seven classes. Otherwise 1.0: the state's faces stay "uncertain".
    """
    y = group_labels(labels, groups)
    known = y >= 0
    gp, y = group_probs(probs, groups)[known], y[known]
    n = len(y)
    if n == 0:
        return GroupFit(NEVER_MET_THRESHOLD, 0, 0, 0, math.nan, "no labelled faces")
    threshold = fit_threshold(gp, y, target_precision)
    answered = gp.max(axis=1) >= threshold
    k = int(answered.sum())
    correct = int((gp.argmax(axis=1) == y)[answered].sum())
    majority = float(np.bincount(y[answered], minlength=len(groups)).max() / k) if k else 1.0
    low = wilson_interval(correct, k)[0]
    if threshold >= NEVER_MET_THRESHOLD or k == 0:
        reason = f"precision {target_precision:g} is never reached"
    elif low <= majority:
        reason = (f"{correct}/{k} right (95% CI from {low:.2f}) does not beat the majority "
                  f"group's share {majority:.2f}")
    else:
        return GroupFit(threshold, n, k, correct, majority,
                        f"{correct}/{k} right (95% CI from {low:.2f}) beats the majority "
                        f"group's share {majority:.2f}")
    return GroupFit(NEVER_MET_THRESHOLD, n, k, correct, majority, reason)


@dataclass(frozen=True)
class ConfusablePair:
    """Faces of class ``true`` predicted as ``predicted`` at row-normalised ``rate``."""

    true: str
    predicted: str
    rate: float


def confusable_pairs(
    confusion: np.ndarray,
    threshold: float,
    labels: Sequence[str] = EXPRESSION_LABELS,
) -> list[ConfusablePair]:
    """Off-diagonal cells of a row-normalised confusion matrix at or above ``threshold``.

    Directed (fear -> surprise is not surprise -> fear), sorted by rate, highest first. Rows
    of classes absent from the split (NaN) are skipped. For the model card's "classes that
    cannot be told apart under a mask".
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion must be {len(labels)}x{len(labels)}, got {c.shape}")
    pairs = [
        ConfusablePair(labels[i], labels[j], float(c[i, j]))
        for i in range(len(labels))
        for j in range(len(labels))
        if i != j and np.isfinite(c[i, j]) and c[i, j] >= threshold
    ]
    return sorted(pairs, key=lambda p: -p.rate)


def write_calibration(calibration: Calibration, path: Path) -> Path:
    """``calibration.json`` in the format ``msde-export --calibration`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(calibration.model_dump_json(indent=2) + "\n")
    return path


def load_state_outputs(npz: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read ``<split>_outputs.npz`` written by ``msde-eval``: logits and labels per state."""
    with np.load(npz) as data:
        labels = data["labels"]
        logits = {s: data[f"{s}_expr_logits"] for s in MASK_LABELS}
    return logits, {s: labels for s in MASK_LABELS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Fit per-mask-state temperatures and abstention thresholds"
    )
    parser.add_argument("outputs", type=Path, help="val_outputs.npz written by msde-eval")
    parser.add_argument("--target-precision", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=Path("calibration.json"))
    args = parser.parse_args(argv)
    fitted_on = f"{args.outputs.name}, target precision {args.target_precision:g}"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logits, labels = load_state_outputs(args.outputs)
    states = fit_states(logits, labels, args.target_precision)
    for s, fit in states.items():
        print(
            f"{s:9s} n={fit.n:5d} T={fit.temperature:.3f} threshold={fit.threshold:.3f} "
            f"ECE {fit.ece_before:.4f} -> {fit.ece_after:.4f}"
        )
    print(write_calibration(to_calibration(states, fitted_on), args.out))


if __name__ == "__main__":
    main()
