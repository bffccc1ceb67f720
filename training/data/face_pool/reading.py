"""Reading a shot: its stills or sampled video frames, as the detector will see them.

Image files are decoded by the serving decoder (``training.data.images``); video frames
(``cv2``) are sampled about once a second, at least ``MIN_FRAMES_PER_VIDEO`` per clip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from training.data.face_pool.sources import Shot
from training.data.images import as_served, read_rgb

FRAME_INTERVAL_S = 1.0  # sample videos about once a second ...
MIN_FRAMES_PER_VIDEO = 10  # ... but at least this many frames from a short clip


def prepare(image: np.ndarray, shot: Shot) -> np.ndarray:
    """What the detector sees for a shot: the region cut out, then upscaled (bicubic)."""
    out = image
    if shot.region is not None:
        h, w = out.shape[:2]
        x1, y1, x2, y2 = shot.region
        out = out[int(round(y1 * h)) : int(round(y2 * h)), int(round(x1 * w)) : int(round(x2 * w))]
    if shot.upscale > 1:
        out = cv2.resize(
            out,
            (out.shape[1] * shot.upscale, out.shape[0] * shot.upscale),
            interpolation=cv2.INTER_CUBIC,
        )
    return np.ascontiguousarray(out)


def read_bundled(spec: str) -> np.ndarray:
    """Images that come with installed libraries (scikit-image, matplotlib)."""
    library, name = spec.split(":", 1)
    if library == "skimage":
        from skimage import data

        if name.startswith("lfw_subset/"):
            return as_served(data.lfw_subset()[int(name.split("/")[1])])
        return as_served(getattr(data, name)())
    if library == "matplotlib":
        from matplotlib import cbook

        with cbook.get_sample_data(name) as f:
            return read_rgb(Path(f.name))
    raise ValueError(f"unknown bundled image {spec!r}")


def video_frame_indices(frame_count: int, fps: float) -> list[int]:
    """Frames about ``FRAME_INTERVAL_S`` apart, at least ``MIN_FRAMES_PER_VIDEO`` of them."""
    if frame_count <= 0:
        return []
    fps = fps if fps > 0 else 25.0
    step = min(FRAME_INTERVAL_S * fps, frame_count / MIN_FRAMES_PER_VIDEO)
    step = max(step, 1.0)
    n = int(frame_count // step)
    return sorted({min(frame_count - 1, int(round((i + 0.5) * step))) for i in range(n)})


def frames(shot: Shot, root: Path | None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, RGB image) for each still or sampled video frame of a shot."""
    if ":" in shot.path:
        yield shot.stem, read_bundled(shot.path)
        return
    assert root is not None
    path = root / shot.path
    if not shot.is_video:
        yield shot.stem, read_rgb(path)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RuntimeError(f"cannot open video {path}")
    try:
        wanted = video_frame_indices(
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
        )
        targets = set(wanted)
        last = max(wanted, default=-1)
        index = 0
        while index <= last and cap.grab():
            if index in targets:
                ok, bgr = cap.retrieve()
                if ok:
                    yield f"{shot.stem}_f{index:05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()
