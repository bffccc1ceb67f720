"""A controlled synthetic face-expression data set: drawn faces whose labels we fully know.

Why: the paradigms (unmasked baseline, contrastive pairs, distillation) must be compared on
data where the answer is known and which trains in minutes on 2 CPU cores. Each expression
shows in BOTH the upper face (brows, eyelids, cheeks) and the lower face (mouth, nose
wrinkle, nasolabial folds), with class prototypes chosen so that the upper face alone
separates the classes only partly (happiness / neutral / disgust and surprise / fear overlap
above the mask line). A mask therefore removes part of the signal, as in real life.

Faces are drawn with OpenCV (anti-aliased, 4x supersampled) from a face-local frame whose
origin is the midpoint between the eyes, x towards the image's right, y down, units of
about half a face width; proportions follow adult anthropometry (eyes at the head's vertical
middle, interocular ~0.45 face width, mouth ~1.1 interocular distances below the eyes) so
that keypoint-driven mask renderers land where they would on a photo. Everything is a pure
function of ``seed``: subject ``s`` image ``j`` is the same whatever the data-set size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from handler.faces import Detection
from handler.contract import EXPRESSION_LABELS
from training.data.records import FaceRecord

PARAMS: tuple[str, ...] = (
    "brow_raise",  # whole brow up (+) / down (-)
    "brow_inner",  # inner ends up (+, sad/fear slant) / down (-, anger V)
    "brow_furrow",  # brows drawn together, vertical lines between them
    "eye_open",  # upper lid higher (+, wide eyes) / lower (-)
    "cheek_raise",  # lower lid pushed up, crease under the eye, crow's feet, cheek apples
    "nose_wrinkle",  # lines across the lower nose (under a mask)
    "mouth_curve",  # corners up (+) / down (-)
    "mouth_open",  # jaw drop
    "mouth_width",  # lips stretched (+) / pressed narrow (-)
    "lip_raise",  # upper lip raised on one side (sneer), nasolabial fold
)
# Parameters whose cue stays above a face mask; the others show in the mask region.
UPPER_FACE_PARAMS: tuple[str, ...] = PARAMS[:5]

# Class prototypes in msde label order (surprise, fear, disgust, happiness, sadness, anger,
# neutral), loosely after FACS action units. Upper-face rows are deliberately close for
# happiness / disgust / neutral (cheek raise vs. lowered brows, both small) and for surprise /
# fear (fear adds inner raise and furrow), so the mouth is needed to tell them apart reliably.
PROTOTYPES: np.ndarray = np.array(
    [
        # raise inner furrow eye  cheek nose  curve open  width lip
        [1.00, 0.10, 0.00, 0.80, 0.00, 0.00, 0.00, 1.00, -0.60, 0.00],  # surprise
        [0.75, 0.55, 0.40, 0.65, 0.00, 0.00, -0.25, 0.40, 0.90, 0.00],  # fear
        [-0.30, -0.15, 0.35, -0.25, 0.40, 1.00, -0.45, 0.10, 0.00, 1.00],  # disgust
        [0.00, 0.00, 0.00, -0.20, 0.55, 0.10, 1.00, 0.35, 0.75, 0.15],  # happiness
        [-0.10, 0.90, 0.30, -0.35, 0.00, 0.00, -0.90, 0.00, -0.10, 0.00],  # sadness
        [-0.80, -0.90, 0.90, -0.10, 0.00, 0.30, -0.30, 0.00, -0.65, 0.00],  # anger
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # neutral
    ],
    dtype=np.float64,
)
PARAM_NOISE = 0.22  # per-image Gaussian noise on every parameter (label noise in disguise)
# The face box BlazeFace reports, in face-local units: square, from just above the brows to
# the chin, a little narrower than ear to ear. Calibrated by running the serving detector
# (handler.detect.FaceDetector) on these faces: box edges and keypoints agree within ~3 %
# of the box side (docs/data.md).
BOX_CENTRE_Y = 0.46
BOX_HALF_SIDE = 1.04
_SS = 4  # supersampling factor of the drawing canvas

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """What stays fixed for one synthetic person."""

    skin: Colour
    hair: Colour
    iris: Colour
    lips: Colour
    clothes: Colour
    hair_style: int  # 0 short, 1 long, 2 low fringe, 3 bald
    hairline: float
    face_w: float
    face_top: float
    face_bottom: float
    jaw_taper: float
    eye_dx: float
    eye_hw: float
    brow_y: float
    brow_thick: float
    nose_w: float
    nose_y: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    resting: tuple[float, ...]  # this person's neutral offsets of the expression parameters
    expressiveness: float


@dataclass(frozen=True)
class Pose:
    """Where the face sits in the image: pixels per face unit, roll / yaw (rad), eye midpoint."""

    scale: float
    roll: float
    yaw: float
    origin: tuple[float, float]

    def to_image(self, pts: np.ndarray, z: float | np.ndarray = 0.0) -> np.ndarray:
        """Face-local (N, 2) points at depth ``z`` -> image pixels (yaw as a depth shear)."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        x = pts[:, 0] * math.cos(self.yaw) + np.asarray(z) * math.sin(self.yaw)
        y = pts[:, 1]
        c, s = math.cos(self.roll), math.sin(self.roll)
        return np.stack(
            [
                self.origin[0] + self.scale * (c * x - s * y),
                self.origin[1] + self.scale * (s * x + c * y),
            ],
            axis=1,
        )


