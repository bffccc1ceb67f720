"""Finding faces in training images: cached detection, whole-image fallback, crop template."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler.align import whole_image_detection
from handler.faces import Detection
from training.data import CANONICAL_KEYPOINTS, FaceRecord, generate_faces, resolve_detections
from training.data.detections import canonical_keypoints, default_detector, main_face
from training.masks import render_mask


class Config:
    """Mimics a pydantic detector config: only its JSON matters to the cache key."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def model_dump_json(self) -> str:
        return f'{{"threshold": {self.threshold}}}'


class CountingFinder:
    def __init__(self, found: list[Detection], threshold: float = 0.5) -> None:
        self.found = found
        self.config = Config(threshold)
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.found


FACE = Detection(box=(2.0, 3.0, 20.0, 21.0), score=0.9,
                 keypoints=np.arange(12, dtype=np.float32).reshape(6, 2))


def image_records(tmp_path: Path, n: int) -> list[FaceRecord]:
    out = []
    for k in range(n):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.full((24, 24, 3), 10 * k, np.uint8)).save(path)
        out.append(FaceRecord(label=k % 7, subject=str(k), image_path=path))
    return out


def test_detections_are_cached_on_disk_per_image_and_detector(tmp_path: Path) -> None:
    records = image_records(tmp_path, 3)
    finder = CountingFinder([FACE])
    resolved, stats = resolve_detections(records, finder, tmp_path / "cache")
    assert finder.calls == 3 and stats.detected == 3
    again, stats = resolve_detections(records, CountingFinder([]), tmp_path / "cache")
    assert stats.cached == 3 and stats.detected == 0
    for r in again:
        assert r.detection.box == FACE.box
        np.testing.assert_array_equal(r.detection.keypoints, FACE.keypoints)
    other = CountingFinder([], threshold=0.7)  # another configuration: its own cache entries
    _, stats = resolve_detections(records, other, tmp_path / "cache")
    assert other.calls == 3 and stats.whole_image == 3
    _, stats = resolve_detections(records, other, tmp_path / "cache")  # "no face" is cached too
    assert other.calls == 3 and stats.cached == 3 and stats.whole_image == 3


def test_images_without_a_face_become_whole_image_crops(tmp_path: Path) -> None:
    records = image_records(tmp_path, 2)
    resolved, stats = resolve_detections(records, CountingFinder([]))
    assert stats.whole_image == 2
    assert all(r.detection == whole_image_detection(np.zeros((24, 24, 3))) for r in resolved)


def test_given_detections_are_kept(tmp_path: Path) -> None:
    records = [replace(r, detection=FACE) for r in image_records(tmp_path, 2)]
    finder = CountingFinder([])
    resolved, stats = resolve_detections(records, finder)
    assert finder.calls == 0 and stats.given == 2
    assert all(r.detection is FACE for r in resolved)


def test_the_largest_confident_face_is_the_data_sets_face() -> None:
    small = Detection(box=(0.0, 0.0, 10.0, 10.0), score=0.99)
    large = Detection(box=(0.0, 0.0, 30.0, 30.0), score=0.93)
    doubtful = Detection(box=(0.0, 0.0, 60.0, 60.0), score=0.6)
    assert main_face([small, large]) is large
    assert main_face([small, doubtful]) is small
    assert main_face([]) is None


def test_crop_template_is_a_level_frontal_face() -> None:
    kp = CANONICAL_KEYPOINTS
    assert np.all((kp > 0) & (kp < 1))
    assert kp[0, 1] == pytest.approx(kp[1, 1]) and kp[0, 0] < 0.5 < kp[1, 0]
    assert kp[0, 0] + kp[1, 0] == pytest.approx(1.0)
    assert kp[1, 1] < kp[2, 1] < kp[3, 1]
    assert kp[4, 0] < kp[0, 0] and kp[5, 0] > kp[1, 0]
    np.testing.assert_allclose(canonical_keypoints((10.0, 20.0, 110.0, 70.0))[0],
                               [10 + 100 * kp[0, 0], 20 + 50 * kp[0, 1]], rtol=1e-6)


def test_template_mask_covers_the_mouth_of_a_ready_made_crop() -> None:
    crop = np.full((48, 48, 3), 160, np.uint8)
    kp = canonical_keypoints((0.0, 0.0, 48.0, 48.0))
    alpha = render_mask(crop, kp, rng=0, style="surgical").alpha
    mouth, eye = kp[3].round().astype(int), kp[0].round().astype(int)
    assert alpha[mouth[1], mouth[0]] > 0.9 and alpha[eye[1], eye[0]] < 0.05


def test_serving_detector_finds_synthetic_faces_where_the_generator_put_them() -> None:
    """The generator's box / keypoint convention is BlazeFace's (what serving will crop)."""
    detector = default_detector()
    for record in generate_faces(2, 2, 96, seed=11):
        found = main_face(detector.detect(np.ascontiguousarray(record.pixels)))
        assert found is not None
        truth = record.detection
        side = truth.width
        assert np.abs(np.array(found.box) - np.array(truth.box)).max() < 0.15 * side
        eyes_nose_mouth = np.abs(found.keypoints[:4] - truth.keypoints[:4]).max()
        assert eyes_nose_mouth < 0.08 * side
