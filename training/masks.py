"""Landmark-guided synthetic face masks: any unmasked face becomes its masked pair.

Why: MSD-E pairs every unmasked face with a masked copy of the same face and expression.
Rendering the mask from the six BlazeFace keypoints (the only landmarks we have both in
training and in serving) lets us build those pairs for any data set, and gives the
mask-state head its positive examples.

How the geometry is derived (details and examples in ``docs/masks.md``):

1. A canonical head, in units of the inter-ocular distance (IOD), carries the six keypoints
   in 3-D. A weak-perspective camera (scale, 3-D rotation, translation) is fitted to the
   detected keypoints by weighted least squares. Roll comes from the eye line, yaw mostly
   from where the nose tip sits between the ear tragions (the ears lie far behind the nose),
   pitch from the eye/nose/mouth spacing.
2. The mask is a height field over the canonical face plane: a centre-line profile that
   rides over the nose bridge, nose tip, mouth and chin, curving back towards the ears
   (``h = profile(y) - curvature * x**2``). Its outline is a smooth closed spline through
   nose bridge, under-eye cheeks, the cheeks in front of the tragions, the jaw and the chin;
   each style has its own outline (pleated rectangle, contour, cup, folded, ...).
3. Every output pixel is traced back onto that surface (a closed-form quadratic per pixel),
   so yaw foreshortens the far side and hides what wraps round it, roll and pitch follow
   the face, and textures (pleats, seams, folds, prints) are laid out in face coordinates.
4. The mask takes its brightness from the skin around it (a lighting plane fitted to a ring
   of skin), gets 3-D shading from its surface normals, a soft contact shadow, edges
   feathered in proportion to face size, and the photo's own grain.

Everything random comes from the caller's ``rng``: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.contact_sheet import contact_sheet, write_sheet

LOG = logging.getLogger(__name__)

MASK_STYLES: tuple[str, ...] = ("surgical", "cloth", "n95", "kn95", "patterned")

# Canonical head, units of inter-ocular distance; x to the image right of a frontal face,
# y down, z into the screen (away from the camera). Order = handler.faces.KEYPOINT_NAMES.
# Proportions checked against BlazeFace output on frontal photos (fit residuals < 0.1 IOD).
FACE_POINTS = np.array(
    [
        [-0.50, 0.00, 0.00],  # right eye (subject's right, image left)
        [0.50, 0.00, 0.00],  # left eye
        [0.00, 0.66, -0.45],  # nose tip, in front of the eyes
        [0.00, 1.13, -0.25],  # mouth centre
        [-1.12, 0.12, 1.20],  # right ear tragion, far behind the eyes
        [1.12, 0.12, 1.20],  # left ear tragion
    ],
    dtype=np.float64,
)
# Tragion keypoints are the detector's noisiest; they still carry most of the yaw signal.
_FIT_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 0.5])

# Face-plane area the mask textures cover (IOD units); every outline lies inside it.
_TEX_X = (-1.35, 1.35)
_TEX_Y = (0.10, 2.35)
# Light from above the camera, in camera coordinates (x right, y down, z into the screen).
_LIGHT = np.array([0.0, -0.45, -1.0]) / math.hypot(0.45, 1.0)
# Finest working resolution, pixels per IOD; bigger faces are rendered at this and scaled.
_WORK_SCALE = 72.0
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

Color = tuple[int, int, int]

_PALETTES: dict[str, tuple[tuple[Color, float], ...]] = {
    "surgical": (
        ((132, 182, 218), 0.45),  # light blue
        ((236, 238, 240), 0.2),  # white
        ((150, 204, 186), 0.1),  # green
        ((238, 178, 198), 0.1),  # pink
        ((36, 36, 40), 0.15),  # black
    ),
    "cloth": (
        ((28, 28, 30), 0.2),  # black
        ((32, 42, 78), 0.12),  # navy
        ((122, 124, 130), 0.1),  # grey
        ((62, 64, 68), 0.1),  # charcoal
        ((112, 32, 42), 0.07),  # maroon
        ((96, 100, 62), 0.07),  # olive
        ((202, 182, 152), 0.07),  # beige
        ((72, 96, 132), 0.09),  # denim
        ((228, 228, 226), 0.06),  # white
        ((178, 42, 46), 0.06),  # red
        ((40, 112, 112), 0.06),  # teal
    ),
    "n95": (
        ((238, 238, 234), 0.55),  # white
        ((226, 222, 210), 0.25),  # off-white
        ((200, 202, 206), 0.2),  # light grey
    ),
    "kn95": (
        ((240, 240, 240), 0.45),  # white
        ((30, 30, 32), 0.25),  # black
        ((152, 152, 156), 0.1),  # grey
        ((234, 172, 192), 0.1),  # pink
        ((150, 180, 222), 0.1),  # blue
    ),
}
_PALETTES["patterned"] = _PALETTES["cloth"]

# Right half of each outline, nose bridge (top centre) clockwise to the chin; mirrored.
_HALF_OUTLINES: dict[str, tuple[tuple[float, float], ...]] = {
    "surgical": ((0.0, 0.40), (0.40, 0.46), (0.84, 0.52), (1.08, 0.60), (1.12, 1.05),
                 (1.06, 1.52), (0.80, 1.84), (0.40, 1.98), (0.0, 2.02)),
    "cloth": ((0.0, 0.36), (0.32, 0.42), (0.70, 0.50), (1.00, 0.62), (1.07, 0.95),
              (0.99, 1.38), (0.72, 1.75), (0.36, 1.95), (0.0, 2.00)),
    "n95": ((0.0, 0.32), (0.40, 0.38), (0.74, 0.55), (0.93, 0.85), (0.97, 1.20),
            (0.88, 1.55), (0.66, 1.83), (0.36, 1.99), (0.0, 2.03)),
    "kn95": ((0.0, 0.33), (0.35, 0.42), (0.75, 0.52), (1.03, 0.64), (1.06, 0.92),
             (0.86, 1.35), (0.52, 1.74), (0.20, 1.98), (0.07, 2.05), (0.0, 2.07)),
}
_HALF_OUTLINES["patterned"] = _HALF_OUTLINES["cloth"]

# Centre-line height of the mask towards the camera (IOD) at these y: it stands off the
# nose bridge, tip, lips and chin (nose tip is at 0.45, mouth at 0.25 in FACE_POINTS).
_PROFILE_Y = np.array([0.25, 0.45, 0.66, 1.13, 1.55, 1.95, 2.30])
_PROFILE_H = np.array([0.22, 0.36, 0.52, 0.47, 0.40, 0.18, 0.00])


@dataclass(frozen=True)
class MaskedFace:
    """A masked copy of a face and where the mask is."""

    image: np.ndarray  # RGB uint8 (H, W, 3), the masked copy
    alpha: np.ndarray  # float32 (H, W) in [0, 1], mask coverage (soft edges)
    style: str
    polygon: np.ndarray  # (P, 2) float32 outline in image pixels


@dataclass(frozen=True)
class FacePose:
    """Weak-perspective camera of one face: ``pixel = scale * rotation[:2] @ point + offset``.

    ``point`` is in FACE_POINTS coordinates (IOD units), ``scale`` is pixels per IOD.
    """

    rotation: np.ndarray  # (3, 3), rows = image x, image y, depth axes in face coordinates
    scale: float
    offset: np.ndarray  # (2,)

    @property
    def projection(self) -> np.ndarray:
        return self.scale * self.rotation[:2]

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) face points -> (N, 2) image pixels."""
        return points @ self.projection.T + self.offset

    @property
    def yaw_sin(self) -> float:
        """Sine of the yaw: > 0 when the subject's left cheek (image right) turns away."""
        return float(self.rotation[2, 0])


