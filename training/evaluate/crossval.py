"""Figures of a k-fold run by identity, pooled over folds, with 95% intervals.

Every face is tested exactly once across the folds, so the folds' test outputs pool into
one set as large as the data: a 600-face pool gives intervals of about +-4 points where 20
reserved faces give +-20. Proportions carry Wilson intervals; macro-F1, which is not a
proportion, a bootstrap interval that resamples *people* (faces of one person are not
independent). Each fold's calibration (thresholds and grouped answers, fitted on that
fold's own validation people) is applied to its own test fold, as a release would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from handler.contract import EXPRESSION_LABELS, MASK_LABELS
from handler.postprocess import calibrated_probs, group_probs, softmax
from training.calibrate import group_labels, wilson_interval
from training.evaluate.metrics import VIEWS, finite, macro_f1, majority_baseline
from training.evaluate.run import Answers, EvalResult

BOOTSTRAP_SAMPLES = 2000


def proportion(k: int, n: int) -> dict[str, Any]:
    """k/n with its 95% Wilson interval, as JSON."""
    return {"k": int(k), "n": int(n), "value": k / n if n else None,
            "ci95": wilson_interval(int(k), int(n))}


def bootstrap_by_identity(
    statistic: Callable[[np.ndarray], float], subjects: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of ``statistic(face indices)`` over resampled people."""
    people = np.unique(subjects)
    faces = [np.flatnonzero(subjects == p) for p in people]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        picked = rng.integers(len(people), size=len(people))
        value = statistic(np.concatenate([faces[i] for i in picked]))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def _pooled(folds: Sequence[EvalResult], view: str) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities as served, mask logits) of every tested face, fold order."""
    probs, masks = [], []
    for f in folds:
        if f.calibration is None:
            raise ValueError(f"{f.name} is not calibrated: a fold needs its validation split")
        out = f.views[view]
        probs.append(calibrated_probs(out.expr_logits, softmax(out.mask_logits),
                                      f.calibration, MASK_LABELS))
        masks.append(out.mask_logits)
    return np.concatenate(probs), np.concatenate(masks)


def cv_figures(folds: Sequence[EvalResult], subjects: np.ndarray) -> dict[str, Any]:
    """Pooled figures per view; ``subjects`` holds each tested face's person, fold order."""
    labels = np.concatenate([f.labels for f in folds])
    if len(subjects) != len(labels):
        raise ValueError(f"{len(subjects)} subjects for {len(labels)} tested faces")
    groups = folds[0].calibration.grouping.groups if folds[0].calibration and \
        folds[0].calibration.grouping else None
    majority = majority_baseline(labels)
    out: dict[str, Any] = {"faces": len(labels), "people": len(np.unique(subjects)),
                           "folds": len(folds), "majority_baseline": majority.to_json()}
    if groups is not None:
        y_group = group_labels(labels, groups)
        counts = np.bincount(y_group[y_group >= 0], minlength=len(groups))
        out["groups"] = {g: list(m) for g, m in groups.items()}
        out["group_majority_baseline"] = {"label": list(groups)[int(counts.argmax())],
                                          **proportion(int(counts.max()), int(counts.sum()))}
    for s, v in enumerate(VIEWS):
        probs, mask_logits = _pooled(folds, v)
        pred = probs.argmax(axis=1)
        known = labels >= 0
        right = (pred == labels) & known
        fig: dict[str, Any] = {
            "agreement": proportion(int(right.sum()), int(known.sum())),
            "macro_f1": finite(macro_f1(labels, pred)),
            "macro_f1_ci95": bootstrap_by_identity(
                lambda i, p=pred: macro_f1(labels[i], p[i]), subjects),
            "mask_state_accuracy": proportion(int((mask_logits.argmax(axis=1) == s).sum()),
                                              len(mask_logits)),
            "per_class_recall": {
                name: proportion(int(right[labels == c].sum()), int((labels == c).sum()))
                for c, name in enumerate(EXPRESSION_LABELS)},
        }
        if groups is not None:
            g_pred = group_probs(probs, groups).argmax(axis=1)
            fig["group_agreement"] = proportion(int(((g_pred == y_group) & known).sum()),
                                                int(known.sum()))
        answers = [f.calibration_effect[v].answers for f in folds
                   if v in f.calibration_effect and f.calibration_effect[v].answers]
        if len(answers) == len(folds):
            total = Answers(*(sum(getattr(a, k) for a in answers) for k in (
                "n", "expression", "expression_correct", "group", "group_correct")))
            fig["answers"] = total.to_json()
        out[v] = fig
    out["per_fold"] = [
        {"fold": f.name, "faces": len(f.labels),
         **{f"{v}_agreement": finite(f.metrics[v].accuracy) for v in VIEWS},
         "thresholds": f.calibration.abstain_threshold if f.calibration else None,
         "group_thresholds": f.calibration.grouping.threshold
         if f.calibration and f.calibration.grouping else None}
        for f in folds]
    return out


