"""Cached frozen-stage features over a bank of augmented views (``feature_bank_views``).

Few faces, many steps: when the first stages of the student are frozen (``frozen_stages``),
their output on a face never changes for a given view, so it is computed once for a fixed
bank of views and every step only runs the trained stages. View ``v`` of a pair is what the
paired dataset shows at epoch ``v`` (its augmentation, its synthetic mask), so a bank of
``V`` views holds exactly what ``V`` epochs without it would have shown; each epoch then
draws one view per pair, seeded by (seed, index, epoch), so a run is reproducible and
resumable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.data import PairedFaceDataset

LOG = logging.getLogger(__name__)

VIEW_KEYS: tuple[str, ...] = ("unmasked", "masked")


class _Views(Dataset[dict[str, Tensor]]):
    """Every view of every pair, face by face: item k is view k % V of pair k // V, so a
    worker decodes each photo once for all its views (``PairedFaceDataset`` keeps the last)."""

    def __init__(self, dataset: PairedFaceDataset, views: int) -> None:
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset) * self.views

    def __getitem__(self, k: int) -> dict[str, Tensor]:
        return self.dataset.item(k // self.views, k % self.views)


class FeatureBank(Dataset[dict[str, Tensor]]):
    """Items like ``PairedFaceDataset``'s, with ``unmasked`` / ``masked`` replaced by the
    frozen stages' output on one of ``views`` banked views of the pair."""

    def __init__(
        self,
        dataset: PairedFaceDataset,
        frozen: Sequence[nn.Module],
        views: int,
        *,
        seed: int,
        batch_size: int = 64,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> None:
        if views < 1 or not frozen:
            raise ValueError("a feature bank needs at least one view and one frozen stage")
        self.views, self.seed, self.epoch = views, seed, 0
        prefix = nn.Sequential(*frozen).to(device).eval()
        loader = DataLoader(_Views(dataset, views), batch_size=views * max(1, batch_size // views),
                            shuffle=False, num_workers=num_workers)
        parts: dict[str, list[Tensor]] = {k: [] for k in VIEW_KEYS}
        other: dict[str, list[Tensor]] = {}
        with torch.inference_mode():
            for batch in tqdm(loader, desc="feature bank", disable=not progress, leave=False):
                for k in VIEW_KEYS:
                    parts[k].append(prefix(batch[k].to(device)).cpu())
                for k, t in batch.items():
                    if k not in VIEW_KEYS and not k.startswith("teacher_"):
                        other.setdefault(k, []).append(t)
        n = len(dataset)
        # (N, V, C, H, W) per view key; labels, targets, indices are the same in every view
        self.bank = {k: torch.cat(p).reshape(n, views, *p[0].shape[1:]) for k, p in parts.items()}
        self.fields = {k: torch.cat(t)[::views] for k, t in other.items()}
        size = sum(t.numel() * t.element_size() for t in self.bank.values())
        LOG.info("feature bank: %d pairs x %d views, %s per view, %.0f MB", n, views,
                 tuple(self.bank["unmasked"].shape[2:]), size / 1e6)

    def __len__(self) -> int:
        return self.bank["unmasked"].shape[0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def view_of(self, index: int, epoch: int) -> int:
        """Which banked view of pair ``index`` epoch ``epoch`` trains on."""
        return int(np.random.default_rng([self.seed, index, epoch]).integers(self.views))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        v = self.view_of(index, self.epoch)
        item = {k: self.bank[k][index, v] for k in VIEW_KEYS}
        item.update({k: t[index] for k, t in self.fields.items()})
        return item
