"""SCAN-CCI: the attention-based occlusion-robust FER network the MSD-E paper compared with.

Gera and Balasubramanian, "Landmark guidance independent spatio-channel attention and
complementary context information based facial expression recognition", Pattern
Recognition Letters 2021 (arXiv 2007.10298). Written here from the paper's description;
the authors' public code was read only to settle details the text leaves open.

Why it is a fair rival for masked faces: it needs no landmarks (a mask hides half of them),
and its attention is per channel *and* per location, so it can learn to switch off the
channels that respond to a mask in the lower face while keeping them around the eyes.

The network, on a ResNet trunk (the paper: ResNet-50 pre-trained for face recognition; here
our ResNet-18 topology, same parameter names as torchvision so an ImageNet state dict on
disk initialises the trunk):

* **SCAN** (spatio-channel attention net) on the mid-level map (``layer2``, stride 8): the
  map is cut into a ``grid x grid`` of non-overlapping patches (the paper: 25 patches of a
  28x28 map); each patch has its own attention net (3x3 conv, PReLU, BN, sigmoid) giving one
  weight in (0, 1) per channel per location; each weighted patch is average-pooled and the
  patches are max-pooled into the *local* feature. The same kind of net on the whole map
  gives the *global* feature. ``[local, global]`` is L2-normalised and classified.
* **CCI** (complementary context information) on the deeper map (``layer3``, stride 16):
  efficient channel attention (ECA) re-weights its channels, the map is cut into 2x2
  regions, and one shared classifier (C -> C/4 -> classes) predicts from each region.
* **Prediction**: the mean of the five logit vectors (SCAN + four regions). **Loss**:
  ``0.2 * CE(SCAN) + 0.8 * sum over regions of CE(region)`` (``branch_loss``), which
  ``training.train`` applies to any student that defines ``forward_branches``.

The student (``training.models.ScanCciStudent``, ``--student scan_cci``) wires these parts to
our ResNet-18 trunk and keeps the student contract: ``forward`` gives
``(expression_logits, mask_logits)``; the embedding is the pooled ECA-weighted ``layer3``
map (the deepest features, what the mask head, the contrastive and feature-KD losses read
and what Grad-CAM hooks, as for every other student); it scripts with TorchScript. This
module holds the parts only, so the student registry can import it (no cycle).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training import losses

# the paper's weights: 0.2 for the attention branch, 0.8 for each CCI region
ATTENTION_LOSS_WEIGHT = 0.2
REGIONS_PER_SIDE = 2


def grid_edges(size: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` non-overlapping cells of near-equal length covering ``size``.

    The paper cuts 28 into 6+6+6+6+4; near-equal cells keep every patch the same share of
    the face whatever the input size.
    """
    if parts < 1 or size < parts:
        raise ValueError(f"cannot cut {size} pixels into {parts} non-empty cells")
    edges: list[int] = []
    for i in range(parts + 1):
        edges.append((i * size) // parts)
    return edges


def grid_cells(fmap: Tensor, parts: int) -> list[Tensor]:
    """The ``parts x parts`` non-overlapping cells of ``fmap`` [N, C, H, W], row by row."""
    rows = grid_edges(int(fmap.shape[2]), parts)
    cols = grid_edges(int(fmap.shape[3]), parts)
    cells: list[Tensor] = []
    for r in range(parts):
        for c in range(parts):
            cells.append(fmap[:, :, rows[r]:rows[r + 1], cols[c]:cols[c + 1]])
    return cells


class SpatioChannelAttention(nn.Module):
    """One weight in (0, 1) per channel per location of its input (the paper's attention net).

    Unlike SE/CBAM it does not factor the weight into a channel part times a spatial part:
    a channel may matter at the eyes and not at the mouth.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu = nn.PReLU(channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.bn(self.prelu(self.conv(x))))


class SpatioChannelAttentionNet(nn.Module):
    """SCAN: local (per-patch) and global spatio-channel attention, then a classifier."""

    def __init__(self, channels: int, grid: int, num_classes: int) -> None:
        super().__init__()
        self.grid = grid
        self.local_attention = nn.ModuleList(
            [SpatioChannelAttention(channels) for _ in range(grid * grid)]
        )
        self.global_attention = SpatioChannelAttention(channels)
        self.fc = nn.Linear(2 * channels, num_classes)

    def features(self, fmap: Tensor) -> Tensor:
        """``[local, global]`` [N, 2C], L2-normalised as in the paper."""
        cells = grid_cells(fmap, self.grid)
        pooled: list[Tensor] = []
        for k, attention in enumerate(self.local_attention):
            cell = cells[k]
            pooled.append((cell * attention(cell)).mean(dim=(2, 3)))
        local = torch.stack(pooled, dim=2).amax(dim=2)
        glob = (fmap * self.global_attention(fmap)).mean(dim=(2, 3))
        return F.normalize(torch.cat([local, glob], dim=1), dim=1)

    def forward(self, fmap: Tensor) -> Tensor:
        return self.fc(self.features(fmap))


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., CVPR 2020): a sigmoid weight per channel from a 1-D conv across channels.

    CCI uses it to drop the channels of the deeper map that carry nothing about expression
    before the regions are classified. Kernel size from ECA's rule ``|(log2 C + 1) / 2|_odd``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = int(abs((math.log2(channels) + 1) / 2))
        k = k if k % 2 == 1 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def weights(self, x: Tensor) -> Tensor:
        """[N, C, 1, 1] in (0, 1): the same weight at every location of a channel."""
        descriptor = x.mean(dim=(2, 3)).unsqueeze(1)
        return torch.sigmoid(self.conv(descriptor)).squeeze(1)[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


class ComplementaryContext(nn.Module):
    """CCI: ECA on the deeper map, then one shared classifier applied to each 2x2 region."""

    def __init__(self, channels: int, num_classes: int, reduction: int = 4) -> None:
        super().__init__()
        self.regions_per_side = REGIONS_PER_SIDE
        self.eca = EfficientChannelAttention(channels)
        self.classifier = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),  # not in place: served Grad-CAM differentiates this head (scripted)
            nn.Linear(channels // reduction, num_classes),
        )

    def region_logits(self, attended: Tensor) -> Tensor:
        """[N, regions, classes] from the ECA-weighted map."""
        pooled = [cell.mean(dim=(2, 3)) for cell in grid_cells(attended, self.regions_per_side)]
        return self.classifier(torch.stack(pooled, dim=1))


def branch_loss(branches: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    """The paper's loss: ``0.2 * CE(SCAN) + 0.8 * sum of the regions' CE``.

    ``branches`` [N, 1 + regions, classes], SCAN first (``ScanCciStudent.forward_branches``).
    """
    total = ATTENTION_LOSS_WEIGHT * losses.expression_ce(
        branches[:, 0], labels, label_smoothing=label_smoothing
    )
    for b in range(1, branches.shape[1]):
        total = total + (1.0 - ATTENTION_LOSS_WEIGHT) * losses.expression_ce(
            branches[:, b], labels, label_smoothing=label_smoothing
        )
    return total
