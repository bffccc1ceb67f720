"""THE preprocessing: a detected face becomes the model's input tensor.

Serving (``handler.msde_handler``) and training (``training.data``) both call
``face_input``; nothing else crops, resizes or normalises faces, so what the student sees in
training is exactly what it sees in production.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from handler.faces import Detection
from handler.contract import CropSpec, InputSpec

# ITU-R BT.601 luma, the weights of PIL "L" and OpenCV RGB2GRAY.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def roll_angle(keypoints: np.ndarray | None) -> float:
    """In-plane rotation of the face in radians (0 = eyes level), from the two eye points."""
    if keypoints is None:
        return 0.0
    right_eye, left_eye = keypoints[0], keypoints[1]
    dx, dy = float(left_eye[0] - right_eye[0]), float(left_eye[1] - right_eye[1])
    if dx == 0.0 and dy == 0.0:
        return 0.0
    return math.atan2(dy, dx)


def crop_matrix(
    detection: Detection, out_hw: tuple[int, int], spec: CropSpec
) -> np.ndarray:
    """2x3 affine matrix mapping image pixels to crop pixels for one detection.

    A ``whole_image`` detection maps its box onto the output as it is (no square, no roll,
    whatever ``spec`` says): the client sent a ready-made face crop.
    """
    x1, y1, x2, y2 = detection.box
    out_h, out_w = out_hw
    if detection.whole_image:
        sx, sy = out_w / (x2 - x1), out_h / (y2 - y1)
        return np.array([[sx, 0.0, -x1 * sx], [0.0, sy, -y1 * sy]], dtype=np.float64)
    side = max(x2 - x1, y2 - y1) * spec.scale
    if side <= 0:
        raise ValueError(f"degenerate face box {detection.box}")
    angle = roll_angle(detection.keypoints) if spec.rotate else 0.0
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    # shift along the face's own vertical axis, so it follows the roll
    shift = spec.shift_y * (y2 - y1)
    cx, cy = cx - math.sin(angle) * shift, cy + math.cos(angle) * shift
    sx, sy = out_w / side, out_h / side
    cos, sin = math.cos(-angle), math.sin(-angle)
    # translate centre to origin, rotate by -angle, scale, move to crop centre
    m = np.array(
        [
            [sx * cos, -sx * sin, 0.0],
            [sy * sin, sy * cos, 0.0],
        ],
        dtype=np.float64,
    )
    m[:, 2] = np.array([out_w / 2.0, out_h / 2.0]) - m[:, :2] @ np.array([cx, cy])
    return m


def whole_image_detection(image: np.ndarray) -> Detection:
    """The whole image as one face (clients that send ready-made face crops)."""
    h, w = image.shape[:2]
    return Detection(box=(0.0, 0.0, float(w), float(h)), score=1.0, keypoints=None,
                     whole_image=True)


def align_face(
    image: np.ndarray,
    detection: Detection,
    out_hw: tuple[int, int],
    spec: CropSpec,
) -> np.ndarray:
    """Cut the face square out of an RGB uint8 image (H, W, 3) -> (out_h, out_w, 3) uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    out_h, out_w = out_hw
    m = crop_matrix(detection, out_hw, spec)
    # INTER_AREA when shrinking a lot avoids aliasing; warpAffine lacks it, so pre-shrink.
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    src = image
    if scale < 0.5:
        factor = 1.0 / (2.0 * scale)
        new_w = max(1, int(round(image.shape[1] / factor)))
        new_h = max(1, int(round(image.shape[0] / factor)))
        src = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        pre = np.diag([new_w / image.shape[1], new_h / image.shape[0]])
        m = np.hstack([m[:, :2] @ np.linalg.inv(pre), m[:, 2:]])
    return cv2.warpAffine(
        src, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def to_model_input(
    crop: np.ndarray, channels: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 RGB crop (H, W, 3) -> normalised float32 (C, H, W) on [0, 1] pixels."""
    x = crop.astype(np.float32) / 255.0
    if channels == 1:
        x = (x @ _LUMA)[..., None]
    elif channels != 3:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def face_input(image: np.ndarray, detection: Detection, spec: InputSpec) -> np.ndarray:
    """Image + detection -> the network's input (C, H, W) float32. Shared by train and serve.

    A ``whole_image_detection`` is a ready-made face crop: it is resized as it is, not
    re-cropped (``crop_matrix``).
    """
    c, h, w = spec.input_size
    face = align_face(image, detection, (h, w), spec.crop)
    return to_model_input(face, c, spec.mean, spec.std)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (K, 2) points."""
    pts = np.asarray(points, dtype=np.float64)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
