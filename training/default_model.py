"""The default served model, built offline by one command (``make model``).

Recipe (the training package's ``distill`` idea, specialised to unlabelled real faces):
1. the face pool: real faces shipped inside registry packages (``training.face_pool``),
   detected and aligned by the serving code; a reserved evaluation group is never trained,
   tuned or selected on;
2. teacher: the fer mini-XCEPTION (FER2013), ported to PyTorch, labels the UNMASKED face
   with soft targets (temperature T);
3. student: the same architecture plus a mask-state head, initialised from the teacher's
   weights (few faces: start from weights that already generalise), sees the synthetically
   masked face (``training.masks``) and the unmasked one, and learns the teacher's
   distribution (Hinton KL) and the mask state (CE);
4. the checkpoint with the best masked agreement on a validation split of training
   identities is kept; per-mask-state temperatures and abstention thresholds are fitted on
   that split; the student is exported to TorchScript and archived with the handler.

The reserved group gives the model card's figures (``model_store/build/model_card.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from handler.align import face_input
from handler.faces import Detection
from handler.contract import EXPRESSION_LABELS, MASK_LABELS, InputSpec, ModelMetadata
from handler.postprocess import calibrated_probs, softmax
from training.assets import REPO_ROOT
from training.data.dataset import Augmentation, augment_pair

LOG = logging.getLogger(__name__)
VERSION = "1.0.0"
CONTEXT_FACE_SIDE = 96  # face box side (px) of the cached context crops
# the training package's pair augmentation, geometry only (the detector's own wobble + flip)
VIEW_AUGMENTATION = Augmentation(
    flip_p=0.5, max_rotate_deg=10.0, scale=(0.92, 1.08), max_shift=0.06,
    brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0),
)


class Recipe(BaseModel):
    """Every knob of the build; the resolved recipe is saved with the model card."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    steps: int = Field(800, ge=1)
    batch_size: int = Field(32, ge=2)
    teachers: list[str] = Field(default_factory=lambda: ["fer"],
                                description="teachers whose probabilities are averaged")
    frozen_blocks: int = Field(
        2, ge=0, le=4, description="stem + this many residual blocks stay as the teacher's"
    )
    lr: float = Field(3e-4, gt=0)
    head_lr: float = Field(2e-3, gt=0)
    temperature: float = Field(4.0, gt=0)
    masked_renders: int = Field(6, ge=1, description="cached synthetic masks per face")
    views: int = Field(8, ge=1, description="augmented (unmasked, masked) views per face")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    eval_every: int = Field(200, ge=1)
    target_precision: float = Field(0.6, gt=0, le=1)
    max_per_identity: int = Field(20, ge=1)
    sources: list[str] | None = Field(None, description="face-pool sources (None = all)")
    threads: int = Field(2, ge=1)
    version: str = VERSION


@dataclass
class Face:
    """A face cut out of its photo with context, so masks and augmentation stay cheap."""

    image: np.ndarray  # RGB uint8 context crop
    detection: Detection  # in the crop's pixels
    identity: str
    source: str
    masked: list[np.ndarray]  # cached synthetic-mask renders of ``image``
    teacher: np.ndarray | None = None  # teachers' mean probabilities (T = 1) on the unmasked face
    teacher_soft: np.ndarray | None = None  # T * log(mean probabilities at T): KD target logits


def context_crop(image: np.ndarray, det: Detection) -> tuple[np.ndarray, Detection]:
    """Cut 2.4x the face box around the face, rescaled so the box side is ~96 px."""
    import cv2

    x1, y1, x2, y2 = det.box
    side = max(x2 - x1, y2 - y1)
    scale = CONTEXT_FACE_SIDE / side
    half = 1.2 * side
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    out = int(round(2 * half * scale))
    m = np.array([[scale, 0, out / 2 - cx * scale], [0, scale, out / 2 - cy * scale]])
    crop = cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)
    kp = None if det.keypoints is None else (det.keypoints * scale + m[:, 2]).astype(np.float32)
    box = (x1 * scale + m[0, 2], y1 * scale + m[1, 2], x2 * scale + m[0, 2], y2 * scale + m[1, 2])
    return crop, Detection(box=box, score=det.score, keypoints=kp)


