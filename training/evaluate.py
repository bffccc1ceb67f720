"""Per-mask-state evaluation of a student and the markdown report (``msde-eval``).

The question the project answers is "how much does a mask cost, and did training buy it
back?", so every number is reported three times: on the unmasked view of each face pair, on
its masked view, and on both together ("all"). Metrics are pure functions of numpy arrays;
``evaluate_model`` only runs the network and collects its outputs, ``write_report`` only
draws and writes.

Conventions (also in ``docs/evaluation.md``):

* labels follow ``handler.contract.EXPRESSION_LABELS``; ``-1`` = unlabelled, excluded from
  every label metric (the mask-state accuracy still counts it: its mask state is known);
* a class absent from a split's labels has recall NaN and is left out of the macro-F1
  (macro-F1 = mean F1 over the classes *present* in the labels), so a fold without "fear"
  is not punished with a 0 it could not earn; predictions *of* an absent class still count
  as errors through the recall of the true class;
* confusion matrices are row-normalised (row = true class), absent rows are NaN;
* k-fold aggregates are mean ± sample standard deviation (ddof=1) over folds.

CLI::

    msde-eval --checkpoint runs/x/best.pth --out reports/x
    msde-eval --checkpoint runs/fold{0..9}/best.pth --out reports/kfold   # one per fold
    msde-eval --checkpoint model_store/msde.pt --data-config data.yaml --out reports/pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from handler.contract import (
    EXPRESSION_LABELS,
    MASK_LABELS,
    Calibration,
    InputSpec,
    read_metadata,
)
from handler.postprocess import abstain_thresholds, calibrated_probs, softmax
from training.calibrate import (
    StateCalibration,
    confusable_pairs,
    ece,
    fit_states,
    to_calibration,
    write_calibration,
)
from training.config import TrainConfig
from training.data import DataConfig, PairedFaceDataset, load_records
from training.models import Student, cam_target_layer, student_from_checkpoint
from training.train import split_records

LOG = logging.getLogger(__name__)

NUM_CLASSES = len(EXPRESSION_LABELS)
VIEWS: tuple[str, ...] = MASK_LABELS  # the two images of a pair, named by their mask state
STATES: tuple[str, ...] = (*VIEWS, "all")
# Directed confusion rate from which two classes count as "not told apart" in the report.
CONFUSABLE_RATE = 0.25
TSNE_MAX_POINTS = 2000


# --------------------------------------------------------------------------- pure metrics


def _labelled(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ")
    known = labels >= 0
    return labels[known], preds[known]


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of labelled samples predicted right; NaN without labelled samples."""
    y, p = _labelled(labels, preds)
    return float((y == p).mean()) if len(y) else float("nan")


