"""Training canvases for the masked-face detector: pool photos, synthetic masks, geometry.

Self-training without labels: each canvas exists twice, pixel-aligned. The *teacher* view
has every face bare; the *student* view is the same canvas where faces wear masks drawn by
``training.masks.render_mask`` from the keypoints the serving detector found on the bare
photo. The teacher (registry BlazeFace) labels the bare view densely, and the student
learns to give those answers on the masked view: masked faces become as findable as bare
ones, and everything else (background, bare faces) keeps the teacher's answer.

A canvas is a background photo covering the frame plus one to three photos pasted at
random size (faces from 6 % to 70 % of the side, as in 640x480 uploads and selfies),
roll (+-40 degrees, what the serving detector no longer covers with rotated passes) and
position, with the same brightness jitter in both views.

Photos come from the face pool's train group, minus ``HELD_OUT_SOURCES``: the benchmark
(bench/detector.py) measures recall on those people, so they must not be learnt.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.masks import MASK_STYLES, render_mask

# face-api's demo photos and scikit-image's LFW crops are bench/detector.py's faces.
HELD_OUT_SOURCES: frozenset[str] = frozenset({"face-api", "lfw_subset"})
MASK_VARIANTS = 3  # masked copies rendered per photo (style cycling, one black cloth)
BLACK_CLOTH = (28, 28, 30)
FACE_SIDE = (0.06, 0.7)  # face box side / canvas side, drawn log-uniformly
MAX_ROLL = 40.0  # degrees
P_MASKED = 0.75  # a pasted photo's faces wear masks in the student view
P_GREY = 0.15


@dataclass(frozen=True)
class MaskablePhoto:
    """One pool photo, its faces (box side, keypoints) and masked copies of all its faces."""

    bare: np.ndarray
    masked: tuple[np.ndarray, ...]
    keypoints: tuple[np.ndarray, ...]
    sides: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class Canvas:
    """A training pair: the bare view for the teacher, the masked view for the student."""

    teacher: np.ndarray
    student: np.ndarray


def mask_all(image: np.ndarray, keypoints: Sequence[np.ndarray], variant: int, seed: int
             ) -> np.ndarray:
    """Every face of ``image`` masked; variant 0 is black cloth, the others cycle styles."""
    out = image
    for k, kp in enumerate(keypoints):
        rng = np.random.default_rng([seed, variant, k])
        if variant == 0:
            out = render_mask(out, kp, rng=rng, style="cloth", color=BLACK_CLOTH).image
        else:
            style = MASK_STYLES[(seed + variant + k) % len(MASK_STYLES)]
            out = render_mask(out, kp, rng=rng, style=style).image
    return out


def maskable_photos(faces: Sequence[object], load: object) -> list[MaskablePhoto]:
    """Group pool faces by photo (held-out sources left out) and render the masked copies.

    ``faces`` are ``training.data.face_pool.PoolFace``s and ``load`` their image loader; both
    are passed in so this module does not build the pool itself.
    """
    by_image: dict[object, list] = defaultdict(list)
    for f in faces:
        if f.source not in HELD_OUT_SOURCES and f.group == "train":  # type: ignore[attr-defined]
            by_image[f.image_path].append(f)  # type: ignore[attr-defined]
    photos = []
    for n, path in enumerate(sorted(by_image)):
        members = by_image[path]
        image = load(members[0])  # type: ignore[operator]
        kps = tuple(np.asarray(f.detection.keypoints, np.float32) for f in members)
        masked = tuple(mask_all(image, kps, v, n) for v in range(MASK_VARIANTS))
        sides = tuple(float(max(f.detection.width, f.detection.height)) for f in members)
        photos.append(MaskablePhoto(image, masked, kps, sides, members[0].source))
    return photos


def photo_weights(photos: Sequence[MaskablePhoto]) -> np.ndarray:
    """Draw probabilities: each source weighs the square root of its photo count, so the
    367 ORL portraits do not drown the 70-odd colour photos and videos."""
    counts = Counter(p.source for p in photos)
    w = np.array([1.0 / math.sqrt(counts[p.source]) for p in photos])
    return w / w.sum()


def _paste(dst: np.ndarray, src: np.ndarray, matrix: np.ndarray) -> None:
    size = (dst.shape[1], dst.shape[0])
    cv2.warpAffine(src, matrix, size, dst=dst, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)


def make_canvas(photos: Sequence[MaskablePhoto], weights: np.ndarray, side: int,
                rng: np.random.Generator) -> Canvas:
    """One random canvas (see the module docstring); everything drawn from ``rng``."""
    teacher = np.zeros((side, side, 3), np.uint8)
    student = np.zeros_like(teacher)

    def pick() -> MaskablePhoto:
        return photos[int(rng.choice(len(photos), p=weights))]

    def views(photo: MaskablePhoto, p_masked: float) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < p_masked:
            return photo.bare, photo.masked[int(rng.integers(MASK_VARIANTS))]
        return photo.bare, photo.bare

    # background: a photo scaled to cover the frame, maybe mirrored
    bg = pick()
    h, w = bg.bare.shape[:2]
    s = side / min(h, w) * rng.uniform(1.0, 1.6)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    tx = rng.uniform(side - w * s, 0.0) if flip > 0 else rng.uniform(side, w * s)
    ty = rng.uniform(side - h * s, 0.0)
    m = np.array([[s * flip, 0.0, tx], [0.0, s, ty]])
    bare, masked = views(bg, 0.5)
    _paste(teacher, bare, m)
    _paste(student, masked, m)

    for _ in range(int(rng.integers(1, 4))):
        fg = pick()
        k = int(rng.integers(len(fg.keypoints)))
        lo, hi = FACE_SIDE
        target = side * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        scale = target / fg.sides[k]
        centre = fg.keypoints[k][:4].mean(axis=0)
        where = rng.uniform(0.1 * side, 0.9 * side, size=2)
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])),
                                    rng.uniform(-MAX_ROLL, MAX_ROLL), scale)
        m[:, 2] += where - centre
        bare, masked = views(fg, P_MASKED)
        _paste(teacher, bare, m)
        _paste(student, masked, m)

    gain, bias = rng.uniform(0.7, 1.3), rng.uniform(-25.0, 25.0)
    grey = rng.random() < P_GREY

    def finish(im: np.ndarray) -> np.ndarray:
        out = np.clip(im.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
        if grey:
            out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
        return out

    return Canvas(finish(teacher), finish(student))
