"""Running a model on both views of every face pair, and calibrating on validation outputs.

``evaluate_model`` only runs the network and collects its outputs (``EvalResult``); metrics
are pure functions (``metrics``), figures and the report are drawn elsewhere
(``figures``, ``report``). ``evaluate_checkpoint`` is what ``msde-eval`` and the model
release run: a checkpoint, its data and split rebuilt from its own config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from handler.contract import MASK_LABELS, Calibration, Grouping, InputSpec, read_metadata
from handler.postprocess import (
    calibrated_probs,
    group_probs,
    mixed_thresholds,
    softmax,
)
from training.calibrate import (
    ANSWER_GROUPS,
    GroupFit,
    StateCalibration,
    ece,
    fit_group,
    fit_states,
    group_labels,
    to_calibration,
    wilson_interval,
)
from training.config import TrainConfig
from training.data import (
    DataConfig,
    FaceRecord,
    PairedFaceDataset,
    load_records,
    split_records,
)
from training.evaluate.gradcam import CamOverlay, grad_cam_overlays
from training.evaluate.metrics import (
    NUM_CLASSES,
    VIEWS,
    StateMetrics,
    ViewOutputs,
    accuracy,
    majority_baseline,
    metrics_from_views,
)
from training.models import Student, student_from_checkpoint

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationEffect:
    """A fitted calibration applied to the evaluated split, per mask state.

    ``ece_state`` uses the temperature of the known state; ``ece_handler`` runs the handler's
    own mixing (``handler.postprocess.calibrated_probs``) weighted by the mask head, i.e. what
    a client would see. Coverage / precision are of the non-abstained answers.
    """

    fit: StateCalibration  # as fitted on the validation split
    threshold: float  # the abstention threshold in force (the fitted one, or 1.0)
    ece_before: float
    ece_state: float
    ece_handler: float
    coverage: float
    precision: float
    answers: Answers | None = None  # the seven-class and grouped answers together


@dataclass(frozen=True)
class Answers:
    """What the handler answers on a split's faces of one view (labelled faces only):
    ``expression`` faces get one of the seven classes, ``group`` faces a group (their
    expression abstained), the rest "uncertain"; ``*_correct`` count agreement with the
    label (a group answer is right when the label is one of its members)."""

    n: int
    expression: int
    expression_correct: int
    group: int
    group_correct: int

    @property
    def answered(self) -> int:
        return self.expression + self.group

    @property
    def correct(self) -> int:
        return self.expression_correct + self.group_correct

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "expression": self.expression,
                "expression_correct": self.expression_correct, "group": self.group,
                "group_correct": self.group_correct, "answered": self.answered,
                "coverage": self.answered / self.n if self.n else None,
                "coverage_ci95": wilson_interval(self.answered, self.n),
                "precision": self.correct / self.answered if self.answered else None,
                "precision_ci95": wilson_interval(self.correct, self.answered)}


def handler_answers(
    out: ViewOutputs, labels: np.ndarray, calibration: Calibration
) -> Answers:
    """The handler's answers (``handler.postprocess``: mixing, thresholds, groups) on one view."""
    mask_p = softmax(out.mask_logits)
    mixed = calibrated_probs(out.expr_logits, mask_p, calibration, MASK_LABELS)
    known = np.asarray(labels) >= 0
    y = np.asarray(labels)[known]
    mixed, mask_p = mixed[known], mask_p[known]
    expressed = mixed.max(axis=1) >= mixed_thresholds(mask_p, calibration.abstain_threshold)
    expression_right = expressed & (mixed.argmax(axis=1) == y)
    grouped = np.zeros(len(y), dtype=bool)
    group_right = grouped
    grouping = calibration.grouping
    if grouping is not None:
        gp = group_probs(mixed, grouping.groups)
        group_thr = mixed_thresholds(mask_p, grouping.threshold)
        grouped = ~expressed & (gp.max(axis=1) >= group_thr)
        group_right = grouped & (gp.argmax(axis=1) == group_labels(y, grouping.groups))
    return Answers(int(len(y)), int(expressed.sum()), int(expression_right.sum()),
                   int(grouped.sum()), int(group_right.sum()))


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


def calibration_effect(
    result: EvalResult, fits: Mapping[str, StateCalibration], calibration: Calibration
) -> dict[str, CalibrationEffect]:
    """ECE before / after and abstention behaviour of a validation-fitted ``calibration``
    (made of ``fits``) on ``result``."""
    effect = {}
    for v in VIEWS:
        out = result.views[v]
        mask_p = softmax(out.mask_logits)
        mixed = calibrated_probs(out.expr_logits, mask_p, calibration, MASK_LABELS)
        answered = mixed.max(axis=1) >= mixed_thresholds(mask_p, calibration.abstain_threshold)
        known = result.labels >= 0
        right = mixed.argmax(axis=1) == result.labels
        effect[v] = CalibrationEffect(
            fit=fits[v],
            threshold=calibration.abstain_threshold[v],
            ece_before=ece(softmax(out.expr_logits), result.labels),
            ece_state=ece(softmax(out.expr_logits, fits[v].temperature), result.labels),
            ece_handler=ece(mixed, result.labels),
            coverage=float(answered[known].mean()) if known.any() else math.nan,
            precision=float(right[known & answered].mean())
            if (known & answered).any()
            else math.nan,
            answers=handler_answers(out, result.labels, calibration),
        )
    return effect


