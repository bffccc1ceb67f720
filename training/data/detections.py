"""Where the face is in a training image: given, detected once and cached, or the whole image.

Training crops faces exactly as serving does (``handler.align.face_input``), so real photos
need the same detector output serving would compute. Detection is the slow part of data
loading, so each image is detected once and the result cached on disk, keyed by the image
bytes and the detector configuration (a changed detector invalidates the cache by itself).
Images where nothing is found are taken to be ready-made face crops (FER2013, aligned
RAF-DB) and used whole; how many is counted and logged, because a large count usually
means a wrong data set or detector setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from handler.align import whole_image_detection
from handler.faces import Detection
from training.data.images import load_rgb
from training.data.records import FaceRecord
from training.masks import FACE_POINTS

LOG = logging.getLogger(__name__)

# Where the six keypoints sit in a ready-made face crop, as fractions of its width / height.
# The mask renderer's canonical head (``training.masks.FACE_POINTS``, inter-ocular units,
# checked against BlazeFace on frontal photos) placed as public expression crops are cut:
# the face from brows to chin fills the square, eyes on a line at 38 % of the height and
# 36 % of the width apart (FER2013, RAF-DB aligned and AffectNet crops measure 0.33-0.40).
_TEMPLATE_IOD = 0.36
_TEMPLATE_EYE_Y = 0.38
CANONICAL_KEYPOINTS: np.ndarray = np.column_stack(
    [0.5 + FACE_POINTS[:, 0] * _TEMPLATE_IOD, _TEMPLATE_EYE_Y + FACE_POINTS[:, 1] * _TEMPLATE_IOD]
).astype(np.float32)


class FaceFinder(Protocol):
    """Anything with ``handler.detect.FaceDetector``'s ``detect``: faces, best first."""

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def canonical_keypoints(box: tuple[float, float, float, float]) -> np.ndarray:
    """Template keypoints (6, 2) of a face crop occupying ``box`` of an image."""
    x1, y1, x2, y2 = box
    return (CANONICAL_KEYPOINTS * np.array([x2 - x1, y2 - y1]) + np.array([x1, y1])).astype(
        np.float32
    )


def mask_keypoints(detection: Detection) -> np.ndarray:
    """Keypoints to draw a mask from: the detector's, else the crop template on the box."""
    if detection.keypoints is not None:
        return np.asarray(detection.keypoints, dtype=np.float32)
    return canonical_keypoints(detection.box)


def default_detector(cache_dir: Path | None = None) -> FaceFinder:
    """The serving detector (BlazeFace from the registry asset), default configuration."""
    from handler.detect import FaceDetector
    from training.assets import fetch

    return FaceDetector(fetch("blazeface", cache_dir) / "ONNX")


def main_face(detections: Sequence[Detection], score_margin: float = 0.9) -> Detection | None:
    """The face a single-face data set image is about.

    The largest face among those scoring at least ``score_margin`` x the best score: the
    subject is usually the biggest face, but a large low-scoring box is more often a false
    positive spanning two heads than a face.
    """
    if not detections:
        return None
    best = max(d.score for d in detections)
    strong = [d for d in detections if d.score >= score_margin * best]
    return max(strong, key=lambda d: d.width * d.height)


def detector_key(detector: FaceFinder) -> str:
    """Identity of a detector configuration, for cache keys."""
    config = getattr(detector, "config", None)
    text = config.model_dump_json() if hasattr(config, "model_dump_json") else repr(config)
    name = f"{type(detector).__module__}.{type(detector).__qualname__}"
    return hashlib.sha1(f"{name}|{text}".encode()).hexdigest()[:16]


def _to_json(d: Detection) -> dict[str, object]:
    kp = None if d.keypoints is None else np.asarray(d.keypoints).tolist()
    return {"box": list(d.box), "score": d.score, "keypoints": kp}


def _from_json(obj: dict[str, object]) -> Detection:
    kp = obj["keypoints"]
    box = tuple(float(v) for v in obj["box"])  # type: ignore[attr-defined]
    return Detection(
        box=box,  # type: ignore[arg-type]
        score=float(obj["score"]),  # type: ignore[arg-type]
        keypoints=None if kp is None else np.asarray(kp, dtype=np.float32),
    )


class DetectionCache:
    """One small JSON file per (image content, detector configuration): all faces found."""

    def __init__(self, root: Path, detector: FaceFinder) -> None:
        self.root = Path(root)
        self.detector_id = detector_key(detector)

    def _path(self, content_sha1: str) -> Path:
        return self.root / self.detector_id / content_sha1[:2] / f"{content_sha1}.json"

    def get(self, content_sha1: str) -> list[Detection] | None:
        """The faces found in that image, or ``None`` when it has not been detected yet."""
        path = self._path(content_sha1)
        if not path.is_file():
            return None
        try:
            return [_from_json(d) for d in json.loads(path.read_text())["faces"]]
        except (ValueError, KeyError, TypeError):
            LOG.warning("ignoring unreadable detection cache entry %s", path)
            return None

    def put(self, content_sha1: str, faces: Sequence[Detection]) -> None:
        path = self._path(content_sha1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"faces": [_to_json(d) for d in faces]}))
        tmp.replace(path)


def content_sha1(record: FaceRecord) -> str:
    """sha1 of the record's image file bytes, or of its in-memory pixels."""
    if record.image_path is not None:
        return hashlib.sha1(Path(record.image_path).read_bytes()).hexdigest()
    assert record.pixels is not None
    px = np.ascontiguousarray(record.pixels)
    return hashlib.sha1(f"{px.shape}".encode() + px.tobytes()).hexdigest()


@dataclass(frozen=True)
class DetectionStats:
    """How the records' faces were found."""

    given: int = 0
    detected: int = 0
    cached: int = 0
    whole_image: int = 0


def resolve_detections(
    records: Sequence[FaceRecord],
    detector: FaceFinder,
    cache_dir: Path | None = None,
) -> tuple[list[FaceRecord], DetectionStats]:
    """Fill in every record's ``detection`` (run before training; results are cached).

    Records that already carry a detection keep it. Where the detector finds nothing the
    record gets ``whole_image_detection``: the image is treated as a ready-made face crop.
    """
    cache = DetectionCache(cache_dir, detector) if cache_dir is not None else None
    out: list[FaceRecord] = []
    given = detected = cached = whole = 0
    for r in records:
        if r.detection is not None:
            given += 1
            out.append(r)
            continue
        key = content_sha1(r) if cache is not None else ""
        faces = cache.get(key) if cache is not None else None
        image = None
        if faces is not None:
            cached += 1
        else:
            image = load_rgb(r)
            faces = detector.detect(image)
            detected += 1
            if cache is not None:
                cache.put(key, faces)
        found = main_face(faces)
        if found is None:
            whole += 1
            found = whole_image_detection(image if image is not None else load_rgb(r))
        out.append(replace(r, detection=found))
    stats = DetectionStats(given, detected, cached, whole)
    if whole:
        LOG.warning(
            "no face found in %d of %d images; they are used whole, as ready-made face crops",
            whole, len(records),
        )
    LOG.info("detections: %s", stats)
    return out, stats
