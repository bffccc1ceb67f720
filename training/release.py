"""``python -m training.release``: a training config in, a served model out (``make model``).

One command made of the steps a user runs one by one, on one config:

1. ``msde-train`` (``training.train.train``): the config's loop; ``best.pth`` is chosen on
   the validation split;
2. ``msde-eval`` (``training.evaluate.evaluate_checkpoint``) on the test split (for the
   default model, the face pool's reserved faces, never trained, tuned or selected on),
   with the per-mask-state calibration fitted on the validation split; its report and
   figures go to ``<out_dir>/report/``;
3. ``msde-export`` (``training.export``): TorchScript with ``metadata.json`` (calibration
   inside), parity-checked, as ``<out_dir>/msde_student.pt``;
4. the TorchServe archive (``training.archive``), into ``--archive-dir``;
5. ``<out_dir>/model_card.json`` and ``model_card.md``, from the evaluation results
   (``training.model_card``).

Deterministic: two releases of one revision and config give identical figures.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from training import __version__
from training.archive import DEFAULT_MODEL_CONFIG, STUDENT_FILE, build_archive
from training.assets import REPO_ROOT
from training.config import TrainConfig, build_parser, load_config
from training.data import FaceRecord, load_records, split_records
from training.evaluate import evaluate_checkpoint, write_report
from training.evaluate.run import teacher_accuracy
from training.export import export_student, metadata_for_checkpoint
from training.model_card import card_figures, card_tables, data_summary
from training.models import student_from_checkpoint
from training.train import METRICS_FILE, train

LOG = logging.getLogger(__name__)

CARD_FILE = "model_card.json"
REPORT_DIR = "report"
RELEASE_FLAGS = ("archive_dir", "version", "model_config", "cam_samples")


def trained_on(
    cfg: TrainConfig, records: list[FaceRecord], train_idx: np.ndarray
) -> str | None:
    """What ``metadata.json`` says the model was trained on (None: the export default)."""
    if cfg.data.layout != "face_pool":
        return None
    chosen = [records[i] for i in train_idx]
    return (f"{len(chosen)} real unlabelled faces of {len({r.subject for r in chosen})} people "
            "from registry packages (see docs/model_card.md), synthetic masks, soft labels from "
            f"the teacher(s) {', '.join(cfg.data.teachers)} (see docs/teachers.md)")


def _validated_rows(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / METRICS_FILE).open(newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("val_acc_masked")]


def release(
    cfg: TrainConfig,
    archive_dir: Path,
    *,
    version: str = __version__,
    model_config: Path | None = None,
    cam_samples: int = 8,
) -> dict[str, Any]:
    """Train, evaluate, calibrate, export and archive ``cfg``; returns the model card."""
    t0 = time.perf_counter()
    out_dir = cfg.out_dir
    records = load_records(cfg.data)
    splits = split_records(records, cfg)
    trained = train(cfg, records)

    test, validation = evaluate_checkpoint(
        trained.best_path, data_config=None, split="test", device="cpu",
        batch_size=cfg.batch_size, cam_samples=cam_samples, records=records,
    )
    if validation is None or test.calibration is None:
        raise ValueError("a release needs a validation split to calibrate on")
    write_report(test, out_dir / REPORT_DIR, f"msde {version}: {cfg.student} on the test split")

    student, spec, checkpoint = student_from_checkpoint(trained.best_path)
    metadata = metadata_for_checkpoint(
        checkpoint, spec, version=version, trained_on=trained_on(cfg, records, splits.train),
        calibration=test.calibration,
    )
    pt = out_dir / STUDENT_FILE
    export_student(student, metadata, pt)
    mar = build_archive(pt, archive_dir, model_config=model_config)

    card: dict[str, Any] = {
        "version": version,
        "architecture": cfg.student,
        "config": cfg.dump(),
        "data": data_summary(records, {"train": splits.train, "validation": splits.val,
                                       "test": splits.test}),
        "best_epoch": trained.best_epoch,
        "calibration": test.calibration.model_dump(),
        "validation": card_figures(validation),
        "test": card_figures(test),
        "log": _validated_rows(out_dir),
    }
    if cfg.data.layout == "face_pool":
        card["test"]["teacher_accuracy"] = teacher_accuracy(
            cfg.data.teachers, [records[i] for i in splits.test], cfg)
    card["build_seconds"] = round(time.perf_counter() - t0, 1)
    card["archive"] = str(mar)
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "model_card.md").write_text(card_tables(card))
    LOG.info("released %s: %s", mar, out_dir / CARD_FILE)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m training.release")
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--archive-dir", type=Path, help="where the .mar goes (model_store)")
    parser.add_argument("--version", help=f"model version (default {__version__}, the package's)")
    parser.add_argument("--model-config", type=Path,
                        help=f"TorchServe model-config.yaml (default {DEFAULT_MODEL_CONFIG})")
    parser.add_argument("--cam-samples", type=int, help="Grad-CAM faces in the report (8)")
    args = parser.parse_args(argv)
    extra = {k: vars(args).pop(k) for k in RELEASE_FLAGS if k in vars(args)}
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args)
    card = release(
        cfg, extra.get("archive_dir", REPO_ROOT / "model_store"),
        version=extra.get("version", __version__), model_config=extra.get("model_config"),
        cam_samples=extra.get("cam_samples", 8),
    )
    print(card_tables(card))
    print(f"{card['archive']} ({card['build_seconds']} s); card: {cfg.out_dir / CARD_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
