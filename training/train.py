"""``msde-train``: train a student with one of the three paradigms on paired faces.

* ``baseline``: cross-entropy on the unmasked and the masked image of every pair (mixed);
  ``--unmasked-only`` trains on unmasked images alone (the paper's reference, and a teacher).
* ``contrastive``: both images through the same network (Siamese); CE on both plus
  ``alpha`` * MSE of their L2-normalised embeddings (paper), optionally supervised
  contrastive loss (``--supcon``).
* ``distill``: a frozen teacher sees the unmasked image; the student sees the masked one
  (the unmasked one with probability ``p_unmasked``; both with ``distill_views: both``) and
  matches the teacher's pooled features (``kd_lambda`` * MSE, via a learnt projection when
  widths differ) and/or its softened logits (Hinton KL at ``kd_temperature``), plus CE where
  labels exist. Without a teacher, the records' soft targets (the ``face_pool`` layout's
  teachers, computed once) are the KL targets.

Every paradigm trains the mask-state head on the views it shows (unmasked = 0, masked = 1).
``frozen_stages`` keeps the student's first stages as initialised; ``feature_bank_views``
then trains on their cached output (``training.feature_bank``). The served default model is
a config of this loop (``configs/default_model.yaml``, released by ``training.release``).
A run folder holds ``config.yaml`` (resolved), ``metrics.csv`` (one row per epoch),
``model_{epoch}.pth``, ``checkpoint.pth`` (latest, for ``--resume``) and ``best.pth``.
Multi-process training: launch with ``torchrun --nproc-per-node N -m training.train ...``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from handler.contract import InputSpec, read_metadata
from training import losses
from training.config import TrainConfig, parse_config, save_config
from training.data import FaceRecord, PairedFaceDataset, load_records, split_records
from training.evaluate.run import evaluate_model
from training.feature_bank import FeatureBank
from training.models import (
    NUM_EXPRESSIONS,
    Student,
    create_student,
    default_input_spec,
    student_from_checkpoint,
)

LOG = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
LOSS_TERMS: tuple[str, ...] = ("ce", "mask", "pair", "supcon", "feature", "kl")
CSV_COLUMNS: tuple[str, ...] = (
    "epoch", "loss", *(f"loss_{t}" for t in LOSS_TERMS),
    "train_acc_unmasked", "train_acc_masked",
    "val_acc_unmasked", "val_acc_masked", "val_acc_all", "val_masked_macro_f1",
    "val_mask_acc", "lr", "time_s",
)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Processes:
    """Where this process sits in a (possibly single-process) torchrun job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_processes(device_kind: str) -> Processes:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    procs = Processes(
        rank=int(os.environ["RANK"]), world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return procs


def pick_device(cfg: TrainConfig, procs: Processes) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(procs.local_rank)
        return torch.device("cuda", procs.local_rank)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


# --------------------------------------------------------------------------- data


def student_input_spec(cfg: TrainConfig) -> InputSpec:
    spec = default_input_spec(cfg.student)
    if cfg.input_size is None:
        return spec
    c = spec.input_size[0]
    return spec.model_copy(update={"input_size": (c, cfg.input_size, cfg.input_size)})


# --------------------------------------------------------------------------- teacher


class FrozenTeacher(nn.Module):
    """Any teacher behind one interface: ``forward(x) -> (msde logits, pooled features)``.

    ``features`` is ``None`` for a TorchScript teacher without ``embed`` (then only the
    KL term can be used).
    """

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # BN statistics of a teacher never move

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.kind == "student":
            expr, _, emb = self.net.forward_all(x)
            return expr, emb
        if self.kind == "torchscript":
            expr = self.net(x)[0]
            return expr, self.net.embed(x) if hasattr(self.net, "embed") else None
        # named teacher (training.teachers.MsdeOrderTeacher): logits + its trunk's features
        inner = self.net.net
        fmap = inner.features(x)
        return inner.classify(fmap).index_select(-1, self.net.index), fmap.mean(dim=(2, 3))


def load_frozen_teacher(ref: str) -> tuple[FrozenTeacher, InputSpec]:
    """'fer' (or another ``training.teachers`` name), a ``.pth`` checkpoint or a ``.pt`` file."""
    from training.teachers import TEACHERS, load_teacher

    if ref in TEACHERS:
        return FrozenTeacher(load_teacher(ref), "named"), TEACHERS[ref].input_spec
    path = Path(ref)
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher {ref!r} is neither a known teacher ({', '.join(TEACHERS)}) nor a file"
        )
    if path.suffix == ".pt":
        return FrozenTeacher(torch.jit.load(str(path), map_location="cpu"), "torchscript"), \
            read_metadata(path).input_spec()
    student, spec, _ = student_from_checkpoint(path)
    return FrozenTeacher(student, "student"), spec


