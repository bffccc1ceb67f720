"""Answers drawn on the photo: boxes coloured by mask state, labels, Grad-CAM heatmaps.

Line widths and text scale with the image, so labels stay legible on a 200 px thumbnail
and on a 6000 px photo. Boxes are in pixels of the EXIF-rotated image (what the service
analysed), so photos are EXIF-rotated here before drawing.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from handler.schema import FaceExplanation, FaceResult

# Mask state -> box colour (RGB); the web page uses the same two.
MASK_COLOURS: dict[str, tuple[int, int, int]] = {
    "unmasked": (0, 200, 83),
    "masked": (41, 121, 255),
}
OTHER_COLOUR = (255, 171, 0)
TEXT_COLOUR = (255, 255, 255)
# Heat colour ramp (0 -> 1), the one the web page uses: transparent blue to red.
HEAT_STOPS = np.array(
    [[0, 0, 128], [0, 64, 255], [0, 224, 255], [255, 255, 0], [255, 96, 0], [204, 0, 0]],
    dtype=np.float32,
)
HEAT_MAX_ALPHA = 0.65


def load_image(source: str | Path | bytes) -> Image.Image:
    """RGB image as the service saw it: EXIF orientation applied, first frame."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        img.seek(0)
        return ImageOps.exif_transpose(img).convert("RGB")


def answer_text(face: FaceResult) -> str:
    """The face's answer: 'happiness 93%', 'negative 74% (group)' when only the group of
    expressions is told, 'uncertain (fear 41%)' when the service abstained."""
    a = face.answer
    if a.level == "expression":
        return f"{a.label} {a.probability:.0%}"
    if a.level == "group":
        return f"{a.label} {a.probability:.0%} (group)"
    probabilities = face.expression.probabilities
    top = max(probabilities, key=lambda name: probabilities[name])
    return f"uncertain ({top} {face.expression.probability:.0%})"


def face_label(face: FaceResult) -> str:
    """``answer_text`` + ', masked' for masked faces."""
    text = answer_text(face)
    return f"{text}, masked" if face.mask.label == "masked" else text


def box_colour(face: FaceResult) -> tuple[int, int, int]:
    return MASK_COLOURS.get(face.mask.label, OTHER_COLOUR)


def _scale(image: Image.Image) -> tuple[int, ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    side = min(image.size)
    width = max(2, round(side / 250))
    font = ImageFont.load_default(size=max(11, round(side / 32)))
    return width, font


def draw_faces(image: Image.Image, faces: list[FaceResult] | list[FaceExplanation]
               ) -> Image.Image:
    """A copy of ``image`` with each face's box and label."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width, font = _scale(out)
    for face in faces:
        x1, y1, x2, y2 = face.box
        colour = box_colour(face)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = face_label(face)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(2, width)
        tag_h = bottom - top + 2 * pad
        tag_w = right - left + 2 * pad
        ty = y1 - tag_h if y1 - tag_h >= 0 else y2  # above the box, or below at the top edge
        tx = min(max(0.0, x1 - width / 2), max(0.0, out.width - tag_w))
        draw.rectangle((tx, ty, tx + tag_w, ty + tag_h), fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=TEXT_COLOUR, font=font)
    return out


def heat_rgba(heat: np.ndarray) -> np.ndarray:
    """uint8 heat (H, W) -> RGBA uint8: colour ramp, opacity growing with heat."""
    t = heat.astype(np.float32) / 255.0
    pos = t * (len(HEAT_STOPS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(HEAT_STOPS) - 2)
    frac = (pos - lo)[..., None]
    rgb = HEAT_STOPS[lo] * (1 - frac) + HEAT_STOPS[lo + 1] * frac
    alpha = np.clip(t * 1.5, 0.0, 1.0) * HEAT_MAX_ALPHA * 255
    return np.dstack([rgb, alpha]).round().astype(np.uint8)


def heatmap_array(face: FaceExplanation) -> np.ndarray:
    """The face's heatmap PNG as uint8 (h, w); raises ValueError when it has none."""
    if face.heatmap is None:
        raise ValueError("this face has no heatmap (beyond the per-request cap)")
    with Image.open(io.BytesIO(base64.b64decode(face.heatmap.png))) as png:
        return np.asarray(png.convert("L"))


def _heat_in_box(face: FaceExplanation) -> tuple[int, int, np.ndarray]:
    """(left, top, uint8 heat stretched to ``heatmap.box`` in image pixels)."""
    assert face.heatmap is not None
    x1, y1, x2, y2 = face.heatmap.box
    w, h = max(1, round(x2 - x1)), max(1, round(y2 - y1))
    heat = Image.fromarray(heatmap_array(face)).resize((w, h), Image.Resampling.BILINEAR)
    return round(x1), round(y1), np.asarray(heat)


def heat_on_image(face: FaceExplanation, size: tuple[int, int]) -> np.ndarray:
    """The face's heat in [0, 1] on an image of ``size`` (width, height): for measuring
    where the model looked (e.g. the share above a mask's top edge)."""
    w, h = size
    x, y, heat = _heat_in_box(face)
    out = np.zeros((h, w), np.float32)
    part = heat[: max(0, h - y), : max(0, w - x)]
    out[y : y + part.shape[0], x : x + part.shape[1]] = part / 255.0
    return out


def overlay_heatmap(image: Image.Image, face: FaceExplanation) -> Image.Image:
    """``image`` with the face's heatmap stretched over ``heatmap.box``, and its box drawn."""
    x, y, heat = _heat_in_box(face)
    out = image.convert("RGBA")
    out.alpha_composite(Image.fromarray(heat_rgba(heat), "RGBA"), (x, y))
    return draw_faces(out.convert("RGB"), [face])
