"""Regenerate the README's client pictures from a running service (``make serve``).

    PYTHONPATH=. .venv/bin/python tools/readme_images.py

Writes two public-domain photos (skimage's astronaut, NASA; the same with a synthetic
surgical mask from ``training.masks``) into build/photos/, runs the README's ``msde-client``
commands on them into ``docs/img/client/``, prints what they printed, the share of the
masked face's heat above the mask's top edge, and takes a screenshot of the try-it page
in headless Chromium (tests/e2e/headless_chromium.py).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from client.api import DEFAULT_URL  # noqa: E402 - the repository is the import root
OUT = REPO / "docs" / "img" / "client"
PHOTOS = REPO / "build" / "photos"  # git-ignored


def write_photos(folder: Path) -> tuple[Path, Path, float]:
    """astronaut.jpg, astronaut_masked.jpg and the mask's top edge (median first row)."""
    from skimage import data

    from training.masks import ASTRONAUT_KEYPOINTS, render_mask

    folder.mkdir(parents=True, exist_ok=True)
    photo = np.ascontiguousarray(data.astronaut())
    masked = render_mask(photo, ASTRONAUT_KEYPOINTS, rng=0, style="surgical")
    covered = masked.alpha >= 0.5
    line = float(np.median(np.argmax(covered, axis=0)[covered.any(axis=0)]))
    plain, with_mask = folder / "astronaut.jpg", folder / "astronaut_masked.jpg"
    Image.fromarray(photo).save(plain, quality=95)
    Image.fromarray(masked.image).save(with_mask, quality=95)
    return plain, with_mask, line


def run(args: list[str]) -> None:
    """One ``msde-client`` command, echoed as a user would type it, with its output."""
    print("$ " + shlex.join(["msde-client", *args]), flush=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "client", *args], cwd=REPO, env=env,
                          text=True, capture_output=True, check=False)
    print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"msde-client exited {proc.returncode}")


def heat_share(url: str, masked: Path, line: float) -> None:
    from client.api import MsdeClient
    from client.draw import heat_on_image

    answer = MsdeClient(url).explain(masked)
    face = max(answer.faces, key=lambda f: f.score)
    assert face.heatmap is not None
    heat = heat_on_image(face, (answer.image.width, answer.image.height))
    share = heat[: int(round(line))].sum() / heat.sum()
    _, y1, _, y2 = face.heatmap.box
    print(f"masked astronaut: {share:.0%} of the heat above the mask's top edge (row "
          f"{line:.0f}; {(line - y1) / (y2 - y1):.0%} if spread evenly over the crop); "
          f"mask {face.mask.label} {face.mask.probability:.2f}, heatmap of "
          f"{face.heatmap.target}")


def page_screenshot(url: str, photo: Path, out: Path) -> None:
    from client.ui import in_background, serve
    from testkit.headless_chromium import Browser

    with (in_background(serve(url, port=0)) as server,
          tempfile.TemporaryDirectory(prefix="msde-chromium-") as profile):
        browser = Browser(Path(profile), width=1100, height=780)
        try:
            browser.navigate(f"http://127.0.0.1:{server.server_address[1]}/")
            browser.set_file("#file", photo)
            browser.wait_for("document.body.dataset.state === 'done'")
            box = browser.evaluate("window.msde.prediction.faces.reduce("
                                   "(a, f) => (f.score > a.score ? f : a)).box")
            rect = browser.evaluate("(() => { const r = document.getElementById('canvas')"
                                    ".getBoundingClientRect(); return [r.left, r.top]; })()")
            scale = browser.evaluate("window.msde.scale")
            browser.click(rect[0] + (box[0] + box[2]) / 2 * scale,
                          rect[1] + (box[1] + box[3]) / 2 * scale)
            browser.wait_for("document.body.dataset.state === 'explained'")
            browser.screenshot(out)
        finally:
            browser.close()
    print(f"page screenshot: {out.relative_to(REPO)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    plain, masked, line = write_photos(PHOTOS)
    OUT.mkdir(parents=True, exist_ok=True)
    out = str(OUT.relative_to(REPO))
    url = [] if args.url == DEFAULT_URL else ["--url", args.url]
    run(["predict", str(PHOTOS.relative_to(REPO)), *url, "--draw", out])
    run(["explain", str(masked.relative_to(REPO)), *url, "--out", out])
    run(["explain", str(plain.relative_to(REPO)), *url, "--out", out])
    heat_share(args.url, masked, line)
    page_screenshot(args.url, masked, OUT / "page.jpg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
