"""The default-model recipe, scaled down (few faces, a few steps): what it builds and reports."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from handler.align import face_input
from handler.contract import read_metadata
from training.default_model import Recipe, batch_views, split_identities, wilson


def test_build_writes_archive_student_and_card(scaled_down_build: dict[str, Any]) -> None:
    card = scaled_down_build
    mar = Path(card["archive"])
    assert mar.is_file()
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"msde_student.pt", "msde_handler.py", "handler/pipeline.py",
            "MAR-INF/MANIFEST.json"} <= names
    assert any(n.startswith("blazeface/") and n.endswith(".onnx") for n in names)
    build_dir = mar.parent.parent / "build"
    written = json.loads((build_dir / "model_card.json").read_text())
    assert written["train_faces"] == card["train_faces"] > 0
    assert card["val_faces"] > 0 and card["train_identities"] > 0
    meta = read_metadata(build_dir / "msde_student.pt")
    assert meta.architecture == "mini_xception" and meta.input_size == (1, 64, 64)
    assert meta.calibration.fitted_on and "validation" in meta.calibration.fitted_on
    reserved = card["reserved_eval"]
    assert reserved["faces"] == 2  # astronaut and grace_hopper: the reserved sources asked for
    for state in ("unmasked", "masked"):
        assert 0.0 <= reserved[state]["agreement"] <= 1.0
        lo, hi = reserved[state]["ci95"]
        assert lo <= reserved[state]["agreement"] <= hi


def test_student_starts_from_the_teacher_and_keeps_the_astronauts_smile(
    scaled_down_build: dict[str, Any], astronaut: np.ndarray
) -> None:
    from handler.detect import FaceDetector
    from training.assets import fetch

    pt = Path(scaled_down_build["archive"]).parent.parent / "build" / "msde_student.pt"
    meta = read_metadata(pt)
    student = torch.jit.load(str(pt))
    face = FaceDetector(fetch("blazeface") / "ONNX").detect(astronaut)[0]
    x = torch.from_numpy(face_input(astronaut, face, meta.input_spec()))[None]
    expression, _ = student(x)
    assert meta.labels[int(expression.argmax())] == "happiness"


def test_identity_split_keeps_people_apart() -> None:
    from training.default_model import Face

    faces = [Face(np.zeros((8, 8, 3), np.uint8), None, f"p{i % 10}", "s", [])  # type: ignore
             for i in range(50)]
    train, val = split_identities(faces, 0.2, seed=0)
    assert {f.identity for f in train}.isdisjoint({f.identity for f in val})
    assert len({f.identity for f in val}) == 2 and len(train) + len(val) == 50


def test_augmented_views_are_seeded_and_share_their_geometry(astronaut: np.ndarray) -> None:
    from handler.faces import Detection
    from training.default_model import Face, context_crop
    from training.models import default_input_spec

    kp = np.array([[205, 110], [245, 110], [227, 135], [227, 152], [185, 120], [265, 120]],
                  np.float32)
    crop, det = context_crop(astronaut, Detection((180.0, 76.0, 275.0, 171.0), 0.9, kp))
    render = crop.copy()
    render[int(det.keypoints[2, 1]):] = 0  # a crude "mask" over the lower face
    face = Face(crop, det, "a", "s", [render])
    spec = default_input_spec("mini_xception")
    u1, m1 = batch_views([face] * 4, spec, np.random.default_rng(1), augment=True)
    u2, m2 = batch_views([face] * 4, spec, np.random.default_rng(1), augment=True)
    assert torch.equal(u1, u2) and torch.equal(m1, m2)
    assert not torch.equal(u1[0], u1[1])  # each view its own augmentation
    # same geometry: the upper face (above the "mask") is identical in both views
    top = spec.input_size[1] // 4
    assert torch.equal(u1[..., :top, :], m1[..., :top, :])
    fixed_u, _ = batch_views([face], spec, np.random.default_rng(9), augment=False)
    assert torch.equal(fixed_u[0], torch.from_numpy(face_input(crop, det, spec)))


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (7, 21)])
def test_wilson_interval_contains_the_proportion(k: int, n: int) -> None:
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_recipe_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        Recipe(steps=0)
    with pytest.raises(ValueError):
        Recipe(unknown_knob=1)  # type: ignore[call-arg]


def _outputs(student_masked_top: list[int], teacher_top: list[int]) -> Any:
    from training.default_model import Outputs

    eye = np.eye(7)
    teacher = np.log(eye[teacher_top] * 0.9 + 0.1 / 7)
    masked = eye[student_masked_top] * 5.0
    return Outputs(teacher, {"unmasked": teacher, "masked": masked},
                   {"unmasked": np.zeros((len(teacher_top), 2)),
                    "masked": np.zeros((len(teacher_top), 2))})


def test_masked_faces_abstain_when_no_better_than_the_majority_class() -> None:
    from handler.contract import Calibration
    from training.default_model import abstain_unless_better_than_majority

    fitted = Calibration(fitted_on="test", abstain_threshold={"unmasked": 0.1, "masked": 0.3})
    teacher = [3] * 60 + [6] * 40  # majority: 60%
    weak = _outputs([3] * 100, teacher)  # = always the majority class
    strong = _outputs(teacher, teacher)  # agrees on every face
    assert abstain_unless_better_than_majority(fitted, weak).abstain_threshold == {
        "unmasked": 0.1, "masked": 1.0}
    assert abstain_unless_better_than_majority(fitted, strong) == fitted
