"""The evaluation report's figures: confusion matrices, t-SNE, Grad-CAM grids, reliability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from handler.contract import EXPRESSION_LABELS
from handler.postprocess import softmax
from training.evaluate.gradcam import CamOverlay
from training.evaluate.metrics import VIEWS, normalise_rows
from training.evaluate.run import CalibrationEffect, EvalResult


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