@dataclass(frozen=True)
class MaskDesign:
    """One drawn mask: shape, surface and colour, all in face coordinates."""

    style: str
    outline: np.ndarray  # (P, 2) closed outline on the face plane
    profile_h: np.ndarray  # centre-line heights at _PROFILE_Y
    curvature: float  # how fast the surface curves back towards the ears
    color: np.ndarray  # (3,) float in [0, 1]
    ear_loops: bool


def fit_face_pose(keypoints: np.ndarray) -> FacePose:
    """Weighted least-squares weak-perspective camera from the six keypoints.

    A free affine camera is fitted first (linear), then projected onto the nearest
    scaled rotation so noisy keypoints cannot shear the mask.
    """
    x = np.asarray(keypoints, dtype=np.float64)
    w = _FIT_WEIGHTS
    face_mean = w @ FACE_POINTS / w.sum()
    img_mean = w @ x / w.sum()
    fc = FACE_POINTS - face_mean
    ic = x - img_mean
    affine = (ic.T * w) @ fc @ np.linalg.inv((fc.T * w) @ fc)
    u, sing, vt = np.linalg.svd(affine, full_matrices=False)
    rows = u @ vt
    scale = float(sing.mean())
    if not math.isfinite(scale) or scale < 1.0:
        raise ValueError(f"keypoints too close together (face scale {scale:.3g} px per IOD)")
    rotation = np.vstack([rows, np.cross(rows[0], rows[1])])
    offset = img_mean - scale * rows @ face_mean
    return FacePose(rotation=rotation, scale=scale, offset=offset)


def _closed_spline(points: np.ndarray, per_segment: int) -> np.ndarray:
    """Uniform Catmull-Rom curve through a closed ring of control points."""
    p = np.asarray(points, dtype=np.float64)
    t = np.arange(per_segment, dtype=np.float64)[:, None] / per_segment
    t2, t3 = t * t, t * t * t
    p0, p1, p2, p3 = (np.roll(p, s, axis=0) for s in (1, 0, -1, -2))
    out = 0.5 * (
        (2 * p1)[:, None]
        + (p2 - p0)[:, None] * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t2
        + (-p0 + 3 * p1 - 3 * p2 + p3)[:, None] * t3
    )
    return out.reshape(-1, 2)


