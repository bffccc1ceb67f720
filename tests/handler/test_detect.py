"""FaceDetector on real public-domain photos and images generated from them."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pydantic
import pytest

from handler.align import roll_angle
from handler.candidates import Candidates, iou_matrix, suppress_nested, weighted_nms
from handler.detect import (
    MODEL_FILES,
    DetectorConfig,
    FaceDetector,
    letterbox_matrix,
    rotation_matrix,
    tile_regions,
)
from handler.faces import Detection
from training.assets import fetch
from training.masks import MASK_STYLES, render_mask

# Eileen Collins' face in skimage's 512x512 astronaut, located by eye on the photo:
# eyebrows to chin, ear to ear.
ASTRONAUT_FACE = (176.0, 77.0, 274.0, 176.0)
BOX_TOLERANCE = 12.0  # px, per edge


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return fetch("blazeface") / "ONNX"


@pytest.fixture(scope="module")
def detector(model_dir: Path) -> FaceDetector:
    return FaceDetector(model_dir)


def centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return float(iou_matrix(np.array([a]), np.array([b]))[0, 0])


def face_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float
              ) -> np.ndarray:
    """The face box grown by ``margin`` box sides on every side, as a square crop."""
    c = centre(box)
    half = max(box[2] - box[0], box[3] - box[1]) * (0.5 + margin)
    x1, y1 = (c - half).astype(int)
    x2, y2 = (c + half).astype(int)
    return image[max(0, y1):y2, max(0, x1):x2]


def test_astronaut_has_one_face_with_keypoints_in_face_order(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert np.allclose(face.box, ASTRONAUT_FACE, atol=BOX_TOLERANCE), face.box
    assert face.score >= detector.config.score_threshold
    kp = face.keypoints
    assert kp is not None and kp.shape == (6, 2) and kp.dtype == np.float32
    right_eye, left_eye, nose, mouth, right_ear, left_ear = kp
    # subject's right eye and ear appear on the image's left
    assert right_eye[0] < nose[0] < left_eye[0]
    assert right_ear[0] < right_eye[0] and left_eye[0] < left_ear[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]


def test_grace_hopper_has_one_face(detector: FaceDetector, grace_hopper: np.ndarray) -> None:
    faces = detector.detect(grace_hopper)
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0].box
    h, w = grace_hopper.shape[:2]
    # her face is in the upper middle of the portrait, well above the uniform's insignia
    assert w * 0.2 < x1 < x2 < w * 0.8 and y2 < h * 0.65
    assert 0.2 * w < x2 - x1 < 0.6 * w


def _no_face_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, 640, dtype=np.float32)
    gradient = np.broadcast_to(ramp[None, :, None], (480, 640, 3)).astype(np.uint8)
    return {
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "smooth-noise": cv2.GaussianBlur(
            rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 6
        ),
        "gradient": np.ascontiguousarray(gradient),
        "flat-grey": np.full((480, 640, 3), 128, np.uint8),
        "black": np.zeros((300, 200, 3), np.uint8),
        "one-pixel": np.full((1, 1, 3), 200, np.uint8),
    }


@pytest.mark.parametrize("name", list(_no_face_images()))
def test_image_without_faces_gives_no_detections(detector: FaceDetector, name: str) -> None:
    assert detector.detect(_no_face_images()[name]) == []


@pytest.fixture(scope="module")
def collage(astronaut: np.ndarray, grace_hopper: np.ndarray
            ) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """Four real face crops of different sizes pasted onto a grey 800x600 canvas, and the
    regions they were pasted into."""
    gh_face = FaceDetector(fetch("blazeface") / "ONNX").detect(grace_hopper)[0].box
    crops = [
        (face_crop(astronaut, ASTRONAUT_FACE, 0.6), (40, 40), 220),
        (face_crop(grace_hopper, gh_face, 0.6), (480, 60), 260),
        (face_crop(astronaut[:, ::-1], (512 - ASTRONAUT_FACE[2], ASTRONAUT_FACE[1],
                                        512 - ASTRONAUT_FACE[0], ASTRONAUT_FACE[3]), 0.6),
         (100, 360), 160),
        (face_crop(grace_hopper, gh_face, 0.6), (520, 400), 140),
    ]
    canvas = np.full((600, 800, 3), 90, np.uint8)
    regions = []
    for crop, (x, y), side in crops:
        canvas[y:y + side, x:x + side] = cv2.resize(crop, (side, side),
                                                    interpolation=cv2.INTER_AREA)
        regions.append((float(x), float(y), float(x + side), float(y + side)))
    return canvas, regions


def test_pasted_faces_are_each_found_where_they_were_pasted(
    detector: FaceDetector,
    collage: tuple[np.ndarray, list[tuple[float, float, float, float]]],
) -> None:
    canvas, regions = collage
    faces = detector.detect(canvas)
    assert len(faces) == len(regions)
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    for region in regions:
        # each pasted square holds exactly one detected face, centred in it
        inside = [f for f in faces if np.abs(centre(f.box) - centre(region)).max()
                  < 0.15 * (region[2] - region[0])]
        assert len(inside) == 1, region
        # the face is 1 / (1 + 2 * 0.6) of the crop side
        side = inside[0].width
        assert 0.3 < side / (region[2] - region[0]) < 0.65


def test_max_faces_keeps_the_best_scoring(
    model_dir: Path, collage: tuple[np.ndarray, list[tuple[float, float, float, float]]]
) -> None:
    canvas, _ = collage
    every = FaceDetector(model_dir).detect(canvas)
    top2 = FaceDetector(model_dir, DetectorConfig(max_faces=2)).detect(canvas)
    assert [f.score for f in top2] == [f.score for f in every[:2]]


def test_faces_smaller_than_min_face_size_are_dropped(
    model_dir: Path, astronaut: np.ndarray
) -> None:
    side = ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]
    assert len(FaceDetector(model_dir, DetectorConfig(min_face_size=int(side * 0.7)))
               .detect(astronaut)) == 1
    assert FaceDetector(model_dir, DetectorConfig(min_face_size=int(side * 1.5))
                        ).detect(astronaut) == []


@pytest.mark.parametrize("style", [*MASK_STYLES, "black-cloth"])
def test_masked_face_is_still_detected(
    detector: FaceDetector, astronaut: np.ndarray, style: str
) -> None:
    bare = detector.detect(astronaut)[0]
    assert bare.keypoints is not None
    if style == "black-cloth":
        masked = render_mask(astronaut, bare.keypoints, rng=3, style="cloth", color=(28, 28, 30))
    else:
        masked = render_mask(astronaut, bare.keypoints, rng=3, style=style)
    # the mask really hides the lower face
    mouth = bare.keypoints[3].round().astype(int)
    assert masked.alpha[mouth[1], mouth[0]] > 0.9
    faces = detector.detect(masked.image)
    # her face is the best detection; a weak second one on the dark suit collar may come
    # through close-up verification (known, documented false positive)
    assert 1 <= len(faces) <= 2
    assert iou(faces[0].box, bare.box) >= 0.5
    assert all(iou(f.box, bare.box) < 0.1 for f in faces[1:])


@pytest.mark.parametrize("degrees", [-30.0, 30.0])
def test_rolled_face_is_found_and_keypoints_turn_with_it(
    detector: FaceDetector, astronaut: np.ndarray, degrees: float
) -> None:
    bare = detector.detect(astronaut)[0]
    m, w, h = rotation_matrix(astronaut.shape[:2], degrees)
    rolled = cv2.warpAffine(astronaut, m, (w, h))
    faces = detector.detect(rolled)
    assert len(faces) == 1
    face = faces[0]
    moved = m[:, :2] @ centre(bare.box) + m[:, 2]
    assert np.linalg.norm(centre(face.box) - moved) < 0.15 * bare.width
    # counter-clockwise on screen lifts the eye line's right end: roll = -degrees
    assert math.degrees(roll_angle(face.keypoints)) == pytest.approx(
        math.degrees(roll_angle(bare.keypoints)) - degrees, abs=8.0
    )
    expected_kp = bare.keypoints @ m[:, :2].T + m[:, 2]
    assert face.keypoints is not None
    assert np.abs(face.keypoints[:4] - expected_kp[:4]).max() < 0.15 * bare.width


def test_grey_photo_converted_to_rgb_is_detected(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    faces = detector.detect(np.dstack([grey, grey, grey]))
    assert 1 <= len(faces) <= 2  # see test_masked_face_is_still_detected on the collar
    assert np.allclose(faces[0].box, ASTRONAUT_FACE, atol=BOX_TOLERANCE)
    assert faces[0].score > 0.8


def test_face_cut_by_the_border_gets_a_box_inside_the_image(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    # crop through the middle of her face: the box must be clipped, not run off the image
    x_cut = int((ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2 - 15)
    part = np.ascontiguousarray(astronaut[20:300, x_cut:])
    faces = detector.detect(part)
    assert faces, "the cut face must still be found for its box to be checked"
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert 0.0 <= x1 < x2 <= part.shape[1] and 0.0 <= y1 < y2 <= part.shape[0]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((0, 64, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
    ids=["grey-2d", "rgba", "float", "empty", "list"],
)
def test_invalid_image_raises_value_error(detector: FaceDetector, bad: object) -> None:
    with pytest.raises(ValueError, match="image"):
        detector.detect(bad)  # type: ignore[arg-type]


def test_config_rejects_unknown_and_out_of_range_options() -> None:
    with pytest.raises(pydantic.ValidationError):
        DetectorConfig(scor_threshold=0.4)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        DetectorConfig(rotations=(0.0, 270.0))
    with pytest.raises(pydantic.ValidationError):
        DetectorConfig(models=("side",))  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        DetectorConfig(score_threshold=1.5)


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="face_detection"):
        FaceDetector(tmp_path)


def test_weighted_nms_blends_overlaps_and_keeps_separate_faces() -> None:
    kp = np.zeros((3, 6, 2), np.float32)
    kp[1] += 10.0
    cands = Candidates(
        centres=np.array([[100, 100], [110, 100], [400, 400]], np.float32),
        sizes=np.array([[50, 50], [50, 50], [60, 60]], np.float32),
        keypoints=kp,
        scores=np.array([0.9, 0.3, 0.6], np.float32),
    )
    out = weighted_nms(cands, 0.3)
    assert len(out) == 2
    assert out.scores.tolist() == pytest.approx([0.9, 0.6])
    # score-weighted mean: (0.9 * 100 + 0.3 * 110) / 1.2
    assert out.centres[0].tolist() == pytest.approx([102.5, 100.0])
    assert out.keypoints[0, 0].tolist() == pytest.approx([2.5, 2.5])
    assert out.centres[1].tolist() == pytest.approx([400.0, 400.0])


@pytest.mark.parametrize("shape", [(480, 640), (1280, 1920), (100, 1000), (700, 300)])
@pytest.mark.parametrize("n", [2, 3])
def test_tiles_cover_the_whole_image(shape: tuple[int, int], n: int) -> None:
    h, w = shape
    covered = np.zeros(shape, bool)
    for x1, y1, x2, y2 in tile_regions(shape, n):
        assert x2 - x1 == pytest.approx(y2 - y1)
        covered[max(0, int(y1)):int(math.ceil(y2)), max(0, int(x1)):int(math.ceil(x2))] = True
    assert covered.all()


def test_detections_are_plain_face_records(detector: FaceDetector, astronaut: np.ndarray) -> None:
    face = detector.detect(astronaut)[0]
    assert isinstance(face, Detection)
    assert all(isinstance(v, float) for v in face.box)
    assert isinstance(face.score, float)


def test_box_around_a_better_face_is_suppressed() -> None:
    cands = Candidates(
        centres=np.array([[200, 200], [210, 190], [500, 200]], np.float32),
        sizes=np.array([[100, 100], [260, 260], [100, 100]], np.float32),
        keypoints=np.zeros((3, 6, 2), np.float32),
        scores=np.array([0.9, 0.75, 0.6], np.float32),
    )
    # the big box holds the first face entirely but overlaps it by IoU 0.15 only
    assert iou_matrix(cands.boxes()[:1], cands.boxes()[1:2])[0, 0] < 0.3
    out = suppress_nested(cands, 0.6)
    assert out.scores.tolist() == pytest.approx([0.9, 0.6])


def test_threshold_below_the_verification_band_reports_candidates_directly(
    model_dir: Path, astronaut: np.ndarray
) -> None:
    # users lower score_threshold in model-config.yaml without touching the detector's
    # internal candidate_threshold: no validation error, no verification needed
    cfg = DetectorConfig(score_threshold=0.2)
    assert not cfg.verifies()
    faces = FaceDetector(model_dir, cfg).detect(astronaut)
    assert faces and np.allclose(faces[0].box, ASTRONAUT_FACE, atol=BOX_TOLERANCE)
    assert all(f.score >= 0.2 for f in faces)


@pytest.fixture(scope="module")
def free_size_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry back model re-exported with a free input size under the 'masked' name:
    the serving path of the built masked model, without training one."""
    from training.detector.blazeface import export_onnx, load_onnx

    out = tmp_path_factory.mktemp("free_size")
    export_onnx(load_onnx(model_dir / MODEL_FILES["back"]), out / MODEL_FILES["masked"])
    return out