@dataclass(frozen=True)
class SyntheticFace:
    """One rendered face with its ground truth."""

    image: np.ndarray  # (size, size, 3) RGB uint8
    detection: Detection
    label: int
    expression: np.ndarray  # (len(PARAMS),) the parameters it was drawn with


_HAIR_COLOURS = np.array(
    [(25, 20, 18), (60, 40, 25), (100, 70, 40), (170, 130, 80), (140, 60, 30), (150, 150, 150)],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array(
    [(70, 45, 25), (40, 30, 20), (70, 110, 150), (80, 110, 70)], dtype=np.float64
)


def _colour(rgb: np.ndarray) -> Colour:
    c = np.clip(rgb, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_identity(rng: np.random.Generator) -> Identity:
    """A random person: skin tone, face shape, feature geometry, hair, resting expression."""
    t = rng.uniform(0.0, 1.0)
    skin = (1 - t) * np.array([240, 208, 182]) + t * np.array([92, 58, 40]) + rng.normal(0, 7, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 8, 3)
    lips = skin * np.array([0.82, 0.55, 0.55]) + np.array([30, 5, 10])
    return Identity(
        skin=_colour(skin),
        hair=_colour(hair),
        iris=_colour(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 6, 3)),
        lips=_colour(lips),
        clothes=_colour(rng.uniform(20, 235, 3)),
        hair_style=int(rng.integers(4)),
        hairline=float(rng.uniform(-1.12, -0.82)),
        face_w=float(rng.uniform(0.9, 1.08)),
        face_top=float(rng.uniform(1.45, 1.62)),
        face_bottom=float(rng.uniform(1.35, 1.55)),
        jaw_taper=float(rng.uniform(0.12, 0.38)),
        eye_dx=float(rng.uniform(0.41, 0.49)),
        eye_hw=float(rng.uniform(0.15, 0.2)),
        brow_y=float(rng.uniform(-0.42, -0.33)),
        brow_thick=float(rng.uniform(0.045, 0.1)),
        nose_w=float(rng.uniform(0.12, 0.19)),
        nose_y=float(rng.uniform(0.5, 0.6)),
        mouth_y=float(rng.uniform(0.96, 1.06)),
        mouth_w=float(rng.uniform(0.29, 0.37)),
        lip_thick=float(rng.uniform(0.05, 0.09)),
        resting=tuple(float(v) for v in rng.normal(0.0, 0.12, len(PARAMS))),
        expressiveness=float(rng.uniform(0.8, 1.15)),
    )


def sample_expression(label: int, identity: Identity, rng: np.random.Generator) -> np.ndarray:
    """Prototype x (identity expressiveness x image intensity) + resting face + noise."""
    intensity = rng.uniform(0.5, 1.1) * identity.expressiveness
    noise = rng.normal(0.0, PARAM_NOISE, len(PARAMS))
    return PROTOTYPES[label] * intensity + np.asarray(identity.resting) + noise


def sample_pose(size: int, rng: np.random.Generator) -> Pose:
    """Small roll / yaw, scale and translation; the face box stays mostly inside the image."""
    scale = size * rng.uniform(0.235, 0.29)
    roll = rng.uniform(-0.2, 0.2)
    yaw = rng.uniform(-0.3, 0.3)
    centre = size / 2 + rng.uniform(-0.07, 0.07, 2) * size
    # place the origin so that the box centre lands on ``centre``
    c, s = math.cos(roll), math.sin(roll)
    off = scale * BOX_CENTRE_Y * np.array([-s, c])
    return Pose(scale, roll, yaw, (float(centre[0] - off[0]), float(centre[1] - off[1])))


class _Canvas:
    """Supersampled RGB drawing surface addressed in face-local coordinates."""

    def __init__(self, size: int, pose: Pose) -> None:
        self.size = size
        self.pose = pose
        self.img = np.zeros((size * _SS, size * _SS, 3), dtype=np.uint8)

    def px(self, pts: np.ndarray, z: float | np.ndarray = 0.0) -> np.ndarray:
        return (self.pose.to_image(pts, z) * _SS + (_SS - 1) / 2) * 16  # 4 fractional bits

    def width(self, units: float) -> int:
        return max(1, round(units * self.pose.scale * _SS))

    def poly(self, pts: np.ndarray, colour: tuple[float, ...], z: float = 0.0) -> None:
        p = np.round(self.px(pts, z)).astype(np.int32)
        cv2.fillPoly(self.img, [p], colour, lineType=cv2.LINE_AA, shift=4)

    def line(
        self, pts: np.ndarray, colour: tuple[float, ...], units: float, z: float = 0.0
    ) -> None:
        p = np.round(self.px(pts, z)).astype(np.int32)
        cv2.polylines(self.img, [p], False, colour, self.width(units), cv2.LINE_AA, shift=4)

    def composite(self, layer: _Canvas, region: np.ndarray, z: float = 0.0,
                  alpha: float = 1.0) -> None:
        """Take ``layer``'s pixels inside polygon ``region`` (anti-aliased edge) at ``alpha``."""
        p = np.round(self.px(region, z)).astype(np.int32)
        n = self.img.shape[0]
        x0, y0 = np.clip((p.min(axis=0) >> 4) - 2, 0, n)
        x1, y1 = np.clip((p.max(axis=0) >> 4) + 3, 0, n)
        if x1 <= x0 or y1 <= y0:
            return
        clip = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        cv2.fillPoly(clip, [p - np.array([x0, y0]) * 16], 255, cv2.LINE_AA, 4)
        a = (clip.astype(np.float32) * (float(np.clip(alpha, 0.0, 1.0)) / 255.0))[..., None]
        roi = self.img[y0:y1, x0:x1]
        self.img[y0:y1, x0:x1] = (layer.img[y0:y1, x0:x1] * a + roi * (1 - a)).astype(np.uint8)

    def copy(self) -> _Canvas:
        out = _Canvas.__new__(_Canvas)
        out.size, out.pose, out.img = self.size, self.pose, self.img.copy()
        return out


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _shade(colour: Colour, factor: float) -> Colour:
    return _colour(np.asarray(colour) * factor)


def _draw_background(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Gradient plus out-of-focus clutter, drawn at output resolution (it is blurred anyway)."""
    n = canvas.size
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    ramp = np.linspace(0, 1, n)[:, None, None]
    bg = np.clip(top * (1 - ramp) + bottom * ramp, 0, 255).astype(np.uint8)
    bg = np.ascontiguousarray(np.broadcast_to(bg, (n, n, 3)))
    for _ in range(int(rng.integers(4, 10))):
        colour = _colour(rng.uniform(30, 230, 3))
        kind = rng.integers(3)
        a, b = rng.uniform(0, n, 2).astype(int), rng.uniform(0, n, 2).astype(int)
        if kind == 0:
            cv2.rectangle(bg, tuple(a), tuple(b), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(bg, tuple(a), int(rng.uniform(0.03, 0.2) * n), colour, -1, cv2.LINE_AA)
        else:
            cv2.line(bg, tuple(a), tuple(b), colour, int(rng.uniform(1, 4)), cv2.LINE_AA)
    bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.5, 2.5))
    canvas.img = cv2.resize(bg, canvas.img.shape[1::-1], interpolation=cv2.INTER_LINEAR)


def _outline(who: Identity, jaw_drop: float, n: int = 72) -> np.ndarray:
    """Egg-shaped face contour: narrower jaw, longer when the mouth opens."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    sin = np.sin(t)
    half_h = np.where(sin < 0, who.face_top, who.face_bottom + 0.2 * jaw_drop)
    x = who.face_w * np.cos(t) * (1 - who.jaw_taper * np.clip(sin, 0, None) ** 2)
    return np.stack([x, 0.15 + half_h * sin], axis=1)


def _hairline(who: Identity, x: np.ndarray) -> np.ndarray:
    """Height of the hairline across the forehead; it dips at the temples."""
    return who.hairline + 0.45 * (x / who.face_w) ** 2


def _hair_cap(who: Identity, outline: np.ndarray) -> np.ndarray:
    """Hair over the top of the head, down to the hairline."""
    centre = np.array([0.0, 0.15])
    grown = centre + (outline - centre) * 1.06
    top = grown[(grown[:, 1] < 0.15) & (grown[:, 1] < _hairline(who, grown[:, 0]))]
    top = top[np.argsort(np.arctan2(top[:, 1] - 0.15, top[:, 0]))]  # left -> over -> right
    xs = np.linspace(top[-1, 0], top[0, 0], 16)
    return np.concatenate([top, np.stack([xs, _hairline(who, xs)], axis=1)])


def _brow(who: Identity, e: dict[str, float], side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (inner -> outer) and filled polygon of one brow; side -1 = image left."""
    t = np.linspace(0, 1, 12)
    inner = who.eye_dx - who.eye_hw * 1.25
    outer = who.eye_dx + who.eye_hw * 1.4
    x = side * (inner + (outer - inner) * t)
    x = x - side * 0.09 * e["brow_furrow"] * (1 - t) ** 2
    y = who.brow_y - 0.08 * np.sin(math.pi * t**0.8) + 0.04 * t**2
    y = y - 0.2 * e["brow_raise"] - 0.17 * e["brow_inner"] * (1 - t) ** 1.5
    y = y + 0.07 * max(e["brow_furrow"], 0.0) * (1 - t)
    centre = np.stack([x, y], axis=1)
    tangent = np.gradient(centre, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    half = (who.brow_thick * (1.1 - 0.55 * t) / 2)[:, None]
    return centre, np.concatenate([centre + normal * half, (centre - normal * half)[::-1]])


def _draw_eye(canvas: _Canvas, who: Identity, e: dict[str, float], side: int,
              gaze: np.ndarray) -> None:
    cx, hw = side * who.eye_dx, who.eye_hw
    u = np.linspace(0, 1, 16)
    xs = cx - side * hw + side * 2 * hw * u  # inner corner -> outer corner
    tilt = -0.03 * u
    upper_h = hw * 0.62 * float(np.clip(1 + 0.6 * e["eye_open"], 0.15, 1.9))
    lower_h = hw * 0.4 * float(np.clip(1 - 0.75 * e["cheek_raise"], 0.15, 1.5))
    upper = np.stack([xs, tilt - upper_h * np.sin(math.pi * u) ** 0.8], axis=1)
    lower = np.stack([xs, tilt + lower_h * np.sin(math.pi * u) ** 0.9], axis=1)
    shape = np.concatenate([upper, lower[::-1]])
    z = 0.35
    # iris and pupil clipped to the eye opening: draw on a copy, keep the eye's pixels
    layer = canvas.copy()
    layer.poly(shape, (236, 234, 228), z)
    centre = np.array([cx, 0.0]) + gaze
    layer.poly(_ellipse(*centre, hw * 0.52, hw * 0.52), who.iris, z)
    layer.poly(_ellipse(*centre, hw * 0.22, hw * 0.22), (15, 12, 12), z)
    canvas.composite(layer, shape, z)
    canvas.line(upper, (25, 18, 18), 0.035, z)
    canvas.line(lower, _shade(who.skin, 0.7), 0.015, z)
    crease = upper + np.array([0.0, -0.07 - 0.02 * max(e["eye_open"], 0.0)])
    canvas.line(crease[2:-2], _shade(who.skin, 0.8), 0.015, z)
    cheek = float(np.clip(e["cheek_raise"], 0, 1.2))
    if cheek > 0.05:
        fold = lower[2:-2] + np.array([0.0, 0.07])
        canvas.line(fold, _shade(who.skin, 1 - 0.3 * cheek), 0.02, z)
        corner = np.array([cx + side * hw * 1.05, -0.01])
        for dy in (-0.06, 0.0, 0.06):
            ray = np.stack([corner, corner + np.array([side * 0.11, dy * 1.6])])
            canvas.line(ray, _shade(who.skin, 1 - 0.3 * cheek), 0.014, z)


def _mouth(who: Identity, e: dict[str, float]) -> dict[str, np.ndarray]:
    """Lip contours (left -> right) and the mouth-centre keypoint."""
    u = np.linspace(0, 1, 25)
    half_w = who.mouth_w * (1 + 0.28 * e["mouth_width"] + 0.1 * max(e["mouth_curve"], 0.0))
    half_w = max(half_w, 0.12)
    corner_y = who.mouth_y - 0.13 * e["mouth_curve"]
    s = np.sin(math.pi * u) ** 0.6
    base = corner_y * (1 - s) + who.mouth_y * s
    x = (2 * u - 1) * half_w
    opening = 0.34 * float(np.clip(e["mouth_open"], 0.0, 1.3))
    sneer = 0.1 * max(e["lip_raise"], 0.0) * np.exp(-(((u - 0.3) / 0.18) ** 2))
    upper_inner = base - sneer
    lower_inner = base + opening * np.sin(math.pi * u) ** 0.7
    t = who.lip_thick
    upper_outer = upper_inner - t * (0.35 + 0.65 * np.sin(math.pi * u)) + 0.02 * np.exp(
        -(((u - 0.5) / 0.06) ** 2)
    )
    lower_outer = lower_inner + 1.25 * t * np.sin(math.pi * u) ** 0.8
    pts = {k: np.stack([x, v], axis=1) for k, v in {
        "upper_inner": upper_inner, "lower_inner": lower_inner,
        "upper_outer": upper_outer, "lower_outer": lower_outer,
    }.items()}
    pts["centre"] = np.array([[0.0, (upper_inner[12] + lower_inner[12]) / 2]])
    return pts


def _draw_head(canvas: _Canvas, who: Identity, skin: Colour, jaw_drop: float) -> None:
    """Clothes, neck, hair behind the head, ears, face, hair on top."""
    canvas.poly(_ellipse(0.0, 3.2, 2.4, 1.3), who.clothes)
    neck = np.array([[-0.45, 0.8], [0.45, 0.8], [0.5, 2.3], [-0.5, 2.3]]) * [who.face_w, 1]
    canvas.poly(neck, _shade(skin, 0.82))
    if who.hair_style == 1:
        back = np.concatenate([_ellipse(0.0, 0.0, who.face_w * 1.28, who.face_top * 1.1)[20:],
                               np.array([[1.3 * who.face_w, 1.9], [-1.3 * who.face_w, 1.9]])])
        canvas.poly(back, _shade(who.hair, 0.85))
    for side in (-1, 1):
        canvas.poly(_ellipse(side * who.face_w * 0.97, 0.22, 0.13, 0.27), _shade(skin, 0.9), -0.3)
    outline = _outline(who, jaw_drop)
    canvas.poly(outline, skin)
    if who.hair_style != 3:
        canvas.poly(_hair_cap(who, outline), who.hair)


def _draw_brows(canvas: _Canvas, who: Identity, e: dict[str, float], skin: Colour) -> None:
    """Brows, the vertical lines of a furrow and the forehead lines of raised brows."""
    brow_colour = _colour(np.asarray(who.hair) * 0.6 + np.asarray(skin) * 0.15)
    brows = {side: _brow(who, e, side) for side in (-1, 1)}
    for _, polygon in brows.values():
        canvas.poly(polygon, brow_colour, 0.45)
    furrow = float(np.clip(e["brow_furrow"], 0, 1.2))
    if furrow > 0.1:
        for side in (-1, 1):
            y0 = brows[side][0][0, 1]
            canvas.line(np.array([[side * 0.06, y0 - 0.02], [side * 0.05, y0 + 0.14]]),
                        _shade(skin, 1 - 0.35 * furrow), 0.018, 0.45)
    raise_ = float(np.clip(e["brow_raise"], 0, 1.2))
    if raise_ > 0.2:
        top = min(b[0][:, 1].min() for b in brows.values())
        xs = np.linspace(-0.4, 0.4, 9)
        for k in (1, 2):
            canvas.line(np.stack([xs, top - 0.1 * k - 0.05 * xs**2], axis=1),
                        _shade(skin, 1 - 0.25 * raise_), 0.014, 0.45)


def _draw_midface(canvas: _Canvas, who: Identity, e: dict[str, float], skin: Colour) -> None:
    """Cheek apples, nose and nose wrinkle: all under a mask."""
    cheek = float(np.clip(e["cheek_raise"], 0, 1.2))
    if cheek > 0.05:
        glow = canvas.copy()
        for side in (-1, 1):
            apple = _ellipse(side * 0.52, 0.45, 0.2, 0.13)
            glow.poly(apple, _colour(np.asarray(skin) * [1.08, 0.92, 0.92]), 0.5)
            canvas.composite(glow, apple, 0.5, alpha=0.45 * cheek)
    ny, nw = who.nose_y, who.nose_w
    for side in (-1, 1):
        canvas.line(np.array([[side * 0.07, 0.08], [side * nw * 0.75, ny - 0.06]]),
                    _shade(skin, 0.88), 0.015, 0.7)
        canvas.line(_ellipse(side * nw, ny + 0.01, 0.055, 0.06)[[14, 17, 20, 23, 26]][:: -side],
                    _shade(skin, 0.75), 0.02, 0.8)
        canvas.poly(_ellipse(side * nw * 0.45, ny + 0.05, 0.045, 0.022), _shade(skin, 0.45), 0.85)
    tip = np.stack([np.linspace(-nw * 0.55, nw * 0.55, 9),
                    ny + 0.075 + 0.02 * np.cos(np.linspace(-1.5, 1.5, 9))], axis=1)
    canvas.line(tip, _shade(skin, 0.8), 0.015, 0.9)
    wrinkle = float(np.clip(e["nose_wrinkle"], 0, 1.2))
    if wrinkle > 0.1:
        for k, y in enumerate((ny - 0.16, ny - 0.1, ny - 0.04)):
            w = 0.08 + 0.02 * k
            arc = np.stack([np.linspace(-w, w, 7), y - 0.02 * np.cos(np.linspace(-1.3, 1.3, 7))], 1)
            canvas.line(arc, _shade(skin, 1 - 0.4 * wrinkle), 0.02, 0.75)


def _draw_mouth(canvas: _Canvas, who: Identity, e: dict[str, float], skin: Colour,
                m: dict[str, np.ndarray]) -> None:
    """Nasolabial folds, lips, the open mouth and teeth."""
    fold = 0.15 + 0.75 * max(e["mouth_curve"], 0.0) + 0.6 * max(e["lip_raise"], 0.0)
    for side, end in ((-1, m["upper_outer"][0]), (1, m["upper_outer"][-1])):
        start = np.array([side * (who.nose_w + 0.07), who.nose_y - 0.02])
        mid = (start + end) / 2 + np.array([side * 0.06, 0.0])
        canvas.line(np.stack([start, mid, end + np.array([side * 0.05, 0.06])]),
                    _shade(skin, 1 - 0.25 * min(fold, 1.2)), 0.018, 0.5)
    canvas.poly(np.concatenate([m["upper_outer"], m["lower_outer"][::-1]]), who.lips, 0.6)
    inner = np.concatenate([m["upper_inner"], m["lower_inner"][::-1]])
    gap = m["lower_inner"][:, 1] - m["upper_inner"][:, 1]
    if gap.max() > 0.02:
        canvas.poly(inner, (70, 25, 30), 0.6)
        if e["mouth_curve"] > 0.3 or e["lip_raise"] > 0.3 or e["mouth_open"] > 0.6:
            teeth_low = m["upper_inner"][:, 1] + np.minimum(gap * 0.55, 0.07)
            teeth = np.concatenate(
                [m["upper_inner"], np.stack([m["upper_inner"][:, 0], teeth_low], 1)[::-1]]
            )
            canvas.poly(teeth[1:-1], (238, 236, 228), 0.6)
    canvas.line(m["upper_inner"], _shade(who.lips, 0.55), 0.015, 0.6)


def render_face(
    who: Identity, expression: np.ndarray, pose: Pose, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, Detection]:
    """Draw one face; returns the RGB uint8 image and its box + BlazeFace keypoints."""
    e = dict(zip(PARAMS, (float(v) for v in expression), strict=True))
    canvas = _Canvas(size, pose)
    _draw_background(canvas, rng)
    skin = _colour(np.asarray(who.skin) * rng.uniform(0.95, 1.05))
    _draw_head(canvas, who, skin, max(e["mouth_open"], 0.0))
    _draw_brows(canvas, who, e, skin)
    gaze = rng.normal(0, who.eye_hw * 0.12, 2)
    for side in (-1, 1):
        _draw_eye(canvas, who, e, side, gaze)
    _draw_midface(canvas, who, e, skin)
    mouth = _mouth(who, e)
    _draw_mouth(canvas, who, e, skin, mouth)
    image = cv2.resize(canvas.img, (size, size), interpolation=cv2.INTER_AREA)
    image = _lighting(image, rng)
    # ground truth geometry
    kp_local = np.array(
        [[-who.eye_dx, 0.0], [who.eye_dx, 0.0], [0.0, who.nose_y], mouth["centre"][0],
         [-who.face_w * 0.97, 0.22], [who.face_w * 0.97, 0.22]]
    )
    depth = np.array([0.35, 0.35, 0.9, 0.6, -0.3, -0.3])
    keypoints = pose.to_image(kp_local, depth).astype(np.float32)
    centre = pose.to_image(np.array([[0.0, BOX_CENTRE_Y]]), 0.5)[0]
    half = pose.scale * who.face_w * BOX_HALF_SIDE
    box = (float(centre[0] - half), float(centre[1] - half),
           float(centre[0] + half), float(centre[1] + half))
    return image, Detection(box=box, score=1.0, keypoints=keypoints)


def _lighting(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Directional light, exposure, colour cast, gamma, blur and sensor noise."""
    h, w = image.shape[:2]
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)) / (w / 2)
    gain = rng.uniform(0.75, 1.2) * (1 + rng.uniform(0, 0.3) * ramp)
    x = image.astype(np.float32) / 255.0 * gain[..., None] * rng.uniform(0.92, 1.08, 3)
    x = np.clip(x, 0, 1) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.4:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 0.8))
    x = x * 255 + rng.normal(0, rng.uniform(1, 5), x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def synthetic_face(subject: int, index: int, label: int, size: int = 96,
                   seed: int = 0) -> SyntheticFace:
    """Image ``index`` of subject ``subject``: a pure function of its arguments."""
    who = sample_identity(np.random.default_rng([seed, subject, 0]))
    rng = np.random.default_rng([seed, subject, 1, index])
    expression = sample_expression(label, who, rng)
    pose = sample_pose(size, rng)
    image, detection = render_face(who, expression, pose, size, rng)
    return SyntheticFace(image=image, detection=detection, label=label, expression=expression)


def synthetic_labels(subject: int, images_per_subject: int) -> np.ndarray:
    """Labels of one subject's images; cycling across subjects keeps the classes balanced."""
    start = subject * images_per_subject
    return (np.arange(start, start + images_per_subject) % len(EXPRESSION_LABELS)).astype(np.int64)


def generate_faces(
    n_subjects: int, images_per_subject: int, image_size: int = 96, seed: int = 0
) -> list[FaceRecord]:
    """The synthetic data set as records with in-memory pixels and exact detections."""
    records: list[FaceRecord] = []
    for s in range(n_subjects):
        for j, label in enumerate(synthetic_labels(s, images_per_subject)):
            face = synthetic_face(s, j, int(label), image_size, seed)
            records.append(
                FaceRecord(label=int(label), subject=f"syn{s:04d}", pixels=face.image,
                           detection=face.detection)
            )
    return records
