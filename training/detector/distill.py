"""Build the masked-face detector: BlazeFace "back" distilled to find masked faces.

Why: the registry's BlazeFace "back" model misses ~20 % of masked faces in one pass, and
the multi-pass detector that recovers them costs 3x-4x a single pass. The student starts
from the teacher's own weights and learns to give, on a masked face, the teacher's answer
for the same face bare (``training.detector.data``): its score logits, boxes and keypoints
and, so that the network changes where the mask is seen, its feature maps after ``TAPS``.
``DistillConfig.skip`` leaves residual blocks out of the student (a cheaper network;
measured in docs/detector.md: it needs far more training than the default build has).
Deterministic: fixed seeds, fixed thread count.

``python -m training.detector.distill`` builds (or finds) the detector folder the archive
ships: the registry's two models, its licence, the built ``MODEL_FILE`` and
``detector.json`` (what was trained, on what, how long), cached under
``.cache/detector/<key>/`` (``MSDE_DETECTOR_CACHE``); the key changes with this package's
code, the mask renderer, the config, the teacher's weights and the pool faces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from handler.detect import MODEL_FILES
from training.assets import REPO_ROOT, fetch
from training.detector.blazeface import BlazeFaceNet, export_onnx, flatten_outputs, load_onnx
from training.detector.data import HELD_OUT_SOURCES, MaskablePhoto, make_canvas, photo_weights

LOG = logging.getLogger(__name__)

MODEL_FILE = MODEL_FILES["masked"]
# the student's feature maps after these (registry) blocks are taught the teacher's on the
# bare view: the first maps after the pruned stages, where the student must catch up
TAPS: tuple[int, ...] = (15, 23)
DETECTOR_CACHE = Path(os.environ.get("MSDE_DETECTOR_CACHE", REPO_ROOT / ".cache" / "detector"))
SIDE = 160  # training canvas side (both nets are fully convolutional; faces 10-112 px)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 100
    batch: int = 8
    lr: float = 1e-4
    seed: int = 0
    threads: int = 2
    positive: float = 0.05  # teacher score above which an anchor's regression is learnt
    skip: tuple[int, ...] = ()  # registry blocks left out of the student (cheaper, see docs)


def teacher_session(teacher_path: Path, threads: int) -> ort.InferenceSession:
    """The registry model re-exported with free input size (the registry graph is fixed at
    256 px), run by onnxruntime: ~4x faster than the PyTorch port on the CPU."""
    import tempfile

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(load_onnx(teacher_path), Path(tmp) / "teacher.onnx", TAPS)
        return ort.InferenceSession(path.read_bytes(), opts, providers=["CPUExecutionProvider"])


def teacher_outputs(session: ort.InferenceSession, images: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The teacher's score logits (N, A), regressions (N, A, 16) and ``TAPS`` features."""
    x = images.astype(np.float32) * (2.0 / 255.0) - 1.0
    s16, s8, b16, b8, *feats = session.run(None, {"input": x})
    return (np.concatenate([s16[..., 0], s8[..., 0]], axis=1),
            np.concatenate([b16, b8], axis=1), feats)


def distill_loss(student: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]],
                 teacher: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]],
                 positive: float) -> torch.Tensor:
    """Three terms, each on the teacher's answer for the bare view:

    * scores: the logits themselves (Huber, clipped to +-12: beyond that a face or a wall is
      certain), so the background keeps the teacher's firm "no face" and faces its "face";
    * boxes and keypoints (units of 16 px, Huber) where the teacher sees a face, weighted
      by its confidence;
    * the feature maps after ``TAPS`` (mean squared error relative to the teacher's
      energy), which makes the pruned early stages catch up fast.
    """
    s_logit, s_box, s_feats = student
    t_logit, t_box, t_feats = teacher
    t_prob = torch.sigmoid(t_logit.clamp(-80.0, 80.0))
    weight = 1.0 + 4.0 * t_prob  # the few face anchors must not drown in the background
    cls = (F.smooth_l1_loss(s_logit.clamp(-12.0, 12.0), t_logit.clamp(-12.0, 12.0),
                            reduction="none") * weight).sum() / weight.sum()
    w = t_prob * (t_prob >= positive)
    reg = F.smooth_l1_loss(s_box / 16.0, t_box / 16.0, reduction="none").mean(-1)
    feat = sum(F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-6)
               for s, t in zip(s_feats, t_feats))
    return cls + (reg * w).sum() / w.sum().clamp_min(1.0) + feat


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], as the models expect."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x * (2.0 / 255.0) - 1.0