def confusion_counts(
    labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(K, K) int64 counts, row = true class, column = predicted class; -1 labels skipped."""
    y, p = _labelled(labels, preds)
    if len(y) and (y.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels/predictions outside 0..{num_classes - 1}")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y, p), 1)
    return counts


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Row-normalised confusion; rows of classes with no samples are NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    out = np.full_like(counts, np.nan)
    np.divide(counts, rows, out=out, where=rows > 0)
    return out


def confusion(
    labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Row-normalised confusion matrix (row = true class); absent classes' rows are NaN."""
    return normalise_rows(confusion_counts(labels, preds, num_classes))


def per_class_recall(
    labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(K,) recall per true class; NaN for classes absent from ``labels``."""
    return np.diag(confusion(labels, preds, num_classes)).copy()


def f1_from_counts(counts: np.ndarray) -> float:
    """Macro-F1 over the classes present (row sum > 0) in a confusion-count matrix."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diag(counts)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    present = support > 0
    if not present.any():
        return float("nan")
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + support); support > 0 keeps it finite
    f1 = 2 * tp[present] / (predicted[present] + support[present])
    return float(f1.mean())


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Unweighted mean F1 over the classes present in ``labels`` (-1 skipped)."""
    return f1_from_counts(confusion_counts(labels, preds, num_classes))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StateMetrics:
    """The label metrics of one mask state; ``counts`` is the un-normalised confusion."""

    n: int  # labelled samples
    accuracy: float
    macro_f1: float
    ece: float
    mask_accuracy: float  # mask head vs. the known state, over all samples (labelled or not)
    counts: np.ndarray  # (K, K) int64

    @property
    def recall(self) -> np.ndarray:
        return np.diag(normalise_rows(self.counts)).copy()

    @property
    def confusion(self) -> np.ndarray:
        return normalise_rows(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": _finite(self.accuracy),
            "macro_f1": _finite(self.macro_f1),
            "ece": _finite(self.ece),
            "mask_accuracy": _finite(self.mask_accuracy),
            "per_class_recall": {
                name: _finite(r) for name, r in zip(EXPRESSION_LABELS, self.recall, strict=True)
            },
            "confusion_counts": self.counts.tolist(),
        }


def state_metrics(
    expr_logits: np.ndarray,
    labels: np.ndarray,
    mask_logits: np.ndarray,
    mask_state: np.ndarray,
    n_bins: int = 15,
) -> StateMetrics:
    """Metrics of one mask state from raw outputs; ``mask_state`` is 0/1 per sample."""
    preds = np.asarray(expr_logits).argmax(axis=1)
    mask_preds = np.asarray(mask_logits).argmax(axis=1)
    return StateMetrics(
        n=int((np.asarray(labels) >= 0).sum()),
        accuracy=accuracy(labels, preds),
        macro_f1=macro_f1(labels, preds),
        ece=ece(softmax(expr_logits), labels, n_bins),
        mask_accuracy=float((mask_preds == mask_state).mean()) if len(mask_preds) else math.nan,
        counts=confusion_counts(labels, preds),
    )


@dataclass(frozen=True)
class ViewOutputs:
    """What the student produced for one view (unmasked or masked) of every pair."""

    expr_logits: np.ndarray  # (N, 7)
    mask_logits: np.ndarray  # (N, 2)
    embeddings: np.ndarray | None  # (N, D); None when the model has no ``embed``


@dataclass(frozen=True)
class CamOverlay:
    """One Grad-CAM overlay (RGB uint8) for the predicted class of one view of one face."""

    index: int  # dataset index
    view: str
    label: int
    pred: int
    image: np.ndarray  # (H, W, 3) uint8


@dataclass(frozen=True)
class CalibrationEffect:
    """A fitted calibration applied to the evaluated split, per mask state.

    ``ece_state`` uses the temperature of the known state; ``ece_handler`` runs the handler's
    own mixing (``handler.postprocess.calibrated_probs``) weighted by the mask head, i.e. what
    a client would see. Coverage / precision are of the non-abstained answers.
    """

    fit: StateCalibration  # as fitted on the validation split
    ece_before: float
    ece_state: float
    ece_handler: float
    coverage: float
    precision: float


@dataclass
class EvalResult:
    """Outputs and metrics of one model on one split (one fold of a k-fold run)."""

    name: str
    labels: np.ndarray  # (N,) msde order, -1 = unlabelled
    indices: np.ndarray  # (N,) dataset indices
    views: dict[str, ViewOutputs]
    metrics: dict[str, StateMetrics]
    cams: list[CamOverlay] = field(default_factory=list)
    calibration: Calibration | None = None
    calibration_effect: dict[str, CalibrationEffect] = field(default_factory=dict)

    def logits_by_state(self) -> dict[str, np.ndarray]:
        return {v: self.views[v].expr_logits for v in VIEWS}

    def labels_by_state(self) -> dict[str, np.ndarray]:
        return {v: self.labels for v in VIEWS}

    def save_outputs(self, path: Path) -> Path:
        """Raw outputs as .npz (``training.calibrate`` CLI reads the logits back)."""
        arrays: dict[str, np.ndarray] = {"labels": self.labels, "indices": self.indices}
        for v, out in self.views.items():
            arrays[f"{v}_expr_logits"] = out.expr_logits
            arrays[f"{v}_mask_logits"] = out.mask_logits
            if out.embeddings is not None:
                arrays[f"{v}_embeddings"] = out.embeddings
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path


def metrics_from_views(
    views: Mapping[str, ViewOutputs], labels: np.ndarray
) -> dict[str, StateMetrics]:
    """Per-view metrics plus "all" (both views stacked; mask target = view's state)."""
    n = len(labels)
    out = {
        v: state_metrics(views[v].expr_logits, labels, views[v].mask_logits, np.full(n, s))
        for s, v in enumerate(VIEWS)
    }
    out["all"] = state_metrics(
        np.concatenate([views[v].expr_logits for v in VIEWS]),
        np.concatenate([labels for _ in VIEWS]),
        np.concatenate([views[v].mask_logits for v in VIEWS]),
        np.concatenate([np.full(n, s) for s in range(len(VIEWS))]),
    )
    return out


def calibration_effect(
    result: EvalResult, fits: Mapping[str, StateCalibration]
) -> dict[str, CalibrationEffect]:
    """ECE before / after and abstention behaviour of validation-fitted ``fits`` on ``result``."""
    cal = to_calibration(fits, "validation split")
    effect = {}
    for v in VIEWS:
        out = result.views[v]
        mask_p = softmax(out.mask_logits)
        mixed = calibrated_probs(out.expr_logits, mask_p, cal, MASK_LABELS)
        answered = mixed.max(axis=1) >= abstain_thresholds(mask_p, cal, MASK_LABELS)
        known = result.labels >= 0
        right = mixed.argmax(axis=1) == result.labels
        effect[v] = CalibrationEffect(
            fit=fits[v],
            ece_before=ece(softmax(out.expr_logits), result.labels),
            ece_state=ece(softmax(out.expr_logits, fits[v].temperature), result.labels),
            ece_handler=ece(mixed, result.labels),
            coverage=float(answered[known].mean()) if known.any() else math.nan,
            precision=float(right[known & answered].mean())
            if (known & answered).any()
            else math.nan,
        )
    return effect


def calibrate_result(
    result: EvalResult, validation: EvalResult, target_precision: float = 0.8
) -> Calibration:
    """Fit on ``validation``'s outputs, record the effect on ``result``; returns the fit."""
    fits = fit_states(validation.logits_by_state(), validation.labels_by_state(), target_precision)
    result.calibration = to_calibration(
        fits, f"{validation.name}, target precision {target_precision:g}"
    )
    result.calibration_effect = calibration_effect(result, fits)
    return result.calibration


# --------------------------------------------------------------------------- running a model


class _ExpressionOutput(nn.Module):
    """The student's expression logits alone: what Grad-CAM differentiates."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)[0]


def cam_layer(model: nn.Module) -> nn.Module:
    """Grad-CAM layer: a ``training.models`` student says which; other nets use their last conv.

    The fallback (for plain modules honouring the forward contract, e.g. test doubles) is
    the deepest layer that still has a spatial map.
    """
    if isinstance(model, Student):
        return cam_target_layer(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    return convs[-1]


def display_image(x: np.ndarray) -> np.ndarray:
    """Normalised network input (C, H, W) -> float32 RGB (H, W, 3) in [0, 1] for overlays.

    Min-max stretched rather than un-normalised, so it needs no InputSpec and survives
    augmentation that shifts the range.
    """
    img = np.asarray(x, dtype=np.float32).transpose(1, 2, 0)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def grad_cam_overlays(
    model: nn.Module,
    dataset: Dataset,
    indices: Sequence[int],
    device: torch.device,
) -> list[CamOverlay]:
    """Grad-CAM (``pytorch_grad_cam``) of the predicted class, both views of each face."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    items = [dataset[int(i)] for i in indices]
    wrapped = _ExpressionOutput(model)
    overlays: list[CamOverlay] = []
    with GradCAM(model=wrapped, target_layers=[cam_layer(model)]) as cam:
        for v in VIEWS:
            x = torch.stack([item[v] for item in items]).to(device)
            with torch.no_grad():
                preds = wrapped(x).argmax(dim=1).tolist()
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(p) for p in preds])
            for item, img, heat, pred in zip(items, x.cpu().numpy(), maps, preds, strict=True):
                overlays.append(
                    CamOverlay(
                        index=int(item["index"]),
                        view=v,
                        label=int(item["label"]),
                        pred=int(pred),
                        image=show_cam_on_image(display_image(img), heat, use_rgb=True),
                    )
                )
    model.eval()
    return overlays


