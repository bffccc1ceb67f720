"""The exported student's contract: what ``metadata.json`` inside the TorchScript file holds.

Training writes it (``training.export``), serving reads it (``handler.msde_handler``); labels,
input size, normalisation, crop geometry and calibration are defined here once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EXPRESSION_LABELS: tuple[str, ...] = (
    "surprise",
    "fear",
    "disgust",
    "happiness",
    "sadness",
    "anger",
    "neutral",
)
MASK_LABELS: tuple[str, ...] = ("unmasked", "masked")
METADATA_FILE = "metadata.json"


class CropSpec(BaseModel):
    """How a detected face becomes the model's input square (see ``handler.align``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(1.25, gt=0.5, le=3.0, description="crop side / detected box side")
    shift_y: float = Field(
        0.0, ge=-0.5, le=0.5, description="crop centre offset from box centre, in box heights"
    )
    rotate: bool = Field(True, description="level the eyes (undo in-plane roll)")


class Grouping(BaseModel):
    """Coarser answers for mask states where the seven classes are not reliable.

    A group's probability is the sum of its members' calibrated probabilities; the face gets
    the top group when its expression abstains and that sum reaches the group threshold of
    its mask state (mixed over states like ``Calibration.abstain_threshold``). A threshold of
    1.0 means the state never gets a group answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: dict[str, tuple[str, ...]] = Field(
        description="group name -> its expressions; the groups partition the seven labels"
    )
    threshold: dict[str, float] = Field(
        description="per mask state: the least group probability answered (1.0 = never)"
    )

    @field_validator("groups")
    @classmethod
    def _partition(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        members = [label for group in v.values() for label in group]
        if sorted(members) != sorted(EXPRESSION_LABELS):
            raise ValueError(f"groups must partition {list(EXPRESSION_LABELS)}, got {v}")
        if set(v) & {"uncertain"}:
            raise ValueError("'uncertain' is not a group name")
        return v

    @field_validator("threshold")
    @classmethod
    def _states(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(MASK_LABELS):
            raise ValueError(f"needs exactly the keys {list(MASK_LABELS)}, got {sorted(v)}")
        if any(not 0.0 <= t <= 1.0 for t in v.values()):
            raise ValueError("thresholds are probabilities in [0, 1]")
        return v


class Calibration(BaseModel):
    """Per-mask-state temperatures and abstention thresholds (1.0 / 0.0 = identity)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fitted_on: str | None = Field(
        None, description="what the values were fitted on; None = identity, not fitted"
    )
    temperature: dict[str, float] = Field(
        default_factory=lambda: {"unmasked": 1.0, "masked": 1.0}
    )
    abstain_threshold: dict[str, float] = Field(
        default_factory=lambda: {"unmasked": 0.0, "masked": 0.0}
    )
    grouping: Grouping | None = Field(
        None, description="grouped answers; None (models built before them): no group answer"
    )

    @field_validator("temperature", "abstain_threshold")
    @classmethod
    def _states(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(MASK_LABELS):
            raise ValueError(f"needs exactly the keys {list(MASK_LABELS)}, got {sorted(v)}")
        return v

    @field_validator("temperature")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        if any(t <= 0 for t in v.values()):
            raise ValueError("temperatures must be > 0")
        return v

    @field_validator("abstain_threshold")
    @classmethod
    def _probability(cls, v: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 <= t <= 1.0 for t in v.values()):
            raise ValueError("thresholds are probabilities in [0, 1]")
        return v


class InputSpec(BaseModel):
    """What a network expects: the part of the contract that preprocessing needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int, int] = Field(description="[channels, height, width]")
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: CropSpec = Field(default_factory=CropSpec)

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        c, h, w = self.input_size
        if c not in (1, 3):
            raise ValueError(f"input_size channels must be 1 or 3, got {c}")
        if h < 16 or w < 16:
            raise ValueError(f"input_size {self.input_size} is too small")
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std need {c} values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class ModelMetadata(BaseModel):
    """Embedded in the TorchScript student as the extra file ``metadata.json``.

    The scripted module's ``forward(x: Tensor[N, C, H, W]) -> tuple[Tensor, Tensor]`` returns
    ``(expression_logits[N, 7], mask_logits[N, 2])`` in the orders of ``labels`` and
    ``mask_labels``; ``x`` is already normalised with ``mean`` / ``std`` on [0, 1] pixels.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = "msde"
    version: str
    architecture: str
    labels: list[str] = Field(default_factory=lambda: list(EXPRESSION_LABELS))
    mask_labels: list[str] = Field(default_factory=lambda: list(MASK_LABELS))
    input_size: tuple[int, int, int] = Field(description="[channels, height, width]")
    mean: list[float]
    std: list[float]
    trained_on: str
    output: Literal["tuple(expression_logits, mask_logits)"] = "tuple(expression_logits, mask_logits)"
    crop: CropSpec = Field(default_factory=CropSpec)
    calibration: Calibration = Field(default_factory=Calibration)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if tuple(v) != EXPRESSION_LABELS:
            raise ValueError(f"labels must be {list(EXPRESSION_LABELS)} in this order, got {v}")
        return v

    @field_validator("mask_labels")
    @classmethod
    def _mask_labels(cls, v: list[str]) -> list[str]:
        if tuple(v) != MASK_LABELS:
            raise ValueError(f"mask_labels must be {list(MASK_LABELS)}, got {v}")
        return v

    @model_validator(mode="after")
    def _channels(self) -> ModelMetadata:
        self.input_spec()  # same checks as a bare InputSpec
        return self

    def input_spec(self) -> InputSpec:
        return InputSpec(
            input_size=self.input_size, mean=tuple(self.mean), std=tuple(self.std), crop=self.crop
        )

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        return cls.model_validate(json.loads(text))


def read_metadata(pt_path: str | Path) -> ModelMetadata:
    """Read ``metadata.json`` out of a TorchScript file without loading the weights' code."""
    import torch

    extra = {METADATA_FILE: ""}
    torch.jit.load(str(pt_path), map_location="cpu", _extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{pt_path} has no embedded {METADATA_FILE}")
    return ModelMetadata.from_json(extra[METADATA_FILE])
