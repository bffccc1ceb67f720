"""The model card of a released student, written from the package's evaluation results.

``model_card.json`` holds the recipe (the resolved training config), the data (faces and
people per split, sources), the calibration and the figures of the validation split and
of the test split (for the default model: the face pool's reserved faces); ``card_tables``
renders the figures as the markdown tables of ``docs/model_card.md``. Agreement is the
student's top class against the record's label: for the face pool, the teachers' top class
on the same face unmasked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from handler.contract import EXPRESSION_LABELS
from training.data import FaceRecord
from training.evaluate.metrics import VIEWS, finite, majority_baseline
from training.evaluate.report import confusable_under_mask
from training.evaluate.run import EvalResult


def card_figures(result: EvalResult) -> dict[str, Any]:
    """Per mask state: agreement with its 95% interval, mask-state accuracy, ECE before and
    after calibration (as the handler mixes it), predictions; the majority baseline and the
    classes not told apart under a mask."""
    fig: dict[str, Any] = {"faces": len(result.labels),
                           "majority_baseline": majority_baseline(result.labels).to_json()}
    for v in VIEWS:
        m, effect = result.metrics[v], result.calibration_effect.get(v)
        fig[v] = {
            "agreement": finite(m.accuracy),
            "correct": m.correct,
            "ci95": m.accuracy_ci95,
            "macro_f1": finite(m.macro_f1),
            "mask_state_accuracy": finite(m.mask_accuracy),
            "ece_uncalibrated": finite(m.ece),
            "ece_calibrated": finite(effect.ece_handler) if effect else None,
            "answered": finite(effect.coverage) if effect else None,
            "answers": effect.answers.to_json() if effect and effect.answers else None,
            "predicted": dict(zip(EXPRESSION_LABELS, m.counts.sum(axis=0).tolist(),
                                  strict=True)),
        }
    fig["confusable_under_mask"] = confusable_under_mask([result])
    return fig


def data_summary(records: Sequence[FaceRecord], parts: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Faces, people and sources of each part of the split."""
    out: dict[str, Any] = {}
    for part, idx in parts.items():
        chosen = [records[i] for i in idx]
        out[part] = {"faces": len(chosen), "identities": len({r.subject for r in chosen}),
                     "sources": sorted({r.source for r in chosen if r.source})}
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci: Sequence[float]) -> str:
    return f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f}%"


def _answer_table(fig: Mapping[str, Any]) -> list[str]:
    """What the served model answers per mask state: seven classes, groups, precision."""
    rows = [(v, fig[v]["answers"]) for v in VIEWS if fig[v].get("answers")]
    if not rows:
        return []
    md = ["", "As served (calibrated, thresholds from the validation split): faces answered "
          "with one of the seven classes or with a group, and how often that answer agrees "
          "with the label (a group answer agrees when the label is one of its members).", "",
          "| | answered: 7 classes | answered: group | answered in all (95% CI) | "
          "precision of the answers (95% CI) |", "| --- | --- | --- | --- | --- |"]
    for v, a in rows:
        precision = "–" if a["precision"] is None else (
            f"{a['expression_correct'] + a['group_correct']}/{a['answered']} = "
            f"{_pct(a['precision'])} ({_ci(a['precision_ci95'])})")
        md.append(f"| {v} faces | {a['expression']}/{a['n']} | {a['group']}/{a['n']} | "
                  f"{a['answered']}/{a['n']} = {_pct(a['coverage'])} "
                  f"({_ci(a['coverage_ci95'])}) | {precision} |")
    return md


def card_tables(card: Mapping[str, Any]) -> str:
    """The figures of ``model_card.json`` as markdown tables (``docs/model_card.md``)."""
    md: list[str] = []
    for key, title in (("test", "Reserved evaluation faces (the test split)"),
                       ("validation", "Validation split")):
        fig = card.get(key)
        if not fig:
            continue
        base = fig["majority_baseline"]
        md += [f"**{title}**: {fig['faces']} faces of {card['data'][key]['identities']} "
               "people.", "",
               "| | agreement | 95% CI | majority baseline | mask-state accuracy | "
               "ECE raw -> calibrated | answered |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for v in VIEWS:
            f = fig[v]
            lo, hi = f["ci95"]
            cal = "–" if f["ece_calibrated"] is None else f"{f['ece_calibrated']:.3f}"
            md.append(
                f"| {v} faces | {f['correct']}/{fig['faces']} = {_pct(f['agreement'])} | "
                f"{100 * lo:.0f}-{100 * hi:.0f}% | {base['k']}/{base['n']} = "
                f"{_pct(base['accuracy'])} ({base['label']}) | "
                f"{_pct(f['mask_state_accuracy'])} | {f['ece_uncalibrated']:.3f} -> {cal} | "
                f"{_pct(f['answered'])} |")
        teacher = fig.get("teacher_accuracy")
        if teacher:
            md.append(f"| the teachers themselves on the masked face | "
                      f"{_pct(teacher['masked'])} | | | | | |")
        md += _answer_table(fig)
        pairs = fig["confusable_under_mask"]
        if pairs:
            md += ["", "Not told apart under a mask (label -> masked answer, share of that "
                   "label; the same cell unmasked in brackets): " + "; ".join(
                       f"{p['true']} -> {p['predicted']} {_pct(p['masked_rate'])} "
                       f"({_pct(p['unmasked_rate'])}) of {p['n']}" for p in pairs) + "."]
        md.append("")
    return "\n".join(md)
