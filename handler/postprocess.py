"""Logits -> calibrated, per-face results.

The expression probabilities are a mixture over mask states of softmax(logits / T_state),
weighted by the mask head's probabilities, so an unsure mask head blends both calibrations
instead of switching abruptly. Training's calibration fitting imports these functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from handler.faces import Detection
from handler.contract import EXPRESSION_LABELS, MASK_LABELS, Calibration
from handler.schema import Answer, ExpressionResult, FaceResult, GroupResult, MaskResult

UNCERTAIN = "uncertain"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def calibrated_probs(
    expr_logits: np.ndarray,
    mask_probs: np.ndarray,
    calibration: Calibration,
    mask_labels: Sequence[str] = MASK_LABELS,
) -> np.ndarray:
    """[N, 7] expression probabilities mixed over mask states by [N, S] mask probabilities."""
    out = np.zeros(np.shape(expr_logits), dtype=np.float64)
    for s, state in enumerate(mask_labels):
        out += mask_probs[:, s : s + 1] * softmax(expr_logits, calibration.temperature[state])
    return out


def mixed_thresholds(
    mask_probs: np.ndarray,
    per_state: Mapping[str, float],
    mask_labels: Sequence[str] = MASK_LABELS,
) -> np.ndarray:
    """[N] threshold per face, mixed over mask states like the probabilities: the
    expression's (``Calibration.abstain_threshold``) and the group's (``Grouping.threshold``)."""
    thr = np.array([per_state[s] for s in mask_labels], dtype=np.float64)
    return np.asarray(mask_probs, dtype=np.float64) @ thr


def group_probs(
    expr_probs: np.ndarray,
    groups: Mapping[str, Sequence[str]],
    labels: Sequence[str] = EXPRESSION_LABELS,
) -> np.ndarray:
    """[N, G] probabilities of the groups (in ``groups`` order): sums of their members'."""
    p = np.asarray(expr_probs, dtype=np.float64)
    index = [[list(labels).index(m) for m in members] for members in groups.values()]
    return np.stack([p[:, i].sum(axis=1) for i in index], axis=1)


def _group_result(probs: np.ndarray, names: Sequence[str], threshold: float) -> GroupResult:
    g = int(probs.argmax())
    top = float(probs[g])
    return GroupResult(
        label=names[g] if top >= threshold else UNCERTAIN,
        probability=round(min(top, 1.0), 4),
        probabilities={name: round(min(float(q), 1.0), 4) for name, q in zip(names, probs)},
    )


def answer(expression: ExpressionResult, group: GroupResult | None) -> Answer:
    """The finest answer given: the expression, else the group, else 'uncertain'."""
    if expression.label != UNCERTAIN:
        return Answer(level="expression", label=expression.label,
                      probability=expression.probability)
    if group is not None and group.label != UNCERTAIN:
        return Answer(level="group", label=group.label, probability=group.probability)
    return Answer(level="uncertain", label=UNCERTAIN, probability=expression.probability)


def face_results(
    detections: Sequence[Detection],
    expr_logits: np.ndarray,
    mask_logits: np.ndarray,
    *,
    labels: Sequence[str],
    mask_labels: Sequence[str],
    calibration: Calibration,
    reliable_probability: float = 0.8,
) -> list[FaceResult]:
    """One FaceResult per detection (rows of the logits follow ``detections``)."""
    if len(detections) == 0:
        return []
    expr_logits = np.asarray(expr_logits, dtype=np.float64)
    mask_logits = np.asarray(mask_logits, dtype=np.float64)
    if not (np.isfinite(expr_logits).all() and np.isfinite(mask_logits).all()):
        raise FloatingPointError("the model produced non-finite logits")
    mask_p = softmax(mask_logits)
    expr_p = calibrated_probs(expr_logits, mask_p, calibration, mask_labels)
    thresholds = mixed_thresholds(mask_p, calibration.abstain_threshold, mask_labels)
    grouping = calibration.grouping
    if grouping is not None:
        group_p = group_probs(expr_p, grouping.groups, labels)
        group_thr = mixed_thresholds(mask_p, grouping.threshold, mask_labels)
    results = []
    for i, det in enumerate(detections):
        m = int(mask_p[i].argmax())
        e = int(expr_p[i].argmax())
        top = float(expr_p[i, e])
        expression = ExpressionResult(
            label=labels[e] if top >= thresholds[i] else UNCERTAIN,
            probability=round(top, 4),
            probabilities={name: round(float(p), 4) for name, p in zip(labels, expr_p[i])},
            calibrated=calibration.fitted_on is not None,
        )
        group = None
        if grouping is not None:
            group = _group_result(group_p[i], list(grouping.groups), float(group_thr[i]))
        results.append(
            FaceResult(
                box=tuple(round(float(v), 1) for v in det.box),  # type: ignore[arg-type]
                score=round(min(max(float(det.score), 0.0), 1.0), 4),
                mask=MaskResult(
                    label=mask_labels[m],
                    probability=round(float(mask_p[i, m]), 4),
                    state_reliable=bool(mask_p[i, m] >= reliable_probability),
                ),
                expression=expression,
                group=group,
                answer=answer(expression, group),
            )
        )
    return results