# --------------------------------------------------------------------------- model


class TrainNet(nn.Module):
    """The student plus what only training needs (the feature-KD projection, frozen stages).

    The projection is a learnt linear map (FitNets' regressor) even when the widths match:
    matching the teacher through an identity would force the whole embedding to forget the
    mask, and the mask head reads that embedding; through ``P`` it only has to agree with
    the teacher in the subspace ``P`` keeps. One module so DDP synchronises everything.

    The first ``frozen_stages`` of the student keep their weights and BatchNorm statistics;
    with a feature bank the inputs are their output already (``inputs_at_stage``).

    A multi-branch student (``forward_branches``, e.g. SCAN-CCI) is supervised on each
    branch by its own ``branch_loss``; the other paradigm terms see its combined prediction.
    """

    def __init__(
        self, student: Student, teacher_dim: int | None, frozen_stages: int = 0,
        inputs_at_stage: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        self.projection: nn.Module = nn.Identity()
        if teacher_dim is not None:
            self.projection = nn.Linear(student.embed_dim, teacher_dim)
        stages = student.stages() if frozen_stages or inputs_at_stage else []
        if frozen_stages >= len(stages) > 0:
            raise ValueError(f"{type(student).__name__} has {len(stages)} stages; freezing "
                             f"{frozen_stages} would leave nothing to train")
        self.frozen = stages[:frozen_stages]
        self.trained = stages[inputs_at_stage:]
        self.inputs_at_stage = inputs_at_stage
        for m in self.frozen:
            m.requires_grad_(False)

    def train(self, mode: bool = True) -> TrainNet:
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(expression logits, mask logits, embedding, projection, branch logits [N, B, 7])."""
        if self.inputs_at_stage:
            for stage in self.trained:
                x = stage(x)
            expr, mask, emb = self.student.heads(x)
            branches = expr.unsqueeze(1)
        elif hasattr(self.student, "forward_branches"):
            branches, mask, emb = self.student.forward_branches(x)
            expr = self.student.combine_branches(branches)
        else:
            expr, mask, emb = self.student.forward_all(x)
            branches = expr.unsqueeze(1)
        return expr, mask, emb, self.projection(emb), branches

    def expression_loss(self, branches: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
        if hasattr(self.student, "branch_loss"):
            return self.student.branch_loss(branches, labels, label_smoothing)
        return losses.expression_ce(branches[:, 0], labels, label_smoothing=label_smoothing)


# --------------------------------------------------------------------------- losses


@dataclass
class StepOutput:
    total: Tensor
    terms: dict[str, float]
    expr_logits: Tensor
    labels: Tensor
    views: Tensor  # 0 = unmasked, 1 = masked, per row of expr_logits


def paradigm_step(
    cfg: TrainConfig,
    net: nn.Module,
    batch: dict[str, Tensor],
    device: torch.device,
    teacher: FrozenTeacher | None,
    generator: torch.Generator,
) -> StepOutput:
    """Forward one batch of pairs and combine the paradigm's loss terms."""
    u = batch["unmasked"].to(device, non_blocking=True)
    m = batch["masked"].to(device, non_blocking=True)
    y = batch["label"].to(device, non_blocking=True)
    n = u.shape[0]
    terms: dict[str, Tensor] = {}

    if cfg.paradigm == "distill" and cfg.distill_views == "sample":
        show_unmasked = torch.rand(n, generator=generator) < cfg.p_unmasked
        views = (~show_unmasked).long().to(device)
        x = torch.where(show_unmasked.to(device)[:, None, None, None], u, m)
        labels = y
    elif cfg.unmasked_only:
        x, labels, views = u, y, torch.zeros(n, dtype=torch.long, device=device)
    else:
        x = torch.cat([u, m])
        labels = torch.cat([y, y])
        views = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
        views = views.to(device)

    expr, mask, emb, projected, branches = net(x)
    inner = net.module if isinstance(net, DistributedDataParallel) else net
    terms["ce"] = inner.expression_loss(branches, labels, cfg.label_smoothing)
    # unmasked-only never shows a masked face, so its mask head learns nothing (weight 0
    # keeps the head in the graph for DDP)
    mask_weight = 0.0 if cfg.unmasked_only else cfg.mask_weight
    terms["mask"] = losses.mask_state_ce(mask, views)
    total = cfg.ce_weight * terms["ce"] + mask_weight * terms["mask"]

    if cfg.paradigm == "contrastive":
        terms["pair"] = losses.paired_embedding_mse(emb[:n], emb[n:])
        total = total + cfg.alpha * terms["pair"]
        if cfg.supcon:
            groups = losses.contrastive_groups(labels, NUM_EXPRESSIONS)
            terms["supcon"] = losses.supervised_contrastive(
                emb, groups, temperature=cfg.supcon_temperature
            )
            total = total + cfg.supcon_weight * terms["supcon"]
    elif cfg.paradigm == "distill":
        t_features: Tensor | None = None
        if teacher is None:  # the records' soft targets: log-probabilities are logits
            t_logits = batch["soft_target"].to(device).clamp_min(1e-12).log()
        else:
            with torch.no_grad():
                t_logits, t_features = teacher(batch["teacher_unmasked"].to(device))
        if len(x) > n:  # both views of every pair match the unmasked answer
            t_logits = torch.cat([t_logits, t_logits])
            t_features = None if t_features is None else torch.cat([t_features, t_features])
        if cfg.kd in ("feature", "both"):
            if t_features is None:
                raise ValueError("this teacher exposes no features; use --kd kl")
            terms["feature"] = losses.feature_mse(projected, t_features)
            total = total + cfg.kd_lambda * terms["feature"]
        if cfg.kd in ("kl", "both"):
            terms["kl"] = losses.distillation_kl(expr, t_logits, cfg.kd_temperature)
            total = total + cfg.kd_kl_weight * terms["kl"]

    return StepOutput(
        total=total,
        terms={k: float(v.detach()) for k, v in terms.items()},
        expr_logits=expr.detach(),
        labels=labels,
        views=views,
    )


# --------------------------------------------------------------------------- epochs


@dataclass
class EpochStats:
    """Running sums of one epoch (summed over processes before reporting)."""

    loss: float = 0.0
    terms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_TERMS, 0.0))
    used: set[str] = field(default_factory=set)
    steps: int = 0
    correct: list[float] = field(default_factory=lambda: [0.0, 0.0])
    seen: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def add(self, out: StepOutput) -> None:
        self.loss += float(out.total.detach())
        for k, v in out.terms.items():
            self.terms[k] += v
            self.used.add(k)
        self.steps += 1
        hit = (out.expr_logits.argmax(1) == out.labels) & (out.labels >= 0)
        for view in (0, 1):
            sel = (out.views == view) & (out.labels >= 0)
            self.correct[view] += float(hit[sel].sum())
            self.seen[view] += float(sel.sum())

    def reduce(self, device: torch.device) -> None:
        if not dist.is_initialized():
            return
        vec = torch.tensor(
            [self.loss, *self.terms.values(), self.steps, *self.correct, *self.seen],
            dtype=torch.float64, device=device,
        )
        dist.all_reduce(vec)
        values = vec.tolist()
        self.loss = values[0]
        self.terms = dict(zip(LOSS_TERMS, values[1:1 + len(LOSS_TERMS)], strict=True))
        rest = values[1 + len(LOSS_TERMS):]
        self.steps = int(rest[0])
        self.correct, self.seen = rest[1:3], rest[3:5]

    def row(self) -> dict[str, float | str]:
        steps = max(self.steps, 1)
        row: dict[str, float | str] = {"loss": self.loss / steps}
        # a term the paradigm does not use stays blank rather than a misleading 0
        row |= {f"loss_{k}": v / steps if k in self.used else "" for k, v in self.terms.items()}
        for view, name in enumerate(("unmasked", "masked")):
            row[f"train_acc_{name}"] = (
                self.correct[view] / self.seen[view] if self.seen[view] else ""
            )
        return row


