"""The markdown evaluation report (``report.md``), its figures and ``metrics.json``.

Several results are folds: tables give mean ± std, confusion matrices pool the folds'
counts, t-SNE and Grad-CAM figures come from the first fold that has them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from handler.contract import EXPRESSION_LABELS
from training.calibrate import confusable_pairs
from training.evaluate.figures import (
    plot_cams,
    plot_confusion,
    plot_reliability,
    plot_tsne,
    tsne_points,
)
from training.evaluate.metrics import (
    STATES,
    VIEWS,
    aggregate,
    finite,
    majority_baseline,
    normalise_rows,
    pooled_counts,
    wilson_interval,
)
from training.evaluate.run import CalibrationEffect, EvalResult

LOG = logging.getLogger(__name__)

# Directed confusion rate from which two classes count as "not told apart" in the report.
CONFUSABLE_RATE = 0.25
TSNE_MAX_POINTS = 2000


def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if np.isfinite(x) else "–"


def pm(mean: float, std: float) -> str:
    return f"{fmt(mean)} ± {fmt(std)}" if np.isfinite(mean) else "–"


def _effect_json(effect: Mapping[str, CalibrationEffect]) -> dict[str, Any]:
    return {
        v: {
            "temperature": e.fit.temperature,
            "threshold": e.threshold,
            "threshold_fitted": e.fit.threshold,
            "validation": {"n": e.fit.n, "ece_before": finite(e.fit.ece_before),
                           "ece_after": finite(e.fit.ece_after)},
            "ece_before": finite(e.ece_before),
            "ece_after_state_temperature": finite(e.ece_state),
            "ece_after_handler": finite(e.ece_handler),
            "coverage": finite(e.coverage),
            "precision_answered": finite(e.precision),
        }
        for v, e in effect.items()
    }


def majority_line(labels: np.ndarray) -> str:
    """What always answering the most frequent label would score, with its interval."""
    m = majority_baseline(labels)
    if not m.n:
        return "Majority baseline: no labelled samples."
    lo, hi = m.to_json()["ci95"]
    return (f"Majority baseline: always answering {EXPRESSION_LABELS[m.label]} scores "
            f"{m.k}/{m.n} = {fmt(m.accuracy)} (95% CI {fmt(lo)}-{fmt(hi)}).")


def _summary_lines(results: Sequence[EvalResult]) -> list[str]:
    lines = ["| state | accuracy | 95% CI | macro-F1 | ECE | mask-state accuracy | n |",
             "|---|---|---|---|---|---|---|"]
    if len(results) == 1:
        for s in STATES:
            m = results[0].metrics[s]
            lo, hi = m.accuracy_ci95
            lines.append(f"| {s} | {fmt(m.accuracy)} | {fmt(lo)}-{fmt(hi)} | "
                         f"{fmt(m.macro_f1)} | {fmt(m.ece)} | {fmt(m.mask_accuracy)} | {m.n} |")
        return lines + ["", majority_line(results[0].labels)]
    agg = aggregate(results)
    for s in STATES:
        a = agg[s]
        n = sum(r.metrics[s].n for r in results)
        # every face is tested once over the folds: the pooled count has an interval
        lo, hi = wilson_interval(sum(r.metrics[s].correct for r in results), n)
        lines.append(f"| {s} | {pm(*a['accuracy'])} | {fmt(lo)}-{fmt(hi)} (pooled) | "
                     f"{pm(*a['macro_f1'])} | "
                     f"{pm(*a['ece'])} | {pm(*a['mask_accuracy'])} | {n} |")
    lines += ["", f"Mean ± sample standard deviation over {len(results)} folds.", "",
              "| fold | " + " | ".join(f"{s} acc" for s in STATES) + " | masked macro-F1 |",
              "|---|" + "---|" * (len(STATES) + 1)]
    for r in results:
        accs = " | ".join(fmt(r.metrics[s].accuracy) for s in STATES)
        lines.append(f"| {r.name} | {accs} | {fmt(r.metrics['masked'].macro_f1)} |")
    return lines


def _recall_lines(results: Sequence[EvalResult]) -> list[str]:
    lines = ["| class | " + " | ".join(STATES) + " |", "|---|" + "---|" * len(STATES)]
    agg = aggregate(results)
    for c, name in enumerate(EXPRESSION_LABELS):
        if len(results) == 1:
            cells = [fmt(results[0].metrics[s].recall[c]) for s in STATES]
        else:
            cells = [pm(*agg[s][f"recall_{name}"]) for s in STATES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def confusable_under_mask(results: Sequence[EvalResult]) -> list[dict[str, Any]]:
    """Directed confusions of at least ``CONFUSABLE_RATE`` of a class on masked faces
    (pooled over folds), with the same cell on unmasked faces and the class's support."""
    counts = pooled_counts(results, "masked")
    masked = normalise_rows(counts)
    unmasked = normalise_rows(pooled_counts(results, "unmasked"))
    index = {n: i for i, n in enumerate(EXPRESSION_LABELS)}
    return [{"true": p.true, "predicted": p.predicted, "masked_rate": p.rate,
             "unmasked_rate": finite(unmasked[index[p.true], index[p.predicted]]),
             "n": int(counts[index[p.true]].sum())}
            for p in confusable_pairs(masked, CONFUSABLE_RATE)]


def _confusable_lines(results: Sequence[EvalResult]) -> tuple[list[str], list[dict[str, Any]]]:
    found = confusable_under_mask(results)
    pooled = ", pooled over folds" if len(results) > 1 else ""
    lines = [f"Directed confusions of at least {CONFUSABLE_RATE:.0%} of a class on masked faces "
             f"(row-normalised{pooled}), with the same cell on unmasked faces:", ""]
    if not found:
        return lines + ["None."], found
    lines += ["| true | predicted as | masked | unmasked | faces of the class |",
              "|---|---|---|---|---|"]
    lines += [f"| {f['true']} | {f['predicted']} | {f['masked_rate']:.2f} | "
              f"{fmt(f['unmasked_rate'] if f['unmasked_rate'] is not None else math.nan, 2)} | "
              f"{f['n']} |" for f in found]
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
        lines.append(f"| {v} | {e.fit.temperature:.3f} | {e.threshold:.3f} | "
                     f"{fmt(e.ece_before, 4)} | {fmt(e.ece_state, 4)} | "
                     f"{fmt(e.ece_handler, 4)} | {fmt(e.coverage)} | {fmt(e.precision)} |")
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
        "aggregate": {s: {m: {"mean": finite(mu), "std": finite(sd)}
                          for m, (mu, sd) in a.items()} for s, a in aggregate(folds).items()},
        "confusable_under_mask": found,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(md) + "\n")
    LOG.info("wrote %s", report)
    return report
