"""Shared fixtures: public-domain real photos, a tiny TorchScript student, the scaled-down
default model (built once per session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from typing import Any

import numpy as np
import pytest
import yaml

from testkit import photos
from testkit.student import save_tiny_student

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage's astronaut (Eileen Collins, NASA, public domain): one smiling face."""
    return photos.astronaut()


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    """matplotlib's grace_hopper.jpg (US Navy photo, public domain): one face."""
    return photos.grace_hopper()


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
    from testkit.scaled_model import build_scaled_down

    root = tmp_path_factory.mktemp("store")
    return build_scaled_down(root / "model_store", root / "build",
                             serving_test_config(root / "model-config.yaml"))
