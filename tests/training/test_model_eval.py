"""Cross-validation by identity (``make model-eval``) on tiny synthetic data, and its figures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import DataConfig, load_records
from training.evaluate.crossval import bootstrap_by_identity, proportion
from training.model_eval import CV_JSON, CV_MD, cross_validate

TINY_DATA = DataConfig(layout="synthetic", n_subjects=8, images_per_subject=5, image_size=48)


def test_every_face_is_tested_once_and_reserved_faces_never(tmp_path: Path) -> None:
    records = load_records(TINY_DATA)
    reserved = {records[0].subject}
    records = [replace(r, split="test") if r.subject in reserved else replace(r, split=None)
               for r in records]
    cfg = TrainConfig.model_validate(dict(
        student="resnet18_narrow", input_size=32, data=TINY_DATA, epochs=1, batch_size=8,
        num_workers=0, threads=1, device="cpu", val_fraction=0.2, out_dir=tmp_path / "unused",
        progress=False, target_precision=0.5))
    fig = cross_validate(cfg, 2, tmp_path / "cv", records)

    pool = sum(r.split != "test" for r in records)
    assert fig["faces"] == pool and fig["folds"] == 2
    assert fig["people"] == len({r.subject for r in records}) - 1
    for view in ("unmasked", "masked"):
        v = fig[view]
        assert v["agreement"]["n"] == pool
        lo, hi = v["agreement"]["ci95"]
        assert 0.0 <= lo <= v["agreement"]["value"] <= hi <= 1.0
        assert sum(p["n"] for p in v["per_class_recall"].values()) == pool
        assert v["answers"]["n"] == pool
        assert v["answers"]["answered"] == v["answers"]["expression"] + v["answers"]["group"]
        assert "group_agreement" in v
    assert fig["majority_baseline"]["n"] == pool
    assert json.loads((tmp_path / "cv" / CV_JSON).read_text())["faces"] == pool
    table = (tmp_path / "cv" / CV_MD).read_text()
    assert "2-fold cross-validation by identity" in table and "| masked faces |" in table
    for fold in ("fold0", "fold1"):  # each fold trained on the other fold's people only
        assert (tmp_path / "cv" / fold / "best.pth").exists()


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_people() -> None:
    rng = np.random.default_rng(0)

    def interval(people: int) -> tuple[float, float]:
        subjects = np.repeat(np.arange(people), 3)
        right = rng.random(len(subjects)) < 0.7
        return bootstrap_by_identity(lambda i: float(right[i].mean()), subjects, samples=500)

    small, large = interval(20), interval(400)
    assert small[0] < 0.7 < small[1] and large[0] < 0.7 < large[1]
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_proportion_carries_its_wilson_interval() -> None:
    p = proportion(15, 20)
    assert p["value"] == 0.75
    assert p["ci95"][0] == pytest.approx(0.531, abs=1e-3)
    assert proportion(0, 0)["value"] is None
