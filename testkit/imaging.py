"""Helpers the tests share for making image payloads."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()
