"""Reading training images the way serving decodes request images (PIL, EXIF-rotated, RGB)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.data.records import FaceRecord


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), EXIF orientation applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_rgb(record: FaceRecord) -> np.ndarray:
    """The record's (unmasked) image as a writable-safe contiguous RGB uint8 array."""
    if record.pixels is not None:
        return np.ascontiguousarray(record.pixels)
    assert record.image_path is not None
    return read_rgb(record.image_path)


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` if it decodes fully."""
    try:
        image = read_rgb(path)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return f"{type(e).__name__}: {e}"
    if image.ndim != 3 or min(image.shape[:2]) < 2:
        return f"degenerate image of shape {image.shape}"
    return None
