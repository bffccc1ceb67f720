"""The one contact-sheet layout every sheet-drawing tool uses."""

from __future__ import annotations

import numpy as np
import pytest

from training.contact_sheet import CAPTION_HEIGHT, contact_sheet, text_tile


def _tile(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_columns_wrap_rows_and_pad_with_the_background() -> None:
    sheet = contact_sheet([_tile(10, 10, v) for v in (0, 50, 100)], columns=2)
    assert sheet.shape == (20, 20, 3)
    assert sheet[0, 0, 0] == 0 and sheet[0, 10, 0] == 50 and sheet[10, 0, 0] == 100
    assert (sheet[10:, 10:] == 255).all()


def test_max_width_packs_tiles_of_different_sizes() -> None:
    tiles = [_tile(8, 30, 0), _tile(12, 30, 0), _tile(8, 50, 0)]
    sheet = contact_sheet(tiles, max_width=70, background=7)
    assert sheet.shape == (12 + 8, 60, 3)  # rows: [30+30 wide, 12 tall], [50 wide, 8 tall]
    assert (sheet[8:12, :30] == 7).all()  # the shorter tile of row 1 is padded
    assert (sheet[12:, 50:] == 7).all()


def test_captions_add_a_band_under_every_tile() -> None:
    sheet = contact_sheet([_tile(16, 40, 0)] * 2, captions=["a", "b"])
    assert sheet.shape == (16 + CAPTION_HEIGHT, 80, 3)
    assert (sheet[16:] < 255).any()  # ink in the caption band
    with pytest.raises(ValueError, match="captions"):
        contact_sheet([_tile(4, 4, 0)], captions=[])


def test_text_tile_has_ink_on_its_background() -> None:
    tile = text_tile("neutral", 20, 80)
    assert tile.shape == (20, 80, 3) and tile.min() < 128 and tile.max() == 255
