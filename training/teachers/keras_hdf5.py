"""Keras/TensorFlow semantics in PyTorch, and loading Keras HDF5 weights into ported modules.

Three teachers are Keras models stored as HDF5 (fer's and oarriaga's XCEPTIONs, py-feat's
CNN). The ports read the file with h5py only: ``load_keras_weights`` copies each Keras
layer into the module named for it, after checking that the layer's config (class, padding,
strides, bias, activation, BatchNorm epsilon) is the op the module implements, and fails
unless every stored weight is used exactly once. The ops whose TensorFlow semantics differ
from PyTorch's defaults live here too ('same' padding, 'same' max-pooling).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

KERAS_BN_EPS = 1e-3


def keras_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNormalization with Keras' defaults (epsilon 1e-3, momentum 0.99 = torch 0.01)."""
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


def copy_param(param: Tensor, value: np.ndarray) -> None:
    """Copy ``value`` into ``param``; shapes must match exactly (no broadcasting)."""
    if tuple(param.shape) != value.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs weights {value.shape}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)


def keras_layers(f: h5py.File) -> dict[str, dict[str, Any]]:
    """Layer configs by name, for functional models and (old and new) Sequential ones."""
    config = json.loads(f.attrs["model_config"])["config"]
    layers = config if isinstance(config, list) else config["layers"]
    return {layer["config"]["name"]: layer for layer in layers}


def layer_weights(group: h5py.Group) -> dict[str, np.ndarray]:
    """One layer's weights by short name (kernel, bias, gamma, ...), in the file's order."""
    out: dict[str, np.ndarray] = {}
    for full in group.attrs["weight_names"]:
        name = full.decode() if isinstance(full, bytes) else str(full)
        out[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[name])
    return out


def _conv_padding(module: nn.Conv2d) -> set[str]:
    """Keras paddings a stride-1 (or 1x1) PyTorch conv with symmetric padding reproduces."""
    if module.kernel_size == (1, 1):
        return {"same", "valid"}  # a 1x1 kernel never pads
    if module.padding == (0, 0):
        return {"valid"}
    same = all(p == k // 2 for p, k in zip(module.padding, module.kernel_size))
    return {"same"} if same and module.stride == (1, 1) else set()


def check_layer(module: nn.Module, layer: dict[str, Any], activation: str = "linear") -> None:
    """Fail loudly if the Keras layer is not the op ``module`` implements."""
    cls, cfg = layer["class_name"], layer["config"]
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        ok = cls == "BatchNormalization" and abs(float(cfg["epsilon"]) - module.eps) < 1e-12
    elif isinstance(module, SeparableConv2d):
        ok = (
            cls == "SeparableConv2D"
            and cfg["padding"] == "same"
            and not cfg["use_bias"]
            and cfg["depth_multiplier"] == 1
            and list(cfg["strides"]) == [1, 1]
            and cfg["activation"] == activation
        )
    elif isinstance(module, nn.Conv2d):
        ok = (
            cls == "Conv2D"
            and cfg["padding"] in _conv_padding(module)
            and list(cfg["strides"]) == list(module.stride)
            and list(cfg.get("dilation_rate", [1, 1])) == [1, 1]
            and bool(cfg["use_bias"]) == (module.bias is not None)
            and cfg["activation"] == activation
        )
    elif isinstance(module, nn.Linear):
        ok = (
            cls == "Dense"
            and cfg["units"] == module.out_features
            and bool(cfg["use_bias"]) == (module.bias is not None)
            and cfg["activation"] == activation
        )
    else:
        ok = False
    if not ok:
        raise ValueError(f"Keras layer {layer['config']} does not match {module!r}")


def _copy_layer(module: nn.Module, w: dict[str, np.ndarray]) -> None:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        assert module.running_mean is not None and module.running_var is not None
        copy_param(module.weight, w["gamma"])
        copy_param(module.bias, w["beta"])
        copy_param(module.running_mean, w["moving_mean"])
        copy_param(module.running_var, w["moving_variance"])
    elif isinstance(module, SeparableConv2d):
        # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise is a 1x1 HWIO conv
        copy_param(module.depthwise.weight, w["depthwise_kernel"].transpose(2, 3, 0, 1))
        copy_param(module.pointwise.weight, hwio_to_oihw(w["pointwise_kernel"]))
    elif isinstance(module, nn.Conv2d):
        copy_param(module.weight, hwio_to_oihw(w["kernel"]))
        if module.bias is not None:
            copy_param(module.bias, w["bias"])
    elif isinstance(module, nn.Linear):
        copy_param(module.weight, w["kernel"].T)
        if module.bias is not None:
            copy_param(module.bias, w["bias"])
    else:
        raise TypeError(f"no Keras layer loads into {type(module).__name__}")


def load_keras_weights(
    model: nn.Module,
    hdf5_path: Path,
    names: Mapping[str, str],
    activations: Mapping[str, str] | None = None,
) -> None:
    """Copy Keras layers into ``model``: ``names`` maps module path -> Keras layer name.

    ``activations`` gives the fused Keras activation a module's layer must declare (default
    'linear': the port applies activations itself). Every weight in the file must be used.
    """
    activations = activations or {}
    with h5py.File(hdf5_path, "r") as f:
        layers = keras_layers(f)
        weights = f.get("model_weights", f)
        with_weights = {n for n in weights if len(weights[n].attrs.get("weight_names", [])) > 0}
        used: set[str] = set()
        for path, keras_name in names.items():
            module = model.get_submodule(path)
            check_layer(module, layers[keras_name], activations.get(path, "linear"))
            _copy_layer(module, layer_weights(weights[keras_name]))
            used.add(keras_name)
        unused = with_weights - used
        if unused:
            raise ValueError(f"{hdf5_path}: weights of {sorted(unused)} were not loaded")
