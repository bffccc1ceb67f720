"""PyTorch port of face-api's FaceExpressionNet (``@vladmandic/face-api@1.7.15``, MIT).

The original runs in TensorFlow.js: ``FaceFeatureExtractor`` (four "dense blocks" of
depthwise-separable convs, 112x112 RGB -> 7x7x256) + 7x7 average pool + one fully connected
layer over the classes ``FACEAPI_LABELS``. Weights ship as ``model/face_expression_model.bin``
(uint8-quantised kernels, float32 biases) described by ``face_expression_model-weights_
manifest.json``; we decode them exactly as ``tf.io.decodeWeights`` does (q * scale + min).

Input contract (``FaceFeatureExtractor.forwardInput``): RGB 0..255, minus the mean
``[122.782, 117.001, 104.298]``, divided by 255 -- i.e. on [0, 1] pixels mean
``FACEAPI_MEAN_RGB / 255`` and std 1 (``FACEAPI_INPUT_SPEC``). Every conv uses TF 'same'
padding, asymmetric (extra at the bottom/right) for the stride-2 convs on even sizes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from handler.contract import CropSpec, InputSpec
from training.teachers.keras_hdf5 import copy_param, tf_same_padding
from training.teachers.labels import msde_order

LOG = logging.getLogger(__name__)

FACEAPI_LABELS: tuple[str, ...] = (
    "neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised"
)
FACEAPI_TO_MSDE: list[int] = list(msde_order(FACEAPI_LABELS))
FACEAPI_MEAN_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)
MANIFEST_IN_ASSET = Path("model/face_expression_model-weights_manifest.json")
# face-api crops the detector's box (or the landmarks' square) without margin and without
# levelling the eyes; we level them (rotate) as for every msde network. Scale and shift for
# BlazeFace boxes chosen by measurement (python -m training.teachers.report crops).
FACEAPI_INPUT_SPEC = InputSpec(
    input_size=(3, 112, 112),
    mean=tuple(m / 255.0 for m in FACEAPI_MEAN_RGB),
    std=(1.0, 1.0, 1.0),
    crop=CropSpec(scale=1.2, shift_y=0.0, rotate=True),
)
BLOCK_WIDTHS: tuple[int, ...] = (32, 64, 128, 256)


class SameConv2d(nn.Module):
    """A conv with TensorFlow 'same' padding for any stride (pads in ``forward``)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, bias: bool
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, groups=groups, bias=bias
        )
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, tf_same_padding(x, 3, self.stride)))


