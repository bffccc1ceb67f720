"""The model the end-to-end tests serve: a scaled-down release of the default-model config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from training.config import TrainConfig
from training.release import release

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "configs" / "default_model.yaml"


def scaled_down_config(out_dir: Path) -> TrainConfig:
    """`make model`'s config on few faces, views and steps."""
    raw = yaml.safe_load(DEFAULT_MODEL.read_text())
    raw["data"]["sources"] = ["face-api", "lfw_subset", "astronaut", "grace_hopper"]
    raw.update(epochs=2, limit_train_batches=3, batch_size=8, feature_bank_views=2,
               warmup_epochs=1.0, validate_every=1, num_workers=0, progress=False,
               out_dir=str(out_dir))
    return TrainConfig.model_validate(raw)


def build_scaled_down(archive_dir: Path, workdir: Path, model_config: Path) -> dict[str, Any]:
    return release(scaled_down_config(workdir), archive_dir, model_config=model_config,
                   cam_samples=2)
