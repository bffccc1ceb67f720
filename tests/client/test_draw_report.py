"""Drawn boxes and heatmaps land where the answer says; tables and summaries say it in text."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.api import RequestRefused, Result
from client.draw import MASK_COLOURS, draw_faces, face_label, load_image, overlay_heatmap
from client.report import format_result, json_line, write_summary
from handler.schema import FaceExplanation, PredictionResponse
from tests.client.conftest import prediction


def _face(mask: str = "unmasked", label: str = "happiness", box=(40.0, 50.0, 140.0, 170.0),
          group: str | None = None) -> dict:
    face = prediction(label=label, group=group)["faces"][0]
    return {**face, "box": list(box), "mask": {**face["mask"], "label": mask}}


def _close(a: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(a.astype(int) - np.array(colour)).sum(axis=-1) < 30


@pytest.mark.parametrize("size", [(200, 240), (1200, 1500)])
def test_boxes_are_drawn_on_the_face_outline_in_the_mask_colour(size: tuple[int, int]) -> None:
    h, w = size
    k = w / 240
    unmasked = _face(box=(40 * k, 60 * k, 110 * k, 150 * k))
    masked = _face("masked", box=(130 * k, 60 * k, 200 * k, 150 * k))
    response = PredictionResponse.model_validate({**prediction(0), "faces": [unmasked, masked],
                                                  "image": {"width": w, "height": h}})
    drawn = np.asarray(draw_faces(Image.new("RGB", (w, h), (90, 90, 90)), response.faces))
    for face, state in ((unmasked, "unmasked"), (masked, "masked")):
        x1, y1, x2, y2 = (round(v) for v in face["box"])
        hit = _close(drawn, MASK_COLOURS[state])
        ym, xm = (y1 + y2) // 2, (x1 + x2) // 2
        assert hit[ym, x1 : x1 + 2].any() and hit[ym, x2 - 2 : x2 + 1].any()  # left, right
        assert hit[y2 - 2 : y2 + 1, xm].any()  # bottom edge
        assert not hit[ym, xm]  # an outline, not a filled box
        tag = hit[: y1, x1:x2]  # the label tag sits above the box
        assert tag.sum() > 0.2 * (x2 - x1) * 11 * k


def test_labels_say_uncertain_and_masked() -> None:
    face = PredictionResponse.model_validate(
        {**prediction(0), "faces": [_face("masked", "uncertain")]}).faces[0]
    assert face_label(face) == "uncertain (happiness 100%), masked"


def test_labels_give_the_grouped_answer_when_the_expression_abstains() -> None:
    face = PredictionResponse.model_validate(
        {**prediction(0), "faces": [_face("masked", "uncertain", group="positive")]}).faces[0]
    assert face_label(face) == "positive 100% (group), masked"


def test_heatmap_overlay_colours_only_its_box() -> None:
    heat = np.zeros((10, 10), np.uint8)
    heat[:5] = 255  # heat in the upper half
    buf = io.BytesIO()
    Image.fromarray(heat, "L").save(buf, format="PNG")
    face = FaceExplanation.model_validate({**_face(box=(50.0, 50.0, 150.0, 150.0)), "heatmap": {
        "target": "happiness", "box": [40.0, 40.0, 160.0, 160.0], "width": 10, "height": 10,
        "png": base64.b64encode(buf.getvalue()).decode()}})
    grey = Image.new("RGB", (200, 200), (128, 128, 128))
    out = np.asarray(overlay_heatmap(grey, face)).astype(int)
    changed = np.abs(out - 128).sum(axis=-1) > 30
    assert changed[60:95, 60:140].mean() > 0.95  # the hot half, inside the box
    assert not changed[110:145, 60:140].any()  # the cold half stays as it was
    assert not changed[:35].any() and not changed[165:].any()


def test_images_are_drawn_upright_as_the_service_saw_them(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 40), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (40, 60)


def _results() -> list[Result]:
    ok = PredictionResponse.model_validate({**prediction(3), "faces": [_face(), _face(
        "masked", "uncertain"), _face("masked", "uncertain", group="negative")]})
    empty = PredictionResponse.model_validate(prediction(0))
    return [Result("a.jpg", ok), Result("b.jpg", empty),
            Result("c.jpg", error=RequestRefused("refused (400 undecodable_image): no", 400,
                                                 "undecodable_image"))]


def test_table_and_json_lines() -> None:
    ok, empty, bad = _results()
    table = format_result(ok)
    assert "a.jpg  100x100  3 faces" in table
    assert "negative 100% (group)" in table and "uncertain (happiness 100%)" in table
    assert "unmasked 0.97" in table and "masked 0.97" in table and "uncertain 1.00" in table
    assert "40,50 - 140,170" in table
    assert format_result(empty).endswith("0 faces")
    assert format_result(bad).startswith("c.jpg: ERROR refused (400 undecodable_image)")
    line = json.loads(json_line(bad))
    assert line["error"]["code"] == "undecodable_image" and line["file"] == "c.jpg"
    assert json.loads(json_line(ok))["faces"][1]["expression"]["label"] == "uncertain"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_summary_has_a_row_per_face_and_per_failure(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"summary{suffix}"
    assert write_summary(path, _results()) == 5
    if suffix == ".csv":
        rows = list(csv.DictReader(path.open()))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["file"] for r in rows] == ["a.jpg", "a.jpg", "a.jpg", "b.jpg", "c.jpg"]
    assert rows[1]["mask"] == "masked" and rows[1]["expression"] == "uncertain"
    assert rows[1]["answer_level"] == "uncertain"
    assert rows[2]["answer"] == "negative" and rows[2]["answer_level"] == "group"
    assert "undecodable_image" in rows[4]["error"]
