"""Logits -> calibrated, per-face results.

The expression probabilities are a mixture over mask states of softmax(logits / T_state),
weighted by the mask head's probabilities, so an unsure mask head blends both calibrations
instead of switching abruptly. Training's calibration fitting imports these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from handler.faces import Detection
from handler.contract import Calibration
from handler.schema import ExpressionResult, FaceResult, MaskResult

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
    mask_labels: Sequence[str] = ("unmasked", "masked"),
) -> np.ndarray:
    """[N, 7] expression probabilities mixed over mask states by [N, S] mask probabilities."""
    out = np.zeros(np.shape(expr_logits), dtype=np.float64)
    for s, state in enumerate(mask_labels):
        out += mask_probs[:, s : s + 1] * softmax(expr_logits, calibration.temperature[state])
    return out


def abstain_thresholds(
    mask_probs: np.ndarray,
    calibration: Calibration,
    mask_labels: Sequence[str] = ("unmasked", "masked"),
) -> np.ndarray:
    """[N] abstention threshold per face, mixed over mask states like the probabilities."""
    thr = np.array([calibration.abstain_threshold[s] for s in mask_labels], dtype=np.float64)
    return np.asarray(mask_probs, dtype=np.float64) @ thr


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
    thresholds = abstain_thresholds(mask_p, calibration, mask_labels)
    results = []
    for i, det in enumerate(detections):
        m = int(mask_p[i].argmax())
        e = int(expr_p[i].argmax())
        top = float(expr_p[i, e])
        results.append(
            FaceResult(
                box=tuple(round(float(v), 1) for v in det.box),  # type: ignore[arg-type]
                score=round(min(max(float(det.score), 0.0), 1.0), 4),
                mask=MaskResult(
                    label=mask_labels[m],
                    probability=round(float(mask_p[i, m]), 4),
                    state_reliable=bool(mask_p[i, m] >= reliable_probability),
                ),
                expression=ExpressionResult(
                    label=labels[e] if top >= thresholds[i] else UNCERTAIN,
                    probability=round(top, 4),
                    probabilities={
                        name: round(float(p), 4) for name, p in zip(labels, expr_p[i])
                    },
                    calibrated=calibration.fitted_on is not None,
                ),
            )
        )
    return results
