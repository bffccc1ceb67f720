"""Grad-CAM overlays: where the predicted class's evidence lies, same face unmasked and masked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from training.evaluate.metrics import VIEWS
from training.models import Student, cam_target_layer


@dataclass(frozen=True)
class CamOverlay:
    """One Grad-CAM overlay (RGB uint8) for the predicted class of one view of one face."""

    index: int  # dataset index
    view: str
    label: int
    pred: int
    image: np.ndarray  # (H, W, 3) uint8


class _ExpressionOutput(nn.Module):
    """The student's expression logits alone: what Grad-CAM differentiates."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)[0]


def cam_layer(model: nn.Module) -> nn.Module:
    """Grad-CAM layer: a ``training.models`` student says which; other nets use their last conv.

    The fallback (for plain modules honouring the forward contract, e.g. test doubles) is
    the deepest layer that still has a spatial map.
    """
    if isinstance(model, Student):
        return cam_target_layer(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def display_image(x: np.ndarray) -> np.ndarray:
    """Normalised network input (C, H, W) -> float32 RGB (H, W, 3) in [0, 1] for overlays.

    Min-max stretched rather than un-normalised, so it needs no InputSpec and survives
    augmentation that shifts the range.
    """
    img = np.asarray(x, dtype=np.float32).transpose(1, 2, 0)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def grad_cam_overlays(
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    device: torch.device,
) -> list[CamOverlay]:
    """Grad-CAM (``pytorch_grad_cam``) of the predicted class, both views of each face."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    items = [dataset[int(i)] for i in indices]
    wrapped = _ExpressionOutput(model)
    overlays: list[CamOverlay] = []
    with GradCAM(model=wrapped, target_layers=[cam_layer(model)]) as cam:
        for v in VIEWS:
            x = torch.stack([item[v] for item in items]).to(device)
            with torch.no_grad():
                preds = wrapped(x).argmax(dim=1).tolist()
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(p) for p in preds])
            for item, img, heat, pred in zip(items, x.cpu().numpy(), maps, preds, strict=True):
                overlays.append(
                    CamOverlay(
                        index=int(item["index"]),
                        view=v,
                        label=int(item["label"]),
                        pred=int(pred),
                        image=show_cam_on_image(display_image(img), heat, use_rgb=True),
                    )
                )
    model.eval()
    return overlays
