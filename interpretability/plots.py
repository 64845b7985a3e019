"""Matplotlib figures: attribution bars, interaction matrix, interaction graph, dataset-level pairs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import TwoSlopeNorm

from .attributions import AttributionResult
from .interactions import InteractionResult

__all__ = [
    "plot_aggregate",
    "plot_attributions",
    "plot_explanation",
    "plot_interaction_graph",
    "plot_interaction_matrix",
]

POS, NEG = "#d62728", "#1f77b4"


def _unit(unit: str) -> str:
    return f" [{unit}]" if unit else ""


def plot_attributions(result: AttributionResult | InteractionResult, ax=None):
    """Horizontal bars of per-element attributions (captum) or first-order values (shapiq)."""
    ax = ax or plt.subplots(figsize=(5, 3))[1]
    if isinstance(result, AttributionResult):
        labels, values = result.elements, np.array(result.attributions)
        base, title = result.baseline_prediction, f"Integrated gradients ({result.baseline} baseline)"
    else:
        rows = {r["players"][0]: r["value"] for r in result.interactions if len(r["players"]) == 1}
        labels, values = result.elements, np.array([rows.get(i, 0.0) for i in range(len(result.elements))])
        base, title = result.baseline_value, f"{result.index} order 1 ({result.strategy})"
    order = np.argsort(np.abs(values))
    ax.barh([labels[i] for i in order], values[order], color=[POS if values[i] >= 0 else NEG for i in order])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"contribution to {result.output_name}{_unit(result.unit)}")
    ax.set_title(f"{title}\n{result.canonical}: prediction {result.prediction:.3g}, baseline {base:.3g}", fontsize=9)
    return ax


def plot_interaction_matrix(result: InteractionResult, ax=None):
    """Heatmap: first-order values on the diagonal, pair interactions off the diagonal."""
    ax = ax or plt.subplots(figsize=(4.5, 4))[1]
    m = result.matrix()
    lim = float(np.abs(m).max()) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim))
    n = len(result.elements)
    ax.set_xticks(range(n), result.elements)
    ax.set_yticks(range(n), result.elements)
    if n <= 8:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=7)
    plt.colorbar(im, ax=ax, fraction=0.046, label=f"{result.unit or 'value'}")
    ax.set_title(f"{result.index} (order <= {result.order}, {result.method})", fontsize=9)
    return ax


def plot_interaction_graph(result: InteractionResult, ax=None, top: int = 12):
    """Elements on a circle; node area ~ |first-order value|, edge width ~ |pair interaction| (top pairs)."""
    ax = ax or plt.subplots(figsize=(4.5, 4.5))[1]
    n = len(result.elements)
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False) + np.pi / 2
    xy = np.c_[np.cos(angle), np.sin(angle)]
    m = result.matrix()
    pairs = result.of_order(2)[:top]
    scale = max([abs(r["value"]) for r in pairs] + [1e-12])
    for r in pairs:
        i, j = r["players"]
        ax.plot(*xy[[i, j]].T, color=POS if r["value"] >= 0 else NEG, lw=0.5 + 6 * abs(r["value"]) / scale, alpha=0.8,
                zorder=1)
    diag = np.diag(m)
    nscale = max(float(np.abs(diag).max()), 1e-12)
    ax.scatter(xy[:, 0], xy[:, 1], s=200 + 1800 * np.abs(diag) / nscale, c=[POS if d >= 0 else NEG for d in diag],
               alpha=0.35, edgecolors="k", zorder=2)
    for k, el in enumerate(result.elements):
        ax.text(*xy[k], el, ha="center", va="center", fontsize=11, zorder=3)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("interaction graph (red +, blue -)", fontsize=9)
    return ax


def plot_explanation(
    interactions: InteractionResult, attributions: AttributionResult | None = None, path: str | Path | None = None
):
    """One figure per formula: attribution bars, interaction matrix and graph; saved when ``path`` is given."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    plot_attributions(attributions if attributions is not None else interactions, axes[0])
    k = 1
    plot_interaction_matrix(interactions, axes[k])
    plot_interaction_graph(interactions, axes[k + 1])
    fig.suptitle(f"{interactions.formula} -> {interactions.output_name} = {interactions.prediction:.3g}"
                 f"{_unit(interactions.unit)}", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
        plt.close(fig)
    return fig


def plot_aggregate(pairs, path: str | Path | None = None, top: int = 20, min_count: int = 1, title: str = "",
                   matrix_elements: int = 15):
    """Dataset-level figure from the ``pairs`` table of :func:`summarise_pairs`: top pairs by mean |value|
    (pairs in >= ``min_count`` formulas), top pairs by total |value|, and the mean signed interaction
    between the ``matrix_elements`` elements most involved in interactions."""
    import pandas as pd

    pairs = pd.DataFrame(list(pairs)) if not isinstance(pairs, pd.DataFrame) else pairs
    fig, axes = plt.subplots(1, 3, figsize=(17, 0.28 * top + 2.2), gridspec_kw={"width_ratios": [1, 1, 1.2]})
    views = [
        (pairs[pairs["count"] >= min_count].sort_values("mean_abs", ascending=False), "mean_abs",
         f"mean |interaction| (pairs in >= {min_count} formulas)"),
        (pairs.sort_values("sum_abs", ascending=False), "sum_abs", "total |interaction| over the dataset"),
    ]
    for ax, (df, col, label) in zip(axes[:2], views, strict=True):
        rows = df.head(top).iloc[::-1]
        ax.barh([f"{p} (n={c})" for p, c in zip(rows["pair"], rows["count"], strict=True)], rows[col],
                color=[POS if m >= 0 else NEG for m in rows["mean"]])
        ax.set_xlabel(f"{label}\ncolour: sign of the mean (red +, blue -)", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    ax = axes[2]
    if len(pairs):
        split = pairs["pair"].str.split("-", expand=True)
        involvement = pd.concat([pairs.assign(el=split[0]), pairs.assign(el=split[1])]).groupby("el")["sum_abs"].sum()
        els = involvement.sort_values(ascending=False).head(matrix_elements).index.tolist()
        idx = {e: i for i, e in enumerate(els)}
        m = np.full((len(els), len(els)), np.nan)
        for (a, b), mean in zip(split.itertuples(index=False), pairs["mean"], strict=True):
            if a in idx and b in idx:
                m[idx[a], idx[b]] = m[idx[b], idx[a]] = mean
        lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        im = ax.imshow(m, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim))
        ax.set_xticks(range(len(els)), els, fontsize=8, rotation=90)
        ax.set_yticks(range(len(els)), els, fontsize=8)
        plt.colorbar(im, ax=ax, fraction=0.046, label="mean pair interaction")
        ax.set_title(f"mean interaction, {len(els)} most involved elements (blank: never together)", fontsize=8)
    fig.suptitle(title or "element-pair interactions", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
