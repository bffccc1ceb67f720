"""Per-mask-state calibration: temperatures, ECE, abstention thresholds, confusable classes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from handler.contract import Calibration
from handler.postprocess import softmax
from training.calibrate import (
    ANSWER_GROUPS,
    GROUP_PRECISION,
    NEVER_MET_THRESHOLD,
    confusable_pairs,
    ece,
    fit_calibration,
    fit_group,
    fit_temperature,
    fit_threshold,
    group_labels,
    main,
    nll,
)


def _sampled(n: int, k: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from softmax(true logits): calibrated at T = 1 exactly."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 2.0, size=(n, k))
    p = softmax(true_logits)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return true_logits, labels


def test_ece_of_hand_computed_case() -> None:
    # bin (0.6, 0.733]: confidences 0.7, 0.7 -> one right, one wrong: |0.5 - 0.7| = 0.2
    # bin (0.867, 0.933]: confidence 0.9, right: |1 - 0.9| = 0.1
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.1, 0.9]])
    labels = np.array([0, 1, 1])
    assert ece(probs, labels, n_bins=15) == pytest.approx((2 * 0.2 + 1 * 0.1) / 3)


def test_ece_ignores_unlabelled_samples() -> None:
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.1, 0.9], [0.99, 0.01]])
    assert ece(probs, np.array([0, 1, 1, -1])) == pytest.approx(0.5 / 3)
    assert np.isnan(ece(probs, np.full(4, -1)))


def test_ece_is_zero_for_perfectly_calibrated_bins() -> None:
    probs = np.array([[0.5, 0.5]] * 4)  # argmax = class 0, half of them right
    assert ece(probs, np.array([0, 1, 0, 1]), n_bins=10) == pytest.approx(0.0)


@pytest.mark.parametrize("k", [0.4, 1.0, 3.0])
def test_fitted_temperature_recovers_the_logit_scale(k: float) -> None:
    true_logits, labels = _sampled(4000, seed=1)
    assert fit_temperature(true_logits * k, labels) == pytest.approx(k, rel=0.1)


def test_temperature_fits_soft_teacher_targets() -> None:
    teacher_logits, _ = _sampled(500, seed=2)
    student_logits = teacher_logits * 2.5
    assert fit_temperature(student_logits, softmax(teacher_logits)) == pytest.approx(2.5, rel=1e-3)


def test_temperature_ignores_unlabelled_samples() -> None:
    true_logits, labels = _sampled(3000, seed=3)
    noisy = labels.copy()
    noisy[:1000] = -1
    t_all = fit_temperature(true_logits * 2.0, labels)
    t_part = fit_temperature(true_logits * 2.0, noisy)
    assert t_part == pytest.approx(t_all, rel=0.15)
    with pytest.raises(ValueError, match="no labelled"):
        fit_temperature(true_logits, np.full(len(labels), -1))


def test_calibration_lowers_ece_and_nll_of_overconfident_logits() -> None:
    true_logits, labels = _sampled(3000, seed=4)
    overconfident = true_logits * 4.0
    t = fit_temperature(overconfident, labels)
    assert t > 2.0
    before, after = ece(softmax(overconfident), labels), ece(softmax(overconfident, t), labels)
    assert after < before / 2
    assert nll(overconfident, labels, t) < nll(overconfident, labels)


def test_threshold_reaches_target_precision() -> None:
    true_logits, labels = _sampled(2000, seed=5)
    probs = softmax(true_logits)
    target = 0.9
    t = fit_threshold(probs, labels, target)
    answered = probs.max(axis=1) >= t
    precision = (probs.argmax(axis=1) == labels)[answered].mean()
    assert precision >= target
    # the smallest such threshold: admitting the next less confident face breaks the target
    conf = probs.max(axis=1)
    below = conf[conf < t].max()
    wider = conf >= below
    assert (probs.argmax(axis=1) == labels)[wider].mean() < target


def test_threshold_is_zero_when_target_already_met() -> None:
    probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    assert fit_threshold(probs, np.array([0, 1, 0]), 0.8) == 0.0


def test_threshold_of_hand_computed_case() -> None:
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right), 0.55 (wrong)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0, 1])
    # precision of the prefixes: 1, 1/2, 2/3, 3/4, 3/5 -> target 0.75 first met lowest at 0.6
    assert fit_threshold(probs, labels, 0.75) == pytest.approx(0.6)
    assert fit_threshold(probs, labels, 0.9) == pytest.approx(0.9)


def test_threshold_caps_with_warning_when_target_never_met(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    with caplog.at_level(logging.WARNING):
        assert fit_threshold(probs, np.array([1, 1]), 0.8) == NEVER_MET_THRESHOLD
    assert "never reached" in caplog.text


def test_fit_calibration_gives_each_mask_state_its_own_temperature() -> None:
    true_logits, labels = _sampled(3000, seed=6)
    cal = fit_calibration(
        {"unmasked": true_logits * 1.0, "masked": true_logits * 3.0},
        {"unmasked": labels, "masked": labels},
        target_precision=0.85,
    )
    assert isinstance(cal, Calibration)
    assert cal.temperature["unmasked"] == pytest.approx(1.0, rel=0.1)
    assert cal.temperature["masked"] == pytest.approx(3.0, rel=0.1)
    assert 0.0 < cal.abstain_threshold["unmasked"] < 1.0
    assert cal.fitted_on is not None and "masked n=3000" in cal.fitted_on
    with pytest.raises(ValueError, match="missing mask states"):
        fit_calibration({"masked": true_logits}, {"masked": labels})


def test_confusable_pairs_lists_directed_off_diagonal_cells() -> None:
    c = np.eye(7)
    c[1] = [0.5, 0.3, 0, 0, 0, 0, 0.2]  # fear: half of it read as surprise
    c[2] = np.nan  # disgust absent from the split
    pairs = confusable_pairs(c, threshold=0.2)
    assert [(p.true, p.predicted, p.rate) for p in pairs] == [
        ("fear", "surprise", 0.5),
        ("fear", "neutral", 0.2),
    ]


def test_cli_writes_calibration_json_from_saved_outputs(tmp_path) -> None:
    true_logits, labels = _sampled(800, seed=7)
    npz = tmp_path / "val_outputs.npz"
    np.savez(npz, labels=labels, unmasked_expr_logits=true_logits,
             masked_expr_logits=true_logits * 2.0)
    out = tmp_path / "calibration.json"
    main([str(npz), "--target-precision", "0.7", "--out", str(out)])
    cal = Calibration.model_validate(json.loads(out.read_text()))
    assert cal.temperature["masked"] > cal.temperature["unmasked"]


def _grouped_case(n: int, right: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A confident half naming the label (with chance ``right``, else a class of another
    group) and an unsure half of happy faces spread thin (whose top group is wrong)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(7, size=n)
    labels[n // 2:] = 3
    probs = np.full((n, 7), 1 / 7)
    for i in range(n // 2):
        guess = labels[i] if rng.random() < right else (6 if labels[i] != 6 else 3)
        probs[i] = 0.02
        probs[i, guess] = 0.88
    return probs, labels


def test_group_labels_follow_the_groups_and_keep_unlabelled() -> None:
    y = group_labels(np.array([3, 1, 5, 0, 6, -1]), ANSWER_GROUPS)
    assert y.tolist() == [0, 1, 1, 2, 3, -1]  # positive, negative x2, surprised, neutral


def test_grouped_answer_is_kept_when_its_answers_beat_the_majority_group() -> None:
    probs, labels = _grouped_case(200, right=0.95)
    fit = fit_group(probs, labels)
    assert 0.2 < fit.threshold < 1.0
    assert fit.precision >= GROUP_PRECISION
    assert fit.answered >= 80 and fit.answered < 200  # the spread-thin half is left out
    assert "beats" in fit.reason


def test_grouped_answer_is_withdrawn_when_it_does_not_beat_the_majority_group() -> None:
    labels = np.full(40, 3)  # everybody happy: the majority group is always right
    probs = np.full((40, 7), 0.02)
    probs[:, 3] = 0.88
    fit = fit_group(probs, labels)
    assert fit.threshold == NEVER_MET_THRESHOLD
    assert "does not beat" in fit.reason


def test_grouped_answer_is_withdrawn_when_precision_is_never_reached() -> None:
    probs, labels = _grouped_case(200, right=0.3)
    fit = fit_group(probs, labels)
    assert fit.threshold == NEVER_MET_THRESHOLD