def validate(
    student: Student, dataset: Dataset, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Per-mask-state validation metrics (``training.evaluate``), as CSV-ready floats."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    result = evaluate_model(student, loader, device, name="val")
    student.train()
    return {
        "val_acc_unmasked": result.metrics["unmasked"].accuracy,
        "val_acc_masked": result.metrics["masked"].accuracy,
        "val_acc_all": result.metrics["all"].accuracy,
        "val_masked_macro_f1": result.metrics["masked"].macro_f1,
        "val_mask_acc": result.metrics["all"].mask_accuracy,
    }


def selection_score(cfg: TrainConfig, val: dict[str, float]) -> float:
    """What ``best.pth`` maximises: (masked + w * unmasked) / (1 + w) validation accuracy
    (unmasked only for an unmasked-only run)."""
    if cfg.unmasked_only:
        return val["val_acc_unmasked"]
    w = cfg.select_unmasked_weight
    return (val["val_acc_masked"] + w * val["val_acc_unmasked"]) / (1.0 + w)


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) <= upto_epoch]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # an interrupted save never leaves a truncated checkpoint


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best_path: Path
    epochs_run: int
    best_epoch: int
    best_val: dict[str, float]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or flat)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "none":
        return 1.0
    progress = min(step - warmup, total - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(cfg: TrainConfig, net: TrainNet) -> torch.optim.Optimizer:
    """The optimiser over the trained parameters; the mask head in a group of its own when
    it has its own learning rate (it starts from random weights, the rest may not)."""
    head = {id(p) for p in net.student.mask_head.parameters()}
    trained = [p for p in net.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": trained, "lr": cfg.lr}]
    if cfg.mask_head_lr is not None:
        groups = [{"params": [p for p in trained if id(p) not in head], "lr": cfg.lr},
                  {"params": [p for p in trained if id(p) in head], "lr": cfg.mask_head_lr}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: warm-up then cosine (or flat), or one cycle (warm-up share)."""
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    if cfg.scheduler == "onecycle":
        share = cfg.warmup_epochs / cfg.epochs
        if not 1 < share * total_steps < total_steps - 1:
            raise ValueError(f"onecycle: a warm-up of {share * total_steps:.1f} of "
                             f"{total_steps} steps leaves a phase empty")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps, pct_start=share,
        )
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.scheduler)
    )


def _loader_iter(loader: DataLoader, limit: int | None) -> Iterator[dict[str, Tensor]]:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def train(
    cfg: TrainConfig,
    records: list[FaceRecord] | None = None,
    *,
    dataset_factory: Callable[..., Dataset] = PairedFaceDataset,
) -> TrainResult:
    """Run one training job as configured; returns where the best checkpoint is.

    ``records`` skips ``load_records(cfg.data)`` and ``dataset_factory`` replaces
    ``PairedFaceDataset`` (same signature): the benchmark reuses one generated data set and
    its rendered items for every run; they must be what ``cfg.data`` describes.
    """
    procs = init_processes("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    device = pick_device(cfg, procs)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + procs.rank)
    out_dir = cfg.out_dir
    if procs.main:
        save_config(cfg, out_dir)

    if records is None:
        records = load_records(cfg.data)
    splits = split_records(records, cfg)
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"empty split: {len(splits.train)} train / {len(splits.val)} val records")
    LOG.info("records: %d train, %d val, %d test (%s split)", len(splits.train),
             len(splits.val), len(splits.test), cfg.split)

    spec = student_input_spec(cfg)
    teacher: FrozenTeacher | None = None
    teacher_spec: InputSpec | None = None
    teacher_dim: int | None = None
    if cfg.paradigm == "distill" and cfg.teacher is not None:
        teacher, teacher_spec = load_frozen_teacher(cfg.teacher)
        teacher = teacher.to(device)
        with torch.no_grad():
            _, t_feat = teacher(torch.zeros((1, *teacher_spec.input_size), device=device))
        if t_feat is not None and cfg.kd in ("feature", "both"):
            teacher_dim = int(t_feat.shape[1])

    train_set: Dataset = dataset_factory(
        [records[i] for i in splits.train], spec, teacher_spec=teacher_spec,
        augment=cfg.augment, seed=cfg.seed, mask_styles=cfg.mask_styles,
        augmentation=cfg.augmentation,
    )
    val_set = dataset_factory(
        [records[i] for i in splits.val], spec, augment=False, seed=cfg.seed + 1,
        mask_styles=cfg.mask_styles,
    )

    student = create_student(cfg.student, pretrained=cfg.pretrained, in_channels=spec.input_size[0])
    banked = cfg.frozen_stages if cfg.feature_bank_views else 0
    net = TrainNet(student, teacher_dim, cfg.frozen_stages, inputs_at_stage=banked).to(device)
    num_workers = cfg.num_workers
    if cfg.feature_bank_views:
        train_set = FeatureBank(
            train_set, net.frozen, cfg.feature_bank_views, seed=cfg.seed,
            batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=device,
            progress=cfg.progress and procs.main,
        )
        num_workers = 0  # the bank is in memory
    optimizer = make_optimizer(cfg, net)

    sampler: DistributedSampler | RandomSampler
    generator = torch.Generator()
    if procs.distributed:
        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=generator)
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=num_workers,
        drop_last=len(train_set) > cfg.batch_size * procs.world_size,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader) if cfg.limit_train_batches is None else min(
        len(loader), cfg.limit_train_batches)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)

    start_epoch, best_score, best_epoch, best_val = 1, -math.inf, 0, {}
    resume = cfg.resume_path()
    if resume is not None:
        ckpt = torch.load(resume, map_location="cpu", weights_only=True)
        if ckpt["student"] != cfg.student:
            raise ValueError(f"{resume} holds a {ckpt['student']}, config says {cfg.student}")
        net.student.load_state_dict(ckpt["model"])
        if "projection" in ckpt:
            net.projection.load_state_dict(ckpt["projection"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_score = float(ckpt.get("best_score", -math.inf))
        best_epoch = int(ckpt.get("best_epoch", 0))
        best_val = dict(ckpt.get("best_val", {}))
        LOG.info("resumed from %s at epoch %d", resume, start_epoch)

    model: nn.Module = net
    if procs.distributed:
        model = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    metrics_path = out_dir / METRICS_FILE
    rows: list[dict[str, Any]] = _read_metrics(metrics_path, start_epoch - 1) if procs.main else []
    view_rng = torch.Generator()

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.time()
        epoch_lr = optimizer.param_groups[0]["lr"]
        model.train()
        if teacher is not None:
            teacher.eval()
        train_set.set_epoch(epoch)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)  # same order on resume
        view_rng.manual_seed((cfg.seed * 100_003 + epoch) * 64 + procs.rank)
        stats = EpochStats()
        bar = tqdm(
            _loader_iter(loader, cfg.limit_train_batches), total=steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.epochs}", disable=not (cfg.progress and procs.main),
            leave=False,
        )
        for batch in bar:
            out = paradigm_step(cfg, model, batch, device, teacher, view_rng)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            optimizer.step()
            scheduler.step()
            stats.add(out)
            bar.set_postfix(loss=f"{float(out.total.detach()):.3f}")
        stats.reduce(device)

        if procs.main:
            validating = epoch % cfg.validate_every == 0 or epoch == cfg.epochs
            val = validate(net.student, val_set, device, cfg.batch_size) if validating else {}
            row: dict[str, Any] = {"epoch": epoch, **stats.row(), **val,
                                   "lr": epoch_lr,
                                   "time_s": round(time.time() - t0, 2)}
            rows.append(row)
            _write_metrics(metrics_path, rows)
            score = selection_score(cfg, val) if validating else -math.inf
            improved = score > best_score
            if improved:
                best_score, best_epoch, best_val = score, epoch, val
            ckpt = {
                "model": net.student.state_dict(),
                "student": cfg.student,
                "input_spec": spec.model_dump(mode="json"),
                "config": cfg.dump(),
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                # no wall time: an exported model carries these, and two runs must match
                "metrics": {k: v for k, v in row.items()
                            if isinstance(v, (int, float)) and k != "time_s"},
                "projection": net.projection.state_dict(),
                "rng": _rng_state(),
                "best_score": best_score,
                "best_epoch": best_epoch,
                "best_val": best_val,
            }
            if cfg.save_every_epoch:
                _save(ckpt, out_dir / f"model_{epoch}.pth")
            _save(ckpt, out_dir / "checkpoint.pth")
            if improved:
                _save(ckpt, out_dir / "best.pth")
            if validating:
                LOG.info(
                    "epoch %d: loss %.4f, val acc unmasked %.3f masked %.3f%s (%.1fs)", epoch,
                    row["loss"], val["val_acc_unmasked"], val["val_acc_masked"],
                    " *" if improved else "", row["time_s"],
                )
        if procs.distributed:
            dist.barrier()

    if procs.distributed:
        dist.destroy_process_group()
    return TrainResult(
        out_dir=out_dir, best_path=out_dir / "best.pth", epochs_run=cfg.epochs,
        best_epoch=best_epoch, best_val=best_val,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(argv)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.best_val.items())
        print(f"best epoch {result.best_epoch}: {scores}\ncheckpoint {result.best_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