ONE_PASS = DetectorConfig(models=("masked",), rotations=(0.0,), candidate_threshold=0.5)


def test_free_size_model_sees_a_landscape_photo_unpadded_and_finds_the_face(
    free_size_dir: Path, astronaut: np.ndarray
) -> None:
    # the astronaut on the left of a 640x480 frame: seen at 256x192, no letterbox bands
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, :480] = cv2.resize(astronaut, (480, 480), interpolation=cv2.INTER_AREA)
    det = FaceDetector(free_size_dir, ONE_PASS)
    assert det._models["masked"].input_hw((480, 640)) == (192, 256)
    assert det._models["masked"].input_hw((640, 480)) == (256, 192)
    faces = det.detect(frame)
    assert len(faces) == 1
    expected = np.array(ASTRONAUT_FACE) * (480 / 512)
    assert np.allclose(faces[0].box, expected, atol=BOX_TOLERANCE), faces[0].box


@pytest.mark.parametrize("config", [ONE_PASS, DetectorConfig()], ids=["masked", "default"])
def test_detect_many_gives_what_detect_gives_image_by_image(
    free_size_dir: Path, model_dir: Path, config: DetectorConfig, astronaut: np.ndarray,
    grace_hopper: np.ndarray,
    collage: tuple[np.ndarray, list[tuple[float, float, float, float]]],
) -> None:
    folder = free_size_dir if "masked" in config.models else model_dir
    det = FaceDetector(folder, config)
    images = [astronaut, grace_hopper, collage[0], astronaut[::2, ::2].copy(),
              np.zeros((64, 64, 3), np.uint8)]
    many = det.detect_many(images)
    assert [len(m) for m in many][:4] == [1, 1, 4, 1]
    for found, image in zip(many, images):
        one = det.detect(image)
        assert len(found) == len(one)
        for a, b in zip(found, one):
            assert np.allclose(a.box, b.box, atol=0.05) and a.score == pytest.approx(b.score,
                                                                                      abs=1e-4)


def test_detect_many_refuses_a_bad_image_among_good_ones(
    detector: FaceDetector, astronaut: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="image"):
        detector.detect_many([astronaut, np.zeros((8, 8), np.uint8)])


@pytest.mark.parametrize("size_hw", [(256, 256), (192, 256), (256, 160)])
def test_letterbox_fits_the_region_centred_with_its_aspect(size_hw: tuple[int, int]) -> None:
    m = letterbox_matrix((0.0, 0.0, 640.0, 480.0), size_hw)
    corners = np.array([[0.0, 0.0], [640.0, 480.0]]) @ m[:, :2].T + m[:, 2]
    (x1, y1), (x2, y2) = corners
    h, w = size_hw
    assert (x2 - x1) / (y2 - y1) == pytest.approx(640 / 480)
    assert x1 >= -1e-6 and y1 >= -1e-6 and x2 <= w + 1e-6 and y2 <= h + 1e-6
    assert (x1 + x2) / 2 == pytest.approx(w / 2) and (y1 + y2) / 2 == pytest.approx(h / 2)
    assert min(x1, y1, w - x2, h - y2) == pytest.approx(0.0, abs=1e-6)