def _pick_color(style: str, rng: np.random.Generator) -> np.ndarray:
    colors, weights = zip(*_PALETTES[style], strict=True)
    p = np.asarray(weights) / sum(weights)
    base = np.asarray(colors[int(rng.choice(len(colors), p=p))], dtype=np.float64)
    return np.clip(base + rng.normal(0.0, 7.0, 3), 0, 255) / 255.0


def design_mask(
    style: str, rng: np.random.Generator, color: Color | None = None
) -> MaskDesign:
    """Draw one mask of a style: jittered outline, fit and colour."""
    half = np.asarray(_HALF_OUTLINES[style], dtype=np.float64)
    # how high it is pulled up the nose, how far down the chin, how wide: per wearer
    top = rng.uniform(-0.04, 0.05)
    bottom = rng.uniform(-0.04, 0.06)
    width = rng.uniform(0.95, 1.04)
    frac = (half[:, 1] - half[0, 1]) / (half[-1, 1] - half[0, 1])
    ys = half[:, 1] + top * (1 - frac) + bottom * frac
    right = np.stack([half[:, 0] * width, ys], axis=1)
    right[1:-1] += rng.normal(0.0, 0.012, (len(right) - 2, 2))
    left = right[-2:0:-1] * np.array([-1.0, 1.0])
    left[:] += rng.normal(0.0, 0.012, left.shape)
    ring = np.vstack([right, left])
    outline = _closed_spline(ring, per_segment=8)
    lift = {"n95": 0.10, "kn95": 0.06, "surgical": 0.02}.get(style, 0.0)
    profile = _PROFILE_H + lift + rng.uniform(-0.02, 0.03)
    curvature = rng.uniform(0.9, 1.05) * (0.92 if style == "n95" else 1.0)
    if color is None:
        rgb = _pick_color(style, rng)
    else:
        rgb = np.asarray(color, dtype=np.float64) / 255.0
    loops = style != "n95" and rng.random() < 0.75
    return MaskDesign(style, outline, profile, curvature, rgb, loops)


# ---------------------------------------------------------------- textures (face plane)


@dataclass(frozen=True)
class _Canvas:
    """The face-plane texture grid: ``res`` pixels per IOD over _TEX_X x _TEX_Y."""

    res: float
    x: np.ndarray  # (H, W) face x of each texel
    y: np.ndarray  # (H, W) face y of each texel
    inside: np.ndarray  # (H, W) float32 coverage of the outline
    edge: np.ndarray  # (H, W) distance to the outline (IOD), inside only

    @property
    def texel(self) -> float:
        return 1.0 / self.res

    @property
    def grain(self) -> float:
        """Amplitude of texel-scale fabric noise: a small face averages it away."""
        return min(1.0, self.res / 48.0)

    def line(self, offset: np.ndarray, width: float) -> np.ndarray:
        """Soft 0..1 line where |offset| < width, anti-aliased over one texel."""
        return np.clip((width + 0.5 * self.texel - np.abs(offset)) * self.res, 0.0, 1.0)


