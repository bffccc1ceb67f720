"""The controlled benchmark: the paper's protocol on synthetic faces, every paradigm, k folds.

Why synthetic: the effect the paradigms claim (a mask costs an unmasked-only model accuracy;
training on masked twins with a contrastive or distillation loss buys it back without
hurting unmasked faces) can be shown on data whose expressions live in both the upper and
the lower face, with exact keypoints and no licensing question, on 2 CPU cores.

Protocol: subject-independent k-fold (``training.data.subject_kfold``); in each fold every
method trains on the same training subjects (validation subjects carved out of them select
the checkpoint) and is tested on the held-out subjects' unmasked and synthetically masked
faces (the same masks for every method). Rows:

* ``baseline_unmasked_only`` — trained on unmasked faces only: the reference that shows
  the drop (it is also the distillation teacher of its fold);
* ``baseline`` — unmasked and masked faces mixed;
* ``contrastive`` — paired Siamese loss (MSE of L2-normalised embeddings) + CE on both;
* ``contrastive_supcon`` — supervised contrastive loss instead of the paired MSE;
* ``distill`` — feature MSE (lambda 100) to the fold's unmasked-only teacher;
* ``distill_kl`` — Hinton KL on softened logits (T = 4) to the same teacher.

``python -m training.benchmark`` writes ``docs/benchmark.md`` and ``docs/benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from training.assets import REPO_ROOT
from training.config import TrainConfig
from training.data import DataConfig, FaceRecord, PairedFaceDataset, load_records
from training.evaluate import evaluate_model, mean_std
from training.models import student_from_checkpoint
from training.train import split_records, student_input_spec, train

LOG = logging.getLogger(__name__)

TEACHER_METHOD = "baseline_unmasked_only"
# method -> TrainConfig overrides on top of the shared settings
METHODS: dict[str, dict[str, Any]] = {
    TEACHER_METHOD: {"paradigm": "baseline", "unmasked_only": True},
    "baseline": {"paradigm": "baseline"},
    "contrastive": {"paradigm": "contrastive"},
    "contrastive_supcon": {"paradigm": "contrastive", "supcon": True, "alpha": 0.0},
    "distill": {"paradigm": "distill", "kd": "feature"},
    "distill_kl": {"paradigm": "distill", "kd": "kl"},
}
METRIC_KEYS: tuple[str, ...] = (
    "unmasked_accuracy", "masked_accuracy", "all_accuracy", "masked_macro_f1",
    "mask_state_accuracy",
)


class BenchmarkConfig(BaseModel):
    """Sizes chosen so the whole protocol runs in about 10-15 minutes on 2 CPU cores."""

    model_config = ConfigDict(extra="forbid")

    folds: int = Field(4, ge=2)
    run_folds: int | None = Field(None, ge=1, description="run only the first N folds (tests)")
    epochs: int = Field(15, ge=1)
    n_subjects: int = Field(48, ge=4)
    images_per_subject: int = Field(21, ge=1)
    image_size: int = Field(96, ge=48)
    student: str = "resnet18_narrow"
    input_size: int = Field(64, ge=16)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(3e-3, gt=0)
    warmup_epochs: float = Field(1.0, ge=0)
    augment: bool = Field(
        False, description="geometric/colour augmentation (off: 15 epochs are too few for it)"
    )
    seed: int = 0
    processes: int = Field(2, ge=1, description="folds trained in parallel, 1 thread each")
    methods: tuple[str, ...] = tuple(METHODS)
    out_dir: Path = Path("runs/benchmark")
    limit_train_batches: int | None = Field(None, ge=1)

    def data(self) -> DataConfig:
        return DataConfig(
            layout="synthetic", n_subjects=self.n_subjects,
            images_per_subject=self.images_per_subject, image_size=self.image_size,
            seed=self.seed,
        )


class SharedItems(PairedFaceDataset):
    """``PairedFaceDataset`` whose items are memoised across the runs of one fold process.

    An item is a pure function of (records, spec, augment, seed, mask styles, index, epoch),
    so the six methods of a fold can share rendered faces and masks instead of redrawing
    them (mask rendering dominates the benchmark's CPU time). Teacher views are shared too
    when the teacher's ``InputSpec`` equals the student's (the fold's own baseline).
    Stored as float16 to halve the memory (~0.3 GB per fold process at the defaults).
    """

    _store: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}

    def __init__(self, records: list[FaceRecord], spec: Any, *, teacher_spec: Any = None,
                 **kwargs: Any) -> None:
        if teacher_spec is not None and teacher_spec != spec:
            raise ValueError("SharedItems needs the teacher to share the student's InputSpec")
        super().__init__(records, spec, **kwargs)
        self.with_teacher = teacher_spec is not None
        self.identity = (
            tuple(id(r) for r in self.records), spec.model_dump_json(), self.augment, self.seed,
            self.mask_styles,
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        key = (self.identity, index, self.epoch)
        stored = self._store.get(key)
        if stored is None:
            stored = {k: v.half() if v.is_floating_point() else v
                      for k, v in super().__getitem__(index).items()}
            self._store[key] = stored
        item = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
        if self.with_teacher:
            item["teacher_unmasked"], item["teacher_masked"] = item["unmasked"], item["masked"]
        return item


def train_config(
    bcfg: BenchmarkConfig, method: str, fold: int, teacher: Path | None
) -> TrainConfig:
    """The msde-train config of one (method, fold) run."""
    overrides = dict(METHODS[method])
    if overrides["paradigm"] == "distill":
        if teacher is None:
            raise ValueError(f"{method} needs the fold's {TEACHER_METHOD} checkpoint")
        overrides["teacher"] = str(teacher)
    return TrainConfig(
        student=bcfg.student, input_size=bcfg.input_size, data=bcfg.data(), split="kfold",
        folds=bcfg.folds, fold=fold, epochs=bcfg.epochs, batch_size=bcfg.batch_size,
        lr=bcfg.lr, warmup_epochs=bcfg.warmup_epochs, augment=bcfg.augment, seed=bcfg.seed,
        device="cpu", num_workers=0, threads=1,
        out_dir=bcfg.out_dir / f"fold{fold}" / method, progress=False,
        save_every_epoch=False, limit_train_batches=bcfg.limit_train_batches, **overrides,
    )


def test_metrics(best: Path, records: list[FaceRecord], cfg: TrainConfig) -> dict[str, float]:
    """Metrics of a checkpoint on its fold's held-out subjects (same masks for every method)."""
    student, _, _ = student_from_checkpoint(best)
    test_idx = split_records(records, cfg).test
    dataset = SharedItems(
        [records[i] for i in test_idx], student_input_spec(cfg), augment=False,
        seed=cfg.seed + 2,
    )
    result = evaluate_model(student, DataLoader(dataset, batch_size=64), "cpu", name="test")
    m = result.metrics
    return {
        "unmasked_accuracy": m["unmasked"].accuracy,
        "masked_accuracy": m["masked"].accuracy,
        "all_accuracy": m["all"].accuracy,
        "masked_macro_f1": m["masked"].macro_f1,
        "mask_state_accuracy": m["all"].mask_accuracy,
        "best_epoch": float(torch.load(best, weights_only=True)["epoch"]),
    }


def run_fold(bcfg: BenchmarkConfig, fold: int) -> dict[str, dict[str, float]]:
    """Train and test every method on one fold (the teacher first)."""
    torch.set_num_threads(1)
    SharedItems._store.clear()  # items of another fold are never asked for again
    records = load_records(bcfg.data())
    out: dict[str, dict[str, float]] = {}
    teacher: Path | None = None
    ordered = sorted(bcfg.methods, key=lambda m: m != TEACHER_METHOD)
    for method in ordered:
        t0 = time.time()
        if METHODS[method]["paradigm"] == "distill" and teacher is None:
            teacher = train(train_config(bcfg, TEACHER_METHOD, fold, None), records,
                            dataset_factory=SharedItems).best_path
        cfg = train_config(bcfg, method, fold, teacher)
        result = train(cfg, records, dataset_factory=SharedItems)
        if method == TEACHER_METHOD:
            teacher = result.best_path
        out[method] = test_metrics(result.best_path, records, cfg)
        out[method]["train_seconds"] = time.time() - t0
        LOG.info("fold %d %s: %s", fold, method,
                 {k: round(v, 3) for k, v in out[method].items()})
    return out


def _run_fold_star(args: tuple[BenchmarkConfig, int]) -> dict[str, dict[str, float]]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_fold(*args)


@dataclass(frozen=True)
class BenchmarkResult:
    rows: list[dict[str, Any]]
    per_fold: list[dict[str, dict[str, float]]]
    seconds: float


def summarise(
    per_fold: list[dict[str, dict[str, float]]], bcfg: BenchmarkConfig
) -> list[dict[str, Any]]:
    """One row per method: mean, sample std and per-fold values of every metric."""
    rows = []
    for method in bcfg.methods:
        row: dict[str, Any] = {"method": method}
        for key in METRIC_KEYS:
            values = [fold[method][key] for fold in per_fold]
            mean, std = mean_std(values)
            row[key] = mean
            row[f"{key}_std"] = std
            row[f"{key}_per_fold"] = values
        row["folds"] = len(per_fold)
        row["epochs"] = bcfg.epochs
        rows.append(row)
    return rows


def run_benchmark(bcfg: BenchmarkConfig) -> BenchmarkResult:
    unknown = sorted(set(bcfg.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    folds = list(range(bcfg.run_folds or bcfg.folds))[: bcfg.folds]
    t0 = time.time()
    jobs = [(bcfg, f) for f in folds]
    if bcfg.processes > 1 and len(folds) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(bcfg.processes, len(folds))) as pool:
            per_fold = pool.map(_run_fold_star, jobs, chunksize=1)
    else:
        per_fold = [run_fold(*job) for job in jobs]
    rows = summarise(per_fold, bcfg)
    return BenchmarkResult(rows=rows, per_fold=per_fold, seconds=time.time() - t0)


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"


def _pm(row: dict[str, Any], key: str) -> str:
    std = row[f"{key}_std"]
    return _pct(row[key]) + ("" if not np.isfinite(std) else f" ± {100 * std:.1f}")


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """What the numbers say about the expected effect, computed (never hand-written)."""
    by = {r["method"]: r for r in rows}
    if TEACHER_METHOD not in by:
        return []
    ref = by[TEACHER_METHOD]
    drop = ref["unmasked_accuracy"] - ref["masked_accuracy"]
    lines = [
        f"- Mask cost of the unmasked-only reference: {_pct(ref['unmasked_accuracy'])}% "
        f"unmasked vs {_pct(ref['masked_accuracy'])}% masked "
        f"({'a drop' if drop > 0 else 'no drop'} of {100 * drop:.1f} points)."
    ]
    for method, row in by.items():
        if method == TEACHER_METHOD:
            continue
        gain = row["masked_accuracy"] - ref["masked_accuracy"]
        kept = row["unmasked_accuracy"] - ref["unmasked_accuracy"]
        spread = max(row["masked_accuracy_std"], ref["masked_accuracy_std"])
        beyond = np.isfinite(spread) and abs(gain) > spread
        lines.append(
            f"- `{method}`: masked {gain * 100:+.1f} points vs the reference"
            f"{' (beyond the fold spread)' if beyond else ' (within the fold spread)'}, "
            f"unmasked {kept * 100:+.1f} points."
        )
    return lines


def write_outputs(
    result: BenchmarkResult, bcfg: BenchmarkConfig, command: str, md_path: Path, json_path: Path
) -> None:
    payload = {
        "rows": result.rows,
        "per_fold": result.per_fold,
        "command": command,
        "settings": bcfg.model_dump(mode="json"),
        "wall_seconds": round(result.seconds, 1),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=2))
    n_folds = result.rows[0]["folds"] if result.rows else 0
    lines = [
        "# Controlled benchmark: baseline vs contrastive vs distillation",
        "",
        "Generated by `training/benchmark.py`; do not edit by hand. Regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Synthetic faces (`DataConfig(layout=\"synthetic\")`: {bcfg.n_subjects} identities x "
        f"{bcfg.images_per_subject} images, {bcfg.image_size} px, seed {bcfg.seed}); "
        f"subject-independent {bcfg.folds}-fold protocol, {n_folds} fold(s) run; student "
        f"`{bcfg.student}` at {bcfg.input_size}x{bcfg.input_size}, {bcfg.epochs} epochs, "
        f"batch {bcfg.batch_size} pairs, AdamW lr {bcfg.lr} ({bcfg.warmup_epochs} warm-up "
        f"epoch(s), cosine decay), augmentation {'on' if bcfg.augment else 'off'} (fresh "
        "synthetic masks every epoch either way); checkpoint "
        "chosen on validation subjects carved out of each training fold; test = the fold's "
        "held-out subjects, unmasked and with synthetic masks (identical for every method). "
        f"Wall time {result.seconds / 60:.1f} min with {bcfg.processes} process(es) of 1 "
        "thread. Accuracy in %, mean ± sample std over folds.",
        "",
        "| method | unmasked acc | masked acc | all acc | masked macro-F1 | mask-state acc "
        "| folds | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lines.append(
            f"| `{r['method']}` | {_pm(r, 'unmasked_accuracy')} | {_pm(r, 'masked_accuracy')} "
            f"| {_pm(r, 'all_accuracy')} | {_pm(r, 'masked_macro_f1')} "
            f"| {_pm(r, 'mask_state_accuracy')} | {r['folds']} | {r['epochs']} |"
        )
    lines += ["", "## What the numbers say", "", *findings(result.rows), "",
              "Methods: see the module docstring of `training/benchmark.py` and "
              "`docs/training.md`. Machine-readable twin: `docs/benchmark.json`.", ""]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark",
                                     description=__doc__.splitlines()[0])
    for name, field in BenchmarkConfig.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=field.description or f"default {field.default}")
    parser.add_argument("--md", type=Path, default=REPO_ROOT / "docs" / "benchmark.md")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "docs" / "benchmark.json")
    args = vars(parser.parse_args(argv))
    md, js = args.pop("md"), args.pop("json")
    overrides: dict[str, Any] = {}
    for k, v in args.items():
        if v is None:
            continue
        overrides[k] = v.split(",") if k == "methods" else v
    bcfg = BenchmarkConfig.model_validate(overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python -m training.benchmark" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    result = run_benchmark(bcfg)
    write_outputs(result, bcfg, command, md, js)
    for r in result.rows:
        print(f"{r['method']:24s} unmasked {_pm(r, 'unmasked_accuracy'):>12s}  "
              f"masked {_pm(r, 'masked_accuracy'):>12s}  all {_pm(r, 'all_accuracy'):>12s}")
    print(f"wrote {md} and {js} ({result.seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
