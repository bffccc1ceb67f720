"""POST /predictions/msde against real TorchServe, in every accepted body format."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import numpy as np
import pytest
import requests

from handler.schema import json_schema
from testkit.server import ServedModel
from testkit.imaging import encode

pytestmark = pytest.mark.e2e
SCHEMA = json_schema()
# Where the faces are (checked by eye once): astronaut 512x512, grace_hopper 512x600.
ASTRONAUT_FACE = (180, 60, 270, 170)
HOPPER_FACE = (190, 160, 345, 330)


def _center_inside(box: list[float], region: tuple[int, int, int, int]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


def _check(body: dict, region: tuple[int, int, int, int] | None) -> None:
    jsonschema.validate(body, SCHEMA)
    if region is None:
        return
    assert len(body["faces"]) == 1, body
    assert _center_inside(body["faces"][0]["box"], region), body["faces"][0]["box"]


def test_raw_jpeg_body(served_model: ServedModel, astronaut: np.ndarray) -> None:
    r = requests.post(served_model.predictions_url(), data=encode(astronaut), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    _check(body, ASTRONAUT_FACE)
    assert body["image"] == {"width": 512, "height": 512}
    assert body["model"]["name"] == "msde"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP"])
def test_other_formats(served_model: ServedModel, grace_hopper: np.ndarray, fmt: str) -> None:
    r = requests.post(served_model.predictions_url(), data=encode(grace_hopper, fmt), timeout=60)
    assert r.status_code == 200, r.text
    _check(r.json(), HOPPER_FACE)


@pytest.mark.parametrize("field", ["data", "image"])
def test_multipart(served_model: ServedModel, astronaut: np.ndarray, field: str) -> None:
    files = {field: ("photo.jpg", encode(astronaut), "image/jpeg")}
    r = requests.post(served_model.predictions_url(), files=files, timeout=60)
    assert r.status_code == 200, r.text
    _check(r.json(), ASTRONAUT_FACE)


def test_json_base64(served_model: ServedModel, grace_hopper: np.ndarray) -> None:
    payload = {"image": base64.b64encode(encode(grace_hopper)).decode()}
    r = requests.post(served_model.predictions_url(), json=payload, timeout=60)
    assert r.status_code == 200, r.text
    _check(r.json(), HOPPER_FACE)


def test_kserve_v1_body(served_model: ServedModel, astronaut: np.ndarray,
                        grace_hopper: np.ndarray) -> None:
    payload = {"instances": [{"data": base64.b64encode(encode(a)).decode()}
                             for a in (astronaut, grace_hopper)]}
    r = requests.post(served_model.predictions_url(), json=payload, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    jsonschema.validate(body, SCHEMA)
    _check(body["predictions"][0], ASTRONAUT_FACE)
    _check(body["predictions"][1], HOPPER_FACE)


def test_face_crop_without_detection(served_model: ServedModel, astronaut: np.ndarray) -> None:
    crop = np.ascontiguousarray(astronaut[60:170, 180:270])
    payload = {"image": base64.b64encode(encode(crop)).decode(), "detect": False}
    r = requests.post(served_model.predictions_url(), json=payload, timeout=60)
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["box"] == [0.0, 0.0, 90.0, 110.0]


def test_no_face_is_an_empty_list(served_model: ServedModel) -> None:
    flat = np.full((240, 320, 3), 127, np.uint8)
    r = requests.post(served_model.predictions_url(), data=encode(flat, "PNG"), timeout=60)
    assert r.status_code == 200 and r.json()["faces"] == []


def test_garbage_gets_a_json_4xx(served_model: ServedModel) -> None:
    r = requests.post(served_model.predictions_url(), data=b"\xff\xd8\xff garbage", timeout=60)
    assert r.status_code == 400
    body = r.json()
    jsonschema.validate(body, SCHEMA)
    assert body["error"]["code"] == "undecodable_image"


def test_one_bad_image_in_a_batch_fails_alone(served_model: ServedModel,
                                               astronaut: np.ndarray) -> None:
    good = encode(astronaut)
    payloads = [good, good, b"not an image at all", good]

    def post(data: bytes) -> requests.Response:
        return requests.post(served_model.predictions_url(), data=data, timeout=60)

    with ThreadPoolExecutor(len(payloads)) as pool:
        responses = list(pool.map(post, payloads))
    assert [r.status_code for r in responses] == [200, 200, 400, 200]
    for r in responses:
        jsonschema.validate(json.loads(r.text), SCHEMA)