def _canvas(design: MaskDesign, res: float) -> _Canvas:
    w = int(math.ceil((_TEX_X[1] - _TEX_X[0]) * res))
    h = int(math.ceil((_TEX_Y[1] - _TEX_Y[0]) * res))
    xs = (_TEX_X[0] + (np.arange(w, dtype=np.float32) + 0.5) / res).astype(np.float32)
    ys = (_TEX_Y[0] + (np.arange(h, dtype=np.float32) + 0.5) / res).astype(np.float32)
    gx, gy = np.meshgrid(xs, ys)
    pts = (design.outline - np.array([_TEX_X[0], _TEX_Y[0]])) * res - 0.5
    fill = np.zeros((h, w), np.uint8)
    cv2.fillPoly(fill, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    edge = cv2.distanceTransform((fill > 127).astype(np.uint8), cv2.DIST_L2, 3) / res
    return _Canvas(res, gx, gy, fill.astype(np.float32) / 255.0, edge.astype(np.float32))


def _noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise, blurred by ``sigma`` texels."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        n /= max(float(n.std()), 1e-6)
    return n


def _top(c: _Canvas) -> np.ndarray:
    """Weight of the upper rim (nose bridge and under the eyes) vs the rest of the edge."""
    return np.clip((1.0 - c.y) / 0.25, 0.0, 1.0)


def _surgical(c: _Canvas, d: MaskDesign, rng: np.random.Generator) -> np.ndarray:
    shade = 1.0 + 0.03 * c.grain * _noise(c.x.shape, rng, 0.6)
    # Three pleats, horizontal in the face frame, fanning together towards the ear sides.
    y_mid = 1.15 + rng.uniform(-0.05, 0.05)
    gap = rng.uniform(0.2, 0.27)
    for k in (-1, 0, 1):
        fold = y_mid + (k * gap) * (1.0 - 0.35 * c.x**2)
        dy = c.y - fold
        shade -= 0.24 * c.line(dy, 0.008)  # the crease
        shade += 0.08 * np.exp(-(((dy + 0.05) / 0.035) ** 2))  # lit face of the pleat
        shade -= 0.06 * np.exp(-(((dy - 0.04) / 0.03) ** 2))  # tucked fabric below
    top = _top(c)
    shade -= 0.15 * top * c.line(c.edge - 0.045, 0.025)  # nose wire channel
    shade -= 0.10 * c.line(c.edge, 0.03)  # bound edges
    return d.color * shade[..., None]


def _fabric(c: _Canvas, d: MaskDesign, rng: np.random.Generator) -> np.ndarray:
    """Woven cloth: heather flecks or solid, weave, centre seam, stitched hem."""
    h, w = c.x.shape
    if rng.random() < 0.35:
        other = np.clip(d.color * rng.uniform(0.6, 1.45) + rng.normal(0, 0.04, 3), 0, 1)
        fleck = c.grain * np.clip(_noise((h, w), rng, 0.7) - 0.3, 0, 1)[..., None]
        albedo = d.color * (1 - fleck) + other * fleck
    else:
        albedo = np.broadcast_to(d.color, (h, w, 3)).copy()
    shade = 1.0 + 0.04 * c.grain * _noise((h, w), rng, 0.5)
    period = 0.035
    if c.res * period >= 3.0:  # weave only where it can be resolved
        shade += 0.035 * np.sin(2 * np.pi * c.x / period) * np.sin(2 * np.pi * c.y / period)
    seam = rng.random() < 0.7
    if seam:
        shade -= 0.28 * c.line(c.x, 0.01)
        shade += 0.05 * c.line(np.abs(c.x) - 0.035, 0.02)
    shade -= 0.12 * c.line(c.edge, 0.05)
    stitches = (np.sin(2 * np.pi * (c.x + c.y) / 0.06) > 0).astype(np.float32)
    shade -= 0.15 * stitches * c.line(c.edge - 0.075, 0.006)
    return albedo * shade[..., None]


def _n95(c: _Canvas, d: MaskDesign, rng: np.random.Generator) -> np.ndarray:
    h, w = c.x.shape
    shade = 1.0 + 0.035 * c.grain * _noise((h, w), rng, 0.5) + 0.02 * _noise((h, w), rng, 2.0)
    shade -= 0.06 * c.line(c.edge, 0.06)  # moulded rim
    shade -= 0.12 * c.line(c.edge - 0.075, 0.01)
    # metal nose clip under the fabric: a raised strip across the bridge
    strip = np.clip((0.26 - np.abs(c.x)) * c.res, 0, 1) * (c.y < 0.8)
    shade += strip * (0.07 * c.line(c.edge - 0.055, 0.012) - 0.1 * c.line(c.edge - 0.085, 0.01))
    albedo = d.color * shade[..., None]
    if rng.random() < 0.4:  # exhalation valve on one cheek
        side = rng.choice([-1.0, 1.0])
        cx, cy, rad = side * rng.uniform(0.42, 0.55), rng.uniform(1.25, 1.4), 0.2
        r = np.hypot(c.x - cx, c.y - cy)
        vcol = np.asarray(
            [(0.92, 0.92, 0.9), (0.45, 0.47, 0.5), (0.12, 0.12, 0.13), (0.9, 0.5, 0.2),
             (0.3, 0.45, 0.75)][int(rng.integers(5))]
        )
        slats = 1.0 - 0.25 * (np.sin(2 * np.pi * (c.y - cy) / 0.06) > 0.3)
        body = np.clip((rad - r) * c.res, 0, 1)[..., None]
        ring = c.line(r - rad + 0.02, 0.015)[..., None]
        tone = vcol * np.where(r < rad * 0.75, slats, 1.0)[..., None]
        tone = tone * (1.0 - 0.35 * ring) * (1.0 - 0.25 * (c.y - cy)[..., None] / rad)
        albedo = albedo * (1 - body) + tone * body
    return albedo


def _kn95(c: _Canvas, d: MaskDesign, rng: np.random.Generator) -> np.ndarray:
    h, w = c.x.shape
    shade = 1.0 + 0.035 * c.grain * _noise((h, w), rng, 0.5)
    shade -= 0.3 * c.line(c.x, 0.008)  # the vertical centre fold
    emboss = np.sin(2 * np.pi * c.x / 0.05) * np.sin(2 * np.pi * c.y / 0.05) > 0
    band = (c.edge < 0.085).astype(np.float32)
    shade -= 0.07 * band * emboss  # heat-sealed border
    shade -= 0.15 * c.line(c.edge - 0.09, 0.008)
    return d.color * shade[..., None]


def _contrast_color(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 230), 0]]], dtype=np.uint8)
    lum = float(base @ np.array([0.299, 0.587, 0.114]))
    hsv[0, 0, 2] = int(rng.uniform(30, 110) if lum > 0.5 else rng.uniform(170, 250))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255.0


