"""THE preprocessing: what decides how a face is cropped."""

from __future__ import annotations

import numpy as np

from handler.align import align_face, crop_matrix, face_input, whole_image_detection
from handler.contract import CropSpec, InputSpec
from handler.faces import Detection

SPEC = InputSpec(input_size=(3, 32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // w, y * 255 // h, np.full((h, w), 128)]).astype(np.uint8)


def test_whole_image_flag_resizes_the_image_as_it_is() -> None:
    image = _gradient(40, 80)  # not square: a square crop would cut or pad it
    det = whole_image_detection(image)
    assert det.whole_image
    m = crop_matrix(det, (32, 32), SPEC.crop)
    np.testing.assert_allclose(m, [[32 / 80, 0, 0], [0, 32 / 40, 0]])
    crop = align_face(image, det, (32, 32), SPEC.crop)
    assert crop[0, 0, 0] < 10 and crop[0, -1, 0] > 240  # left and right edges of the image


def test_the_same_box_without_the_flag_is_cropped_as_a_face() -> None:
    image = _gradient(40, 80)
    flagged = whole_image_detection(image)
    plain = Detection(box=flagged.box, score=flagged.score, keypoints=None)
    assert not plain.whole_image
    m = crop_matrix(plain, (32, 32), CropSpec(scale=1.25))
    # square, 1.25 x the longer side, centred on the box
    np.testing.assert_allclose(m[:, :2], np.eye(2) * 32 / 100)
    assert not np.array_equal(face_input(image, plain, SPEC), face_input(image, flagged, SPEC))
