"""Plain data passed between the pipeline stages (detector output, per-face results)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# BlazeFace keypoint order (MediaPipe): the subject's right eye appears on the image's left.
KEYPOINT_NAMES: tuple[str, ...] = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)


@dataclass(frozen=True)
class Detection:
    """One face found in an image, in pixel coordinates of that (EXIF-rotated) image."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    keypoints: np.ndarray | None = None  # (6, 2) float32 in KEYPOINT_NAMES order, or None
    # the image is a ready-made face crop (no detector ran): it is resized as it is, never
    # squared or levelled (``handler.align.crop_matrix``)
    whole_image: bool = False

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]
