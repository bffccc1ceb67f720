"""The default model's release, scaled down (few faces, views and steps): what it builds
and reports, through the training package's own loop, evaluation and export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from handler.align import face_input
from handler.contract import read_metadata
from testkit.scaled_model import DEFAULT_MODEL, scaled_down_config
from training.config import parse_config

# what the scaled-down build may change in the default model's config: its size, not its recipe
SCALE_KNOBS = {"epochs", "limit_train_batches", "batch_size", "feature_bank_views",
               "warmup_epochs", "validate_every", "num_workers", "progress", "out_dir", "data"}


def _build_dir(card: dict[str, Any]) -> Path:
    return Path(card["config"]["out_dir"])


def test_scaled_down_build_is_the_default_recipe_made_smaller(tmp_path: Path) -> None:
    full = parse_config(["--config", str(DEFAULT_MODEL)]).dump()
    small = scaled_down_config(tmp_path).dump()
    assert {k for k in full if full[k] != small[k]} <= SCALE_KNOBS
    assert {k for k in full["data"] if full["data"][k] != small["data"][k]} == {"sources"}
    assert yaml.safe_load(DEFAULT_MODEL.read_text())["paradigm"] == "distill"


def test_release_writes_archive_student_card_and_report(scaled_down_build: dict[str, Any]) -> None:
    card = scaled_down_build
    mar = Path(card["archive"])
    names = set(zipfile.ZipFile(mar).namelist())
    assert {"msde_student.pt", "msde_handler.py", "handler/pipeline.py",
            "MAR-INF/MANIFEST.json"} <= names
    assert any(n.startswith("blazeface/") and n.endswith(".onnx") for n in names)
    build = _build_dir(card)
    assert json.loads((build / "model_card.json").read_text()) == json.loads(json.dumps(card))
    assert {"best.pth", "config.yaml", "metrics.csv", "model_card.md"} <= {
        p.name for p in build.iterdir()}
    data = card["data"]
    assert data["train"]["faces"] > 0 and data["validation"]["faces"] > 0
    assert data["test"] == {"faces": 2, "identities": 2, "sources": ["astronaut", "grace_hopper"]}
    meta = read_metadata(build / "msde_student.pt")
    assert meta.architecture == "mini_xception" and meta.input_size == (1, 64, 64)
    assert meta.calibration == type(meta.calibration).model_validate(card["calibration"])
    assert meta.calibration.fitted_on and " val, target precision 0.6" in meta.calibration.fitted_on
    assert meta.trained_on.startswith(f"{data['train']['faces']} real unlabelled faces")
    grouping = meta.calibration.grouping  # the grouped answer travels in the contract
    assert grouping is not None and set(grouping.threshold) == {"unmasked", "masked"}
    assert "negative" in grouping.groups and "masked groups: " in meta.calibration.fitted_on
    answers = card["test"]["masked"]["answers"]
    assert answers["n"] == 2 and answers["answered"] == answers["expression"] + answers["group"]


def test_card_figures_are_the_evaluation_report_s(scaled_down_build: dict[str, Any]) -> None:
    card = scaled_down_build
    report = json.loads((_build_dir(card) / "report" / "metrics.json").read_text())
    evaluated = report["folds"][0]["metrics"]
    for state in ("unmasked", "masked"):
        fig = card["test"][state]
        assert fig["correct"] == evaluated[state]["correct"]
        assert fig["ci95"][0] <= fig["agreement"] <= fig["ci95"][1]
        assert sum(fig["predicted"].values()) == card["test"]["faces"] == 2
    # the pool's labels are the teachers' answer on the unmasked face: they agree with it
    assert card["test"]["teacher_accuracy"]["unmasked"] == 1.0
    assert [row["epoch"] for row in card["log"]] == ["1", "2"]


def test_student_starts_from_the_teacher_and_keeps_the_astronauts_smile(
    scaled_down_build: dict[str, Any], astronaut: np.ndarray
) -> None:
    from handler.detect import FaceDetector
    from training.assets import fetch

    pt = _build_dir(scaled_down_build) / "msde_student.pt"
    meta = read_metadata(pt)
    student = torch.jit.load(str(pt))
    face = FaceDetector(fetch("blazeface") / "ONNX").detect(astronaut)[0]
    x = torch.from_numpy(face_input(astronaut, face, meta.input_spec()))[None]
    expression, _ = student(x)
    assert meta.labels[int(expression.argmax())] == "happiness"
