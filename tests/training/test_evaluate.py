"""Per-mask-state metrics, model evaluation and the markdown report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from training.evaluate import (
    EvalResult,
    ViewOutputs,
    accuracy,
    aggregate,
    calibrate_result,
    confusion,
    evaluate_model,
    macro_f1,
    majority_baseline,
    mean_std,
    metrics_from_views,
    per_class_recall,
    wilson_interval,
    write_report,
)
from training.models import create_student

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- hand-computed metric cases

# true:  0 0 0 1 1 2 -1   (class 2 has one sample, -1 is unlabelled, classes 3..6 absent)
# pred:  0 0 1 1 0 2  5
LABELS = np.array([0, 0, 0, 1, 1, 2, -1])
PREDS = np.array([0, 0, 1, 1, 0, 2, 5])


def test_accuracy_skips_unlabelled_samples() -> None:
    assert accuracy(LABELS, PREDS) == pytest.approx(4 / 6)
    assert math.isnan(accuracy(np.array([-1]), np.array([3])))


def test_confusion_is_row_normalised_with_absent_rows_nan() -> None:
    c = confusion(LABELS, PREDS)
    assert c.shape == (7, 7)
    np.testing.assert_allclose(c[0, :3], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(c[1, :3], [1 / 2, 1 / 2, 0])
    np.testing.assert_allclose(c[2, :3], [0, 0, 1])
    np.testing.assert_allclose(np.nansum(c, axis=1)[:3], 1.0)
    assert np.isnan(c[3:]).all()


def test_per_class_recall_is_nan_for_absent_classes() -> None:
    r = per_class_recall(LABELS, PREDS)
    np.testing.assert_allclose(r[:3], [2 / 3, 1 / 2, 1.0])
    assert np.isnan(r[3:]).all()


def test_macro_f1_averages_present_classes_only() -> None:
    # class 0: TP 2, FP 1, FN 1 -> 4/6; class 1: TP 1, FP 1, FN 1 -> 2/4; class 2: 1
    assert macro_f1(LABELS, PREDS) == pytest.approx((4 / 6 + 2 / 4 + 1.0) / 3)


def test_prediction_of_absent_class_still_costs_recall() -> None:
    labels, preds = np.array([0, 0]), np.array([0, 6])
    # class 0: TP 1, FP 0, FN 1 -> F1 2/3; class 6 is absent and not averaged
    assert macro_f1(labels, preds) == pytest.approx(2 / 3)


def test_mean_std_is_sample_std_over_finite_folds() -> None:
    mean, std = mean_std([0.5, 0.7, float("nan")])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert mean_std([0.4]) == (0.4, 0.0)


def _result(expr_u: np.ndarray, expr_m: np.ndarray, labels: np.ndarray, name: str) -> EvalResult:
    n = len(labels)
    mask_u = np.tile([2.0, -2.0], (n, 1))
    mask_m = np.tile([-2.0, 2.0], (n, 1))
    mask_m[0] = [2.0, -2.0]  # the mask head misses one masked face
    views = {
        "unmasked": ViewOutputs(expr_u, mask_u, None),
        "masked": ViewOutputs(expr_m, mask_m, None),
    }
    return EvalResult(name, labels, np.arange(n), views, metrics_from_views(views, labels))


def test_metrics_are_reported_per_mask_state_and_for_both() -> None:
    labels = np.array([0, 1, 2, 3])
    right = np.eye(7)[labels] * 5.0
    wrong = np.eye(7)[[6, 6, 2, 3]] * 5.0
    r = _result(right, wrong, labels, "test")
    assert r.metrics["unmasked"].accuracy == 1.0
    assert r.metrics["masked"].accuracy == 0.5
    assert r.metrics["all"].accuracy == 0.75
    assert r.metrics["all"].n == 8
    assert r.metrics["unmasked"].mask_accuracy == 1.0
    assert r.metrics["masked"].mask_accuracy == 0.75
    assert r.metrics["all"].mask_accuracy == pytest.approx(7 / 8)


def test_kfold_aggregation_gives_mean_and_std_per_state() -> None:
    labels = np.array([0, 1, 2, 3])
    right = np.eye(7)[labels] * 5.0
    half = np.eye(7)[[0, 1, 6, 6]] * 5.0
    folds = [_result(right, right, labels, "fold0"), _result(right, half, labels, "fold1")]
    agg = aggregate(folds)
    assert agg["masked"]["accuracy"] == pytest.approx((0.75, np.std([1.0, 0.5], ddof=1)))
    assert agg["unmasked"]["accuracy"] == (1.0, 0.0)
    assert agg["masked"]["recall_disgust"] == pytest.approx((0.5, np.std([1, 0], ddof=1)))


# ---------------------------------------------------------------- model + report


class SyntheticPairs(Dataset):
    """Random face-pair tensors in ``PairedFaceDataset``'s item format (no images needed)."""

    def __init__(self, n: int, size: tuple[int, int, int] = (3, 64, 64), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.unmasked = torch.randn(n, *size, generator=g)
        self.masked = self.unmasked.clone()
        self.masked[:, :, size[1] // 2 :, :] = 1.0  # lower half covered
        self.labels = torch.arange(n) % 7

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "unmasked": self.unmasked[i],
            "masked": self.masked[i],
            "label": self.labels[i],
            "subject": torch.tensor(i // 2),
            "index": torch.tensor(i),
        }


@pytest.fixture(scope="module")
def tiny_student() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_student("resnet18_narrow").eval()


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_evaluate_model_collects_both_views(tiny_student: torch.nn.Module) -> None:
    torch.set_num_threads(1)
    ds = SyntheticPairs(20)
    r = evaluate_model(tiny_student, ds, "cpu", name="test", cam_samples=3)
    assert r.labels.tolist() == ds.labels.tolist()
    assert r.indices.tolist() == list(range(20))
    for v in ("unmasked", "masked"):
        assert r.views[v].expr_logits.shape == (20, 7)
        assert r.views[v].mask_logits.shape == (20, 2)
        assert r.views[v].embeddings is not None and r.views[v].embeddings.shape[0] == 20
    assert {(c.index, c.view) for c in r.cams} == {
        (i, v) for i in (0, 10, 19) for v in ("unmasked", "masked")
    }
    assert all(c.image.dtype == np.uint8 and c.image.shape == (64, 64, 3) for c in r.cams)
    # eval mode: the same input gives the same logits as a direct call
    with torch.no_grad():
        expr, _ = tiny_student(ds.masked[:2])
    np.testing.assert_allclose(r.views["masked"].expr_logits[:2], expr.numpy(), atol=1e-5)


def test_report_on_untrained_model_writes_markdown_and_pngs(
    tiny_student: torch.nn.Module, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    val = evaluate_model(tiny_student, SyntheticPairs(28, seed=1), name="val")
    test = evaluate_model(tiny_student, SyntheticPairs(28, seed=2), name="test", cam_samples=2)
    cal = calibrate_result(test, val, target_precision=0.5)
    assert cal.fitted_on is not None and "val" in cal.fitted_on
    report = write_report(test, tmp_path, "tiny untrained")
    text = report.read_text()
    pngs = ["confusion_unmasked.png", "confusion_masked.png", "confusion_all.png",
            "tsne_unmasked.png", "tsne_masked.png", "gradcam.png", "reliability_0.png"]
    for name in pngs:
        assert _is_png(tmp_path / name), name
        assert f"({name})" in text, name
    assert "ECE after (handler)" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    fold = metrics["folds"][0]
    assert fold["metrics"]["masked"]["n"] == 28
    assert set(fold["calibration_effect"]) == {"unmasked", "masked"}
    assert fold["calibration"]["temperature"]["masked"] == pytest.approx(
        cal.temperature["masked"]
    )


def test_kfold_report_shows_mean_and_std(tiny_student: torch.nn.Module, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    folds = [evaluate_model(tiny_student, SyntheticPairs(14, seed=s), name=f"fold{s}")
             for s in range(3)]
    text = write_report(folds, tmp_path, "three folds").read_text()
    assert "Mean ± sample standard deviation over 3 folds" in text
    assert "| fold2 |" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    accs = [f["metrics"]["masked"]["accuracy"] for f in metrics["folds"]]
    assert metrics["aggregate"]["masked"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert _is_png(tmp_path / "confusion_all.png")
    # pooled confusion counts: every pair of every fold counted once per view
    assert sum(map(sum, metrics["folds"][0]["metrics"]["all"]["confusion_counts"])) == 28


def test_torchscript_student_is_evaluated_without_embeddings(tiny_student_pt: Path) -> None:
    model = torch.jit.load(str(tiny_student_pt))
    r = evaluate_model(model, SyntheticPairs(9, size=(1, 32, 32)), cam_samples=2)
    assert r.views["masked"].embeddings is None
    assert r.cams == []
    assert r.metrics["all"].n == 18


# ---------------------------------------------------------------- CLI


def _tiny_run(tmp_path: Path) -> Path:
    """A msde-train-format checkpoint of an untrained student on a tiny synthetic data set."""
    from training.config import TrainConfig
    from training.data import DataConfig
    from training.models import default_input_spec

    torch.manual_seed(0)
    cfg = TrainConfig(
        student="resnet18_narrow",
        data=DataConfig(layout="synthetic", n_subjects=6, images_per_subject=3, image_size=64),
        val_fraction=0.3,
        test_fraction=0.3,
    )
    path = tmp_path / "run" / "best.pth"
    path.parent.mkdir()
    torch.save(
        {"model": create_student("resnet18_narrow").state_dict(), "student": "resnet18_narrow",
         "input_spec": default_input_spec("resnet18_narrow").model_dump(),
         "config": cfg.dump(), "epoch": 1, "metrics": {}},
        path,
    )
    return path


def test_cli_evaluates_checkpoint_and_writes_calibration(tmp_path: Path) -> None:
    from handler.contract import Calibration
    from training.evaluate.cli import main

    out = tmp_path / "report"
    assert main(["--checkpoint", str(_tiny_run(tmp_path)), "--out", str(out),
                 "--cam-samples", "2", "--threads", "1"]) == 0
    assert _is_png(out / "confusion_masked.png") and _is_png(out / "gradcam.png")
    cal = Calibration.model_validate_json((out / "calibration.json").read_text())
    assert cal.fitted_on is not None and "run val" in cal.fitted_on
    with np.load(out / "val_outputs.npz") as val, np.load(out / "test_outputs.npz") as test:
        assert val["masked_expr_logits"].shape[1] == 7
        # subject-independent: validation and test faces are different records
        assert not set(val["indices"].tolist()) & set(test["indices"].tolist())
    assert "## Calibration" in (out / "report.md").read_text()


def test_cli_evaluates_torchscript_with_data_config(tmp_path: Path, tiny_student_pt: Path) -> None:
    from training.evaluate.cli import main

    data = tmp_path / "data.yaml"
    data.write_text("layout: synthetic\nn_subjects: 3\nimages_per_subject: 2\nimage_size: 48\n")
    out = tmp_path / "report"
    assert main(["--checkpoint", str(tiny_student_pt), "--data-config", str(data),
                 "--split", "all", "--out", str(out), "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["folds"][0]["metrics"]["all"]["n"] == 12
    assert not (out / "calibration.json").exists()  # no validation split evaluated
    assert _is_png(out / "confusion_all.png")


# ---------------------------------------------------------------- intervals and the abstention rule


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (7, 21)])
def test_wilson_interval_contains_the_proportion(k: int, n: int) -> None:
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_matches_a_hand_computation() -> None:
    # 8/20: p = 0.4, z = 1.959964; centre (p + z²/2n) / (1 + z²/n), half-width z sqrt(...)
    z, n, p = 1.959964, 20, 0.4
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(8, 20) == pytest.approx((centre - half, centre + half), abs=1e-6)


def test_majority_baseline_is_the_most_frequent_label() -> None:
    m = majority_baseline(np.array([3, 3, 6, -1, 3, 6]))
    assert (m.label, m.k, m.n) == (3, 3, 5)
    assert m.accuracy == pytest.approx(0.6)


def test_a_state_no_better_than_the_majority_class_abstains() -> None:
    from handler.contract import Calibration
    from training.evaluate.run import abstain_unless_better_than_majority

    labels = np.array([3] * 60 + [6] * 40)  # majority: 60%
    right = np.eye(7)[labels] * 5.0
    constant = np.eye(7)[[3] * 100] * 5.0  # always the majority class
    fitted = Calibration(fitted_on="test", abstain_threshold={"unmasked": 0.1, "masked": 0.3})
    weak = abstain_unless_better_than_majority(fitted, _result(right, constant, labels, "val"))
    assert weak.abstain_threshold == {"unmasked": 0.1, "masked": 1.0}
    assert weak.fitted_on and "masked accuracy 60/100 does not beat" in weak.fitted_on
    strong = _result(right, right, labels, "val")
    assert abstain_unless_better_than_majority(fitted, strong) == fitted


def test_metrics_carry_counts_interval_and_predictions() -> None:
    labels = np.array([0, 1, 2, 3])
    r = _result(np.eye(7)[labels] * 5.0, np.eye(7)[[6, 6, 2, 3]] * 5.0, labels, "x")
    masked = r.metrics["masked"].to_json()
    assert masked["correct"] == 2 and masked["predicted"]["neutral"] == 2
    assert masked["accuracy_ci95"] == pytest.approx(wilson_interval(2, 4))
