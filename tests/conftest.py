"""Shared fixtures: public-domain real photos, a tiny TorchScript student, the scaled-down
default model (built once per session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from handler.contract import ModelMetadata

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage's astronaut (Eileen Collins, NASA, public domain): one smiling face."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    """matplotlib's grace_hopper.jpg (US Navy photo, public domain): one face."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.fixture(scope="session", autouse=True)
def served_detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Archives built by tests ship the registry back model re-exported as the free-size
    'masked' model (``MSDE_DETECTOR_DIR``): the served code path without the minutes of
    distillation (``make detector``; tests/training/test_detector.py builds it scaled down)."""
    from handler.detect import MODEL_FILES
    from training.assets import fetch
    from training.detector.blazeface import export_onnx, load_onnx

    out = tmp_path_factory.mktemp("detector")
    registry = fetch("blazeface") / "ONNX"
    for name in ("front", "back"):
        (out / MODEL_FILES[name]).symlink_to(registry / MODEL_FILES[name])
    export_onnx(load_onnx(registry / MODEL_FILES["back"]), out / MODEL_FILES["masked"])
    before = os.environ.get("MSDE_DETECTOR_DIR")
    os.environ["MSDE_DETECTOR_DIR"] = str(out)
    yield out
    if before is None:
        os.environ.pop("MSDE_DETECTOR_DIR", None)
    else:
        os.environ["MSDE_DETECTOR_DIR"] = before


class TinyStudent(torch.nn.Module):
    """Smallest network with the student contract, for plumbing tests only."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.expression = torch.nn.Linear(8, 7)
        self.mask = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.expression(f), self.mask(f)


def tiny_metadata(**overrides: object) -> ModelMetadata:
    fields: dict[str, object] = dict(
        version="0.0.1-test",
        architecture="tiny-test",
        input_size=(1, 32, 32),
        mean=[0.5],
        std=[0.5],
        trained_on="nothing: random weights for plumbing tests",
    )
    fields.update(overrides)
    return ModelMetadata(**fields)  # type: ignore[arg-type]


def save_tiny_student(path: Path, metadata: ModelMetadata | None = None) -> Path:
    torch.manual_seed(0)
    meta = metadata or tiny_metadata()
    model = torch.jit.script(TinyStudent(meta.input_size[0]).eval())
    torch.jit.save(model, str(path), _extra_files={"metadata.json": meta.to_json()})
    return path


@pytest.fixture(scope="session")
def tiny_student_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_student(tmp_path_factory.mktemp("student") / "tiny.pt")


def serving_test_config(path: Path) -> Path:
    """deploy/model-config.yaml with one worker and a batch window wide enough to batch."""
    config = yaml.safe_load((REPO / "deploy" / "model-config.yaml").read_text())
    config.update(minWorkers=1, maxWorkers=1, batchSize=4, maxBatchDelay=300)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def scaled_down_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default-model recipe on few faces and steps; its archive is what e2e serves."""
    from tests.scaled_model import build_scaled_down

    root = tmp_path_factory.mktemp("store")
    return build_scaled_down(root / "model_store", root / "build",
                             serving_test_config(root / "model-config.yaml"))