def prepare_faces(pool: list[Any], recipe: Recipe, progress: bool) -> list[Face]:
    from training.data.face_pool import load_rgb
    from training.masks import render_mask

    faces = []
    for i, pf in enumerate(tqdm(pool, desc="faces", disable=not progress)):
        crop, det = context_crop(load_rgb(pf), pf.detection)
        renders = []
        if det.keypoints is not None:
            for r in range(recipe.masked_renders):
                rng = np.random.default_rng([recipe.seed, i, r])
                renders.append(render_mask(crop, det.keypoints, rng=rng).image)
        faces.append(Face(crop, det, pf.identity, pf.source, renders))
    return [f for f in faces if f.masked]


def split_identities(faces: list[Face], fraction: float, seed: int) -> tuple[list[Face], list[Face]]:
    identities = sorted({f.identity for f in faces})
    rng = np.random.default_rng(seed)
    rng.shuffle(identities)
    n_val = max(1, int(round(len(identities) * fraction)))
    val_ids = set(identities[:n_val])
    return ([f for f in faces if f.identity not in val_ids],
            [f for f in faces if f.identity in val_ids])


def batch_views(faces: list[Face], spec: InputSpec, rng: np.random.Generator,
                augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(unmasked, masked) input tensors for a list of faces, same geometry for both."""
    unmasked, masked = [], []
    for k, f in enumerate(faces):
        render = f.masked[int(rng.integers(len(f.masked))) if augment else k % len(f.masked)]
        images, det = [f.image, render], f.detection
        if augment:
            images, det = augment_pair(images, det, rng, VIEW_AUGMENTATION)
        unmasked.append(face_input(images[0], det, spec))
        masked.append(face_input(images[1], det, spec))
    return torch.from_numpy(np.stack(unmasked)), torch.from_numpy(np.stack(masked))


@dataclass
class Outputs:
    """Teacher and student outputs on fixed (unaugmented) views of a set of faces."""

    teacher_unmasked: np.ndarray  # teacher logits, msde order
    student: dict[str, np.ndarray]  # state -> expression logits
    mask: dict[str, np.ndarray]  # state -> mask logits


@torch.inference_mode()
def label_faces(faces: list[Face], teachers: list[str], temperature: float,
                batch: int = 128) -> None:
    """Average the teachers' probabilities on each unmasked face (their own input specs)."""
    from training.teachers import TEACHERS, load_teacher

    probs_t1 = np.zeros((len(faces), len(EXPRESSION_LABELS)))
    probs_tt = np.zeros_like(probs_t1)
    for name in teachers:
        net, spec = load_teacher(name), TEACHERS[name].input_spec
        for start in range(0, len(faces), batch):
            chunk = faces[start:start + batch]
            x = torch.from_numpy(np.stack([face_input(f.image, f.detection, spec) for f in chunk]))
            logits = net(x).double().numpy()
            probs_t1[start:start + len(chunk)] += softmax(logits) / len(teachers)
            probs_tt[start:start + len(chunk)] += softmax(logits, temperature) / len(teachers)
    for f, p1, pt in zip(faces, probs_t1, probs_tt):
        f.teacher = p1.astype(np.float32)
        f.teacher_soft = (temperature * np.log(np.maximum(pt, 1e-12))).astype(np.float32)


@torch.inference_mode()
def predict(student: torch.nn.Module, faces: list[Face], spec: InputSpec,
            batch: int = 128) -> Outputs:
    student.eval()
    rng = np.random.default_rng(0)
    s: dict[str, list[np.ndarray]] = {"unmasked": [], "masked": []}
    m: dict[str, list[np.ndarray]] = {"unmasked": [], "masked": []}
    for start in range(0, len(faces), batch):
        u, mk = batch_views(faces[start:start + batch], spec, rng, augment=False)
        for state, x in (("unmasked", u), ("masked", mk)):
            e, ml = student(x)
            s[state].append(e.numpy())
            m[state].append(ml.numpy())
    teacher = np.stack([f.teacher for f in faces]) if faces else np.zeros((0, 7))
    return Outputs(np.log(np.maximum(teacher, 1e-12)), {k: np.concatenate(v) for k, v in s.items()},
                   {k: np.concatenate(v) for k, v in m.items()})


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def majority_class(out: Outputs) -> tuple[int, int]:
    """(most frequent teacher class on the unmasked faces, how many faces it covers)."""
    counts = np.bincount(out.teacher_unmasked.argmax(1), minlength=len(EXPRESSION_LABELS))
    return int(counts.argmax()), int(counts.max())


def card_figures(out: Outputs, calibration: Any) -> dict[str, Any]:
    """Agreement with the teacher's unmasked answer, per state, with the majority baseline."""
    from training.calibrate import ece

    target = out.teacher_unmasked.argmax(1)
    n = len(target)
    majority, k_major = majority_class(out)
    fig: dict[str, Any] = {"faces": n, "majority_class": EXPRESSION_LABELS[majority]}
    fig["majority_baseline"] = {"agreement": k_major / max(n, 1), "ci95": wilson(k_major, n)}
    for state in MASK_LABELS:
        logits, mask_logits = out.student[state], out.mask[state]
        pred = logits.argmax(1)
        k = int((pred == target).sum())
        mask_p = softmax(mask_logits)
        probs = calibrated_probs(logits, mask_p, calibration)
        fig[state] = {
            "agreement": k / max(n, 1),
            "ci95": wilson(k, n),
            "mask_state_accuracy": float((mask_p.argmax(1) == MASK_LABELS.index(state)).mean()),
            "ece_uncalibrated": ece(softmax(logits), target) if n else None,
            "ece_calibrated": ece(probs, target) if n else None,
            "predicted": {EXPRESSION_LABELS[c]: int((probs.argmax(1) == c).sum()) for c in range(7)},
        }
    fig["confusable_under_mask"] = confusions(out)
    fig["note"] = ("agreement: the student's top class on the face in that state vs the "
                   "teachers' top class on the unmasked face")
    return fig


def prefix(student: torch.nn.Module, blocks: int, x: torch.Tensor) -> torch.Tensor:
    """The frozen part of mini_xception: stem + the first ``blocks`` residual blocks."""
    net = student.net
    x = torch.relu(net.bn1(net.conv1(x)))
    x = torch.relu(net.bn2(net.conv2(x)))
    for block in list(net.blocks)[:blocks]:
        x = block(x)
    return x


def suffix(student: torch.nn.Module, blocks: int,
           f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trained part: the remaining blocks, the expression head and the mask head."""
    for block in list(student.net.blocks)[blocks:]:
        f = block(f)
    embedding = f.mean(dim=(2, 3))
    return student.expression_head(f, embedding), student.mask_head(embedding)


@torch.inference_mode()
def view_bank(student: torch.nn.Module, faces: list[Face], recipe: Recipe, spec: InputSpec,
              progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen-prefix features of ``views`` augmented (unmasked, masked) views of every face.

    Few faces, many steps: the early layers stay the teacher's, so their output on a fixed
    bank of augmented views is computed once and the steps only run the late layers.
    Returns (unmasked [F, V, ...], masked [F, V, ...], KD targets [F, 7]).
    """
    rng = np.random.default_rng([recipe.seed, 1])
    student.eval()
    unmasked, masked = [], []
    for f in tqdm(faces, desc="views", disable=not progress):
        u, m = batch_views([f] * recipe.views, spec, rng, augment=True)
        unmasked.append(prefix(student, recipe.frozen_blocks, u))
        masked.append(prefix(student, recipe.frozen_blocks, m))
    targets = torch.from_numpy(np.stack([f.teacher_soft for f in faces]))
    return torch.stack(unmasked), torch.stack(masked), targets


def confusions(out: Outputs, threshold: float = 0.25) -> list[dict[str, Any]]:
    """Teacher class -> student class confusions on masked faces (>= threshold of the row)."""
    from training.calibrate import confusable_pairs
    from training.evaluate import confusion

    target = out.teacher_unmasked.argmax(1)
    masked = confusion(target, out.student["masked"].argmax(1))
    unmasked = confusion(target, out.student["unmasked"].argmax(1))
    pairs = confusable_pairs(masked, threshold)
    support = np.bincount(target, minlength=len(EXPRESSION_LABELS))
    return [
        {"teacher": p.true, "student_masked": p.predicted, "rate_masked": round(p.rate, 3),
         "rate_unmasked": round(float(unmasked[EXPRESSION_LABELS.index(p.true),
                                               EXPRESSION_LABELS.index(p.predicted)]), 3),
         "faces": int(support[EXPRESSION_LABELS.index(p.true)])}
        for p in pairs
    ]


def abstain_unless_better_than_majority(calibration: Any, out: Outputs) -> Any:
    """Masked faces answer 'uncertain' unless the student clearly beats the majority class.

    "Clearly": the lower end of the 95% interval of the student's masked agreement on the
    validation split is above the majority class's agreement. Otherwise a masked answer is
    no better than a constant guess, and the honest default is to say so.
    """
    target = out.teacher_unmasked.argmax(1)
    n = len(target)
    majority = majority_class(out)[1] / max(n, 1)
    k = int((out.student["masked"].argmax(1) == target).sum())
    low, _ = wilson(k, n)
    if low > majority:
        return calibration
    LOG.warning("masked agreement %d/%d (95%% CI from %.2f) does not beat the majority class "
                "(%.2f): masked faces will answer 'uncertain'", k, n, low, majority)
    return calibration.model_copy(update={
        "abstain_threshold": {**calibration.abstain_threshold, "masked": 1.0},
        "fitted_on": f"{calibration.fitted_on}; masked threshold set to 1.0: masked agreement "
                     f"{k}/{n} does not beat the majority class ({majority:.2f})",
    })


def distill(recipe: Recipe, train: list[Face], val: list[Face], spec: InputSpec,
            workdir: Path, progress: bool) -> tuple[torch.nn.Module, list[dict]]:
    from training.losses import distillation_kl, mask_state_ce
    from training.models import create_student

    student = create_student("mini_xception")
    student.load_teacher_weights()
    bank_u, bank_m, bank_t = view_bank(student, train, recipe, spec, progress)
    trained = [*list(student.net.blocks)[recipe.frozen_blocks:], student.net.classifier]
    trunk = [p for module in trained for p in module.parameters()]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in [*trunk, *student.mask_head.parameters()]:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": trunk, "lr": recipe.lr},
                             {"params": list(student.mask_head.parameters()),
                              "lr": recipe.head_lr}], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[recipe.lr, recipe.head_lr], total_steps=recipe.steps, pct_start=0.1)
    rng = np.random.default_rng(recipe.seed)
    log: list[dict] = []
    best, best_state = -1.0, None
    n = len(train)
    bar = tqdm(range(1, recipe.steps + 1), desc="distil", disable=not progress)
    for step in bar:
        student.eval()
        for module in trained:
            module.train()  # the frozen prefix keeps the teacher's BatchNorm statistics
        idx = torch.from_numpy(rng.choice(n, size=min(recipe.batch_size, n), replace=False))
        view = torch.from_numpy(rng.integers(recipe.views, size=len(idx)))
        feats = torch.cat([bank_u[idx, view], bank_m[idx, view]])
        target = bank_t[idx]
        expr, mask = suffix(student, recipe.frozen_blocks, feats)
        mask_target = torch.cat([torch.zeros(len(idx)), torch.ones(len(idx))]).long()
        loss_kd = distillation_kl(expr, torch.cat([target, target]), recipe.temperature)
        loss_mask = mask_state_ce(mask, mask_target)
        loss = loss_kd + loss_mask
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % recipe.eval_every == 0 or step == recipe.steps:
            out = predict(student, val, spec)
            teacher_top = out.teacher_unmasked.argmax(1)
            row = {"step": step, "loss_kd": float(loss_kd), "loss_mask": float(loss_mask)}
            for state in MASK_LABELS:
                row[f"val_{state}_agreement"] = float(
                    (out.student[state].argmax(1) == teacher_top).mean())
                row[f"val_{state}_mask_acc"] = float(
                    (out.mask[state].argmax(1) == MASK_LABELS.index(state)).mean())
            log.append(row)
            bar.set_postfix(masked=f"{row['val_masked_agreement']:.2f}",
                            unmasked=f"{row['val_unmasked_agreement']:.2f}")
            # keep the best masked agreement without giving up unmasked fidelity
            score = row["val_masked_agreement"] + 0.5 * row["val_unmasked_agreement"]
            if score > best:
                best = score
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    assert best_state is not None
    student.load_state_dict(best_state)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)
    (workdir / "distill_log.json").write_text(json.dumps(log, indent=2))
    return student, log


