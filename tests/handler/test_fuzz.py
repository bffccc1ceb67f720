"""Property-based fuzzing of decoding, request parsing, preprocessing and the batch pipeline.

The properties are what keeps one hostile request from failing anything but itself: decoding
and parsing raise nothing but ``InputError``; whatever decodes is an RGB image within the
limits; preprocessing of any box yields finite tensors; a batch mixing fuzzed and good
requests answers every request with 200 or a 4xx. Seeds are the generated corpus
(``testkit/corpus.py``). The budget here is bounded (seconds); ``bench/fuzz.py`` runs the same
properties with ``MSDE_FUZZ_SCALE`` times the examples, plus a longer mutation loop.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.align import face_input, whole_image_detection
from handler.decode import DecodeLimits, InputError, decode_image, parse_request
from handler.faces import Detection
from handler.contract import InputSpec, read_metadata
from handler.pipeline import Pipeline, ServingConfig
from testkit.corpus import (
    all_finite,
    accept_cases,
    jpeg,
    mutate,
    reject_cases,
    seed_images,
    torchserve_inputs,
)

SCALE = max(1, int(os.environ.get("MSDE_FUZZ_SCALE", "1")))
SEEDS = seed_images()
LIMITS = DecodeLimits()
# Requests TorchServe would hand the handler, from the whole corpus (the one over 20 MiB is
# TorchServe's to refuse and is left out).
CORPUS_INPUTS = [torchserve_inputs(c.request) for c in reject_cases() + accept_cases()
                 if len(c.request.body) < LIMITS.max_bytes]


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_decoded(arr: np.ndarray) -> None:
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    h, w = arr.shape[:2]
    assert min(h, w) >= LIMITS.min_side and max(h, w) <= LIMITS.max_side
    assert h * w <= LIMITS.max_pixels


def decode_or_refuse(raw: bytes) -> np.ndarray | InputError:
    try:
        arr = decode_image(raw, LIMITS)
    except InputError as err:
        assert 400 <= err.status < 500 and err.message
        return err
    check_decoded(arr)
    return arr


@fuzz_settings(300)
@given(st.binary(max_size=2048))
def test_decoding_arbitrary_bytes_raises_only_input_error(raw: bytes) -> None:
    decode_or_refuse(raw)


@fuzz_settings(400)
@given(st.sampled_from(range(len(SEEDS))), st.integers(0, 2**32 - 1), st.integers(1, 8))
def test_decoding_mutated_images_raises_only_input_error(index: int, seed: int,
                                                          rounds: int) -> None:
    decode_or_refuse(mutate(SEEDS[index], np.random.default_rng(seed), rounds))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.sampled_from(["", "aGVsbG8=", "data:image/jpeg;base64,/9j/"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["image", "data", "b64", "instances", "detect", "x"]),
                      children, max_size=4),
    max_leaves=20,
)


@fuzz_settings(150)
@given(JSON_VALUES, st.sampled_from(["decoded", "bytes", "text"]))
def test_parsing_arbitrary_json_raises_only_input_error(value: Any, form: str) -> None:
    body: Any = value
    if form != "decoded":
        text = json.dumps(value)
        body = text.encode() if form == "bytes" else text
    try:
        parsed = parse_request({"body": body}, LIMITS)
    except InputError as err:
        assert 400 <= err.status < 500
        return
    assert 1 <= len(parsed.images) <= LIMITS.max_images
    assert all(img.data for img in parsed.images)


@fuzz_settings(200)
@given(st.dictionaries(st.sampled_from(["body", "data", "image", "detect", "other"]),
                       st.binary(max_size=64) | st.text(max_size=64), max_size=4))
def test_parsing_arbitrary_fields_raises_only_input_error(inputs: dict[str, Any]) -> None:
    try:
        parse_request(inputs, LIMITS)
    except InputError as err:
        assert 400 <= err.status < 500


FINITE = st.floats(-500, 500, allow_nan=False)


@fuzz_settings(200)
@given(
    st.integers(8, 96), st.integers(8, 96), st.sampled_from([1, 3]),
    FINITE, FINITE, st.floats(1, 400), st.floats(1, 400), st.booleans(), st.integers(0, 2**16),
)
def test_preprocessing_any_box_gives_a_finite_tensor(
    h: int, w: int, channels: int, x1: float, y1: float, bw: float, bh: float,
    keypoints: bool, seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    kps = rng.uniform(-100, 200, (6, 2)).astype(np.float32) if keypoints else None
    det = Detection(box=(x1, y1, x1 + bw, y1 + bh), score=0.9, keypoints=kps)
    spec = InputSpec(input_size=(channels, 32, 32), mean=(0.5,) * channels,
                     std=(0.25,) * channels)
    for detection in (det, whole_image_detection(image)):
        x = face_input(image, detection, spec)
        assert x.shape == (channels, 32, 32) and x.dtype == np.float32
        assert np.isfinite(x).all()


class CentreDetector:
    """One face in the middle of every image: the pipeline's plumbing without BlazeFace."""

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        return [Detection(box=(w * 0.2, h * 0.2, w * 0.8, h * 0.8), score=0.9)]


@pytest.fixture(scope="module")
def pipeline(tiny_student_pt: Path) -> Pipeline:
    model = torch.jit.load(str(tiny_student_pt))
    return Pipeline(model, read_metadata(tiny_student_pt), CentreDetector(), ServingConfig())


def fuzzed_request(kind: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    if kind == 0:
        return {"body": jpeg()}
    if kind == 1:
        return CORPUS_INPUTS[seed % len(CORPUS_INPUTS)]
    return {"body": mutate(SEEDS[seed % len(SEEDS)], rng, int(rng.integers(1, 6)))}


@fuzz_settings(60)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**32 - 1)), min_size=1,
                max_size=6))
def test_fuzzed_batch_answers_every_request(pipeline: Pipeline,
                                            requests: list[tuple[int, int]]) -> None:
    inputs = [fuzzed_request(kind, seed) for kind, seed in requests]
    outcomes = pipeline.run(inputs)
    assert len(outcomes) == len(inputs)
    for (kind, _), outcome in zip(requests, outcomes):
        assert outcome.status == 200 or 400 <= outcome.status < 500, outcome.body
        assert all_finite(outcome.body)
        json.dumps(outcome.body, allow_nan=False)
        if kind == 0:
            assert outcome.status == 200


@pytest.fixture(scope="module")
def face_detector() -> Any:
    from handler.detect import FaceDetector
    from training.assets import fetch

    return FaceDetector(fetch("blazeface") / "ONNX")


@fuzz_settings(12)
@given(st.integers(8, 400), st.integers(8, 400), st.sampled_from(["noise", "flat", "stripes"]),
       st.integers(0, 2**16))
def test_detector_survives_odd_images(face_detector: Any, h: int, w: int, kind: str,
                                      seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == "flat":
        image = np.full((h, w, 3), int(rng.integers(0, 256)), np.uint8)
    else:
        image = np.zeros((h, w, 3), np.uint8)
        image[::2] = 255
    found = face_detector.detect(image)
    assert len(found) <= face_detector.config.max_faces
    for det in found:
        assert all(math.isfinite(v) for v in det.box) and 0.0 <= det.score <= 1.0
        assert det.box[2] > det.box[0] and det.box[3] > det.box[1]
