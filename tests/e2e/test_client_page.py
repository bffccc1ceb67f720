"""The try-it page in a real headless Chromium, served by ``msde-client ui`` in front of
real TorchServe: drop the astronaut, see her box drawn on her face, click it, see heat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.draw import MASK_COLOURS
from client.ui import in_background, serve
from testkit.headless_chromium import Browser
from testkit.server import ServedModel
from tests.e2e.test_serve import ASTRONAUT_FACE, _center_inside
from testkit.imaging import encode

pytestmark = pytest.mark.e2e


@pytest.fixture()
def page(served_model: ServedModel) -> Iterator[str]:
    with in_background(serve(served_model.inference, port=0)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    try:
        yield b
    finally:
        b.close()


def _near(shot: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(shot[..., :3].astype(int) - np.array(colour)).sum(axis=-1) < 40


def test_dropped_photo_gets_its_face_drawn_and_explained(
    page: str, browser: Browser, astronaut: np.ndarray, tmp_path: Path
) -> None:
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(encode(astronaut, "PNG"))
    browser.navigate(page)
    browser.set_file("#file", photo)
    state = browser.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
    assert state == "done", browser.evaluate("document.getElementById('status').textContent")
    (box,) = browser.evaluate("window.msde.prediction.faces.map(f => f.box)")
    rect = browser.evaluate("(() => { const r = document.getElementById('canvas')"
                            ".getBoundingClientRect(); return [r.left, r.top, r.width]; })()")
    scale = rect[2] / 512  # page pixels per image pixel
    left, top, right, bottom = (round(rect[0] + box[0] * scale), round(rect[1] + box[1] * scale),
                                round(rect[0] + box[2] * scale), round(rect[1] + box[3] * scale))
    drawn = browser.screenshot(tmp_path / "page-drawn.png")
    print(f"screenshot: {drawn}")
    shot = np.asarray(Image.open(drawn).convert("RGB"))
    colour = _near(shot, MASK_COLOURS[browser.evaluate("window.msde.prediction.faces[0]"
                                                       ".mask.label")])
    ym, xm = (top + bottom) // 2, (left + right) // 2
    assert colour[ym, left - 3 : left + 4].any() and colour[ym, right - 3 : right + 4].any()
    assert colour[bottom - 3 : bottom + 4, xm].any()
    assert not colour[ym, xm]
    assert _center_inside(box, ASTRONAUT_FACE)  # the drawn box is on her face

    browser.click(xm, ym)
    state = browser.wait_for("['explained', 'error'].includes(document.body.dataset.state)"
                             " && document.body.dataset.state")
    assert state == "explained", browser.evaluate("document.getElementById('status').textContent")
    heat = np.asarray(Image.open(browser.screenshot(tmp_path / "page-heatmap.png"))
                      .convert("RGB")).astype(int)
    changed = np.abs(heat - shot.astype(int)).sum(axis=-1) > 40
    assert changed[top:bottom, left:right].mean() > 0.2  # heat over the face
    suit = (slice(round(rect[1] + 320 * scale), round(rect[1] + 500 * scale)),
            slice(round(rect[0]), round(rect[0] + 512 * scale)))
    assert changed[suit].mean() < 0.01  # the spacesuit stays as it was