def distill(photos: Sequence[MaskablePhoto], teacher_path: Path, cfg: DistillConfig
            ) -> BlazeFaceNet:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    session = teacher_session(teacher_path, cfg.threads)
    # channels-last: ~1.5x faster depthwise convolutions on the CPU
    student = load_onnx(teacher_path, cfg.skip).train().to(memory_format=torch.channels_last)
    student.stem.requires_grad_(False)  # generic edges; its weight gradient costs a lot
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.1)
    weights = photo_weights(photos)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        canvases = [make_canvas(photos, weights, SIDE, rng) for _ in range(cfg.batch)]
        t_logit, t_box, t_feats = teacher_outputs(session,
                                                  np.stack([c.teacher for c in canvases]))
        x = to_input(np.stack([c.student for c in canvases]))
        out, feats = student.forward_tapped(x.contiguous(memory_format=torch.channels_last),
                                            TAPS)
        loss = distill_loss((*flatten_outputs(out), [feats[k] for k in TAPS]),
                            (torch.from_numpy(t_logit), torch.from_numpy(t_box),
                             [torch.from_numpy(f) for f in t_feats]), cfg.positive)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == cfg.steps - 1:
            LOG.info("step %d/%d loss %.4f (%.0f s)", step, cfg.steps, loss.item(),
                     time.perf_counter() - t0)
    return student.eval().to(memory_format=torch.contiguous_format)


def build(out_dir: Path, photos: Sequence[MaskablePhoto], cfg: DistillConfig) -> Path:
    """Distil the student on ``photos`` and write the detector folder ``out_dir``."""
    t0 = time.perf_counter()
    registry = fetch("blazeface")
    net = distill(photos, registry / "ONNX" / MODEL_FILES["back"], cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("front", "back"):
        shutil.copy2(registry / "ONNX" / MODEL_FILES[name], out_dir / MODEL_FILES[name])
    for extra in ("LICENSE", "asset.json"):
        if (registry / extra).exists():
            shutil.copy2(registry / extra, out_dir / extra)
    export_onnx(net, out_dir / MODEL_FILE)
    card = {
        "model": MODEL_FILE,
        "teacher": f"{MODEL_FILES['back']} of the registry package in {registry.name}/ "
                   "(Apache-2.0, LICENSE beside this file); the student is derived from it",
        "feature_taps": list(TAPS),
        "config": asdict(cfg),
        "photos": len(photos),
        "faces": sum(len(p.keypoints) for p in photos),
        "sources": sorted({p.source for p in photos}),
        "held_out_sources": sorted(HELD_OUT_SOURCES),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / "detector.json").write_text(json.dumps(card, indent=2) + "\n")
    return out_dir


def _key(cfg: DistillConfig, faces: Sequence[object]) -> str:
    """What the built model depends on: code, renderer, config, teacher, pool faces."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in [*sorted(here.glob("*.py")), REPO_ROOT / "training" / "masks.py",
                 fetch("blazeface") / "ONNX" / MODEL_FILES["back"]]:
        h.update(path.read_bytes())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    for f in faces:
        h.update(json.dumps([f.image_path.name, f.identity,  # type: ignore[attr-defined]
                             np.round(f.detection.keypoints, 2).tolist()]).encode())  # type: ignore[attr-defined]
    return h.hexdigest()[:16]


def detector_models(cfg: DistillConfig | None = None, cache_dir: Path | None = None) -> Path:
    """The detector folder (registry models + the masked model), built when missing."""
    from training.detector.data import maskable_photos
    from training.data.face_pool import build_pool, load_rgb

    cfg = cfg or DistillConfig()
    faces = build_pool(groups=["train"], progress=False)
    out_dir = Path(cache_dir or DETECTOR_CACHE) / _key(cfg, faces)
    if (out_dir / "detector.json").exists():
        return out_dir
    LOG.info("building the masked-face detector into %s (minutes)", out_dir)
    t0 = time.perf_counter()
    photos = maskable_photos(faces, load_rgb)
    LOG.info("%d photos, %d faces, masked copies rendered (%.0f s)", len(photos),
             sum(len(p.keypoints) for p in photos), time.perf_counter() - t0)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp, photos, cfg)
    tmp.replace(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(detector_models(cache_dir=args.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