class SeparableConv(nn.Module):
    """``tf.separableConv2d(x, depthwise, pointwise, stride, 'same') + bias``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = SameConv2d(in_channels, in_channels, stride, in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class DenseBlock4(nn.Module):
    """face-api ``denseBlock4``: each conv sees the ReLU of the sum of all earlier outputs."""

    def __init__(self, in_channels: int, out_channels: int, first: bool) -> None:
        super().__init__()
        self.conv0: nn.Module = (
            SameConv2d(in_channels, out_channels, 2, 1, bias=True)
            if first
            else SeparableConv(in_channels, out_channels, 2)
        )
        self.conv1 = SeparableConv(out_channels, out_channels, 1)
        self.conv2 = SeparableConv(out_channels, out_channels, 1)
        self.conv3 = SeparableConv(out_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out1 = F.relu(self.conv0(x))
        out2 = self.conv1(out1)
        out3 = self.conv2(F.relu(out1 + out2))
        out4 = self.conv3(F.relu(out1 + (out2 + out3)))
        return F.relu(out1 + (out2 + (out3 + out4)))


class FaceExpressionNet(nn.Module):
    """FaceFeatureExtractor + FC head. ``features``: [N, 256, 7, 7] for a 112x112 input.

    ``classify`` is the original's 7x7 stride-2 'valid' average pool (a global mean at 7x7)
    and the fully connected layer; it returns logits (the original applies softmax).
    """

    def __init__(self, num_classes: int = len(FACEAPI_LABELS)) -> None:
        super().__init__()
        widths = (3, *BLOCK_WIDTHS)
        self.blocks = nn.Sequential(
            *[DenseBlock4(widths[i], widths[i + 1], first=i == 0) for i in range(len(BLOCK_WIDTHS))]
        )
        self.feature_channels: int = BLOCK_WIDTHS[-1]
        self.fc = nn.Linear(self.feature_channels, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def classify(self, feats: Tensor) -> Tensor:
        return self.fc(F.avg_pool2d(feats, 7, 2).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def to_msde_order(logits: Tensor) -> Tensor:
    """Reorder face-api-ordered scores ([..., 7]) into ``EXPRESSION_LABELS``."""
    return logits[..., FACEAPI_TO_MSDE]


def decode_tfjs_weights(manifest_path: Path) -> dict[str, np.ndarray]:
    """Read a TF.js weights manifest + its .bin shards like ``tf.io.decodeWeights``."""
    groups = json.loads(Path(manifest_path).read_text())
    out: dict[str, np.ndarray] = {}
    for group in groups:
        blob = b"".join((manifest_path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for entry in group["weights"]:
            if entry["dtype"] != "float32":
                raise ValueError(f"unsupported weight dtype {entry['dtype']} for {entry['name']}")
            count = int(np.prod(entry["shape"]))
            quant = entry.get("quantization")
            if quant is None:
                values = np.frombuffer(blob, "<f4", count, offset)
                offset += 4 * count
            elif quant["dtype"] == "uint8" and "scale" in quant:
                q = np.frombuffer(blob, np.uint8, count, offset)
                offset += count
                # JS computes q * scale + min in float64 and stores it in a Float32Array
                values = (q.astype(np.float64) * quant["scale"] + quant["min"]).astype(np.float32)
            else:
                raise ValueError(f"unsupported quantisation {quant} for {entry['name']}")
            out[entry["name"]] = values.reshape(entry["shape"]).copy()
        if offset != len(blob):
            raise ValueError(f"{manifest_path}: {len(blob) - offset} bytes left after decoding")
    return out


def load_tfjs_weights(model: FaceExpressionNet, manifest_path: Path) -> None:
    """Copy the face-api weights into ``model``; every stored tensor must be used once."""
    weights = decode_tfjs_weights(manifest_path)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return weights[name]

    for b, block in enumerate(model.blocks):
        assert isinstance(block, DenseBlock4)
        for c, conv in enumerate((block.conv0, block.conv1, block.conv2, block.conv3)):
            prefix = f"dense{b}/conv{c}/"
            if isinstance(conv, SameConv2d):  # plain conv: HWIO filters
                copy_param(conv.conv.weight, take(prefix + "filters").transpose(3, 2, 0, 1))
                assert conv.conv.bias is not None
                copy_param(conv.conv.bias, take(prefix + "bias"))
            else:
                assert isinstance(conv, SeparableConv)
                # depthwise (kh, kw, C, 1) -> (C, 1, kh, kw); pointwise (1, 1, Cin, Cout)
                copy_param(conv.depthwise.conv.weight,
                      take(prefix + "depthwise_filter").transpose(2, 3, 0, 1))
                copy_param(conv.pointwise.weight,
                      take(prefix + "pointwise_filter").transpose(3, 2, 0, 1))
                assert conv.pointwise.bias is not None
                copy_param(conv.pointwise.bias, take(prefix + "bias"))
    copy_param(model.fc.weight, take("fc/weights").T)
    copy_param(model.fc.bias, take("fc/bias"))
    unused = set(weights) - used
    if unused:
        raise ValueError(f"{manifest_path}: weights {sorted(unused)} were not loaded")


def default_manifest_path() -> Path:
    from training.assets import fetch

    return fetch("face-api") / MANIFEST_IN_ASSET


def load_faceapi_teacher(manifest_path: Path | None = None) -> FaceExpressionNet:
    """face-api's expression net with its weights, in eval mode (logits in face-api order)."""
    path = Path(manifest_path) if manifest_path is not None else default_manifest_path()
    model = FaceExpressionNet()
    load_tfjs_weights(model, path)
    LOG.info("loaded face-api expression teacher from %s", path)
    return model.eval()