def _patterned(c: _Canvas, d: MaskDesign, rng: np.random.Generator) -> np.ndarray:
    albedo = _fabric(c, d, rng)
    ink = _contrast_color(d.color, rng)
    kind = ("stripes", "dots", "checks", "florals")[int(rng.integers(4))]
    if kind == "stripes":
        angle = rng.choice([0.0, 0.5 * np.pi, 0.25 * np.pi, -0.25 * np.pi]) + rng.normal(0, 0.05)
        period = rng.uniform(0.1, 0.3)
        u = c.x * math.cos(angle) + c.y * math.sin(angle)
        phase = (u / period) % 1.0
        cover = c.line((phase - 0.5) * period, rng.uniform(0.15, 0.3) * period)
    elif kind == "dots":
        gap = rng.uniform(0.14, 0.28)
        row = np.floor(c.y / gap)
        u = (c.x / gap + 0.5 * (row % 2)) % 1.0 - 0.5
        v = (c.y / gap) % 1.0 - 0.5
        cover = c.line(np.hypot(u, v) * gap, rng.uniform(0.18, 0.32) * gap)
    elif kind == "checks":
        gap = rng.uniform(0.1, 0.22)
        half = 0.25 * gap
        sx = c.line(((c.x / gap) % 1.0 - 0.5) * gap, half)
        sy = c.line(((c.y / gap) % 1.0 - 0.5) * gap, half)
        cover = 0.5 * sx + 0.5 * sy
    else:
        return _florals(c, albedo, ink, rng)
    cover = cover[..., None]
    return albedo * (1 - cover) + (ink * albedo.mean(axis=-1, keepdims=True) / max(
        float(d.color.mean()), 0.05
    )).clip(0, 1) * cover