def build(recipe: Recipe, out_dir: Path, workdir: Path, *, progress: bool = True,
          eval_group: bool = True, model_config: Path | None = None) -> dict[str, Any]:
    from training.archive import build_archive
    from training.calibrate import fit_calibration
    from training.export import export_student
    from training.data.face_pool import build_pool
    from training.models import default_input_spec

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    workdir.mkdir(parents=True, exist_ok=True)
    spec = default_input_spec("mini_xception")
    groups = ("train", "eval") if eval_group else ("train",)
    pool = build_pool(groups=groups, max_per_identity=recipe.max_per_identity,
                      progress=progress, sources=recipe.sources)
    train_pool = [f for f in pool if f.group == "train"]
    eval_pool = [f for f in pool if f.group == "eval"]
    faces = prepare_faces(train_pool, recipe, progress)
    label_faces(faces, recipe.teachers, recipe.temperature)
    train, val = split_identities(faces, recipe.val_fraction, recipe.seed)
    LOG.info("face pool: %d train faces (%d identities), %d val faces (%d identities)",
             len(train), len({f.identity for f in train}), len(val),
             len({f.identity for f in val}))
    student, log = distill(recipe, train, val, spec, workdir, progress)

    val_out = predict(student, val, spec)
    val_target = val_out.teacher_unmasked.argmax(1)
    calibration = fit_calibration(
        {s: val_out.student[s] for s in MASK_LABELS}, {s: val_target for s in MASK_LABELS},
        target_precision=recipe.target_precision,
        fitted_on=f"validation split of the face pool ({len(val)} faces), teacher agreement",
    )
    calibration = abstain_unless_better_than_majority(calibration, val_out)
    trained_on = (
        f"{len(train)} real unlabelled faces of {len(set(f.identity for f in train))} people "
        "from registry packages (see docs/model_card.md), synthetic masks, soft labels from "
        f"the teacher(s) {', '.join(recipe.teachers)} (see docs/teachers.md)"
    )
    metadata = ModelMetadata(
        version=recipe.version,
        architecture="mini_xception",
        input_size=spec.input_size,
        mean=list(spec.mean),
        std=list(spec.std),
        crop=spec.crop,
        trained_on=trained_on,
        calibration=calibration,
    )
    pt = workdir / "msde_student.pt"
    export_student(student, metadata, pt)
    mar = build_archive(pt, out_dir, model_config=model_config)

    card: dict[str, Any] = {
        "version": recipe.version,
        "recipe": recipe.model_dump(),
        "train_faces": len(train),
        "train_identities": len({f.identity for f in train}),
        "val_faces": len(val),
        "val_identities": len({f.identity for f in val}),
        "sources": sorted({f.source for f in faces}),
        "calibration": calibration.model_dump(),
        "validation": card_figures(val_out, calibration),
        "log": log,
    }
    if eval_group and eval_pool:
        eval_faces = prepare_faces(eval_pool, recipe, progress=False)
        label_faces(eval_faces, recipe.teachers, recipe.temperature)
        card["reserved_eval"] = card_figures(predict(student, eval_faces, spec), calibration)
        card["reserved_eval"]["identities"] = len({f.identity for f in eval_faces})
        card["reserved_eval"]["teacher_masked_agreement"] = teacher_self_agreement(
            recipe.teachers, eval_faces)
    card["build_seconds"] = round(time.perf_counter() - t0, 1)
    card["archive"] = str(mar)
    (workdir / "model_card.json").write_text(json.dumps(card, indent=2, default=float))
    return card


