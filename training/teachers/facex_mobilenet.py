"""PyTorch port of the facex expression classifier (``facex==1.1.0``, MIT as stated).

The original is a Keras MobileNetV2 (width 1.0, the ``mobilenetv2_1.00_224`` graph built
for 200x200 inputs) whose 6x6x1280 feature map is flattened into one dense layer over
``FACEX_LABELS``, converted to TFLite with weight-only quantisation and shipped as
``facex/assets/model_optimized.tflite``. Its training set is not stated. We read the
FlatBuffer (``training.teachers.tflite_flatbuffer``) and rebuild the network with float
weights: BatchNorm is already folded into the conv biases there, so every conv has a bias.

Input contract (``facex/core.py`` + ``utils.input_resize``): the Haar face box cut from the
grey image (BGR2GRAY, BT.601), resized to 200x200 by scikit-image (anti-aliased) into
[0, 1], the grey copied to 3 channels. A grey image copied to 3 channels meets the first
conv as one channel convolved with the sum of its 3 input-channel kernels, so the port takes
the grey channel alone (``in_channels=1``, same result, a third of the stem's work).

Quantisation: the TFLite graph keeps small tensors in float32; larger conv and dense kernels
are symmetric int8 stored as UINT8 and run by TFLite's *hybrid* kernels, which also
quantise each input activation to int8 on the fly; depthwise kernels are asymmetric uint8
expanded by DEQUANTIZE ops. The port uses the dequantised weights in float32 and does not
imitate the activation rounding, which is the (measured) difference from the original.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from handler.contract import CropSpec, InputSpec
from training.teachers.keras_hdf5 import copy_param
from training.teachers.labels import msde_order
from training.teachers.tflite_flatbuffer import Graph, Operator, read_tflite

LOG = logging.getLogger(__name__)

FACEX_LABELS: tuple[str, ...] = (
    "anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised"
)
FACEX_TO_MSDE: list[int] = list(msde_order(FACEX_LABELS))
TFLITE_IN_ASSET = Path("facex/assets/model_optimized.tflite")
INPUT_SIZE = 200
# facex cuts the Haar box (no margin, no levelling); scale and shift chosen by measurement
# on the labelled faces (python -m training.teachers.report crops, docs/teachers.md)
FACEX_INPUT_SPEC = InputSpec(
    input_size=(1, INPUT_SIZE, INPUT_SIZE),
    mean=(0.0,),
    std=(1.0,),
    crop=CropSpec(scale=1.5, shift_y=-0.1, rotate=True),
)
# MobileNetV2 inverted residual stages: (expansion, output channels, repeats, first stride)
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
STEM_WIDTH = 32
LAST_WIDTH = 1280
HEAD_GRID = 6  # the dense layer reads a 6x6x1280 map (a 200x200 input)
# Keras' MobileNetV2 built for a dynamic input size pads stride-2 layers 0 before, 1 after
STRIDE2_PAD = (0, 1, 0, 1)


class ConvAct(nn.Module):
    """A conv with folded BatchNorm (so a bias) and an optional ReLU6, TF-padded.

    Stride-2 layers pad (0 before, 1 after) explicitly, as the original's ZeroPadding2D;
    stride-1 layers use 'same' padding, symmetric for odd kernels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
        groups: int = 1, relu6: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride=stride, padding=padding, groups=groups
        )
        self.stride = stride
        self.relu6 = relu6

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            x = F.pad(x, [0, 1, 0, 1])  # STRIDE2_PAD
        x = self.conv(x)
        return F.hardtanh(x, 0.0, 6.0) if self.relu6 else x


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project, + input if shapes keep."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand: nn.Module = (
            ConvAct(in_channels, hidden, 1) if expansion != 1 else nn.Identity()
        )
        self.depthwise = ConvAct(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvAct(hidden, out_channels, 1, relu6=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class FacexMobileNetV2(nn.Module):
    """MobileNetV2 trunk + the flatten-dense head. ``features``: [N, 1280, 6, 6] at 200x200.

    ``classify`` flattens the map in Keras' (H, W, C) order and applies the dense layer, so
    it needs the 6x6 map of a 200x200 input; it returns logits (the original's softmax
    input).
    """

    def __init__(self, num_classes: int = len(FACEX_LABELS), in_channels: int = 1) -> None:
        super().__init__()
        self.stem = ConvAct(in_channels, STEM_WIDTH, 3, stride=2)
        blocks: list[nn.Module] = []
        width = STEM_WIDTH
        for expansion, out, repeats, stride in STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(width, out, stride if i == 0 else 1, expansion))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvAct(width, LAST_WIDTH, 1)
        self.feature_channels: int = LAST_WIDTH
        self.fc = nn.Linear(LAST_WIDTH * HEAD_GRID * HEAD_GRID, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def classify(self, feats: Tensor) -> Tensor:
        return self.fc(feats.permute(0, 2, 3, 1).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def to_msde_order(logits: Tensor) -> Tensor:
    """Reorder facex-ordered scores ([..., 7]) into ``EXPRESSION_LABELS``."""
    return logits[..., FACEX_TO_MSDE]


def _conv_layers(model: FacexMobileNetV2) -> list[ConvAct]:
    """The model's convs in the order the TFLite graph runs them."""
    convs = [model.stem]
    for block in model.blocks:
        assert isinstance(block, InvertedResidual)
        if isinstance(block.expand, ConvAct):
            convs.append(block.expand)
        convs.extend([block.depthwise, block.project])
    return [*convs, model.head]


def _check_conv(op: Operator, layer: ConvAct, padded: bool) -> None:
    """The TFLite op must be the conv ``layer`` implements (kind, stride, padding, activation)."""
    depthwise = layer.conv.groups > 1
    expected = {
        "op": "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D",
        "stride_w": layer.stride, "stride_h": layer.stride,
        # an explicit PAD precedes every stride-2 conv; 1x1 convs are 'SAME' or 'VALID'
        "padding": {"VALID"} if padded else (
            {"SAME", "VALID"} if layer.conv.kernel_size == (1, 1) else {"SAME"}
        ),
        "activation": "RELU6" if layer.relu6 else "NONE",
    }
    got = {"op": op.op, **{k: op.options.get(k) for k in expected if k != "op"}}
    ok = (got["op"] == expected["op"] and got["padding"] in expected["padding"]
          and all(got[k] == expected[k] for k in ("stride_w", "stride_h", "activation")))
    if not ok or padded != (layer.stride == 2):
        raise ValueError(f"TFLite op {got} (after PAD: {padded}) does not match {layer!r}")


def load_tflite_weights(model: FacexMobileNetV2, graph: Graph) -> None:
    """Copy the graph's weights into ``model``, op by op; every weighted op must be used."""
    values: dict[int, np.ndarray] = {}  # outputs of DEQUANTIZE ops
    convs = iter(_conv_layers(model))
    padded_inputs: set[int] = set()
    adds = 0
    dense_done = False
    for op in graph.operators:
        if op.op == "DEQUANTIZE":
            values[op.outputs[0]] = graph.tensors[op.inputs[0]].value()
        elif op.op == "PAD":
            pads = graph.tensors[op.inputs[1]].value().astype(int).tolist()
            if pads != [[0, 0], [0, 1], [0, 1], [0, 0]]:
                raise ValueError(f"unexpected padding {pads}")
            padded_inputs.add(op.outputs[0])
        elif op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            layer = next(convs, None)
            if layer is None:
                raise ValueError("the TFLite graph has more convs than the port")
            _check_conv(op, layer, op.inputs[0] in padded_inputs)
            _, w_index, b_index = op.inputs
            w = values[w_index] if w_index in values else graph.tensors[w_index].hybrid_value()
            if op.op == "DEPTHWISE_CONV_2D":
                w = w.transpose(3, 0, 1, 2)  # (1, kh, kw, C) -> (C, 1, kh, kw)
            else:
                w = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
                if layer.conv.in_channels != w.shape[1]:
                    # grey copied to RGB == one channel through the summed kernels
                    w = w.sum(axis=1, keepdims=True)
            copy_param(layer.conv.weight, w)
            assert layer.conv.bias is not None
            copy_param(layer.conv.bias, graph.tensors[b_index].value())
        elif op.op == "ADD":
            adds += 1
        elif op.op == "FULLY_CONNECTED":
            _, w_index, b_index = op.inputs
            copy_param(model.fc.weight, graph.tensors[w_index].hybrid_value())
            copy_param(model.fc.bias, graph.tensors[b_index].value())
            dense_done = True
        elif op.op != "SOFTMAX":
            raise ValueError(f"operator {op.op} is not part of the ported network")
    residuals = sum(isinstance(b, InvertedResidual) and b.residual for b in model.blocks)
    if next(convs, None) is not None or adds != residuals or not dense_done:
        raise ValueError("the TFLite graph does not hold every layer of the port")


def default_tflite_path() -> Path:
    from training.assets import fetch

    return fetch("facex") / TFLITE_IN_ASSET


def load_facex_teacher(tflite_path: Path | None = None, in_channels: int = 1) -> FacexMobileNetV2:
    """facex's MobileNetV2 with its weights, in eval mode (logits in facex order)."""
    path = Path(tflite_path) if tflite_path is not None else default_tflite_path()
    model = FacexMobileNetV2(in_channels=in_channels)
    load_tflite_weights(model, read_tflite(path))
    LOG.info("loaded facex MobileNetV2 teacher from %s", path)
    return model.eval()

