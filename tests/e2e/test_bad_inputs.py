"""Bad and odd input against real TorchServe: every request gets the right answer, the service
keeps serving, outputs are finite, and no payload ever reaches the logs.

The corpus (``testkit/corpus.py``) is generated; each refused request is followed by a valid
image that must still be answered 200. The one case TorchServe answers by itself (a body over
``max_request_size``: its Netty frontend's 413, empty body) is asserted as that 413 -- not a
dropped connection.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import numpy as np
import pytest
import requests

from handler.schema import json_schema
from testkit.corpus import (
    all_finite,
    LOG_MARKER,
    AcceptCase,
    RejectCase,
    Request,
    accept_cases,
    b64,
    jpeg,
    reject_cases,
)
from testkit.server import ServedModel
from testkit.imaging import encode

pytestmark = pytest.mark.e2e
SCHEMA = json_schema()
REJECT = reject_cases()
ACCEPT = accept_cases()


def strict_json(text: str) -> Any:
    """json.loads that fails on NaN / Infinity (Python's default parser accepts them)."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-finite number {token} in a response")

    return json.loads(text, parse_constant=refuse)


def post(served: ServedModel, request: Request) -> requests.Response:
    return requests.post(served.predictions_url(), timeout=120, **request.requests_kwargs())


def assert_still_serving(served: ServedModel) -> None:
    r = post(served, Request(jpeg()))
    assert r.status_code == 200, f"service stopped serving valid images: {r.status_code} {r.text}"
    jsonschema.validate(strict_json(r.text), SCHEMA)


def test_corpus_is_big_enough() -> None:
    assert len(REJECT) >= 40
    assert len({c.name for c in REJECT + ACCEPT}) == len(REJECT) + len(ACCEPT)


@pytest.mark.parametrize("case", REJECT, ids=[c.name for c in REJECT])
def test_bad_input_gets_its_4xx_and_the_service_keeps_serving(
    served_model: ServedModel, case: RejectCase
) -> None:
    r = post(served_model, case.request)  # a reset connection would raise here
    assert r.status_code == case.status, f"{case.name}: {r.status_code} {r.text[:300]}"
    if case.code is not None:
        body = strict_json(r.text)
        jsonschema.validate(body, SCHEMA)
        assert body["error"]["code"] == case.code, body
        assert body["error"]["message"]
        assert r.headers["Content-Type"].startswith("application/json")
    assert_still_serving(served_model)


@pytest.mark.parametrize("case", ACCEPT, ids=[c.name for c in ACCEPT])
def test_odd_but_valid_image_is_answered(served_model: ServedModel, case: AcceptCase) -> None:
    r = post(served_model, case.request)
    assert r.status_code == 200, f"{case.name}: {r.status_code} {r.text[:300]}"
    body = strict_json(r.text)
    jsonschema.validate(body, SCHEMA)
    assert (body["image"]["width"], body["image"]["height"]) == case.size
    assert all_finite(body)
    if "one_face" in case.tags:
        (face,) = body["faces"]
        assert abs(sum(face["expression"]["probabilities"].values()) - 1.0) < 1e-3


def test_outputs_are_finite_for_a_real_face(served_model: ServedModel,
                                            astronaut: np.ndarray) -> None:
    r = post(served_model, Request(encode(astronaut)))
    assert r.status_code == 200, r.text
    body = strict_json(r.text)
    assert body["faces"] and all_finite(body)


def test_bad_requests_among_good_ones_leave_the_good_ones_200(
    served_model: ServedModel, astronaut: np.ndarray
) -> None:
    """Batched together (batchSize 4, a 300 ms window), the bad ones fail alone."""
    by_name = {c.name: c for c in REJECT}
    bad = [by_name[n] for n in ("json_deeply_nested", "json_top_level_huge_number",
                                "png_bomb_20000x20000", "truncated_jpeg_half",
                                "kserve_too_many_instances", "png_idat_bad_crc")]
    good = Request(encode(astronaut))
    requests_: list[tuple[Request, int]] = []
    for case in bad:
        requests_ += [(good, 200), (case.request, case.status)]
    with ThreadPoolExecutor(len(requests_)) as pool:
        responses = list(pool.map(lambda rq: post(served_model, rq[0]), requests_))
    assert [r.status_code for r in responses] == [status for _, status in requests_]
    for r in responses:
        body = strict_json(r.text)
        jsonschema.validate(body, SCHEMA)
        if r.status_code == 200:
            assert body["faces"] and all_finite(body)


def test_logs_never_contain_image_bytes_or_base64(served_model: ServedModel) -> None:
    marked = jpeg()[:400] + LOG_MARKER * 4  # a damaged JPEG carrying the marker
    marked_b64 = b64(LOG_MARKER * 6)
    sent = [
        Request(marked),
        Request(files=(("data", "photo.jpg", marked, "image/jpeg"),)),
        Request(json.dumps({"image": b64(marked)}).encode(), "application/json"),
        Request(json.dumps({"image": marked_b64}).encode(), "application/json"),
        Request(json.dumps({"image": "!" + LOG_MARKER.decode()}).encode(), "application/json"),
        Request(b'{"image": "' + LOG_MARKER + b'"', "application/json"),  # malformed JSON
        Request(json.dumps({"instances": [{"data": marked_b64}]}).encode(), "application/json"),
        Request(LOG_MARKER * 3, "text/plain"),
    ]
    for request in sent:
        r = post(served_model, request)
        assert 400 <= r.status_code < 500, r.text
    assert_still_serving(served_model)  # its access-log line follows the marked requests
    needles = [LOG_MARKER, marked_b64[:32].encode(), base64.b64encode(marked)[:64]]
    files = [p for p in served_model.log_dir.rglob("*") if p.is_file()]
    files += [served_model.workdir / "stdout.log"]
    assert files
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"payload bytes found in {path.name}"