@torch.inference_mode()
def teacher_self_agreement(teachers: list[str], faces: list[Face]) -> float:
    """How often the teachers on the MASKED face agree with themselves unmasked."""
    from training.teachers import TEACHERS, load_teacher

    masked = np.zeros((len(faces), len(EXPRESSION_LABELS)))
    for name in teachers:
        net, spec = load_teacher(name), TEACHERS[name].input_spec
        x = torch.from_numpy(np.stack([face_input(f.masked[0], f.detection, spec) for f in faces]))
        masked += softmax(net(x).double().numpy())
    unmasked = np.stack([f.teacher for f in faces])
    return float((masked.argmax(1) == unmasked.argmax(1)).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msde-default-model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the student, logs and model card go (default OUT/build)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sources", nargs="*", default=None)
    parser.add_argument("--no-eval", action="store_true", help="skip the reserved-group figures")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.sources is not None:
        overrides["sources"] = args.sources
    recipe = Recipe(**overrides)
    card = build(recipe, args.out, args.workdir or args.out / "build",
                 progress=not args.quiet, eval_group=not args.no_eval)
    summary = {k: card[k] for k in ("train_faces", "train_identities", "build_seconds", "archive")}
    print(json.dumps(summary, indent=2))
    if "reserved_eval" in card:
        print(json.dumps({k: v for k, v in card["reserved_eval"].items()}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
