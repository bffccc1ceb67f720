"""What a data set is made of: labelled faces, and the error raised when a data set is malformed.

Every loader (``training.data.loaders``) produces ``FaceRecord``s; splits and the paired
dataset only ever see records, so adding a layout never touches training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from handler.faces import Detection
from handler.contract import EXPRESSION_LABELS

SplitName = Literal["train", "val", "test"]


class DataError(ValueError):
    """A data set that cannot be used as given; the message lists every offending item."""

    def __init__(self, summary: str, problems: list[str] | None = None, *, show: int = 20) -> None:
        self.summary = summary
        self.problems: list[str] = list(problems or [])
        lines = [summary]
        lines += [f"  - {p}" for p in self.problems[:show]]
        if len(self.problems) > show:
            lines.append(f"  ... and {len(self.problems) - show} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class FaceRecord:
    """One labelled face, optionally with a real masked photo of the same face.

    Exactly one of ``image_path`` / ``pixels`` holds the image. ``detection`` is the face in
    that image (``None``: the dataset resolves it with a detector, or treats the image as a
    ready-made face crop). ``split`` is a partition the data set itself prescribes (FER2013's
    ``Usage``, ``train/`` ``test/`` folders, the face pool's reserved faces), used by
    ``predefined_split`` and ``holdout_split``. ``soft_target`` is a teacher's distribution
    over the expressions on this (unmasked) face, for distillation without an online
    teacher; a pseudo-labelled face's ``label`` is its top class. ``source`` says where a
    face comes from, for reports.
    """

    label: int
    subject: str
    image_path: Path | None = None
    pixels: np.ndarray | None = None
    masked_path: Path | None = None
    detection: Detection | None = None
    split: SplitName | None = None
    soft_target: np.ndarray | None = None  # (7,) probabilities, msde order
    source: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.label < len(EXPRESSION_LABELS):
            raise ValueError(f"label {self.label} outside 0..{len(EXPRESSION_LABELS) - 1}")
        if self.soft_target is not None and np.shape(self.soft_target) != (
            len(EXPRESSION_LABELS),
        ):
            raise ValueError(f"soft_target must have {len(EXPRESSION_LABELS)} values")
        if not self.subject:
            raise ValueError("subject must not be empty")
        if (self.image_path is None) == (self.pixels is None):
            raise ValueError("exactly one of image_path / pixels must be given")

    @property
    def name(self) -> str:
        """Human-readable identity of the record for logs and error messages."""
        return str(self.image_path) if self.image_path is not None else f"<{self.subject}>"


@dataclass(frozen=True)
class SkippedItem:
    """An input the loader could not use (listed in the load report, not fatal)."""

    item: str
    reason: str


@dataclass(frozen=True)
class LoadReport:
    """Records plus what was skipped on the way, so callers can show it."""

    records: list[FaceRecord]
    skipped: list[SkippedItem]