def _florals(
    c: _Canvas, albedo: np.ndarray, ink: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random little flowers: five petals round a contrasting centre."""
    h, w = c.x.shape
    layer = np.zeros((h, w, 3), np.float32)
    cover = np.zeros((h, w), np.float32)
    second = rng.permutation(ink)
    for _ in range(int(rng.integers(25, 45))):
        fx, fy = rng.uniform(*_TEX_X), rng.uniform(*_TEX_Y)
        size = rng.uniform(0.05, 0.1)
        col = tuple(float(v) for v in (ink if rng.random() < 0.6 else second))
        rot = rng.uniform(0, 2 * np.pi)
        for k in range(5):
            a = rot + 2 * np.pi * k / 5
            px = (fx + size * math.cos(a) - _TEX_X[0]) * c.res - 0.5
            py = (fy + size * math.sin(a) - _TEX_Y[0]) * c.res - 0.5
            r = max(1, int(round(0.75 * size * c.res * 16)))
            centre = (int(round(px * 16)), int(round(py * 16)))
            cv2.circle(layer, centre, r, col, -1, cv2.LINE_AA, shift=4)
            cv2.circle(cover, centre, r, 1.0, -1, cv2.LINE_AA, shift=4)
        core = (int(round(((fx - _TEX_X[0]) * c.res - 0.5) * 16)),
                int(round(((fy - _TEX_Y[0]) * c.res - 0.5) * 16)))
        rc = max(1, int(round(0.45 * size * c.res * 16)))
        cv2.circle(layer, core, rc, (0.95, 0.85, 0.3), -1, cv2.LINE_AA, shift=4)
        cv2.circle(cover, core, rc, 1.0, -1, cv2.LINE_AA, shift=4)
    cover = np.clip(cover, 0, 1)[..., None]
    return albedo * (1 - cover) + layer * cover


_TEXTURES: dict[str, Callable[[_Canvas, MaskDesign, np.random.Generator], np.ndarray]] = {
    "surgical": _surgical,
    "cloth": _fabric,
    "n95": _n95,
    "kn95": _kn95,
    "patterned": _patterned,
}


def _surface_shading(c: _Canvas, d: MaskDesign, pose: FacePose) -> np.ndarray:
    """Lambert shading of the mask surface, lit from above the camera."""
    hy = np.interp(c.y, _PROFILE_Y, np.gradient(d.profile_h, _PROFILE_Y)).astype(np.float32)
    hx = -2.0 * d.curvature * c.x
    if d.style == "kn95":  # two flat-ish panels meeting at the fold
        hx = hx - 0.5 * np.tanh(c.x * c.res)
    if d.style == "n95":  # a cup: also curves away top and bottom
        hy = hy - 0.9 * (c.y - 1.2)
    normal = np.stack([-hx, -hy, -np.ones_like(hx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    lambert = np.clip(normal @ (pose.rotation.T @ _LIGHT).astype(np.float32), 0.0, 1.0)
    return 0.3 + 0.75 * lambert


# ---------------------------------------------------------------- image space


def _mask_height(d: MaskDesign, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.interp(y, _PROFILE_Y, d.profile_h) - d.curvature * x * x


def _trace_to_surface(
    pose: FacePose, d: MaskDesign, px: np.ndarray, py: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face-plane (x, y) of the mask surface point seen at each pixel, and visibility.

    pixel = A @ (x, y) - c * h + offset with h = profile(y) - k x^2; for a fixed y this is
    a quadratic in x, solved in closed form (the root that is continuous with no yaw is
    the visible one; no real root = beyond the silhouette); y is refined by fixed-point
    iteration, which converges fast because pitch is mild.
    """
    p = pose.projection
    a_inv = np.linalg.inv(p[:, :2])
    g0, g1 = (float(v) for v in -(a_inv @ p[:, 2]))
    (a00, a01), (a10, a11) = a_inv.tolist()
    dx, dy = px - float(pose.offset[0]), py - float(pose.offset[1])
    qx = a00 * dx + a01 * dy
    qy = a10 * dx + a11 * dy
    k = float(d.curvature)
    y = qy + g1 * 0.45
    x = qx
    disc = np.ones_like(qx)
    for _ in range(3):
        hc = np.interp(y, _PROFILE_Y, d.profile_h).astype(np.float32)
        b = qx + g0 * hc
        disc = 1.0 + (4.0 * g0 * k) * b
        x = 2.0 * b / (1.0 + np.sqrt(np.maximum(disc, 0.0)))
        y = qy + g1 * (hc - k * x * x)
    return x, y, disc >= 0.0


def _skin_light(lum: np.ndarray, cover: np.ndarray, band: int) -> tuple[np.ndarray, float]:
    """Relative lighting plane fitted to a ring of skin around the mask, and its mean.

    The mask then gets the face's exposure and light direction (a lit left cheek means a
    lit left half of the mask).
    """
    inside = (cover > 0.05).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    ring = (cv2.dilate(inside, kernel) > 0) & (inside == 0)
    ys, xs = np.nonzero(ring)
    if len(xs) < 12:
        return np.ones_like(lum), 0.6
    vals = lum[ys, xs]
    h, w = lum.shape
    scale = float(max(h, w))
    design = np.stack([np.ones_like(vals), xs / scale, ys / scale], axis=1)
    coef, *_ = np.linalg.lstsq(design, vals, rcond=None)
    mean = float(vals.mean())
    gx = np.arange(w, dtype=np.float32)[None, :] / scale
    gy = np.arange(h, dtype=np.float32)[:, None] / scale
    plane = (float(coef[0]) + float(coef[1]) * gx + float(coef[2]) * gy) / max(mean, 1e-3)
    return np.clip(plane, 0.6, 1.4).astype(np.float32), mean


_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def _grain(roi: np.ndarray) -> float:
    """Pixel-noise sigma of the photo (0..1), so the mask is not cleaner than the photo.

    Immerkaer's Laplacian-difference estimate with a median instead of a mean: the kernel
    cancels smooth shading, the median ignores the edges that survive it.
    """
    if min(roi.shape[:2]) < 3:
        return 0.0
    green = roi[..., 1].astype(np.float32)
    response = cv2.filter2D(green, -1, _NOISE_KERNEL)[1:-1, 1:-1]
    sigma = float(np.median(np.abs(response))) / 0.6745 / 6.0 / 255.0
    return min(0.03, sigma)


def _ear_loops(
    pose: FacePose, d: MaskDesign, keypoints: np.ndarray
) -> list[np.ndarray]:
    """Image-space polylines from the mask's side corners to behind the visible ears."""
    loops = []
    down = pose.rotation[:2, 1] / np.linalg.norm(pose.rotation[:2, 1])
    for side, ear in ((-1.0, keypoints[4]), (1.0, keypoints[5])):
        # A cheek turned away by more than ~7 degrees hides its ear (the tragion lies
        # 1.2 IOD behind the eyes, the cheek edge 0.6): its loops are behind the head.
        if side * pose.yaw_sin > 0.12:
            continue
        for y_face, drop in ((0.65, -0.1), (1.45, 0.3)):  # ear root, under the lobe
            on_side = d.outline[d.outline[:, 0] * side > 0]
            start2 = on_side[np.argmin(np.abs(on_side[:, 1] - y_face))]
            start3 = np.array([start2[0], start2[1], -_mask_height(d, start2[:1], start2[1:])[0]])
            start = pose.project(start3[None])[0]
            end = ear + down * drop * pose.scale
            mid = 0.5 * (start + end)
            away = mid - keypoints[2]  # bow the string outwards, away from the nose
            ctrl = mid + away / max(float(np.linalg.norm(away)), 1e-6) * 0.12 * pose.scale
            t = np.linspace(0, 1, 12)[:, None]
            loops.append((1 - t) ** 2 * start + 2 * t * (1 - t) * ctrl + t**2 * end)
    return loops


def _check_inputs(
    image: np.ndarray, keypoints: np.ndarray, style: str | None, color: Color | None
) -> np.ndarray:
    if color is not None and (
        len(color) != 3
        or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in color)
    ):
        raise ValueError(f"color must be three ints in 0..255, got {color!r}")
    if style is not None and style not in MASK_STYLES:
        raise ValueError(f"unknown mask style {style!r}; styles are {', '.join(MASK_STYLES)}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or (
        image.shape[2] != 3
    ):
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small: {image.shape}")
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != (6, 2) or not np.all(np.isfinite(kp)):
        raise ValueError(f"expected (6, 2) finite keypoints, got shape {kp.shape}")
    return kp


