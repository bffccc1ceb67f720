"""The handler answers a KServe v1 request body, as KServe's TorchServe predictor forwards it
(deploy/kserve: protocolVersion v1, no TorchServe envelope)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from testkit.server import ServedModel
from testkit.imaging import encode

pytestmark = pytest.mark.e2e


def test_kserve_v1_body_gets_one_prediction_per_instance(
    served_model: ServedModel, astronaut: np.ndarray
) -> None:
    face = base64.b64encode(encode(astronaut)).decode()
    blank = base64.b64encode(encode(np.zeros((64, 64, 3), np.uint8))).decode()
    body = {"instances": [{"data": face}, {"data": {"b64": blank}}]}
    r = requests.post(f"{served_model.inference}/v1/models/{served_model.model_name}:predict",
                      json=body, timeout=120)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 2
    assert len(predictions[0]["faces"]) >= 1
    assert predictions[1]["faces"] == []