def evaluate_model(
    model: nn.Module,
    loader: DataLoader | Dataset,
    device: str | torch.device = "cpu",
    *,
    name: str = "test",
    cam_samples: int = 0,
) -> EvalResult:
    """Run ``model`` on both views of every pair and compute the per-mask-state metrics.

    ``loader`` yields ``training.data.PairedFaceDataset`` batches (dicts with "unmasked",
    "masked", "label", "index"); a bare dataset is wrapped in an unshuffled loader.
    ``cam_samples`` faces, spread evenly over the split, get Grad-CAM overlays; TorchScript
    models get none (scripted modules take no hooks).
    """
    if not isinstance(loader, DataLoader):
        loader = DataLoader(loader, batch_size=64, shuffle=False)
    device = torch.device(device)
    model = model.to(device).eval()
    has_embed = hasattr(model, "embed")
    collected: dict[str, list[list[np.ndarray]]] = {v: [[], [], []] for v in VIEWS}
    labels, indices = [], []
    with torch.no_grad():
        for batch in loader:
            for v in VIEWS:
                x = batch[v].to(device)
                if isinstance(model, Student):  # one pass gives the embedding too
                    expr, mask, emb = model.forward_all(x)
                else:
                    expr, mask = model(x)
                    emb = model.embed(x) if has_embed else None
                collected[v][0].append(expr.float().cpu().numpy())
                collected[v][1].append(mask.float().cpu().numpy())
                if emb is not None:
                    collected[v][2].append(emb.float().cpu().numpy())
            labels.append(batch["label"].cpu().numpy())
            indices.append(batch["index"].cpu().numpy())
    if not labels:
        raise ValueError("the evaluation split is empty")
    views = {
        v: ViewOutputs(
            expr_logits=np.concatenate(e),
            mask_logits=np.concatenate(m),
            embeddings=np.concatenate(z) if z else None,
        )
        for v, (e, m, z) in collected.items()
    }
    y = np.concatenate(labels).astype(np.int64)
    idx = np.concatenate(indices).astype(np.int64)
    result = EvalResult(
        name=name, labels=y, indices=idx, views=views, metrics=metrics_from_views(views, y)
    )
    if cam_samples > 0:
        if isinstance(model, torch.jit.ScriptModule):
            LOG.warning("no Grad-CAM for a TorchScript model (scripted modules take no hooks)")
        else:
            picks = np.unique(np.linspace(0, len(idx) - 1, min(cam_samples, len(idx))).round())
            result.cams = grad_cam_overlays(
                model, loader.dataset, [int(idx[int(p)]) for p in picks], device
            )
    return result