def render_mask(
    image: np.ndarray,
    keypoints: np.ndarray,
    *,
    rng: np.random.Generator | int,
    style: str | None = None,
    color: Color | None = None,
) -> MaskedFace:
    """Put a synthetic mask on the face with these BlazeFace keypoints.

    ``image`` is RGB uint8 (H, W, 3) and is not modified; ``keypoints`` (6, 2) pixels in
    ``handler.faces.KEYPOINT_NAMES`` order. ``style`` None draws one from MASK_STYLES and
    ``color`` None draws one from the style's palette, both from ``rng``.
    """
    kp = _check_inputs(image, keypoints, style, color)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    chosen = style if style is not None else MASK_STYLES[int(gen.integers(len(MASK_STYLES)))]
    pose = fit_face_pose(kp)
    design = design_mask(chosen, gen, color)
    s = pose.scale

    rim = np.column_stack(
        [design.outline, -_mask_height(design, design.outline[:, 0], design.outline[:, 1])]
    )
    polygon = pose.project(rim).astype(np.float32)
    loops = _ear_loops(pose, design, kp) if design.ear_loops else []

    h, w = image.shape[:2]
    out = image.copy()
    alpha_full = np.zeros((h, w), np.float32)
    pts = np.vstack([polygon, *loops]) if loops else polygon
    margin = 0.3 * s + 4
    x0 = max(0, int(math.floor(pts[:, 0].min() - margin)))
    y0 = max(0, int(math.floor(pts[:, 1].min() - margin)))
    x1 = min(w, int(math.ceil(pts[:, 0].max() + margin)) + 1)
    y1 = min(h, int(math.ceil(pts[:, 1].max() + margin)) + 1)
    if x1 <= x0 or y1 <= y0:
        LOG.debug("mask falls outside the image; returning it unchanged")
        return MaskedFace(out, alpha_full, chosen, polygon)
    roi_w, roi_h = x1 - x0, y1 - y0
    roi = image[y0:y1, x0:x1]
    grey = _is_grey(roi)  # e.g. FER crops: the mask must not bring colour into them
    paint, keep, alpha = _mask_layers(pose, design, gen, roi, (x0, y0), grey)
    face = roi.astype(np.float32) * np.float32(1 / 255)
    if loops:
        strand = np.zeros((roi_h, roi_w), np.uint8)
        width = max(1, int(round(0.025 * s)))
        polys = [np.round((lp - [x0, y0]) * 16).astype(np.int32) for lp in loops]
        cv2.polylines(strand, polys, False, 255, width, cv2.LINE_AA, shift=4)
        strand_a = strand.astype(np.float32) * np.float32(0.9 / 255)
        tone = (design.color * 0.8).astype(np.float32)
        if grey:
            tone[:] = tone @ _LUMA
        face += (tone - face) * strand_a[..., None]
        alpha_full[y0:y1, x0:x1] = strand_a
    blended = face * keep[..., None] + paint
    out[y0:y1, x0:x1] = np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
    alpha_full[y0:y1, x0:x1] = np.maximum(alpha_full[y0:y1, x0:x1], alpha)
    return MaskedFace(out, alpha_full, chosen, polygon)


