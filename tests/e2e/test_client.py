"""``msde-client`` against real TorchServe: predict, draw, explain, a folder with a bad file."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.cli import main
from client.draw import MASK_COLOURS
from testkit.server import REPO, ServedModel, free_port
from tests.e2e.test_serve import ASTRONAUT_FACE, HOPPER_FACE, _center_inside
from testkit.imaging import encode

pytestmark = pytest.mark.e2e


@pytest.fixture()
def photos(tmp_path: Path, astronaut: np.ndarray, grace_hopper: np.ndarray) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "astronaut.png").write_bytes(encode(astronaut, "PNG"))
    (folder / "hopper.jpg").write_bytes(encode(grace_hopper))
    (folder / "broken.jpg").write_bytes(b"this is a text file called .jpg")
    return folder


def test_folder_predicts_draws_and_reports_the_bad_file(
    served_model: ServedModel, photos: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drawn, summary = tmp_path / "drawn", tmp_path / "summary.csv"
    code = main(["predict", str(photos), "--url", served_model.inference, "--draw", str(drawn),
                 "--summary", str(summary)])
    out = capsys.readouterr().out
    assert code == 1, out  # one image refused, the others answered
    assert "broken.jpg: ERROR refused (400 undecodable_image)" in out
    assert "astronaut.png  512x512  1 face" in out and "hopper.jpg  512x600  1 face" in out
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(summary.open())}
    assert "undecodable_image" in rows["broken.jpg"]["error"]
    for name, region in (("astronaut.png", ASTRONAUT_FACE), ("hopper.jpg", HOPPER_FACE)):
        row = rows[name]
        box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
        assert _center_inside(box, region)
        image = np.asarray(Image.open(drawn / name).convert("RGB")).astype(int)
        colour = np.array(MASK_COLOURS[row["mask"]])
        x1, y1, x2, y2 = (round(v) for v in box)
        ym = (y1 + y2) // 2
        left_edge = np.abs(image[ym, max(0, x1 - 2) : x1 + 3] - colour).sum(axis=-1)
        assert left_edge.min() < 60, f"no box drawn at the left edge of the face in {name}"
        assert not (drawn / "broken.jpg").exists()


def test_explain_writes_a_heatmap_overlay(served_model: ServedModel, photos: Path,
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "explained"
    assert main(["explain", str(photos / "astronaut.png"), "--out", str(out),
                 "--url", served_model.inference]) == 0
    printed = capsys.readouterr().out
    overlay = out / "astronaut.face0.heatmap.jpg"
    assert re.search(rf"face 0: heatmap of [a-z]+: {re.escape(str(overlay))}", printed), printed
    original = np.asarray(Image.open(photos / "astronaut.png").convert("RGB")).astype(int)
    coloured = np.abs(np.asarray(Image.open(overlay)).astype(int) - original).sum(-1) > 40
    fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
    assert coloured[fy1:fy2, fx1:fx2].mean() > 0.2  # heat over the face
    assert coloured[300:, :].mean() < 0.01  # and not over the spacesuit


def test_server_down_is_a_clear_message_and_exit_3(photos: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "client", "predict", str(photos / "astronaut.png"),
         "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "cannot connect to the msde service" in proc.stderr and "is it running" in proc.stderr
