"""``python -m training.model_eval`` (``make model-eval``): a config's recipe cross-validated
by identity over its data, with 95% intervals.

The reserved faces a release is judged on are too few to tell a real gain (20 faces: +-20
points). This runs the same loop on k folds of the *people* of the data set instead: each
fold trains the config (``training.train.train``) on the other folds' people, chooses its
checkpoint and fits its calibration (thresholds, grouped answers) on validation people
carved out of them, and is evaluated on its own (``training.evaluate.evaluate_checkpoint``),
so every face is tested once by a model that never saw its person. Records the data set
reserves for testing (the face pool's ``eval`` group) are left out of every fold: they stay
never trained on. Figures: ``training.evaluate.crossval``. Not part of ``make test``: it is
k trainings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig, build_parser, load_config
from training.data import FaceRecord, load_records
from training.evaluate import EvalResult, evaluate_checkpoint
from training.evaluate.crossval import cv_figures, cv_tables
from training.train import train

LOG = logging.getLogger(__name__)

CV_JSON = "cv.json"
CV_MD = "cv.md"


def fold_config(cfg: TrainConfig, folds: int, fold: int, out_dir: Path) -> TrainConfig:
    """``cfg`` on fold ``fold`` of ``folds`` (by identity), writing to ``out_dir/fold<i>``."""
    return TrainConfig.model_validate({**cfg.dump(), "split": "kfold", "folds": folds,
                                       "fold": fold, "out_dir": str(out_dir / f"fold{fold}")})


def cross_validate(
    cfg: TrainConfig, folds: int, out_dir: Path, records: list[FaceRecord] | None = None
) -> dict[str, Any]:
    """Train and evaluate every fold; writes and returns the pooled figures."""
    t0 = time.perf_counter()
    records = load_records(cfg.data) if records is None else records
    pool = [r for r in records if r.split != "test"]
    LOG.info("cross-validating on %d faces of %d people (%d reserved faces left out)",
             len(pool), len({r.subject for r in pool}), len(records) - len(pool))
    results: list[EvalResult] = []
    for fold in range(folds):
        fcfg = fold_config(cfg, folds, fold, out_dir)
        trained = train(fcfg, pool)
        result, _ = evaluate_checkpoint(
            trained.best_path, data_config=None, split="test", device=fcfg.device,
            batch_size=fcfg.batch_size, cam_samples=0, records=pool,
        )
        LOG.info("fold %d: %d faces, unmasked %.3f masked %.3f", fold, len(result.labels),
                 result.metrics["unmasked"].accuracy, result.metrics["masked"].accuracy)
        results.append(result)
    subjects = np.array([pool[i].subject for r in results for i in r.indices])
    figures = cv_figures(results, subjects)
    figures["config"] = cfg.dump()
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CV_JSON).write_text(json.dumps(figures, indent=2) + "\n")
    (out_dir / CV_MD).write_text(cv_tables(figures))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m training.model_eval")
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--k", type=int, default=5, help="folds by identity (5)")
    parser.add_argument("--report-dir", type=Path, default=Path("model_store/cv"),
                        help="where cv.json, cv.md and the fold runs go (model_store/cv)")
    args = parser.parse_args(argv)
    k, report_dir = vars(args).pop("k"), vars(args).pop("report_dir")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args)
    figures = cross_validate(cfg, k, report_dir)
    print(cv_tables(figures))
    print(f"{report_dir / CV_JSON} ({figures['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