def _mask_layers(
    pose: FacePose,
    design: MaskDesign,
    gen: np.random.Generator,
    roi: np.ndarray,
    origin: tuple[int, int],
    grey: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mask over the ROI as ``out = face * keep + paint``, and its coverage.

    ``paint`` is the lit mask colour times coverage, ``keep`` what remains of the face
    (uncovered and not in the mask's contact shadow). Big faces are worked out on a grid
    of at most _WORK_SCALE pixels per IOD and scaled up: mask texture has no finer detail
    than that, and it keeps render time bounded.
    """
    s = pose.scale
    roi_h, roi_w = roi.shape[:2]
    step = max(1.0, s / _WORK_SCALE)
    gw, gh = max(1, int(math.ceil(roi_w / step))), max(1, int(math.ceil(roi_h / step)))
    fx_step, fy_step = roi_w / gw, roi_h / gh
    ws = s / math.sqrt(fx_step * fy_step)  # pixels per IOD on the working grid
    gx = (origin[0] + (np.arange(gw, dtype=np.float32) + 0.5) * fx_step - 0.5)[None, :]
    gy = (origin[1] + (np.arange(gh, dtype=np.float32) + 0.5) * fy_step - 0.5)[:, None]
    gx, gy = np.broadcast_to(gx, (gh, gw)), np.broadcast_to(gy, (gh, gw))

    canvas = _canvas(design, float(np.clip(ws, 12.0, _WORK_SCALE)))
    albedo = _TEXTURES[design.style](canvas, design, gen)
    texture = np.dstack(
        [albedo * _surface_shading(canvas, design, pose)[..., None], canvas.inside]
    ).astype(np.float32)
    fx, fy, visible = _trace_to_surface(pose, design, gx, gy)
    tex_h, tex_w = texture.shape[:2]
    map_x = np.where(visible, (fx - _TEX_X[0]) * canvas.res - 0.5, -2.0)
    map_y = np.where(visible, (fy - _TEX_Y[0]) * canvas.res - 0.5, -2.0)
    map_x = np.clip(map_x, -2, tex_w + 1).astype(np.float32)
    map_y = np.clip(map_y, -2, tex_h + 1).astype(np.float32)
    layer = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.GaussianBlur(np.clip(layer[..., 3], 0.0, 1.0), (0, 0), max(0.5, 0.012 * ws))

    small = roi if step == 1.0 else cv2.resize(roi, (gw, gh), interpolation=cv2.INTER_AREA)
    lum = small.astype(np.float32) @ (_LUMA / 255)
    plane, skin = _skin_light(lum, alpha, max(2, int(round(0.15 * ws))))
    exposure = float(np.clip((skin / 0.6) ** 0.7, 0.3, 1.25))
    rgb = np.clip(layer[..., :3] * (plane * exposure)[..., None], 0.0, 1.0)
    if grey:
        rgb = np.repeat((rgb @ _LUMA)[..., None], 3, axis=-1)  # grey photo, grey mask
    # the mask stands off the face and the light comes from above
    shift = np.float32([[1, 0, 0], [0, 1, 0.03 * ws]])
    shadow = cv2.warpAffine(alpha, shift, (gw, gh))
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.7, 0.05 * ws))
    keep = (1.0 - alpha) * (1.0 - 0.35 * shadow)
    paint = rgb * alpha[..., None]
    if step > 1.0:
        size = (roi_w, roi_h)
        paint = cv2.resize(paint, size, interpolation=cv2.INTER_LINEAR)
        keep = cv2.resize(keep, size, interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)
    grain = _grain(roi)
    if grain > 0:
        noise = gen.standard_normal(alpha.shape, dtype=np.float32) * np.float32(grain)
        paint = paint + (noise * alpha)[..., None]
    return paint, keep, alpha


def _is_grey(rgb: np.ndarray) -> bool:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return bool(np.array_equal(r, g) and np.array_equal(g, b))


# ---------------------------------------------------------------- contact sheet (CLI)

# BlazeFace (front model) keypoints of skimage's astronaut photo, measured once offline.
ASTRONAUT_KEYPOINTS = np.array(
    [[206.8, 100.5], [251.3, 109.3], [226.4, 124.0], [222.1, 145.2], [177.3, 110.0],
     [270.7, 126.8]], dtype=np.float32,
)


def _face_tile(image: np.ndarray, keypoints: np.ndarray, side: int) -> np.ndarray:
    """Square view of the face (as posed in the image) for the contact sheet."""
    pose = fit_face_pose(keypoints)
    centre = pose.project(np.array([[0.0, 0.8, 0.0]]))[0]
    zoom = side / (4.0 * pose.scale)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0.0, zoom)
    m[:, 2] += np.array([side / 2, side / 2]) - centre
    interp = cv2.INTER_NEAREST if zoom > 2.5 else cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, (side, side), flags=interp, borderMode=cv2.BORDER_REPLICATE)


def demo_faces() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB image, keypoints): the astronaut as is, rolled by 30 degrees, and as a
    48x48 grey FER-style crop."""
    from skimage import data  # scikit-image ships this public-domain NASA photo

    photo = np.ascontiguousarray(data.astronaut())
    kp = ASTRONAUT_KEYPOINTS
    h, w = photo.shape[:2]
    roll = cv2.getRotationMatrix2D((w / 2, h / 2), -30, 1.0)
    rolled = cv2.warpAffine(photo, roll, (w, h), borderMode=cv2.BORDER_REFLECT)
    rolled_kp = kp @ roll[:, :2].T + roll[:, 2]
    crop = cv2.getRotationMatrix2D((226.0, 135.0), 0.0, 48 / 120)
    crop[:, 2] += np.array([24.0, 24.0]) - np.array([226.0, 135.0])
    grey = cv2.cvtColor(cv2.warpAffine(photo, crop, (48, 48), flags=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    return [
        ("astronaut", photo, kp),
        ("rolled 30", rolled, rolled_kp.astype(np.float32)),
        ("48x48 grey", np.repeat(grey[..., None], 3, axis=2), kp @ crop[:, :2].T + crop[:, 2]),
    ]


def demo_sheet(seeds: Sequence[int] = (0, 1), tile: int = 200) -> np.ndarray:
    """Every style on every demo face, one row per (face, seed): RGB uint8."""
    tiles = []
    for _, image, kp in demo_faces():
        for seed in seeds:
            tiles.append(_face_tile(image, kp, tile))
            for style in MASK_STYLES:
                masked = render_mask(image, kp, rng=seed, style=style)
                tiles.append(_face_tile(masked.image, kp, tile))
    return contact_sheet(tiles, columns=1 + len(MASK_STYLES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, metavar="OUT.png",
                        help="write a contact sheet of every style on the demo faces")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    sheet = demo_sheet(args.seeds)
    write_sheet(sheet, args.demo)
    print(f"wrote {args.demo} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
