"""The model the end-to-end tests serve: a scaled-down run of the default-model recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.default_model import Recipe, build

# The same recipe as `make model`, on few faces and a handful of steps.
SCALED_DOWN = Recipe(
    steps=4, batch_size=8, masked_renders=2, eval_every=2,
    sources=["face-api", "lfw_subset", "astronaut", "grace_hopper"],
)


def build_scaled_down(out_dir: Path, workdir: Path, model_config: Path) -> dict[str, Any]:
    return build(SCALED_DOWN, out_dir, workdir, progress=False, model_config=model_config)
