"""The synthetic mask renderer: where the mask goes, how it behaves, what it refuses."""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import pytest

from training.masks import FACE_POINTS, MASK_STYLES, fit_face_pose, render_mask

# BlazeFace keypoints measured on the conftest photos (front model, 128 px, offline).
ASTRONAUT_KEYPOINTS = np.array(
    [[206.8, 100.5], [251.3, 109.3], [226.4, 124.0], [222.1, 145.2], [177.3, 110.0],
     [270.7, 126.8]], dtype=np.float32,
)
HOPPER_KEYPOINTS = np.array(
    [[215.3, 193.1], [304.1, 180.8], [258.3, 227.6], [265.2, 272.6], [180.4, 224.6],
     [364.2, 203.0]], dtype=np.float32,
)
RIGHT_EYE, LEFT_EYE, NOSE, MOUTH = 0, 1, 2, 3


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Head rotation (degrees) in the renderer's frame: x right, y down, z into the screen."""
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def face_keypoints(
    centre: tuple[float, float], iod: float, *, yaw: float = 0.0, pitch: float = 0.0,
    roll: float = 0.0, jitter: float = 0.0, seed: int = 0,
) -> np.ndarray:
    """Keypoints of a head posed so; ``jitter`` adds detector-like noise (IOD units)."""
    pts = FACE_POINTS @ rotation(yaw, pitch, roll).T
    pts = pts + np.random.default_rng(seed).normal(0.0, jitter, pts.shape)
    return (pts[:, :2] * iod + np.asarray(centre)).astype(np.float32)


def skin_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A lit, slightly noisy skin-coloured frame with a brightness gradient."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(0.7, 1.1, w, dtype=np.float32)[None, :, None]
    base = np.array([205, 160, 135], np.float32) * grad * np.ones((h, 1, 1), np.float32)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def alpha_at(alpha: np.ndarray, point: np.ndarray) -> float:
    x, y = (int(round(v)) for v in point)
    return float(alpha[y, x])


