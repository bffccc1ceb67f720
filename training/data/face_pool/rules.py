"""Which detections become pool faces, and whose they are.

A face is kept when it scores >= ``MIN_SCORE``, its box side is >= ``MIN_FACE_SIDE`` px, its
keypoints are laid out like a face (``plausible_keypoints``) and it is found again on an
upright close-up of itself (``closeup_confirms``). Near-identical faces of one person are
dropped (``face_signature``) and each person is capped (``cap_per_identity``), so a
talking-head video cannot outweigh the people seen once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from handler.align import align_face, roll_angle
from handler.contract import CropSpec
from handler.detect import DetectorConfig, FaceDetector, iou_matrix
from handler.faces import Detection
from training.assets import fetch
from training.data.face_pool.index import PoolFace
from training.data.face_pool.sources import Shot

MIN_SCORE = 0.6
MIN_FACE_SIDE = 40  # px, the shorter side of the detected box, in the image stored in the pool
# Two faces of one person whose aligned 24x24 grey crops correlate this much are one face.
DUPLICATE_CORRELATION = 0.95
SIGNATURE_SIZE = 24
TILE_ABOVE = 800  # px: photos larger than this are also searched tile by tile
# Close-up confirmation: the face, cut out upright at twice its box and shown to the front
# model at its native 128 px, must be found again with this score and overlap. Set from the
# scores of the faces seen on the contact sheets: false and badly boxed faces score 0-0.40,
# real ones >= 0.46 (1st percentile 0.23 before the check, all of those bad boxes).
CLOSEUP_SIZE = 128
CLOSEUP_CROP = CropSpec(scale=2.0, shift_y=0.0, rotate=True)
CLOSEUP_MIN_SCORE = 0.45
CLOSEUP_MIN_IOU = 0.4

Detect = Callable[[np.ndarray], list[Detection]]


def plausible_keypoints(det: Detection) -> bool:
    """Whether the six keypoints are laid out like a face seen roughly from the front.

    In the face's own upright frame (roll undone): the eyes are apart by a plausible share
    of the box width, the nose lies below the eyes and the mouth below the nose, and all
    points sit in (a margin around) the box. Texture that fooled the detector rarely passes.
    """
    if det.keypoints is None:
        return False
    kps = np.asarray(det.keypoints, dtype=np.float64)
    angle = roll_angle(kps)
    if abs(math.degrees(angle)) > 50.0:
        return False
    c, s = math.cos(-angle), math.sin(-angle)
    rot = kps @ np.array([[c, s], [-s, c]])
    eye_r, eye_l, nose, mouth = rot[0], rot[1], rot[2], rot[3]
    eye_dist = float(eye_l[0] - eye_r[0])
    side = max(det.width, det.height)
    if not 0.2 * side <= eye_dist <= 0.75 * side:
        return False
    eye_y = (eye_r[1] + eye_l[1]) / 2.0
    if not nose[1] - eye_y >= 0.15 * eye_dist:
        return False
    if not mouth[1] - nose[1] >= 0.1 * eye_dist:
        return False
    if not 0.6 * eye_dist <= mouth[1] - eye_y <= 1.8 * eye_dist:
        return False
    x1, y1, x2, y2 = det.box
    m = 0.25 * side
    inside = (kps[:4, 0] >= x1 - m) & (kps[:4, 0] <= x2 + m) & (kps[:4, 1] >= y1 - m) & (
        kps[:4, 1] <= y2 + m
    )
    return bool(inside.all())


def face_signature(image: np.ndarray, det: Detection) -> np.ndarray:
    """Unit-norm, zero-mean grey aligned crop: the dot product of two is their correlation."""
    crop = align_face(image, det, (SIGNATURE_SIZE, SIGNATURE_SIZE), CropSpec())
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 0 else grey


def keep_faces(dets: Sequence[Detection]) -> list[Detection]:
    """The detections good enough for the pool (score, size, keypoint layout)."""
    return [
        d
        for d in dets
        if d.score >= MIN_SCORE
        and min(d.width, d.height) >= MIN_FACE_SIDE
        and plausible_keypoints(d)
    ]


def name_faces(dets: Sequence[Detection], shot: Shot, source: str) -> list[tuple[Detection, str]]:
    """Pair the kept faces of one image with identities (see ``Shot``)."""
    by_size = sorted(dets, key=lambda d: (-d.width * d.height, d.box))
    if len(shot.people) == 1:
        return [(by_size[0], shot.people[0])] if by_size else []
    if shot.people:
        if len(by_size) < len(shot.people):
            return []
        chosen = sorted(by_size[: len(shot.people)], key=lambda d: d.box[0])
        return list(zip(chosen, shot.people, strict=True))
    ordered = sorted(dets, key=lambda d: (d.box[0], d.box[1]))
    return [(d, f"{source}/{shot.stem}#{i}") for i, d in enumerate(ordered)]


def evenly_spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def cap_per_identity(faces: Sequence[PoolFace], limit: int) -> list[PoolFace]:
    """At most ``limit`` faces per identity, spread over its faces in pool order."""
    positions: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(faces):
        positions[f.identity].append(i)
    keep: set[int] = set()
    for idx in positions.values():
        keep.update(idx[j] for j in evenly_spaced(len(idx), limit))
    return [f for i, f in enumerate(faces) if i in keep]


def closeup_confirms(image: np.ndarray, det: Detection, closeup: FaceDetector) -> bool:
    """Whether the face is found again, where expected, on an upright close-up of itself.

    A second look at the scale the front model knows best (like ``FaceDetector``'s own
    verification of weak candidates, but for every face): clouds and textures that scored
    well once, and boxes spanning several faces or cutting a face off, are not re-found
    centred at half the close-up's side.
    """
    crop = align_face(image, det, (CLOSEUP_SIZE, CLOSEUP_SIZE), CLOSEUP_CROP)
    quarter = CLOSEUP_SIZE / 4.0
    expected = np.array([[quarter, quarter, 3 * quarter, 3 * quarter]])
    for again in closeup.detect(crop):
        if (
            again.score >= CLOSEUP_MIN_SCORE
            and iou_matrix(expected, np.array([again.box]))[0, 0] >= CLOSEUP_MIN_IOU
        ):
            return True
    return False


def pool_detector() -> Detect:
    """Faces good enough for the pool: detected (tiles too on big photos), ``keep_faces``
    filtered, then confirmed on a close-up (``closeup_confirms``)."""
    model_dir = fetch("blazeface") / "ONNX"
    plain = DetectorConfig(score_threshold=MIN_SCORE, min_face_size=MIN_FACE_SIDE)
    whole = FaceDetector(model_dir, plain, threads=1)
    tiled = FaceDetector(model_dir, plain.model_copy(update={"tiles": 3}), threads=1)
    closeup = FaceDetector(
        model_dir,
        DetectorConfig(score_threshold=0.3, candidate_threshold=0.3, min_face_size=0,
                       models=("front",), rotations=(0.0,)),
        threads=1,
    )

    def detect(image: np.ndarray) -> list[Detection]:
        found = (tiled if max(image.shape[:2]) > TILE_ABOVE else whole).detect(image)
        return [d for d in keep_faces(found) if closeup_confirms(image, d, closeup)]

    return detect
