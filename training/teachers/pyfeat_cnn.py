"""PyTorch port of py-feat 0.2's expression CNN (``feat/resources/fer_aug_model.h5``, MIT).

The original is a Keras 2.2.4 Sequential model trained on FER2013 (py-feat's README: "the
Facial Expression Recognition database by Carrier et al. 2013", with augmentation): three
stages of two 'same' convs (ELU, then BatchNorm) and a 2x2 max-pool, then Dense 128 (ELU,
BatchNorm) and Dense 7 with softmax. Dropout layers are identity at inference.

Input contract (``feat/detector.py``): the Haar face box cut from the grey image (BGR2GRAY),
resized to 48x48 with PIL, divided by 255: mean 0 / std 1 on [0, 1] pixels
(``PYFEAT_INPUT_SPEC``). Output: logits over ``PYFEAT_LABELS`` (py-feat's ``mapper``); their
softmax is the original's output.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from handler.contract import CropSpec, InputSpec
from training.teachers.keras_hdf5 import KERAS_BN_EPS, keras_bn, load_keras_weights
from training.teachers.labels import msde_order

LOG = logging.getLogger(__name__)

PYFEAT_LABELS: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"
)
PYFEAT_TO_MSDE: list[int] = list(msde_order(PYFEAT_LABELS))
HDF5_IN_ASSET = Path("feat/resources/fer_aug_model.h5")
# py-feat cuts the Haar box without margin; scale and shift chosen by measurement on the
# labelled faces (python -m training.teachers.report crops, docs/teachers.md)
PYFEAT_INPUT_SPEC = InputSpec(
    input_size=(1, 48, 48),
    mean=(0.0,),
    std=(1.0,),
    crop=CropSpec(scale=1.2, shift_y=0.0, rotate=True),
)
# (kernel, channels) of the three two-conv stages
STAGES: tuple[tuple[int, int], ...] = ((5, 64), (3, 128), (3, 256))
HIDDEN = 128
GRID = 6  # 48 / 2**3: the map the dense layer reads


class ConvEluBn(nn.Module):
    """Conv2D('same', bias, activation='elu') followed by BatchNormalization."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
        self.bn = keras_bn(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.elu(self.conv(x)))


class PyFeatCnn(nn.Module):
    """``features``: [N, 256, 6, 6] for a 48x48 input; ``classify``: the two dense layers.

    ``classify`` flattens in Keras' (H, W, C) order, so it needs the 6x6 map of a 48x48
    input; it returns logits (the original applies softmax).
    """

    def __init__(self, num_classes: int = len(PYFEAT_LABELS), in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for kernel, channels in STAGES:
            layers += [ConvEluBn(width, channels, kernel), ConvEluBn(channels, channels, kernel),
                       nn.MaxPool2d(2)]
            width = channels
        self.stages = nn.Sequential(*layers)
        self.feature_channels: int = width
        self.hidden = nn.Linear(width * GRID * GRID, HIDDEN)
        self.hidden_bn = nn.BatchNorm1d(HIDDEN, eps=KERAS_BN_EPS, momentum=0.01)
        self.out = nn.Linear(HIDDEN, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def classify(self, feats: Tensor) -> Tensor:
        h = self.hidden_bn(F.elu(self.hidden(feats.permute(0, 2, 3, 1).flatten(1))))
        return self.out(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def _keras_layer_names(model: PyFeatCnn) -> dict[str, str]:
    """Module path -> Keras layer name (the Sequential's own names)."""
    names: dict[str, str] = {}
    convs = [i for i, m in enumerate(model.stages) if isinstance(m, ConvEluBn)]
    for k, i in enumerate(convs, start=1):
        names[f"stages.{i}.conv"] = f"conv2d_{k}"
        names[f"stages.{i}.bn"] = f"batchnorm_{k}"
    names.update(hidden="dense_1", hidden_bn=f"batchnorm_{len(convs) + 1}", out="out_layer")
    return names


def default_hdf5_path() -> Path:
    from training.assets import fetch

    return fetch("py-feat-0.2") / HDF5_IN_ASSET


def load_pyfeat_teacher(hdf5_path: Path | None = None) -> PyFeatCnn:
    """py-feat 0.2's CNN with its FER2013 weights, in eval mode (logits in py-feat order)."""
    path = Path(hdf5_path) if hdf5_path is not None else default_hdf5_path()
    model = PyFeatCnn()
    names = _keras_layer_names(model)
    # the port applies ELU itself and returns the softmax's input
    activations = {p: "elu" for p, n in names.items() if n.startswith(("conv2d", "dense"))}
    activations["out"] = "softmax"
    load_keras_weights(model, path, names, activations)
    LOG.info("loaded py-feat 0.2 CNN teacher from %s", path)
    return model.eval()
