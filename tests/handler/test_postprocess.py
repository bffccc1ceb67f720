"""Per-face results: seven classes where they pass, else the grouped answer, else 'uncertain'."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from handler.contract import EXPRESSION_LABELS, MASK_LABELS, Calibration, Grouping, ModelMetadata
from handler.faces import Detection
from handler.postprocess import face_results, group_probs

GROUPS = {"positive": ("happiness",), "negative": ("fear", "disgust", "sadness", "anger"),
          "surprised": ("surprise",), "neutral": ("neutral",)}
FACE = Detection(box=(10.0, 10.0, 50.0, 60.0), score=0.9)


def _logits(probs: dict[str, float]) -> np.ndarray:
    return np.log([[probs.get(k, 1e-6) for k in EXPRESSION_LABELS]])


def _results(expr: np.ndarray, masked: bool, calibration: Calibration):
    mask = np.array([[-8.0, 8.0]]) if masked else np.array([[8.0, -8.0]])
    return face_results([FACE], expr, mask, labels=EXPRESSION_LABELS, mask_labels=MASK_LABELS,
                        calibration=calibration)


def _calibration(grouping: Grouping | None) -> Calibration:
    return Calibration(fitted_on="test", abstain_threshold={"unmasked": 0.0, "masked": 1.0},
                       grouping=grouping)


def test_group_probability_is_the_sum_of_its_members() -> None:
    p = np.array([[0.1, 0.2, 0.05, 0.3, 0.15, 0.1, 0.1]])
    g = group_probs(p, GROUPS)
    assert g.shape == (1, 4)
    np.testing.assert_allclose(g[0], [0.3, 0.5, 0.1, 0.1])


def test_masked_face_gets_the_group_when_its_expression_abstains() -> None:
    grouping = Grouping(groups=GROUPS, threshold={"unmasked": 0.0, "masked": 0.6})
    expr = _logits({"fear": 0.3, "sadness": 0.25, "anger": 0.2, "happiness": 0.15,
                    "neutral": 0.1})
    (face,) = _results(expr, masked=True, calibration=_calibration(grouping))
    assert face.expression.label == "uncertain"
    assert face.group is not None and face.group.label == "negative"
    assert face.group.probability == pytest.approx(0.75, abs=1e-3)
    assert face.answer.level == "group" and face.answer.label == "negative"
    assert face.answer.probability == face.group.probability


def test_group_below_its_threshold_stays_uncertain() -> None:
    grouping = Grouping(groups=GROUPS, threshold={"unmasked": 0.0, "masked": 0.8})
    expr = _logits({"fear": 0.3, "sadness": 0.25, "anger": 0.2, "happiness": 0.25})
    (face,) = _results(expr, masked=True, calibration=_calibration(grouping))
    assert face.group is not None and face.group.label == "uncertain"
    assert face.answer.level == "uncertain" and face.answer.label == "uncertain"


def test_unmasked_face_keeps_its_seven_class_answer() -> None:
    grouping = Grouping(groups=GROUPS, threshold={"unmasked": 0.0, "masked": 0.6})
    (face,) = _results(_logits({"surprise": 0.6, "fear": 0.4}), masked=False,
                       calibration=_calibration(grouping))
    assert face.expression.label == "surprise"
    assert face.answer.level == "expression" and face.answer.label == "surprise"
    assert face.group is not None and face.group.label == "surprised"


def test_model_without_grouping_answers_as_before() -> None:
    (face,) = _results(_logits({"fear": 0.9, "anger": 0.1}), masked=True,
                       calibration=_calibration(None))
    assert face.group is None
    assert face.answer.level == "uncertain" and face.expression.label == "uncertain"


def test_metadata_of_an_archive_built_before_grouping_still_loads() -> None:
    old = ('{"version": "1.0.0", "architecture": "mini_xception", "input_size": [1, 64, 64], '
           '"mean": [0.5], "std": [0.5], "trained_on": "x", "calibration": {"fitted_on": "v", '
           '"temperature": {"unmasked": 0.35, "masked": 1.45}, '
           '"abstain_threshold": {"unmasked": 0.0, "masked": 1.0}}}')
    assert ModelMetadata.from_json(old).calibration.grouping is None


@pytest.mark.parametrize("groups", [
    {"a": ("happiness",)},  # not every label
    {**GROUPS, "extra": ("happiness",)},  # a label twice
    {**{k: v for k, v in GROUPS.items() if k != "neutral"}, "uncertain": ("neutral",)},
])
def test_groups_must_partition_the_labels_under_their_own_names(groups: dict) -> None:
    with pytest.raises(ValidationError):
        Grouping(groups=groups, threshold={"unmasked": 0.0, "masked": 0.5})
