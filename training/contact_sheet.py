"""Contact sheets: images laid out in rows, for checking data by eye.

Looking at the data is the check no metric replaces (are the faces faces, does a mask sit
where a mask sits), so several tools draw sheets: the face pool, the mask renderer, the
synthetic data set and the detector benchmark. They share this one layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

CAPTION_HEIGHT = 14  # px of the band under each tile when captions are drawn
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def text_tile(text: str, height: int, width: int, *, background: int = 255) -> np.ndarray:
    """A tile holding one line of text, vertically centred (a row label)."""
    tile = np.full((height, width, 3), background, np.uint8)
    ink = (0, 0, 0) if background > 127 else (255, 255, 255)
    cv2.putText(tile, text, (6, height // 2 + 5), _FONT, 0.55, ink, 1, cv2.LINE_AA)
    return tile


def _captioned(tile: np.ndarray, caption: str, background: int) -> np.ndarray:
    band = np.full((CAPTION_HEIGHT, tile.shape[1], 3), background, np.uint8)
    ink = (0, 0, 0) if background > 127 else (255, 255, 255)
    cv2.putText(band, caption, (1, CAPTION_HEIGHT - 4), _FONT, 0.35, ink, 1, cv2.LINE_AA)
    return np.vstack([tile, band])


def _pad(image: np.ndarray, height: int, width: int, background: int) -> np.ndarray:
    out = np.full((height, width, 3), background, np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def contact_sheet(
    tiles: Sequence[np.ndarray],
    *,
    columns: int | None = None,
    max_width: int | None = None,
    captions: Sequence[str] | None = None,
    background: int = 255,
) -> np.ndarray:
    """RGB uint8 tiles left to right, top to bottom; returns the sheet (RGB uint8).

    A row holds ``columns`` tiles, or as many as fit in ``max_width`` pixels (at least
    one), or all of them. Tiles may differ in size: each row is as tall as its tallest
    tile and rows are padded to the widest one with ``background`` (0-255 grey).
    ``captions`` (one per tile) are written in a band under each tile.
    """
    if not tiles:
        raise ValueError("no tiles to lay out")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"{len(captions)} captions for {len(tiles)} tiles")
    shown = [
        _captioned(t, captions[i], background) if captions is not None else t
        for i, t in enumerate(tiles)
    ]
    rows: list[list[np.ndarray]] = [[]]
    width = 0
    for tile in shown:
        full = (columns is not None and len(rows[-1]) == columns) or (
            max_width is not None and rows[-1] and width + tile.shape[1] > max_width
        )
        if full:
            rows.append([])
            width = 0
        rows[-1].append(tile)
        width += tile.shape[1]
    strips = []
    for row in rows:
        h = max(t.shape[0] for t in row)
        strips.append(np.hstack([_pad(t, h, t.shape[1], background) for t in row]))
    w = max(s.shape[1] for s in strips)
    return np.vstack([_pad(s, s.shape[0], w, background) for s in strips])


def write_sheet(sheet: np.ndarray, path: Path) -> Path:
    """Save an RGB sheet as PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