def abstain_unless_better_than_majority(
    calibration: Calibration, validation: EvalResult
) -> Calibration:
    """A mask state whose answers do not clearly beat the majority class answers "uncertain".

    "Clearly": the lower end of the 95% interval of the state's accuracy on the validation
    split is above the share of its most frequent label. Otherwise an answer in that state
    is no better than a constant guess, and the honest default is to say so: its threshold
    becomes 1.0 (the probabilities are still returned).
    """
    majority = majority_baseline(validation.labels)
    weak = {v: validation.metrics[v] for v in VIEWS
            if validation.metrics[v].accuracy_ci95[0] <= majority.accuracy}
    if not weak:
        return calibration
    notes = []
    for v, m in weak.items():
        LOG.warning("%s accuracy %d/%d (95%% CI from %.2f) does not beat the majority class "
                    "(%.2f): %s faces will answer 'uncertain'", v, m.correct, m.n,
                    m.accuracy_ci95[0], majority.accuracy, v)
        notes.append(f"{v} threshold set to 1.0: {v} accuracy {m.correct}/{m.n} does not beat "
                     f"the majority class ({majority.accuracy:.2f})")
    return calibration.model_copy(update={
        "abstain_threshold": {**calibration.abstain_threshold, **dict.fromkeys(weak, 1.0)},
        "fitted_on": "; ".join([calibration.fitted_on or "", *notes]),
    })


def fit_grouping(
    validation: EvalResult, fits: Mapping[str, StateCalibration],
    groups: Mapping[str, Sequence[str]] = ANSWER_GROUPS,
) -> tuple[Grouping, dict[str, GroupFit]]:
    """Per mask state, the grouped answer's selective threshold (``fit_group``) on the
    validation faces of that state, calibrated with that state's temperature."""
    group_fits = {
        v: fit_group(softmax(validation.views[v].expr_logits, fits[v].temperature),
                     validation.labels, groups)
        for v in VIEWS
    }
    for v, g in group_fits.items():
        LOG.info("%s grouped answer: threshold %.3f (%s)", v, g.threshold, g.reason)
    return Grouping(groups={k: tuple(m) for k, m in groups.items()},
                    threshold={v: g.threshold for v, g in group_fits.items()}), group_fits


def calibrate_result(
    result: EvalResult, validation: EvalResult, target_precision: float = 0.8
) -> Calibration:
    """Fit on ``validation``'s outputs (``abstain_unless_better_than_majority`` included,
    grouped answers from ``fit_grouping``), record the effect on ``result`` (and on
    ``validation``); returns the calibration."""
    fits = fit_states(validation.logits_by_state(), validation.labels_by_state(), target_precision)
    grouping, group_fits = fit_grouping(validation, fits)
    calibration = abstain_unless_better_than_majority(
        to_calibration(fits, f"{validation.name}, target precision {target_precision:g}"),
        validation,
    )
    calibration = calibration.model_copy(update={
        "grouping": grouping,
        "fitted_on": "; ".join([calibration.fitted_on or "", *(
            f"{v} groups: {g.reason}" for v, g in group_fits.items())]),
    })
    for r in (result, validation):  # on validation: the fit's own (in-sample) effect
        r.calibration = calibration
        r.calibration_effect = calibration_effect(r, fits, calibration)
    return calibration


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


def eval_dataset(
    records: Sequence[FaceRecord], spec: InputSpec, cfg: TrainConfig
) -> PairedFaceDataset:
    """Unaugmented pairs with the masks ``msde-train`` validates with (seed + 1), so that
    calibration, evaluation and every model evaluated see the same masked faces."""
    return PairedFaceDataset(records, spec, augment=False, seed=cfg.seed + 1,
                             mask_styles=cfg.mask_styles)


def evaluate_checkpoint(
    path: Path,
    *,
    data_config: TrainConfig | None,
    split: str,
    device: str,
    batch_size: int,
    cam_samples: int,
    target_precision: float | None = None,
    records: list[FaceRecord] | None = None,
) -> tuple[EvalResult, EvalResult | None]:
    """Evaluate one checkpoint on its split; calibrate on its validation split if it has one.

    ``target_precision`` defaults to the config's; ``records`` skips loading the config's
    data again (they must be what it describes). Returns the evaluated result (with
    ``calibration`` set when a validation split exists) and the validation result.
    """
    loaded = load_model(path)
    cfg = data_config or loaded.config
    if cfg is None:
        raise ValueError(f"{path} carries no training config: pass --data-config")
    if records is None:
        records = load_records(cfg.data)
    splits = split_records(records, cfg)
    chosen = {"test": splits.test, "val": splits.val, "all": np.arange(len(records))}[split]
    name = _run_name(path, cfg)

    def run(idx: np.ndarray, tag: str, cams: int) -> EvalResult:
        ds = eval_dataset([records[i] for i in idx], loaded.spec, cfg)
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
        precision = cfg.target_precision if target_precision is None else target_precision
        calibrate_result(result, validation, precision)
    return result, validation


@torch.inference_mode()
def teacher_accuracy(
    teachers: Sequence[str], records: Sequence[FaceRecord], cfg: TrainConfig,
    batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy per view of the teachers' mean answer (each on its own input) on the pairs
    ``eval_dataset`` shows a student: how much the mask costs the teachers themselves."""
    from training.teachers import TEACHERS, load_teacher

    probs = {v: np.zeros((len(records), NUM_CLASSES)) for v in VIEWS}
    for name in teachers:
        net = load_teacher(name)
        loader = DataLoader(eval_dataset(records, TEACHERS[name].input_spec, cfg),
                            batch_size=batch_size, shuffle=False)
        start = 0
        for batch in loader:
            n = len(batch["label"])
            for v in VIEWS:
                probs[v][start:start + n] += softmax(net(batch[v]).double().numpy())
            start += n
    labels = np.array([r.label for r in records])
    return {v: accuracy(labels, p.argmax(axis=1)) for v, p in probs.items()}
