"""PairedFaceDataset: shapes per spec, masks only below the eyes, one augmentation per pair."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from handler.align import crop_matrix, face_input, transform_points
from handler.faces import Detection
from handler.contract import InputSpec
from training.data import Augmentation, FaceRecord, PairedFaceDataset, generate_faces
from training.data.dataset import augment_pair, flip_detection
from training.data.detections import CANONICAL_KEYPOINTS
from training.masks import MASK_STYLES, render_mask

SPEC = InputSpec(input_size=(3, 64, 64), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
TEACHER = InputSpec(input_size=(1, 48, 48), mean=(0.0,), std=(1.0,))
NO_AUG = Augmentation(flip_p=0.0, max_rotate_deg=0.0, scale=(1.0, 1.0), max_shift=0.0,
                      brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0))


@pytest.fixture(scope="module")
def records() -> list[FaceRecord]:
    return generate_faces(3, 4, 96, seed=0)


def eye_row(record: FaceRecord, spec: InputSpec) -> float:
    """Where the eye line lands in the crop (rows), unaugmented."""
    det = record.detection
    m = crop_matrix(det, spec.input_size[1:], spec.crop)
    return float(transform_points(det.keypoints, m)[:2, 1].min())


def test_items_have_the_specs_shapes_and_types(records: list[FaceRecord]) -> None:
    ds = PairedFaceDataset(records, SPEC, teacher_spec=TEACHER)
    item = ds[5]
    assert item["unmasked"].shape == item["masked"].shape == (3, 64, 64)
    assert item["teacher_unmasked"].shape == item["teacher_masked"].shape == (1, 48, 48)
    for key in ("unmasked", "masked", "teacher_unmasked", "teacher_masked"):
        assert item[key].dtype == torch.float32 and torch.isfinite(item[key]).all()
    assert item["label"].dtype == torch.long and item["label"].item() == records[5].label
    assert ds.subjects[item["subject"].item()] == records[5].subject
    assert item["index"].item() == 5
    assert len(ds) == len(records)


def test_teacher_views_are_absent_without_teacher_spec(records: list[FaceRecord]) -> None:
    assert set(PairedFaceDataset(records, SPEC)[0]) == {
        "unmasked", "masked", "label", "subject", "index"
    }


def test_synthetic_mask_changes_only_the_lower_face(records: list[FaceRecord]) -> None:
    ds = PairedFaceDataset(records, SPEC, seed=4)
    for i in range(len(records)):
        item = ds[i]
        diff = (item["unmasked"] - item["masked"]).abs().amax(dim=0)
        top = int(eye_row(records[i], SPEC)) - 2
        assert top > 10
        assert diff[:top].max() == 0, "pixels above the eyes changed"
        mouth = transform_points(
            records[i].detection.keypoints,
            crop_matrix(records[i].detection, (64, 64), SPEC.crop),
        )[3]
        y, x = int(mouth[1]), int(mouth[0])
        assert diff[y - 2 : y + 3, x - 2 : x + 3].mean() > 0.3, "the mouth is not covered"


def test_both_images_of_a_pair_get_the_same_augmentation(records: list[FaceRecord]) -> None:
    plain = PairedFaceDataset(records, SPEC, seed=1)
    augmented = PairedFaceDataset(records, SPEC, seed=1, augment=True, teacher_spec=TEACHER)
    rows = int(0.2 * 64)
    changed = 0
    for i in range(len(records)):
        item = augmented[i]
        # forehead rows: above the eyes whatever the rotation / scale / shift drawn
        assert torch.equal(item["unmasked"][:, :rows], item["masked"][:, :rows])
        assert torch.equal(item["teacher_unmasked"][:, :9], item["teacher_masked"][:, :9])
        changed += not torch.equal(item["unmasked"], plain[i]["unmasked"])
    assert changed == len(records)


def test_items_are_deterministic_per_seed_index_and_epoch(records: list[FaceRecord]) -> None:
    a = PairedFaceDataset(records, SPEC, seed=3, augment=True)
    b = PairedFaceDataset(records, SPEC, seed=3, augment=True)
    for key in ("unmasked", "masked"):
        assert torch.equal(a[2][key], b[2][key])
    first = a[2]
    a.set_epoch(1)
    second = a[2]
    assert not torch.equal(first["unmasked"], second["unmasked"])  # new augmentation
    assert not torch.equal(first["masked"], second["masked"])
    a.set_epoch(0)
    assert torch.equal(a[2]["masked"], first["masked"])
    other = PairedFaceDataset(records, SPEC, seed=4, augment=True)
    assert not torch.equal(other[2]["unmasked"], first["unmasked"])


def test_flip_keeps_the_subjects_right_eye_first() -> None:
    kp = np.array([[30, 40], [60, 41], [45, 55], [45, 70], [15, 45], [75, 45]], np.float32)
    det = Detection(box=(10.0, 20.0, 80.0, 90.0), score=0.9, keypoints=kp)
    flipped = flip_detection(det, 100)
    assert flipped.box == (20.0, 20.0, 90.0, 90.0)
    assert flipped.keypoints[0, 0] < flipped.keypoints[1, 0]  # right eye still image-left
    np.testing.assert_allclose(flipped.keypoints[0], [100 - 60, 41])
    np.testing.assert_allclose(flipped.keypoints[4], [100 - 75, 45])
    assert flip_detection(flipped, 100).box == det.box


def test_flip_mirrors_the_crop(records: list[FaceRecord]) -> None:
    record = records[0]
    image = record.pixels
    flip_only = NO_AUG.model_copy(update={"flip_p": 1.0})
    (flipped,), det = augment_pair([image], record.detection, np.random.default_rng(0), flip_only)
    original = face_input(image, record.detection, SPEC)
    mirrored = face_input(flipped, det, SPEC)
    assert np.abs(mirrored - original[:, :, ::-1]).mean() < 0.2 * np.abs(mirrored - original).mean()


def test_whole_image_augmentation_warps_the_image() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = 255
    rotate = NO_AUG.model_copy(update={"max_rotate_deg": 20.0})
    det = Detection(box=(0.0, 0.0, 40.0, 40.0), score=1.0)
    (out,), new_det = augment_pair([image], det, np.random.default_rng(1), rotate)
    assert new_det == det
    assert not np.array_equal(out, image)


def test_real_masked_twin_is_used_when_present(tmp_path: Path, records: list[FaceRecord]) -> None:
    r = records[0]
    masked = render_mask(r.pixels, r.detection.keypoints, rng=0, style="surgical").image
    Image.fromarray(r.pixels).save(tmp_path / "a.png")
    Image.fromarray(masked).save(tmp_path / "a_masked.png")
    record = FaceRecord(label=r.label, subject="x", image_path=tmp_path / "a.png",
                        masked_path=tmp_path / "a_masked.png", detection=r.detection)
    item = PairedFaceDataset([record], SPEC)[0]
    expected = face_input(masked, r.detection, SPEC)
    assert np.array_equal(item["masked"].numpy(), expected)


def test_ready_made_crop_gets_a_mask_from_the_template() -> None:
    face = generate_faces(1, 1, 96)[0]
    crop = face_input(face.pixels, face.detection, InputSpec(
        input_size=(3, 48, 48), mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255)))
    pixels = np.ascontiguousarray(crop.transpose(1, 2, 0).round().astype(np.uint8))
    record = FaceRecord(label=3, subject="fer-like", pixels=pixels)  # no detection
    item = PairedFaceDataset([record], SPEC, seed=2)[0]
    diff = (item["unmasked"] - item["masked"]).abs().amax(dim=0)
    eye_y = CANONICAL_KEYPOINTS[0, 1] * 64
    mouth_y = int(CANONICAL_KEYPOINTS[3, 1] * 64)
    assert diff[: int(eye_y) - 3].max() == 0
    assert diff[mouth_y - 2 : mouth_y + 3, 28:36].mean() > 0.3


class CountingFinder:
    """A stand-in detector that reports a fixed face (or none) and counts its calls."""

    def __init__(self, found: list[Detection]) -> None:
        self.found = found
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.found


def test_detector_runs_once_per_image(records: list[FaceRecord]) -> None:
    bare = [replace(r, detection=None) for r in records[:2]]
    finder = CountingFinder([records[0].detection])
    ds = PairedFaceDataset(bare, SPEC, detector=finder)
    first = ds[0]
    ds[0]
    ds[1]
    assert finder.calls == 2
    reference = PairedFaceDataset(records[:1], SPEC)[0]
    assert torch.equal(first["unmasked"], reference["unmasked"])


def test_images_without_a_face_are_used_whole_and_counted(records: list[FaceRecord]) -> None:
    bare = [replace(r, detection=None) for r in records[:3]]
    ds = PairedFaceDataset(bare, SPEC, detector=CountingFinder([]))
    for i in range(3):
        ds[i]
    assert ds.whole_image_fallbacks == 3


def test_unknown_mask_style_is_rejected(records: list[FaceRecord]) -> None:
    with pytest.raises(ValueError, match="mask_styles"):
        PairedFaceDataset(records, SPEC, mask_styles=("bandana",))


def test_mask_styles_restrict_the_synthetic_masks(records: list[FaceRecord]) -> None:
    a = PairedFaceDataset(records[:1], SPEC, mask_styles=("n95",))[0]["masked"]
    b = PairedFaceDataset(records[:1], SPEC, mask_styles=("cloth",))[0]["masked"]
    assert not torch.equal(a, b)


def test_worker_processes_give_the_same_batches(records: list[FaceRecord]) -> None:
    ds = PairedFaceDataset(records, SPEC, augment=True, seed=7)
    ds.set_epoch(2)
    serial = list(DataLoader(ds, batch_size=4, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=4, num_workers=2))
    for x, y in zip(serial, parallel, strict=True):
        assert set(x) == set(y)
        for key in x:
            assert torch.equal(x[key], y[key])


def test_geometry_only_augmentation_leaves_the_pixels_alone(records: list[FaceRecord]) -> None:
    image = records[0].pixels
    (same,), det = augment_pair([image], records[0].detection, np.random.default_rng(0), NO_AUG)
    assert np.array_equal(same, image) and det.box == pytest.approx(records[0].detection.box)


def test_grey_photos_have_equal_channels(records: list[FaceRecord]) -> None:
    grey = NO_AUG.model_copy(update={"grey_p": 1.0})
    (out,), _ = augment_pair([records[0].pixels], records[0].detection,
                             np.random.default_rng(0), grey)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert not np.array_equal(out, records[0].pixels)


def test_blur_scales_with_the_face_and_smooths_it(records: list[FaceRecord]) -> None:
    image = records[0].pixels
    blur = NO_AUG.model_copy(update={"blur_p": 1.0, "blur_sigma": (0.03, 0.03)})
    (out,), _ = augment_pair([image], records[0].detection, np.random.default_rng(0), blur)

    def edges(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(np.float64), axis=1)).mean())

    assert edges(out) < 0.8 * edges(image)
    assert abs(out.astype(np.float64).mean() - image.mean()) < 2.0  # blur keeps the exposure


def test_jpeg_reencoding_loses_detail_but_keeps_the_picture(records: list[FaceRecord]) -> None:
    image = records[0].pixels
    jpeg = NO_AUG.model_copy(update={"jpeg_p": 1.0, "jpeg_quality": (20, 20)})
    (out,), _ = augment_pair([image], records[0].detection, np.random.default_rng(0), jpeg)
    err = np.abs(out.astype(np.float64) - image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert 0.5 < err.mean() < 15.0


def test_photometric_augmentation_leaves_the_pair_equal_above_the_mask(
    records: list[FaceRecord],
) -> None:
    camera = Augmentation(grey_p=0.5, blur_p=1.0, jpeg_p=1.0)
    ds = PairedFaceDataset(records, SPEC, seed=2, augment=True, augmentation=camera)
    rows = int(0.2 * 64)
    for i in range(len(records)):
        item = ds[i]
        assert torch.equal(item["unmasked"][:, :rows], item["masked"][:, :rows])


@pytest.mark.parametrize("bad", [{"jpeg_quality": (0, 50)}, {"jpeg_quality": (90, 30)},
                                 {"blur_sigma": (0.0, 0.02)}, {"grey_p": 1.5}])
def test_invalid_photometric_ranges_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        Augmentation(**bad)


def test_a_face_shows_every_mask_style_over_as_many_epochs(records: list[FaceRecord]) -> None:
    ds = PairedFaceDataset(records, SPEC, seed=5)
    for i in range(len(records)):
        assert sorted(ds.mask_style(i, e) for e in range(3, 3 + len(MASK_STYLES))) == sorted(
            MASK_STYLES)
    unaugmented = [ds.mask_style(i, 0) for i in range(len(records))]
    assert len(set(unaugmented)) > 1  # faces start from different styles
    only = PairedFaceDataset(records, SPEC, seed=5, mask_styles=("n95", "cloth"))
    assert {only.mask_style(0, e) for e in range(4)} == {"n95", "cloth"}