# --------------------------------------------------------------------------- aggregation


def _finite(x: float) -> float | None:
    """JSON has no NaN: undefined metrics are written as null."""
    return float(x) if np.isfinite(x) else None


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for a single fold) over folds, ignoring NaN folds."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


SCALARS: tuple[str, ...] = ("accuracy", "macro_f1", "ece", "mask_accuracy")


def aggregate(results: Sequence[EvalResult]) -> dict[str, dict[str, tuple[float, float]]]:
    """state -> metric -> (mean, std) over folds, including per-class recall."""
    agg: dict[str, dict[str, tuple[float, float]]] = {}
    for s in STATES:
        per_state = {m: mean_std(getattr(r.metrics[s], m) for r in results) for m in SCALARS}
        for c, name in enumerate(EXPRESSION_LABELS):
            per_state[f"recall_{name}"] = mean_std(r.metrics[s].recall[c] for r in results)
        agg[s] = per_state
    return agg


def pooled_counts(results: Sequence[EvalResult], state: str) -> np.ndarray:
    """Confusion counts summed over folds: every face is tested exactly once in k-fold."""
    return np.sum([r.metrics[state].counts for r in results], axis=0)


# --------------------------------------------------------------------------- figures


def plot_confusion(counts: np.ndarray, title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with the rate in every cell (absent rows blank)."""
    c = normalise_rows(counts)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(c), vmin=0.0, vmax=1.0, cmap="Blues")
    ticks = range(len(EXPRESSION_LABELS))
    ax.set_xticks(ticks, EXPRESSION_LABELS, rotation=45, ha="right")
    rows = zip(EXPRESSION_LABELS, counts.sum(1), strict=True)
    ax.set_yticks(ticks, [f"{n} ({int(k)})" for n, k in rows])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (samples)")
    ax.set_title(title)
    for i in ticks:
        for j in ticks:
            if np.isfinite(c[i, j]):
                ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if c[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def tsne_points(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of (N, D) embeddings; perplexity shrinks for small splits."""
    from sklearn.manifold import TSNE

    n = len(embeddings)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    return TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed
    ).fit_transform(np.asarray(embeddings, dtype=np.float32))


