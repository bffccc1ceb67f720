"""Face candidates as arrays, and the box maths that merges them (IoU, weighted NMS, nesting).

Pure NumPy on purpose: ``torchvision.ops.box_iou`` gives the same numbers, but importing
torchvision in a serving worker costs ~165 MB of RSS and seconds of start-up, and for the
few dozen boxes of an image NumPy is faster (measured in docs/detector.md). Training and the
benchmark use these functions too, so there is one IoU in the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_KEYPOINTS = 6


@dataclass(frozen=True)
class Candidates:
    """Detections as arrays in image pixels: centres (N,2), sizes (N,2), keypoints (N,6,2)."""

    centres: np.ndarray
    sizes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> Candidates:
        return Candidates(
            np.zeros((0, 2), np.float32),
            np.zeros((0, 2), np.float32),
            np.zeros((0, NUM_KEYPOINTS, 2), np.float32),
            np.zeros((0,), np.float32),
        )

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        if not parts:
            return Candidates.empty()
        return Candidates(
            np.concatenate([p.centres for p in parts]),
            np.concatenate([p.sizes for p in parts]),
            np.concatenate([p.keypoints for p in parts]),
            np.concatenate([p.scores for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> Candidates:
        return Candidates(
            self.centres[index], self.sizes[index], self.keypoints[index], self.scores[index]
        )

    def boxes(self) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2."""
        half = self.sizes / 2.0
        return np.concatenate([self.centres - half, self.centres + half], axis=1)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(br - tl, 0.0, None), axis=2)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None), axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1, y1, x2, y2 boxes -> (N, M)."""
    inter = _intersections(a, b)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(cands: Candidates, iou_threshold: float) -> Candidates:
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
    return Candidates(
        np.asarray(centres, np.float32),
        np.asarray(sizes, np.float32),
        np.asarray(kps, np.float32),
        np.asarray(scores, np.float32),
    )


def suppress_nested(cands: Candidates, overlap: float) -> Candidates:
    """Drop a candidate whose box lies mostly inside (or around) a better-scoring one's.

    Passes at different scales sometimes report a box around a face besides the face: the
    two overlap little by IoU but one nearly contains the other. Real faces do not nest.
    """
    if len(cands) < 2:
        return cands
    order = np.argsort(-cands.scores, kind="stable")
    boxes = cands.boxes()[order]
    area = _areas(boxes)
    covered = _intersections(boxes, boxes) / np.maximum(
        np.minimum(area[:, None], area[None, :]), 1e-12)
    kept: list[int] = []
    for i in range(len(order)):
        if all(covered[i, j] < overlap for j in kept):
            kept.append(i)
    return cands.take(order[kept])
