from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from handler.faces import Detection
from handler.contract import Calibration, Grouping, read_metadata
from handler.pipeline import Pipeline, ServingConfig
from handler.schema import json_schema
from testkit.imaging import encode

SCHEMA = json_schema()


class FixedDetector:
    """Finds one face in the middle of any image larger than 64 px, none in smaller ones."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        h, w = image.shape[:2]
        if min(h, w) < 64:
            return []
        box = (w * 0.25, h * 0.25, w * 0.75, h * 0.75)
        return [Detection(box=box, score=0.9, keypoints=None)]


class CountingModel(torch.nn.Module):
    def __init__(self, inner: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches.append(x.shape[0])
        return self.inner(x)


@pytest.fixture()
def pipeline(tiny_student_pt: Path) -> Pipeline:
    model = CountingModel(torch.jit.load(str(tiny_student_pt)))
    return Pipeline(model, read_metadata(tiny_student_pt), FixedDetector(), ServingConfig())


def _image(h: int = 120, w: int = 160, seed: int = 0) -> bytes:
    return encode(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_one_forward_for_all_faces_of_all_requests(pipeline: Pipeline) -> None:
    outcomes = pipeline.run([{"body": _image(seed=i)} for i in range(4)])
    assert [o.status for o in outcomes] == [200] * 4
    assert pipeline.model.batches == [4]


def test_bad_request_fails_alone(pipeline: Pipeline) -> None:
    outcomes = pipeline.run([{"body": _image()}, {"body": b"garbage bytes"}, {"body": _image()}])
    assert [o.status for o in outcomes] == [200, 400, 200]
    assert outcomes[1].body["error"]["code"] in {"undecodable_image", "unsupported_type"}
    for o in outcomes:
        jsonschema.validate(json.loads(json.dumps(o.body)), SCHEMA)


def test_response_contract(pipeline: Pipeline) -> None:
    (outcome,) = pipeline.run([{"body": _image(100, 200)}])
    body = outcome.body
    assert body["image"] == {"width": 200, "height": 100}
    assert body["model"] == {"name": "msde", "version": "0.0.1-test"}
    (face,) = body["faces"]
    assert face["box"] == [50.0, 25.0, 150.0, 75.0]
    assert face["mask"]["label"] in {"unmasked", "masked"}
    probs = face["expression"]["probabilities"]
    assert list(probs) == ["surprise", "fear", "disgust", "happiness", "sadness", "anger",
                           "neutral"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert face["expression"]["label"] == max(probs, key=probs.get)
    jsonschema.validate(body, SCHEMA)


def test_no_face_is_200_with_empty_list(pipeline: Pipeline) -> None:
    (outcome,) = pipeline.run([{"body": _image(40, 40)}])
    assert outcome.status == 200 and outcome.body["faces"] == []


def test_detect_false_uses_the_whole_image(pipeline: Pipeline) -> None:
    payload = {"image": base64.b64encode(_image(40, 40)).decode(), "detect": False}
    (outcome,) = pipeline.run([{"body": payload}])
    (face,) = outcome.body["faces"]
    assert face["box"] == [0.0, 0.0, 40.0, 40.0] and face["score"] == 1.0
    assert pipeline.detector.calls == 0


def test_kserve_v1_answers_one_prediction_per_instance(pipeline: Pipeline) -> None:
    body = {"instances": [{"data": base64.b64encode(_image(seed=i)).decode()} for i in range(3)]}
    (outcome,) = pipeline.run([{"body": body}])
    assert outcome.status == 200 and len(outcome.body["predictions"]) == 3
    jsonschema.validate(outcome.body, SCHEMA)


def test_abstention_labels_uncertain(tiny_student_pt: Path) -> None:
    meta = read_metadata(tiny_student_pt)
    strict = meta.model_copy(
        update={"calibration": Calibration(
            fitted_on="test", temperature={"unmasked": 1.0, "masked": 1.0},
            abstain_threshold={"unmasked": 1.0, "masked": 1.0})}
    )
    pipe = Pipeline(torch.jit.load(str(tiny_student_pt)), strict, FixedDetector())
    (outcome,) = pipe.run([{"body": _image()}])
    face = outcome.body["faces"][0]
    assert face["expression"]["label"] == "uncertain"
    assert face["expression"]["calibrated"] is True
    assert len(face["expression"]["probabilities"]) == 7


def test_model_without_grouping_serves_its_expression_as_the_answer(
    tiny_student_pt: Path,
) -> None:
    meta = read_metadata(tiny_student_pt)
    assert meta.calibration.grouping is None  # as every archive built before grouping
    pipe = Pipeline(torch.jit.load(str(tiny_student_pt)), meta, FixedDetector())
    (outcome,) = pipe.run([{"body": _image()}])
    face = outcome.body["faces"][0]
    assert face["group"] is None
    assert face["answer"]["level"] == "expression"
    assert face["answer"]["label"] == face["expression"]["label"]
    jsonschema.validate(outcome.body, SCHEMA)


def test_grouped_answer_is_served_when_the_expression_abstains(tiny_student_pt: Path) -> None:
    meta = read_metadata(tiny_student_pt)
    grouping = Grouping(groups={"positive": ("happiness",), "other": (
        "surprise", "fear", "disgust", "sadness", "anger", "neutral")},
        threshold={"unmasked": 0.0, "masked": 0.0})
    grouped = meta.model_copy(update={"calibration": Calibration(
        fitted_on="test", abstain_threshold={"unmasked": 1.0, "masked": 1.0},
        grouping=grouping)})
    pipe = Pipeline(torch.jit.load(str(tiny_student_pt)), grouped, FixedDetector())
    (outcome,) = pipe.run([{"body": _image()}])
    face = outcome.body["faces"][0]
    assert face["expression"]["label"] == "uncertain"
    assert face["answer"]["level"] == "group"
    assert face["answer"]["label"] == face["group"]["label"] in ("positive", "other")
    assert sum(face["group"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    jsonschema.validate(outcome.body, SCHEMA)


def test_published_schema_is_current() -> None:
    committed = json.loads(Path("docs/response.schema.json").read_text())
    assert committed == json.loads(json.dumps(SCHEMA)), "run: python -m handler.schema"


def test_model_config_thresholds_override_the_fitted_ones(tiny_student_pt: Path) -> None:
    config = ServingConfig(abstain_threshold={"unmasked": 1.0, "masked": 1.0})
    pipe = Pipeline(torch.jit.load(str(tiny_student_pt)), read_metadata(tiny_student_pt),
                    FixedDetector(), config)
    (outcome,) = pipe.run([{"body": _image()}])
    assert outcome.body["faces"][0]["expression"]["label"] == "uncertain"


@pytest.mark.parametrize(
    "bad", [{"unmasked": 0.5}, {"unmasked": 0.5, "masked": 1.5}, {"a": 0.1, "b": 0.2}]
)
def test_invalid_threshold_override_is_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        ServingConfig(abstain_threshold=bad)


# -- memory bounded by design: pixel budgets, working resolution --------------------------
def _budgeted(tiny_student_pt: Path, **limits: int) -> Pipeline:
    model = CountingModel(torch.jit.load(str(tiny_student_pt)))
    return Pipeline(model, read_metadata(tiny_student_pt), FixedDetector(),
                    ServingConfig(**limits))


def _kserve(*images: bytes) -> dict:
    return {"body": {"instances": [{"data": base64.b64encode(i).decode()} for i in images]}}


def test_request_over_the_pixel_budget_is_413_before_decoding(tiny_student_pt: Path) -> None:
    pipe = _budgeted(tiny_student_pt, max_request_pixels=3 * 120 * 160)
    outcomes = pipe.run([_kserve(*[_image(seed=i) for i in range(4)]), {"body": _image()}])
    assert [o.status for o in outcomes] == [413, 200]
    assert outcomes[0].body["error"]["code"] == "too_many_pixels"
    assert pipe.detector.calls == 1  # only the other request's image was decoded
    assert pipe.model.batches == [1]


def test_batch_over_its_pixel_budget_answers_503_and_the_rest_200(
    tiny_student_pt: Path,
) -> None:
    pipe = _budgeted(tiny_student_pt, max_request_pixels=2 * 120 * 160,
                     max_batch_pixels=3 * 120 * 160)
    two = _kserve(_image(seed=1), _image(seed=2))
    outcomes = pipe.run([two, two, {"body": _image(seed=3)}, two])
    assert [o.status for o in outcomes] == [200, 503, 200, 503]
    for o in outcomes[1::2]:
        assert o.body["error"]["code"] == "server_busy"
        jsonschema.validate(json.loads(json.dumps(o.body)), SCHEMA)
    assert pipe.detector.calls == 3 and pipe.model.batches == [3]


def test_worst_case_body_of_the_issue_is_refused_unread(tiny_student_pt: Path) -> None:
    """16 flat 6000x6600 PNGs (each within the 40 MP image limit): 413 from the headers."""
    from testkit.corpus import png_bomb

    pipe = _budgeted(tiny_student_pt)
    (outcome,) = pipe.run([_kserve(*[png_bomb(6000, 6600)] * 16)])
    assert outcome.status == 413 and outcome.body["error"]["code"] == "too_many_pixels"
    assert pipe.detector.calls == 0


def test_a_failing_image_takes_its_request_s_faces_out_of_the_forward(
    pipeline: Pipeline,
) -> None:
    outcomes = pipeline.run([_kserve(_image(seed=1), b"\xff\xd8junk"), {"body": _image()}])
    assert [o.status for o in outcomes] == [400, 200]
    assert pipeline.model.batches == [1]


def test_boxes_are_in_full_resolution_pixels_when_decoded_smaller(pipeline: Pipeline) -> None:
    (outcome,) = pipeline.run([{"body": _image(1000, 2200)}])
    assert outcome.body["image"] == {"width": 2200, "height": 1000}
    (face,) = outcome.body["faces"]
    assert face["box"] == pytest.approx([550.0, 250.0, 1650.0, 750.0], abs=2.0)