def plot_tsne(points: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    """Scatter of t-SNE points coloured by expression class (grey = unlabelled)."""
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    unl = labels < 0
    if unl.any():
        ax.scatter(*points[unl].T, s=6, c="lightgrey", label="unlabelled")
    colours = ("tab:orange", "tab:purple", "tab:olive", "tab:green", "tab:blue", "tab:red",
               "tab:grey")
    for c, (name, colour) in enumerate(zip(EXPRESSION_LABELS, colours, strict=True)):
        sel = labels == c
        if sel.any():
            ax.scatter(*points[sel].T, s=8, color=colour, label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8, markerscale=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_cams(cams: Sequence[CamOverlay], path: Path) -> Path:
    """Grid: one row per face, its unmasked and masked overlays side by side."""
    by_face: dict[int, dict[str, CamOverlay]] = {}
    for c in cams:
        by_face.setdefault(c.index, {})[c.view] = c
    rows = list(by_face.values())
    fig = Figure(figsize=(2.4 * len(VIEWS), 2.5 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(VIEWS), squeeze=False)
    for r, row in enumerate(rows):
        for col, v in enumerate(VIEWS):
            ax = axes[r][col]
            ax.axis("off")
            if v in row:
                o = row[v]
                truth = EXPRESSION_LABELS[o.label] if o.label >= 0 else "?"
                ax.imshow(o.image)
                ax.set_title(f"#{o.index} {v}\ntrue {truth} / pred {EXPRESSION_LABELS[o.pred]}",
                             fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_reliability(effect: Mapping[str, CalibrationEffect], result: EvalResult,
                     path: Path, n_bins: int = 15) -> Path:
    """Reliability diagrams per state: accuracy vs confidence before / after temperature."""
    fig = Figure(figsize=(5.0 * len(VIEWS), 4.4), layout="constrained")
    axes = fig.subplots(1, len(VIEWS), squeeze=False)[0]
    known = result.labels >= 0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for ax, v in zip(axes, VIEWS, strict=True):
        logits = result.views[v].expr_logits[known]
        y = result.labels[known]
        for t, tag in ((1.0, "before"), (effect[v].fit.temperature, "after")):
            p = softmax(logits, t)
            conf, right = p.max(axis=1), p.argmax(axis=1) == y
            b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
            xs = [conf[b == i].mean() for i in range(n_bins) if (b == i).any()]
            ys = [right[b == i].mean() for i in range(n_bins) if (b == i).any()]
            ax.plot(xs, ys, marker="o", label=f"{tag} (T={t:.2f})")
        ax.plot(edges[[0, -1]], edges[[0, -1]], "k--", lw=1, label="perfect")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(v)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- report


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if np.isfinite(x) else "–"


def _pm(mean: float, std: float) -> str:
    return f"{_fmt(mean)} ± {_fmt(std)}" if np.isfinite(mean) else "–"


def _effect_json(effect: Mapping[str, CalibrationEffect]) -> dict[str, Any]:
    return {
        v: {
            "temperature": e.fit.temperature,
            "threshold": e.fit.threshold,
            "validation": {"n": e.fit.n, "ece_before": _finite(e.fit.ece_before),
                           "ece_after": _finite(e.fit.ece_after)},
            "ece_before": _finite(e.ece_before),
            "ece_after_state_temperature": _finite(e.ece_state),
            "ece_after_handler": _finite(e.ece_handler),
            "coverage": _finite(e.coverage),
            "precision_answered": _finite(e.precision),
        }
        for v, e in effect.items()
    }


def _summary_lines(results: Sequence[EvalResult]) -> list[str]:
    lines = ["| state | accuracy | macro-F1 | ECE | mask-state accuracy | n |",
             "|---|---|---|---|---|---|"]
    if len(results) == 1:
        for s in STATES:
            m = results[0].metrics[s]
            lines.append(f"| {s} | {_fmt(m.accuracy)} | {_fmt(m.macro_f1)} | {_fmt(m.ece)} | "
                         f"{_fmt(m.mask_accuracy)} | {m.n} |")
        return lines
    agg = aggregate(results)
    for s in STATES:
        a = agg[s]
        n = sum(r.metrics[s].n for r in results)
        lines.append(f"| {s} | {_pm(*a['accuracy'])} | {_pm(*a['macro_f1'])} | "
                     f"{_pm(*a['ece'])} | {_pm(*a['mask_accuracy'])} | {n} |")
    lines += ["", f"Mean ± sample standard deviation over {len(results)} folds.", "",
              "| fold | " + " | ".join(f"{s} acc" for s in STATES) + " | masked macro-F1 |",
              "|---|" + "---|" * (len(STATES) + 1)]
    for r in results:
        accs = " | ".join(_fmt(r.metrics[s].accuracy) for s in STATES)
        lines.append(f"| {r.name} | {accs} | {_fmt(r.metrics['masked'].macro_f1)} |")
    return lines


def _recall_lines(results: Sequence[EvalResult]) -> list[str]:
    lines = ["| class | " + " | ".join(STATES) + " |", "|---|" + "---|" * len(STATES)]
    agg = aggregate(results)
    for c, name in enumerate(EXPRESSION_LABELS):
        if len(results) == 1:
            cells = [_fmt(results[0].metrics[s].recall[c]) for s in STATES]
        else:
            cells = [_pm(*agg[s][f"recall_{name}"]) for s in STATES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _confusable_lines(results: Sequence[EvalResult]) -> tuple[list[str], list[dict[str, Any]]]:
    masked = normalise_rows(pooled_counts(results, "masked"))
    unmasked = normalise_rows(pooled_counts(results, "unmasked"))
    pairs = confusable_pairs(masked, CONFUSABLE_RATE)
    index = {n: i for i, n in enumerate(EXPRESSION_LABELS)}
    found = [{"true": p.true, "predicted": p.predicted, "masked_rate": p.rate,
              "unmasked_rate": _finite(unmasked[index[p.true], index[p.predicted]])}
             for p in pairs]
    pooled = ", pooled over folds" if len(results) > 1 else ""
    lines = [f"Directed confusions of at least {CONFUSABLE_RATE:.0%} of a class on masked faces "
             f"(row-normalised{pooled}), with the same cell on unmasked faces:", ""]
    if not found:
        return lines + ["None."], found
    lines += ["| true | predicted as | masked | unmasked |", "|---|---|---|---|"]
    lines += [f"| {f['true']} | {f['predicted']} | {f['masked_rate']:.2f} | "
              f"{_fmt(f['unmasked_rate'] if f['unmasked_rate'] is not None else math.nan, 2)} |"
              for f in found]
    return lines, found


def _calibration_lines(result: EvalResult, figure: str) -> list[str]:
    lines = [f"Fitted on: {result.calibration.fitted_on if result.calibration else '?'}; "
             f"evaluated on {result.name}. *ECE after (state T)* divides by the temperature of "
             "the known mask state; *ECE after (handler)* mixes both temperatures by the mask "
             "head's probabilities, exactly as `handler.postprocess` does. Coverage and "
             "precision are of the faces not answered `uncertain`.", "",
             "| state | T | threshold | ECE before | ECE after (state T) | ECE after (handler) | "
             "coverage | precision answered |", "|---|---|---|---|---|---|---|---|"]
    for v, e in result.calibration_effect.items():
        lines.append(f"| {v} | {e.fit.temperature:.3f} | {e.fit.threshold:.3f} | "
                     f"{_fmt(e.ece_before, 4)} | {_fmt(e.ece_state, 4)} | "
                     f"{_fmt(e.ece_handler, 4)} | {_fmt(e.coverage)} | {_fmt(e.precision)} |")
    return lines + ["", f"![reliability]({figure})"]


def write_report(
    results: EvalResult | Sequence[EvalResult], out_dir: Path, title: str
) -> Path:
    """``report.md`` + figures + ``metrics.json`` in ``out_dir``; returns the report's path.

    Several results are folds: tables give mean ± std, confusion matrices pool the folds'
    counts, t-SNE and Grad-CAM figures come from the first fold that has them.
    """
    folds = [results] if isinstance(results, EvalResult) else list(results)
    if not folds:
        raise ValueError("no results to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    pooled = " (pooled over folds)" if len(folds) > 1 else ""
    md = [f"# {title}", ""]
    md += [f"{len(folds)} fold(s): " + ", ".join(f"{r.name} ({len(r.labels)} pairs)" for r in folds)
           if len(folds) > 1 else f"Split {folds[0].name}: {len(folds[0].labels)} face pairs, "
           "each seen unmasked and masked.", ""]
    md += ["## Summary", "", *_summary_lines(folds), ""]
    md += ["## Per-class recall", "", *_recall_lines(folds), "",
           "Classes absent from a split have no recall (–) and are left out of its macro-F1.", ""]
    md += [f"## Confusion matrices{pooled}", "",
           "Row-normalised: each row (true class) sums to 1; the tick label gives its count.", ""]
    for s in STATES:
        name = f"confusion_{s}.png"
        plot_confusion(pooled_counts(folds, s), f"{title}: {s}{pooled}", out_dir / name)
        md.append(f"![confusion {s}]({name})")
    confusable, found = _confusable_lines(folds)
    md += ["", "## Classes not told apart under a mask", "", *confusable, ""]

    calibrated = [r for r in folds if r.calibration_effect]
    for i, r in enumerate(calibrated):
        name = f"reliability_{i}.png"
        plot_reliability(r.calibration_effect, r, out_dir / name)
        md += [f"## Calibration ({r.name})", "", *_calibration_lines(r, name), ""]

    embedded = next((r for r in folds if all(r.views[v].embeddings is not None for v in VIEWS)),
                    None)
    if embedded is not None and len(embedded.labels) >= 8:
        md += [f"## Embeddings (t-SNE, {embedded.name})", ""]
        rng = np.random.default_rng(0)
        keep = np.sort(rng.permutation(len(embedded.labels))[:TSNE_MAX_POINTS])
        for v in VIEWS:
            name = f"tsne_{v}.png"
            emb = embedded.views[v].embeddings
            assert emb is not None
            plot_tsne(tsne_points(emb[keep]), embedded.labels[keep],
                      f"{v} faces, coloured by true class", out_dir / name)
            md.append(f"![t-SNE {v}]({name})")
        md.append("")
    cams = next((r for r in folds if r.cams), None)
    if cams is not None:
        plot_cams(cams.cams, out_dir / "gradcam.png")
        md += [f"## Grad-CAM ({cams.name})", "",
               "Where the predicted class's evidence lies, same face unmasked and masked.", "",
               "![Grad-CAM](gradcam.png)", ""]

    metrics = {
        "title": title,
        "folds": [
            {"name": r.name, "pairs": len(r.labels),
             "metrics": {s: r.metrics[s].to_json() for s in STATES},
             "calibration": r.calibration.model_dump() if r.calibration else None,
             "calibration_effect": _effect_json(r.calibration_effect)}
            for r in folds
        ],
        "aggregate": {s: {m: {"mean": _finite(mu), "std": _finite(sd)}
                          for m, (mu, sd) in a.items()} for s, a in aggregate(folds).items()},
        "confusable_under_mask": found,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(md) + "\n")
    LOG.info("wrote %s", report)
    return report


# --------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class LoadedModel:
    """A model to evaluate plus what the CLI needs to rebuild its data."""

    model: nn.Module
    spec: InputSpec
    config: TrainConfig | None  # None for a TorchScript file
    architecture: str


def load_model(path: Path) -> LoadedModel:
    """A ``msde-train`` checkpoint (.pth) or an exported TorchScript student (.pt)."""
    if path.suffix == ".pt":
        meta = read_metadata(path)
        model = torch.jit.load(str(path), map_location="cpu").eval()
        return LoadedModel(model, meta.input_spec(), None, meta.architecture)
    student, spec, ckpt = student_from_checkpoint(path)
    raw = ckpt.get("config")
    config = TrainConfig.model_validate(raw) if isinstance(raw, dict) else None
    return LoadedModel(student, spec, config, str(ckpt["student"]))


def read_data_config(path: Path) -> TrainConfig:
    """A YAML file holding a training config (its data and split are used) or a bare
    ``DataConfig`` (split: ``TrainConfig``'s defaults)."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping")
    if "layout" in raw:
        return TrainConfig(data=DataConfig.model_validate(raw))
    return TrainConfig.model_validate(raw)


def _run_name(path: Path, cfg: TrainConfig) -> str:
    return f"fold{cfg.fold}" if cfg.split == "kfold" else path.parent.name or path.stem


def evaluate_checkpoint(
    path: Path,
    *,
    data_config: TrainConfig | None,
    split: str,
    device: str,
    batch_size: int,
    cam_samples: int,
    target_precision: float,
) -> tuple[EvalResult, EvalResult | None]:
    """Evaluate one checkpoint on its split; calibrate on its validation split if it has one.

    Returns the evaluated result (with ``calibration`` set when a validation split exists)
    and the validation result.
    """
    loaded = load_model(path)
    cfg = data_config or loaded.config
    if cfg is None:
        raise ValueError(f"{path} carries no training config: pass --data-config")
    records = load_records(cfg.data)
    splits = split_records(records, cfg)
    chosen = {"test": splits.test, "val": splits.val, "all": np.arange(len(records))}[split]
    name = _run_name(path, cfg)

    def run(idx: np.ndarray, tag: str, cams: int) -> EvalResult:
        # val: the seed msde-train validates with, so calibration sees the same masked faces
        ds = PairedFaceDataset([records[i] for i in idx], loaded.spec, augment=False,
                               seed=cfg.seed + 1, mask_styles=cfg.mask_styles)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
        result = evaluate_model(loaded.model, loader, device, name=tag, cam_samples=cams)
        result.indices = idx[result.indices]  # dataset position -> record index
        return result

    LOG.info("%s (%s): %d records, evaluating %d (%s)", path, loaded.architecture,
             len(records), len(chosen), split)
    result = run(chosen, f"{name} {split}", cam_samples)
    validation = None
    if split == "test" and len(splits.val) > 0:
        validation = run(splits.val, f"{name} val", 0)
        calibrate_result(result, validation, target_precision)
    return result, validation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="msde-eval",
        description="Per-mask-state evaluation report of msde students (one per fold).",
    )
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                        help="msde-train checkpoint(s) (.pth) or exported TorchScript (.pt)")
    parser.add_argument("--data-config", type=Path, default=None,
                        help="YAML: a training config or a bare data config (default: the "
                        "checkpoint's own config)")
    parser.add_argument("--split", choices=("test", "val", "all"), default="test")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default=None)
    parser.add_argument("--target-precision", type=float, default=0.8,
                        help="precision the abstention thresholds are fitted for")
    parser.add_argument("--cam-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data_config = read_data_config(args.data_config) if args.data_config else None

    results: list[EvalResult] = []
    for i, path in enumerate(args.checkpoint):
        result, validation = evaluate_checkpoint(
            path, data_config=data_config, split=args.split, device=args.device,
            batch_size=args.batch_size, cam_samples=args.cam_samples if i == 0 else 0,
            target_precision=args.target_precision,
        )
        prefix = "" if len(args.checkpoint) == 1 else f"{result.name.split()[0]}_"
        result.save_outputs(args.out / f"{prefix}{args.split}_outputs.npz")
        if validation is not None and result.calibration is not None:
            validation.save_outputs(args.out / f"{prefix}val_outputs.npz")
            write_calibration(result.calibration, args.out / f"{prefix}calibration.json")
        results.append(result)

    title = args.title or f"msde evaluation: {', '.join(str(p) for p in args.checkpoint[:3])}"
    report = write_report(results, args.out, title)
    agg = aggregate(results)
    show = (lambda m: _fmt(m[0])) if len(results) == 1 else (lambda m: _pm(*m))
    for s in STATES:
        print(f"{s:9s} " + "  ".join(f"{m} {show(agg[s][m])}" for m in SCALARS))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
