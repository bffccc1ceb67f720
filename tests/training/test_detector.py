"""training.detector: the BlazeFace port, its ONNX export, the masked canvases, the build."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from handler.detect import MODEL_FILES, DetectorConfig, FaceDetector
from training.assets import fetch
from training.detector import distill
from training.detector.blazeface import export_onnx, flatten_outputs, load_onnx
from training.detector.data import Canvas, make_canvas, mask_all, maskable_photos, photo_weights


@pytest.fixture(scope="module")
def back_model() -> Path:
    return fetch("blazeface") / "ONNX" / MODEL_FILES["back"]


def _session(path: Path | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path) if isinstance(path, Path) else path, opts,
                                providers=["CPUExecutionProvider"])


def _flat(outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    s16, s8, b16, b8 = outs
    return np.concatenate([s16[..., 0], s8[..., 0]], 1), np.concatenate([b16, b8], 1)


def test_port_gives_the_registry_models_outputs(back_model: Path) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (2, 256, 256, 3)).astype(np.float32)
    session = _session(back_model)
    ref = [_flat(session.run(None, {"input:0": x[i : i + 1]})) for i in range(2)]
    with torch.no_grad():
        scores, boxes = flatten_outputs(load_onnx(back_model)(torch.from_numpy(x)
                                                              .permute(0, 3, 1, 2)))
    for i, (s, b) in enumerate(ref):
        assert np.abs(scores[i].numpy() - s[0]).max() < 1e-3
        assert np.abs(boxes[i].numpy() - b[0]).max() < 1e-3


def test_export_runs_any_batch_and_size_like_the_port(back_model: Path, tmp_path: Path
                                                      ) -> None:
    net = load_onnx(back_model, skip=range(0, 7))
    path = export_onnx(net, tmp_path / "student.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (3, 192, 256, 3)).astype(np.float32)
    scores, boxes = _flat(_session(path).run(None, {"input": x}))
    with torch.no_grad():
        ts, tb = flatten_outputs(net(torch.from_numpy(x).permute(0, 3, 1, 2)))
    assert scores.shape == (3, 12 * 16 * 2 + 6 * 8 * 6) and boxes.shape[2] == 16
    assert np.abs(scores - ts.numpy()).max() < 1e-3 and np.abs(boxes - tb.numpy()).max() < 1e-3
    # identical weights give an identical file
    assert export_onnx(net, tmp_path / "again.onnx").read_bytes() == path.read_bytes()


def test_a_block_that_changes_shape_cannot_be_skipped(back_model: Path) -> None:
    with pytest.raises(ValueError, match="block 7"):
        load_onnx(back_model, skip=[7])


@pytest.fixture(scope="module")
def astronaut_photo(astronaut: np.ndarray) -> SimpleNamespace:
    """A pool-face stand-in for the astronaut (the eval photo, fine for plumbing tests)."""
    det = FaceDetector(fetch("blazeface") / "ONNX").detect(astronaut)[0]
    return SimpleNamespace(image_path=Path("astronaut.png"), detection=det, source="test",
                           group="train", identity="test/astronaut", image=astronaut)


def test_masks_cover_the_lower_face_only(astronaut: np.ndarray,
                                         astronaut_photo: SimpleNamespace) -> None:
    det = astronaut_photo.detection
    masked = mask_all(astronaut, [det.keypoints], variant=0, seed=0)
    changed = np.argwhere(np.abs(masked.astype(int) - astronaut.astype(int)).max(axis=2) > 8)
    assert len(changed) > 0.1 * det.width * det.height
    eyes_y = det.keypoints[:2, 1].max()
    x1, _, x2, _ = det.box
    assert changed[:, 0].min() > eyes_y  # nothing above the eyes
    assert x1 - 0.3 * det.width < changed[:, 1].mean() < x2 + 0.3 * det.width


def test_held_out_sources_never_reach_the_training_photos(
    astronaut_photo: SimpleNamespace
) -> None:
    bench = SimpleNamespace(**{**vars(astronaut_photo), "source": "face-api"})
    photos = maskable_photos([astronaut_photo, bench], lambda f: f.image)
    assert [p.source for p in photos] == ["test"]
    assert len(photos[0].masked) == 3 and photo_weights(photos).tolist() == [1.0]


def test_canvas_views_are_the_same_scene_with_and_without_masks(
    astronaut_photo: SimpleNamespace
) -> None:
    photos = maskable_photos([astronaut_photo], lambda f: f.image)
    canvases: list[Canvas] = [make_canvas(photos, photo_weights(photos), 160,
                                          np.random.default_rng(s)) for s in range(8)]
    differing = 0
    for c in canvases:
        assert c.teacher.shape == c.student.shape == (160, 160, 3)
        diff = np.abs(c.teacher.astype(int) - c.student.astype(int)).max(axis=2) > 0
        assert diff.mean() < 0.5  # a mask, never a different scene
        differing += bool(diff.any())
    assert differing >= 4  # most canvases carry at least one mask
    again = make_canvas(photos, photo_weights(photos), 160, np.random.default_rng(0))
    assert np.array_equal(again.student, canvases[0].student)


def test_scaled_down_build_is_deterministic_and_serves(
    astronaut_photo: SimpleNamespace, astronaut: np.ndarray, tmp_path: Path
) -> None:
    photos = maskable_photos([astronaut_photo], lambda f: f.image)
    cfg = distill.DistillConfig(steps=2, batch=2, threads=1)
    a = distill.build(tmp_path / "a", photos, cfg)
    b = distill.build(tmp_path / "b", photos, cfg)
    model = MODEL_FILES["masked"]
    assert (a / model).read_bytes() == (b / model).read_bytes()
    assert {p.name for p in a.glob("*.onnx")} == set(MODEL_FILES.values())
    card = json.loads((a / "detector.json").read_text())
    assert card["held_out_sources"] == ["face-api", "lfw_subset"] and card["photos"] == 1
    # two steps do not make a detector; the archive's folder loads and runs as served
    detector = FaceDetector(a, DetectorConfig(models=("masked",), rotations=(0.0,),
                                              candidate_threshold=0.5, score_threshold=0.01))
    faces = detector.detect(astronaut)
    assert faces and all(0 <= f.box[0] < f.box[2] <= 512 and 0 <= f.box[1] < f.box[3] <= 512
                         for f in faces)


def test_detector_folder_is_built_once_and_then_found(
    astronaut_photo: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.data.face_pool as face_pool

    monkeypatch.setattr(face_pool, "build_pool", lambda **_: [astronaut_photo])
    monkeypatch.setattr(face_pool, "load_rgb", lambda f: f.image)
    cfg = distill.DistillConfig(steps=1, batch=1, threads=1)
    first = distill.detector_models(cfg, tmp_path)
    assert (first / MODEL_FILES["masked"]).is_file() and (first / "LICENSE").is_file()

    def no_build(*_: object) -> None:
        raise AssertionError("a cached detector must not be rebuilt")

    monkeypatch.setattr(distill, "build", no_build)
    assert distill.detector_models(cfg, tmp_path) == first
    other = distill.DistillConfig(steps=2, batch=1, threads=1)
    with pytest.raises(AssertionError, match="rebuilt"):
        distill.detector_models(other, tmp_path)  # another recipe is another model
