"""Scrape :8082 before and after known requests; the counters move by exactly that much."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testkit.server import ServedModel
from testkit.imaging import encode

pytestmark = pytest.mark.e2e

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(served: ServedModel) -> dict[Sample, float]:
    text = requests.get(f"{served.metrics}/metrics", timeout=10).text
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "Hostname"))
            out[(s.name, labels)] = s.value
    return out


def delta(after: dict[Sample, float], before: dict[Sample, float], name: str,
          **labels: str) -> float:
    """Sum of the change of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key in set(after) | set(before):
        if key[0] != name or not set(labels.items()) <= set(key[1]):
            continue
        total += after.get(key, 0.0) - before.get(key, 0.0)
    return total


def test_metric_deltas_match_the_requests_sent(served_model: ServedModel,
                                               astronaut: np.ndarray) -> None:
    url = served_model.predictions_url()
    before = scrape(served_model)
    good = [requests.post(url, data=encode(astronaut), timeout=60) for _ in range(3)]
    no_face = requests.post(url, data=encode(np.full((200, 200, 3), 90, np.uint8)), timeout=60)
    bad = requests.post(url, data=b"definitely not an image", timeout=60)
    assert [r.status_code for r in good] == [200, 200, 200]
    assert no_face.status_code == 200 and no_face.json()["faces"] == []
    assert bad.status_code == 400

    faces = [f for r in good for f in r.json()["faces"]]
    states = Counter(f["mask"]["label"] for f in faces)
    pairs = Counter((f["mask"]["label"], f["expression"]["label"]) for f in faces)
    assert faces, "the astronaut has a face"

    expected = {
        ("msde_requests_total", "status", "200"): 4,
        ("msde_requests_total", "status", "400"): 1,
        ("msde_rejected_inputs_total", "reason", "undecodable_image"): 1,
        ("msde_requests_no_face_total", None, None): 1,
        ("msde_decode_seconds_count", None, None): 4,
        ("msde_faces_per_request_count", None, None): 4,
        ("msde_faces_per_request_sum", None, None): len(faces),
    }
    deadline = time.monotonic() + 20  # metrics travel from worker logs to the frontend
    while True:
        after = scrape(served_model)
        got = {k: delta(after, before, k[0], **({k[1]: k[2]} if k[1] else {}))
               for k in expected}
        got_states = {s: delta(after, before, "msde_faces_total", mask_state=s)
                      for s in ("unmasked", "masked")}
        got_pairs = {p: delta(after, before, "msde_expressions_total", mask_state=p[0],
                              expression=p[1]) for p in pairs}
        done = (got == expected and got_states == {s: states.get(s, 0) for s in got_states}
                and got_pairs == dict(pairs))
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == expected
    assert got_states == {s: states.get(s, 0) for s in got_states}
    assert got_pairs == dict(pairs)
    assert delta(after, before, "msde_expressions_total") == len(faces)
    assert delta(after, before, "msde_handler_seconds_count") >= 1
    assert delta(after, before, "msde_forward_seconds_count") >= 1
    assert delta(after, before, "ts_inference_requests_total") == 5


def test_model_version_is_exported(served_model: ServedModel) -> None:
    info = [k for k, v in scrape(served_model).items() if k[0] == "msde_model_info" and v == 1]
    assert info, "msde_model_info missing"
    labels = dict(info[0][1])
    version = requests.post(served_model.predictions_url(),
                            data=encode(np.full((64, 64, 3), 0, np.uint8)), timeout=60)
    assert labels["version"] == version.json()["model"]["version"]
