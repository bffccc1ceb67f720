"""msde-benchmark: a two-fold tiny comparison gives a well-formed table; statistics; config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import training.benchmark as benchmark
from training.benchmark import (
    METHODS,
    BenchmarkConfig,
    build_parser,
    holm,
    load_benchmark_config,
    paired_test,
    parse_method,
    run_benchmark,
    trains_alike,
    write_outputs,
)
from training.config import TrainConfig
from training.data import DataConfig

TINY_DATA = DataConfig(layout="synthetic", n_subjects=6, images_per_subject=7, image_size=48)


def tiny_config(out_dir: Path, **overrides: object) -> BenchmarkConfig:
    fields: dict[str, object] = dict(
        data=TINY_DATA, folds=2, epochs=1, input_size=32, batch_size=8, processes=1,
        out_dir=out_dir, limit_train_batches=1, timing_rounds=1, timing_calls=1,
    )
    return BenchmarkConfig.model_validate(fields | overrides)


def _table(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_two_fold_tiny_comparison_writes_a_well_formed_paper_table(tmp_path: Path) -> None:
    bcfg = tiny_config(tmp_path / "runs")
    result = run_benchmark(bcfg)
    assert [r["method"] for r in result.rows] == list(METHODS)
    for row in result.rows:
        assert row["folds"] == 2 and len(row["masked_accuracy_per_fold"]) == 2
        for key in benchmark.METRIC_KEYS:
            assert 0.0 <= row[key] <= 1.0 or math.isnan(row[key]), (row["method"], key)
        lo, hi = sorted((row["unmasked_accuracy"], row["masked_accuracy"]))
        assert lo - 1e-9 <= row["all_accuracy"] <= hi + 1e-9  # "all" pools both views
        assert row["params"] > 0 and row["gflops"] > 0 and row["ms_per_face"] > 0
        assert (row["reference"] is None) == (row["method"] == "baseline")
    by = {r["method"]: r for r in result.rows}
    assert by["scan_cci"]["student"] == "scan_cci_narrow"
    assert by["best_student"]["student"] == "mini_xception"
    assert by["scan_cci"]["params"] != by["baseline"]["params"]
    assert by["contrastive"]["gflops"] == by["baseline"]["gflops"]  # same architecture

    md, js = tmp_path / "b.md", tmp_path / "b.json"
    noted = bcfg.model_copy(update={"notes": ("Trained at commit abc.",)})
    write_outputs(result, noted, "msde-benchmark --tiny", md, js)
    text = md.read_text()
    assert "msde-benchmark --tiny" in text and "\n- Trained at commit abc.\n" in text
    main = _table(text, "| method | student |")
    assert len(main) == 2 + len(METHODS)
    assert all(len(cells) == len(main[0]) == 13 for cells in main)
    assert [cells[0] for cells in main[2:]] == [f"`{m}`" for m in METHODS]
    assert all("±" in cells[2] for cells in main[2:])  # mean ± std over the two folds
    tests = _table(text, "| method | vs |")
    assert [cells[0] for cells in tests[2:]] == [f"`{m}`" for m in METHODS if m != "baseline"]
    assert all(cells[1] == "`baseline`" and "(p " in cells[3] for cells in tests[2:])

    payload = json.loads(js.read_text())  # strict JSON: undefined p-values are null
    assert payload["command"] == "msde-benchmark --tiny"
    assert payload["settings"]["folds"] == 2 and len(payload["per_fold"]) == 2
    assert set(payload["costs"]) == {"resnet18_narrow", "scan_cci_narrow", "mini_xception"}
    row = next(r for r in payload["rows"] if r["method"] == "scan_cci")
    assert {"masked_accuracy_diff", "masked_accuracy_p", "masked_accuracy_p_holm",
            "all_macro_f1_std", "unmasked_macro_f1_per_fold"} <= set(row)


def test_longer_runs_get_their_own_teacher_and_reference_and_finished_runs_are_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    methods = ("baseline", "distill", "baseline@2", "distill@2")
    bcfg = tiny_config(tmp_path / "runs", methods=methods)
    first = run_benchmark(bcfg)
    assert [r["method"] for r in first.rows] == list(methods)
    assert next(r for r in first.rows if r["method"] == "distill@2")["reference"] == "baseline@2"
    teacher = tmp_path / "runs" / "fold0" / "baseline_unmasked_only@2" / "best.pth"
    assert teacher.is_file()  # distill@2 was taught by an unmasked-only run of 2 epochs
    answer = benchmark.findings(first.rows)[-1]
    assert "with 2 instead of 1 epochs, does a masked-aware paradigm beat" in answer
    assert "`distill@2`" in answer and answer.split("?")[1].strip().split(":")[0] in ("Yes", "No")

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(benchmark, "train", no_training)
    again = run_benchmark(bcfg)
    assert again.per_fold == first.per_fold


def test_a_saved_run_is_reused_across_new_settings_at_their_defaults_only() -> None:
    cfg = TrainConfig(data=TINY_DATA, student="resnet18_narrow", epochs=3)
    saved = cfg.dump()
    assert trains_alike(saved, cfg)
    older = {k: v for k, v in saved.items() if k != "label_smoothing"}  # saved before it existed
    assert trains_alike(older, cfg)
    assert not trains_alike(older, cfg.model_copy(update={"label_smoothing": 0.1}))
    assert not trains_alike(saved | {"epochs": 4}, cfg)
    assert not trains_alike(saved | {"dropped_setting": 1}, cfg)


def test_method_specs_name_known_methods_and_optional_epochs() -> None:
    assert parse_method("distill", 15) == ("distill", 15)
    assert parse_method("distill_kl@40", 15) == ("distill_kl", 40)
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("dropout", 15)
    with pytest.raises(ValueError, match="positive integer"):
        parse_method("baseline@x", 15)
    with pytest.raises(ValueError, match="twice"):
        BenchmarkConfig(methods=("baseline", "baseline"))


def test_paired_t_test_matches_a_hand_computation() -> None:
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3); for 2 degrees of freedom the two-sided
    # p is 1 - t / sqrt(2 + t^2) = 0.0742
    diff, p = paired_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert diff == pytest.approx(2.0)
    assert p == pytest.approx(1 - 12**0.5 / 14**0.5, rel=1e-9)
    assert math.isnan(paired_test([0.5, 0.6], [0.4, 0.5])[1])  # no spread: undefined


def test_holm_adjusts_in_order_and_keeps_the_adjusted_values_monotone() -> None:
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03)
    assert adjusted["c"] == pytest.approx(0.06)
    assert adjusted["b"] == pytest.approx(0.06)  # 1 x 0.04, raised to the previous 0.06
    assert math.isnan(adjusted["d"])


def test_config_file_then_flags_runs_any_data_layout(tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text("folds: 10\ndata:\n  layout: msde\n  root: data/msde\nepochs: 30\n")
    args = vars(build_parser().parse_args([
        "--config", str(config), "--data-root", "/data/MSD-E", "--methods", "baseline,scan_cci",
        "--epochs", "20",
    ]))
    del args["md"], args["json"]
    bcfg = load_benchmark_config(args)
    assert bcfg.data.layout == "msde" and bcfg.data.root == Path("/data/MSD-E")
    assert bcfg.folds == 10 and bcfg.epochs == 20 and bcfg.methods == ("baseline", "scan_cci")
    assert load_benchmark_config({"notes": "a, b: c"}).notes == ("a, b: c",)
    defaults = BenchmarkConfig()
    assert defaults.folds == 10 and defaults.data.layout == "synthetic"  # the paper's k
    refined = load_benchmark_config({"data.n_subjects": "12"})
    assert refined.data.n_subjects == 12 and refined.data.images_per_subject == 21


@pytest.mark.parametrize("name", ["benchmark_synthetic.yaml", "benchmark_msde.yaml"])
def test_committed_benchmark_configs_validate(name: str) -> None:
    from training.assets import REPO_ROOT

    bcfg = load_benchmark_config({"config": REPO_ROOT / "configs" / name})
    assert {parse_method(m, bcfg.epochs)[0] for m in bcfg.methods} == set(METHODS)
