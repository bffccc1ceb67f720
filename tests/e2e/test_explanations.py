"""POST /explanations/msde on real TorchServe: heatmaps where the face is, above a mask,
counted apart from predictions, in the same batches as predictions."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import numpy as np
import pytest
import requests

from client.api import MsdeClient
from client.draw import heat_on_image
from handler.schema import ExplanationResponse, json_schema
from testkit.server import ServedModel
from tests.e2e.test_metrics import delta, scrape
from tests.e2e.test_serve import ASTRONAUT_FACE, _center_inside
from testkit.imaging import encode
from training.masks import ASTRONAUT_KEYPOINTS, render_mask

pytestmark = pytest.mark.e2e
SCHEMA = json_schema()


def explanations_url(served: ServedModel) -> str:
    return f"{served.inference}/explanations/{served.model_name}"


def masked_astronaut(astronaut: np.ndarray) -> tuple[np.ndarray, float]:
    """The astronaut with a synthetic surgical mask, and the mask's top edge (pixel row:
    the median over the columns it covers of its first covered row)."""
    masked = render_mask(astronaut, ASTRONAUT_KEYPOINTS, rng=0, style="surgical")
    covered = masked.alpha >= 0.5
    top = np.argmax(covered, axis=0)[covered.any(axis=0)]
    return masked.image, float(np.median(top))


def share_above(heat: np.ndarray, line: float) -> float:
    return float(heat[: int(round(line))].sum() / heat.sum())


def test_heatmap_peaks_inside_the_astronauts_face(served_model: ServedModel,
                                                  astronaut: np.ndarray) -> None:
    r = requests.post(explanations_url(served_model), data=encode(astronaut), timeout=120)
    assert r.status_code == 200, r.text
    jsonschema.validate(r.json(), SCHEMA)
    (face,) = ExplanationResponse.model_validate(r.json()).faces
    assert face.heatmap is not None
    heat = heat_on_image(face, (512, 512))
    assert heat.max() > 0.9 and (heat > 0.1).sum() > 200, "an empty heatmap"
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    x1, y1, x2, y2 = face.box
    assert x1 <= x <= x2 and y1 <= y <= y2, (x, y, face.box)
    assert _center_inside(face.box, ASTRONAUT_FACE)


def test_masked_face_is_explained_inside_its_box(served_model: ServedModel,
                                                 astronaut: np.ndarray) -> None:
    """The masked face gets a heatmap that lies on it. How much of the heat sits above the
    mask is a property of the trained student, not of the explanation path: the scaled-down
    model served here gave 59% on one machine and 35% on another, so the share is printed,
    and measured on the real model by tools/readme_images.py (docs/client.md)."""
    image, line = masked_astronaut(astronaut)
    answer = MsdeClient(served_model.inference).explain(encode(image))
    (face,) = [f for f in answer.faces if _center_inside(f.box, ASTRONAUT_FACE)]
    assert face.heatmap is not None
    heat = heat_on_image(face, (512, 512))
    assert heat.max() > 0.9 and (heat > 0.1).sum() > 200, "an empty heatmap"
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    x1, y1, x2, y2 = face.heatmap.box
    assert x1 <= x <= x2 and y1 <= y <= y2, (x, y, face.heatmap.box)
    assert heat[: int(y1)].sum() == 0 and heat[int(np.ceil(y2)) + 1:].sum() == 0
    print(f"masked astronaut: {share_above(heat, line):.0%} of the heat above the mask line "
          f"(row {line:.0f}); mask {face.mask.label} {face.mask.probability:.2f}")


def test_explanations_are_counted_apart_from_predictions(served_model: ServedModel,
                                                         astronaut: np.ndarray) -> None:
    before = scrape(served_model)
    url = explanations_url(served_model)
    good = [requests.post(url, data=encode(astronaut), timeout=120) for _ in range(2)]
    bad = requests.post(url, json={"image": base64.b64encode(encode(astronaut)).decode(),
                                   "target": "joy"}, timeout=120)
    assert [r.status_code for r in good] == [200, 200] and bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_request"
    expected = {("msde_explanations_total", "200"): 2.0, ("msde_explanations_total", "400"): 1.0}
    deadline = time.monotonic() + 20  # metrics travel from worker logs to the frontend
    while True:
        after = scrape(served_model)
        got = {k: delta(after, before, k[0], status=k[1]) for k in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == expected
    assert delta(after, before, "msde_requests_total") == 0
    assert delta(after, before, "msde_explanation_seconds_count") >= 1


def test_predictions_and_explanations_share_batches(served_model: ServedModel,
                                                    astronaut: np.ndarray) -> None:
    """The e2e server batches up to 4 requests within 300 ms: each gets its own kind."""
    body = encode(astronaut)
    urls = [served_model.predictions_url(), explanations_url(served_model)] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda u: requests.post(u, data=body, timeout=120), urls))
    assert [r.status_code for r in answers] == [200] * 4
    kinds = ["heatmap" in r.json()["faces"][0] for r in answers]
    assert kinds == [False, True, False, True]
