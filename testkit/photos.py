"""Real photos of faces that ship with project dependencies (nothing is downloaded).

``astronaut`` (skimage; Eileen Collins, NASA, public domain) and ``grace_hopper``
(matplotlib; US Navy photo, public domain) each show one face. ``one_face_photos`` places
them, scaled, shifted and mirrored, on 640x480 canvases: the benchmarks' request set, real
faces at the size of a typical client photo.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def one_face_photos(count: int = 20, size: tuple[int, int] = (640, 480),
                    seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB photos of ``size`` (w, h), each holding one of the two faces.

    The photo is scaled so that its long side is 60-100% of the canvas height, mirrored
    every other time and placed at a random offset on a grainy gradient between two of its
    own colours (a plausible background with no face-like blob in it).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    sources = [astronaut(), grace_hopper()]
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        if (i // len(sources)) % 2:
            src = np.ascontiguousarray(src[:, ::-1])
        top, bottom = src[0, 0].astype(np.float32), src[-1, -1].astype(np.float32)
        ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        grain = rng.normal(0.0, 6.0, (h, w, 3)).astype(np.float32)
        canvas = np.clip(top + (bottom - top) * ramp + grain, 0, 255).astype(np.uint8)
        scale = float(rng.uniform(0.6, 1.0)) * h / max(src.shape[:2])
        sw, sh = int(src.shape[1] * scale), int(src.shape[0] * scale)
        face = cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA)
        x, y = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
        canvas[y : y + sh, x : x + sw] = face
        out.append(np.ascontiguousarray(canvas))
    return out