def _pct(p: dict[str, Any]) -> str:
    if p["value"] is None:
        return "–"
    lo, hi = p["ci95"]
    return f"{p['k']}/{p['n']} = {100 * p['value']:.1f}% ({100 * lo:.0f}-{100 * hi:.0f}%)"


def cv_tables(fig: dict[str, Any]) -> str:
    """``cv_figures`` as the markdown of the model card's cross-validated section."""
    base = fig["majority_baseline"]
    lo, hi = base["ci95"]
    md = [f"{fig['folds']}-fold cross-validation by identity: {fig['faces']} faces of "
          f"{fig['people']} people, each tested once by a model that never saw its person. "
          "95% intervals: Wilson (proportions), bootstrap over people (macro-F1).", "",
          f"Majority baseline (always answering {base['label']}): {base['k']}/{base['n']} = "
          f"{100 * base['accuracy']:.1f}% ({100 * lo:.0f}-{100 * hi:.0f}%).", ""]
    md += ["| | agreement | macro-F1 | mask-state accuracy | group agreement |",
           "| --- | --- | --- | --- | --- |"]
    for v in VIEWS:
        f = fig[v]
        f1lo, f1hi = f["macro_f1_ci95"]
        group = _pct(f["group_agreement"]) if "group_agreement" in f else "–"
        md.append(f"| {v} faces | {_pct(f['agreement'])} | {f['macro_f1']:.3f} "
                  f"({f1lo:.3f}-{f1hi:.3f}) | {_pct(f['mask_state_accuracy'])} | {group} |")
    if "group_majority_baseline" in fig:
        g = fig["group_majority_baseline"]
        members = "; ".join(f"{k} = {', '.join(m)}" for k, m in fig["groups"].items())
        md += ["", f"Groups: {members}. Group majority baseline (always answering "
               f"{g['label']}): {_pct(g)}."]
    md += ["", "Per-class recall (agreement on the faces whose label is that class):", "",
           "| | " + " | ".join(EXPRESSION_LABELS) + " |",
           "| --- |" + " --- |" * len(EXPRESSION_LABELS)]
    for v in VIEWS:
        md.append(f"| {v} | " + " | ".join(
            "–" if p["value"] is None else f"{100 * p['value']:.0f}% of {p['n']} "
            f"({100 * p['ci95'][0]:.0f}-{100 * p['ci95'][1]:.0f})"
            for p in fig[v]["per_class_recall"].values()) + " |")
    if all("answers" in fig[v] for v in VIEWS):
        md += ["", "As served (each fold calibrated on its own validation people): answered "
               "with seven classes or a group, and the precision of those answers.", "",
               "| | 7 classes | group | answered (95% CI) | precision (95% CI) |",
               "| --- | --- | --- | --- | --- |"]
        for v in VIEWS:
            a = fig[v]["answers"]
            cov = proportion(a["answered"], a["n"])
            prec = proportion(a["expression_correct"] + a["group_correct"], a["answered"])
            md.append(f"| {v} faces | {a['expression']} | {a['group']} | {_pct(cov)} | "
                      f"{_pct(prec)} |")
    md += ["", "| fold | faces | " + " | ".join(f"{v} agreement" for v in VIEWS)
           + " | thresholds (7 classes) | group thresholds |",
           "| --- | --- |" + " --- |" * (len(VIEWS) + 2)]
    for row in fig["per_fold"]:
        thr = row["thresholds"] or {}
        gthr = row["group_thresholds"] or {}
        md.append(f"| {row['fold']} | {row['faces']} | " + " | ".join(
            f"{100 * row[f'{v}_agreement']:.1f}%" for v in VIEWS) + " | "
            + ", ".join(f"{k} {t:.2f}" for k, t in thr.items()) + " | "
            + ", ".join(f"{k} {t:.2f}" for k, t in gthr.items()) + " |")
    return "\n".join(md) + "\n"