def face_axes(kp: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Eye midpoint, unit 'down the face' vector and inter-ocular distance in pixels."""
    eye_mid = (kp[RIGHT_EYE] + kp[LEFT_EYE]) / 2
    across = kp[LEFT_EYE] - kp[RIGHT_EYE]
    iod = float(np.linalg.norm(across))
    across = across / iod
    return eye_mid, np.array([-across[1], across[0]]), iod


POSES = [
    # (image size, IOD px, yaw, roll, pitch)
    *[(64, 16.0, yaw, roll, 0.0) for yaw, roll in itertools.product((0, 20, -35), (0, 20, -35))],
    *[(48, 12.0, yaw, roll, 0.0) for yaw, roll in ((0, 0), (-20, 35), (35, -20))],
    *[(640, 150.0, yaw, roll, pitch) for yaw, roll, pitch in
      ((0, 0, 0), (35, 35, 10), (-20, -20, -10), (20, 35, 0))],
    *[(200, 45.0, yaw, roll, 0.0) for yaw, roll in ((0, -20), (-35, 0), (35, 20))],
]


@pytest.mark.parametrize("size,iod,yaw,roll,pitch", POSES)
def test_mask_covers_nose_mouth_and_chin_but_not_the_eyes(
    size: int, iod: float, yaw: float, roll: float, pitch: float
) -> None:
    h, w = (480, 640) if size == 640 else (size, size)
    centre = (w / 2, h / 2 - 0.8 * iod)  # eyes above the middle, like a face crop
    kp = face_keypoints(centre, iod, yaw=yaw, pitch=pitch, roll=roll, jitter=0.03, seed=size)
    image = skin_image(h, w)
    eye_mid, down, measured_iod = face_axes(kp)
    for seed, style in enumerate(MASK_STYLES):
        masked = render_mask(image, kp, rng=seed, style=style)
        a = masked.alpha
        assert alpha_at(a, kp[NOSE]) >= 0.5, style
        assert alpha_at(a, kp[MOUTH]) >= 0.5, style
        assert alpha_at(a, kp[RIGHT_EYE]) < 0.02, style
        assert alpha_at(a, kp[LEFT_EYE]) < 0.02, style
        below_mouth = kp[MOUTH] + 0.4 * iod * down * math.cos(math.radians(pitch))
        assert alpha_at(a, below_mouth) >= 0.5, f"{style}: chin not covered"
        ys, xs = np.nonzero(a > 0.1)
        rel = (np.stack([xs, ys], 1) - eye_mid) / measured_iod
        across = np.array([down[1], -down[0]])
        central = np.abs(rel @ across) < 0.9  # the ear loops may rise to the ears, aside
        assert (rel[central] @ down).min() > -0.15, f"{style}: mask reaches above the eyes"


@pytest.mark.parametrize("style", MASK_STYLES)
def test_real_photo_mask_covers_nose_and_mouth(astronaut: np.ndarray, style: str) -> None:
    masked = render_mask(astronaut, ASTRONAUT_KEYPOINTS, rng=7, style=style)
    kp = ASTRONAUT_KEYPOINTS
    assert masked.style == style
    assert min(alpha_at(masked.alpha, kp[NOSE]), alpha_at(masked.alpha, kp[MOUTH])) >= 0.9
    assert max(alpha_at(masked.alpha, kp[RIGHT_EYE]), alpha_at(masked.alpha, kp[LEFT_EYE])) < 0.02
    changed = np.abs(masked.image.astype(int) - astronaut).sum(axis=2) > 0
    # the change is local to the lower face: nothing above the eyes, nothing far below the chin
    ys, xs = np.nonzero(changed)
    assert ys.min() > kp[:2, 1].min() - 10 and ys.max() < 215
    assert masked.image[140, 225].tolist() != astronaut[140, 225].tolist()


def test_second_real_photo_gets_its_mask(grace_hopper: np.ndarray) -> None:
    masked = render_mask(grace_hopper, HOPPER_KEYPOINTS, rng=3)
    kp = HOPPER_KEYPOINTS
    assert min(alpha_at(masked.alpha, kp[NOSE]), alpha_at(masked.alpha, kp[MOUTH])) >= 0.9
    assert max(alpha_at(masked.alpha, kp[RIGHT_EYE]), alpha_at(masked.alpha, kp[LEFT_EYE])) < 0.02


def test_same_seed_gives_identical_bytes_and_input_is_untouched() -> None:
    image = skin_image(120, 100, seed=1)
    before = image.copy()
    kp = face_keypoints((50, 40), 28.0, yaw=10, roll=-12)
    kp_before = kp.copy()
    a = render_mask(image, kp, rng=42)
    b = render_mask(image, kp, rng=42)
    c = render_mask(image, kp, rng=np.random.default_rng(42))
    assert a.image.tobytes() == b.image.tobytes() == c.image.tobytes()
    assert a.alpha.tobytes() == b.alpha.tobytes() == c.alpha.tobytes()
    assert a.style == b.style == c.style
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(kp, kp_before)
    assert a.image is not image and not np.shares_memory(a.image, image)


def test_different_seeds_give_different_masks() -> None:
    image = skin_image(120, 100, seed=1)
    kp = face_keypoints((50, 40), 28.0)
    images = {render_mask(image, kp, rng=s, style="cloth").image.tobytes() for s in range(6)}
    assert len(images) == 6
    styles = {render_mask(image, kp, rng=s).style for s in range(40)}
    assert styles == set(MASK_STYLES)


def test_output_types_and_ranges() -> None:
    image = skin_image(90, 70)
    masked = render_mask(image, face_keypoints((35, 30), 20.0), rng=0, style="n95")
    assert masked.image.dtype == np.uint8 and masked.image.shape == image.shape
    assert masked.alpha.dtype == np.float32 and masked.alpha.shape == image.shape[:2]
    assert 0.0 <= masked.alpha.min() and masked.alpha.max() <= 1.0
    assert masked.polygon.dtype == np.float32 and masked.polygon.ndim == 2
    assert masked.polygon.shape[1] == 2 and len(masked.polygon) >= 16


@pytest.mark.parametrize("style", MASK_STYLES)
def test_mask_is_a_face_shaped_outline_not_a_rectangle(style: str) -> None:
    image = skin_image(200, 200)
    kp = face_keypoints((100, 70), 50.0)
    masked = render_mask(image, kp, rng=5, style=style)
    poly = masked.polygon
    hull = cv2.contourArea(cv2.convexHull(poly))
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    assert hull / ((x1 - x0) * (y1 - y0)) < 0.88
    # the bottom corners of the outline's box are bare skin (it narrows to the chin)
    assert alpha_at(masked.alpha, (x0 + 1, y1 - 1)) < 0.05
    assert alpha_at(masked.alpha, (x1 - 1, y1 - 1)) < 0.05
    # and the top dips from the nose bridge towards the cheeks
    top_mid = poly[np.argmin(np.abs(poly[:, 0] - kp[NOSE, 0]) + 1e3 * (poly[:, 1] > kp[NOSE, 1]))]
    assert top_mid[1] < poly[poly[:, 0] < kp[RIGHT_EYE, 0], 1].min()


def test_mask_outline_follows_roll() -> None:
    image = skin_image(300, 300)
    upright = face_keypoints((150, 120), 60.0)
    centre = np.array([150.0, 150.0])
    angle = math.radians(30)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    rolled = (upright - centre) @ rot.T + centre
    a = render_mask(image, upright, rng=9, style="surgical")
    b = render_mask(image, rolled.astype(np.float32), rng=9, style="surgical")
    np.testing.assert_allclose((a.polygon - centre) @ rot.T + centre, b.polygon, atol=0.05)


def test_turned_face_foreshortens_the_far_side() -> None:
    image = skin_image(300, 300)
    kp = face_keypoints((150, 110), 60.0, yaw=-30)
    pose = fit_face_pose(kp)
    assert pose.yaw_sin > 0.3  # the subject's left cheek (image right) turned away
    poly = render_mask(image, kp, rng=1, style="cloth").polygon
    near = kp[NOSE, 0] - poly[:, 0].min()
    far = poly[:, 0].max() - kp[NOSE, 0]
    assert far < 0.6 * near
    frontal = render_mask(image, face_keypoints((150, 110), 60.0), rng=1, style="cloth").polygon
    assert np.ptp(poly[:, 0]) < np.ptp(frontal[:, 0])


def test_grey_photo_gets_a_grey_mask() -> None:
    grey = np.repeat(skin_image(48, 48)[..., :1], 3, axis=2)
    kp = face_keypoints((24, 17), 12.0)
    for seed, style in enumerate(MASK_STYLES):
        out = render_mask(grey, kp, rng=seed, style=style, color=(200, 30, 30)).image
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_colour_choice_is_used() -> None:
    image = skin_image(200, 200)
    kp = face_keypoints((100, 70), 50.0)
    masked = render_mask(image, kp, rng=2, style="kn95", color=(20, 40, 200))
    r, g, b = masked.image[masked.alpha > 0.95].mean(axis=0)
    assert b > 2 * r and b > 2 * g


def test_face_partly_outside_the_image_still_renders() -> None:
    image = skin_image(64, 64)
    kp = face_keypoints((32, 25), 30.0, roll=15)  # chin well below the bottom edge
    masked = render_mask(image, kp, rng=0)
    assert alpha_at(masked.alpha, kp[NOSE]) >= 0.5
    off = render_mask(image, face_keypoints((500, 500), 30.0), rng=0)
    assert off.image.tobytes() == image.tobytes() and off.alpha.max() == 0.0


@pytest.mark.parametrize(
    "image,keypoints,kwargs,message",
    [
        (np.zeros((40, 40, 3), np.uint8), face_keypoints((20, 15), 10.0), {"style": "bandana"},
         "surgical, cloth, n95, kn95, patterned"),
        (np.zeros((40, 40), np.uint8), face_keypoints((20, 15), 10.0), {}, "RGB uint8"),
        (np.zeros((40, 40, 4), np.uint8), face_keypoints((20, 15), 10.0), {}, "RGB uint8"),
        (np.zeros((40, 40, 3), np.float32), face_keypoints((20, 15), 10.0), {}, "RGB uint8"),
        (np.zeros((40, 40, 3), np.uint8), np.zeros((5, 2)), {}, "(6, 2)"),
        (np.zeros((40, 40, 3), np.uint8), np.zeros(12), {}, "(6, 2)"),
        (np.zeros((40, 40, 3), np.uint8), np.full((6, 2), np.nan), {}, "finite"),
        (np.zeros((40, 40, 3), np.uint8), np.full((6, 2), 20.0), {}, "too close"),
        (np.zeros((40, 40, 3), np.uint8), face_keypoints((20, 15), 10.0),
         {"color": (300, 0, 0)}, "color"),
        (np.zeros((40, 40, 3), np.uint8), face_keypoints((20, 15), 10.0),
         {"color": (1, 2)}, "color"),
    ],
)
def test_invalid_inputs_raise_value_error(
    image: np.ndarray, keypoints: np.ndarray, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render_mask(image, keypoints, rng=0, **kwargs)
