"""Grad-CAM explanations on the served (TorchScript) student, without TorchServe."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from PIL import Image

from handler.align import crop_matrix
from handler.contract import CropSpec, ModelMetadata, read_metadata
from handler.explain import MAX_EXPLAINED_FACES, Explainer, grad_cam, heatmap_image
from handler.faces import Detection
from handler.msde_handler import MsdeHandler
from handler.pipeline import Pipeline
from handler.schema import ExplanationResponse, json_schema
from testkit.context import FakeContext
from testkit.imaging import encode
from training.models import STUDENTS, cam_target_layer, create_student, default_input_spec

SCHEMA = json_schema()
Served = tuple[torch.jit.ScriptModule, ModelMetadata]


class Expressions(torch.nn.Module):
    """The eager student's expression logits alone: what pytorch_grad_cam differentiates."""

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)[0]


@pytest.mark.parametrize("name", STUDENTS)
def test_every_student_scripts_with_a_cam_that_matches_pytorch_grad_cam(name: str) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    student = create_student(name).eval()
    scripted = torch.jit.script(student)
    c, h, w = default_input_spec(name).input_size
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(1))
    targets = [3, 6]
    exported = grad_cam(scripted, x, targets)

    layer = cam_target_layer(student)
    with GradCAM(model=Expressions(student), target_layers=[layer]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        eager = np.maximum(cam.get_cam_image(x, layer, None, acts, grads, False), 0)
    assert exported.shape == eager.shape and exported.shape[1:] == acts.shape[2:]
    assert eager.max() > 0, "a degenerate reference proves nothing"
    np.testing.assert_allclose(exported, eager, rtol=1e-4, atol=1e-5 * float(eager.max()))


def _peak(heat: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """Image coordinates of the heatmap's hottest pixel."""
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    x1, y1, x2, y2 = box
    return x1 + (x + 0.5) * (x2 - x1) / heat.shape[1], y1 + (y + 0.5) * (y2 - y1) / heat.shape[0]


def test_heatmap_covers_the_crop_and_keeps_the_hot_corner_in_place() -> None:
    det = Detection(box=(100.0, 100.0, 200.0, 200.0), score=0.9, keypoints=None)
    spec = CropSpec(scale=1.25, shift_y=0.0, rotate=True)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0  # top-left of the crop
    box, heat = heatmap_image(cam, crop_matrix(det, (64, 64), spec), (64, 64), (400, 400))
    assert box == pytest.approx((87.5, 87.5, 212.5, 212.5))
    assert heat.dtype == np.uint8 and heat.max() == 255 and max(heat.shape) <= 96
    px, py = _peak(heat, box)
    assert px < 120 and py < 120


def test_heatmap_follows_the_roll_of_the_face() -> None:
    # eyes on a vertical line: the face is rolled 90 degrees, its top points to image +x
    kp = np.array([[150, 100], [150, 200], [170, 150], [190, 150], [150, 60], [150, 240]],
                  dtype=np.float32)
    det = Detection(box=(100.0, 100.0, 200.0, 200.0), score=0.9, keypoints=kp)
    cam = np.zeros((4, 4), np.float32)
    cam[0, :] = 1.0  # the top row of the crop: forehead
    box, heat = heatmap_image(cam, crop_matrix(det, (64, 64), CropSpec()), (64, 64), (300, 300))
    px, _ = _peak(heat, box)
    assert px > 170


def test_heatmap_is_clipped_to_the_image() -> None:
    det = Detection(box=(0.0, 0.0, 50.0, 50.0), score=0.9, keypoints=None)
    cam = np.ones((4, 4), np.float32)
    box, heat = heatmap_image(cam, crop_matrix(det, (64, 64), CropSpec()), (64, 64), (60, 80))
    assert box[0] == 0.0 and box[1] == 0.0 and box[2] <= 80 and box[3] <= 60
    assert heat.shape == (round(box[3] - box[1]), round(box[2] - box[0]))


class RowOfFaces:
    """``n`` faces side by side, best score first from the left."""

    def __init__(self, n: int) -> None:
        self.n = n

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        side = w / self.n
        return [
            Detection(box=(i * side, h * 0.2, (i + 1) * side, h * 0.2 + side),
                      score=0.99 - 0.05 * i, keypoints=None)
            for i in range(self.n)
        ]


@pytest.fixture(scope="module")
def student_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real registered student, scripted and saved as the archive holds it."""
    torch.manual_seed(0)
    spec = default_input_spec("resnet18_narrow")
    meta = ModelMetadata(version="0.0.1-test", architecture="resnet18_narrow",
                         input_size=spec.input_size, mean=list(spec.mean), std=list(spec.std),
                         trained_on="nothing: random weights", crop=spec.crop)
    path = tmp_path_factory.mktemp("cam") / "student.pt"
    scripted = torch.jit.script(create_student("resnet18_narrow").eval())
    torch.jit.save(scripted, str(path), _extra_files={"metadata.json": meta.to_json()})
    return path


@pytest.fixture(scope="module")
def served(student_pt: Path) -> Served:
    return torch.jit.load(str(student_pt)), read_metadata(student_pt)


def _explainer(served: Served, faces: int = 1) -> Explainer:
    return Explainer(Pipeline(*served, RowOfFaces(faces)))


def _photo(seed: int = 0, w: int = 240) -> bytes:
    return encode(np.random.default_rng(seed).integers(0, 255, (160, w, 3), dtype=np.uint8))


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_explanation_is_the_prediction_plus_a_heatmap(served: Served) -> None:
    explainer = _explainer(served, faces=2)
    (predicted,) = explainer.pipeline.run([{"body": _photo()}])
    (outcome,) = explainer.run([{"body": _photo()}])
    assert outcome.status == 200 and outcome.images == []
    jsonschema.validate(outcome.body, SCHEMA)
    body = ExplanationResponse.model_validate(outcome.body)
    without = {**outcome.body, "faces": [
        {k: v for k, v in f.items() if k != "heatmap"} for f in outcome.body["faces"]]}
    assert without == predicted.body
    for face in body.faces:
        assert face.heatmap is not None
        probs = face.expression.probabilities
        assert face.heatmap.target == max(probs, key=lambda k: probs[k])
        heat = _png(face.heatmap.png)
        assert heat.shape == (face.heatmap.height, face.heatmap.width) and heat.dtype == np.uint8
        hx1, hy1, hx2, hy2 = face.heatmap.box
        x1, y1, x2, y2 = face.box
        assert hx1 <= x1 and hy1 <= y1 and hx2 >= x2 - 0.1 and hy2 >= y2 - 0.1


def test_target_named_in_json_or_form_is_explained(served: Served) -> None:
    explainer = _explainer(served)
    photo = _photo()
    requests = [
        {"body": {"image": base64.b64encode(photo).decode(), "target": "fear"}},
        {"body": json.dumps({"image": base64.b64encode(photo).decode(),
                             "target": "anger"}).encode()},
        {"data": photo, "target": b"sadness"},
        {"body": {"image": base64.b64encode(photo).decode(), "target": "joy"}},
    ]
    outcomes = explainer.run(requests)
    assert [o.status for o in outcomes] == [200, 200, 200, 400]
    targets = [o.body["faces"][0]["heatmap"]["target"] for o in outcomes[:3]]
    assert targets == ["fear", "anger", "sadness"]
    assert outcomes[3].body["error"]["code"] == "bad_request"
    assert "surprise" in outcomes[3].body["error"]["message"]


def test_faces_beyond_the_cap_get_no_heatmap_lowest_scores_first(served: Served) -> None:
    n = MAX_EXPLAINED_FACES + 2
    explainer = _explainer(served, faces=n)
    (outcome,) = explainer.run([{"body": _photo(w=40 * n)}])
    faces = outcome.body["faces"]
    assert len(faces) == n
    explained = [f["heatmap"] is not None for f in faces]
    assert explained == [True] * MAX_EXPLAINED_FACES + [False, False]
    jsonschema.validate(outcome.body, SCHEMA)


def test_kserve_instances_are_explained_each(served: Served) -> None:
    explainer = _explainer(served)
    body = {"instances": [{"data": base64.b64encode(_photo(i)).decode()} for i in range(2)]}
    (outcome,) = explainer.run([{"body": body}])
    assert outcome.status == 200 and len(outcome.body["explanations"]) == 2
    jsonschema.validate(outcome.body, SCHEMA)


def test_bad_image_fails_alone(served: Served) -> None:
    outcomes = _explainer(served).run(
        [{"body": _photo()}, {"body": b"not an image at all"}, {"body": _photo(1)}])
    assert [o.status for o in outcomes] == [200, 400, 200]
    assert outcomes[1].body["error"]["code"] == "undecodable_image"


def test_student_without_cam_methods_answers_501(tiny_student_pt: Path) -> None:
    pipe = Pipeline(torch.jit.load(str(tiny_student_pt)), read_metadata(tiny_student_pt),
                    RowOfFaces(1))
    outcomes = Explainer(pipe).run([{"body": _photo()}, {"body": _photo(1)}])
    assert [o.status for o in outcomes] == [501, 501]
    assert outcomes[0].body["error"]["code"] == "explanations_unsupported"
    jsonschema.validate(outcomes[0].body, SCHEMA)


def test_handler_answers_predictions_and_explanations_of_one_batch(served: Served) -> None:
    handler = MsdeHandler()
    handler.explainer = _explainer(served)
    handler.pipeline = handler.explainer.pipeline
    context = FakeContext(explain=[False, True, True, False])
    data: list[dict[str, Any]] = [{"body": _photo(0)}, {"body": _photo(1)},
                                  {"body": b"garbage"}, {"body": _photo(2)}]
    answers = [json.loads(a) for a in handler.handle(data, context)]
    assert context.statuses == {2: 400}
    assert "heatmap" not in answers[0]["faces"][0] and "heatmap" not in answers[3]["faces"][0]
    assert answers[1]["faces"][0]["heatmap"]["png"]
    assert answers[2]["error"]["code"] == "undecodable_image"
