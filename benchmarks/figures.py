"""Figures of a run: ROC curves, critical-difference diagram, fold-wise AUC strips.

Pure plotting on plain inputs (the reporter, ``benchmarks/report.py``, selects the data). Uses the
object-oriented matplotlib API (``matplotlib.figure.Figure`` rendered by the Agg canvas), so it never
touches pyplot's global state or needs a display.

* ``roc_figure``: one panel per task, one ROC curve per method from pooled out-of-fold predictions,
  legend with the AUC and its DeLong 95% CI (``stats.delong_ci``).
* ``cd_figure``: critical-difference diagram of Demsar (2006), JMLR 7:1, Fig. 1: mean ranks on an
  axis, methods whose ranks differ by less than the Nemenyi CD joined by a bar.
* ``strip_figure``: each fold x seed value as a dot, the mean as a bar, one panel per task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import stats as st

HIGHLIGHT = "momkd"  # drawn thicker and in red (the paper's method)
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31"]


def _new(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols): one row up to 2 panels, then 2 columns."""
    return (1, max(1, n)) if n <= 2 else ((n + 1) // 2, 2)


def _color(i: int, key: str) -> str:
    return "#d62728" if key == HIGHLIGHT else _COLORS[i % len(_COLORS)]


def save(fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = ("png", "pdf"),
         dpi: int = 150) -> list[Path]:
    """Write ``out_dir/name.<fmt>`` for each format; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out_dir / f"{name}.{fmt}"
        fig.savefig(p, dpi=dpi, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(p)
    return paths


def roc_figure(panels: Sequence[tuple[str, Mapping[str, tuple[str, np.ndarray, np.ndarray]]]]) -> Figure:
    """ROC curves: ``panels`` = [(title, {key: (label, y_true, p)})]; one subplot per panel."""
    from sklearn.metrics import roc_curve

    rows, cols = _grid(len(panels))
    fig = _new((4.6 * cols, 4.6 * rows))
    for j, (title, curves) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6")
        for i, (key, (label, y, p)) in enumerate(curves.items()):
            y, p = np.asarray(y), np.asarray(p)
            if y.min() == y.max():
                continue
            fpr, tpr, _ = roc_curve(y, p)
            auc, lo, hi = st.delong_ci(y, p)
            ax.plot(fpr, tpr, lw=2.2 if key == HIGHLIGHT else 1.2, color=_color(i, key),
                    label=f"{label} {100 * auc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        ax.set(title=title, xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=6.5, title="AUC % [DeLong 95% CI]", title_fontsize=6.5)
    fig.tight_layout()
    return fig


def _cliques(ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """Maximal runs [i, j] of sorted ranks with ranks[j] - ranks[i] < cd (no significant difference)."""
    out: list[tuple[int, int]] = []
    k = len(ranks)
    for i in range(k):
        j = i
        while j + 1 < k and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return out


def cd_figure(result: "st.FriedmanResult", labels: Mapping[str, str] | None = None,
              title: str = "") -> Figure:
    """Critical-difference diagram (Demsar 2006, Fig. 1); rank 1 (best) on the left."""
    labels = labels or {}
    order = result.ranks.sort_values()
    names = [labels.get(str(k), str(k)) for k in order.index]
    keys = [str(k) for k in order.index]
    r = order.to_numpy(dtype=float)
    k = len(r)
    cliques = _cliques(r, result.cd)
    n_side = (k + 1) // 2
    n_rows = max(n_side, k - n_side)
    bottom = 0.55 if title else 0.35                  # caption (and title) below the labels
    height = 0.9 + 0.12 * len(cliques) + 0.35 + 0.28 * n_rows + bottom
    fig = _new((7.0, height))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    top = height - 0.9                                # room above the axis: ticks, CD bar, its label
    ax.set_xlim(0, 7.0)
    ax.set_ylim(0, height)
    left, right = 1.9, 5.1
    lo_r, hi_r = 1, max(k, 2)

    def x(rank: float) -> float:
        return left + (rank - lo_r) / (hi_r - lo_r) * (right - left)

    ax.plot([left, right], [top, top], color="k", lw=1)
    for t in range(lo_r, hi_r + 1):
        ax.plot([x(t), x(t)], [top, top + 0.08], color="k", lw=1)
        ax.text(x(t), top + 0.12, str(t), ha="center", va="bottom", fontsize=8)
    # the CD bar, above the axis at the left
    ax.plot([x(1), x(1) + (x(2) - x(1)) * result.cd], [top + 0.42, top + 0.42], color="k", lw=1.5)
    ax.text(x(1) + (x(2) - x(1)) * result.cd / 2, top + 0.46, f"CD = {result.cd:.2f}", ha="center",
            va="bottom", fontsize=8)
    for i, (rk, name, key) in enumerate(zip(r, names, keys)):
        color = _color(i, key) if key == HIGHLIGHT else "k"
        if i < n_side:
            y = top - 0.35 - 0.28 * i - 0.12 * len(cliques)
            ax.plot([x(rk), x(rk), left - 0.15], [top, y, y], color=color, lw=0.9)
            ax.text(left - 0.2, y, f"{name} ({rk:.2f})", ha="right", va="center", fontsize=8, color=color)
        else:
            y = top - 0.35 - 0.28 * (k - 1 - i) - 0.12 * len(cliques)
            ax.plot([x(rk), x(rk), right + 0.15], [top, y, y], color=color, lw=0.9)
            ax.text(right + 0.2, y, f"({rk:.2f}) {name}", ha="left", va="center", fontsize=8, color=color)
    for c, (i, j) in enumerate(cliques):
        y = top - 0.12 - 0.12 * c
        ax.plot([x(r[i]) - 0.04, x(r[j]) + 0.04], [y, y], color="k", lw=3, solid_capstyle="round")
    caption = (f"Friedman chi2 = {result.statistic:.2f}, p = {result.p_value:.3g}, "
               f"N = {result.n_blocks} tasks; Nemenyi alpha = {result.alpha}")
    ax.text(3.5, 0.08, caption, ha="center", va="bottom", fontsize=7, color="0.3")
    if title:
        ax.text(3.5, 0.3, title, ha="center", va="bottom", fontsize=9)
    return fig


def strip_figure(panels: Sequence[tuple[str, Mapping[str, tuple[str, np.ndarray]]]],
                 ylabel: str = "AUC (%)") -> Figure:
    """Fold x seed values as dots and their mean as a bar: ``panels`` = [(title, {key: (label, values)})]."""
    rows, cols = _grid(len(panels))
    width = max(3.2, 0.5 * max((len(p[1]) for p in panels), default=1) + 1.2)
    fig = _new((width * cols, 3.6 * rows))
    for j, (title, series) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, j + 1)
        for i, (key, (label, values)) in enumerate(series.items()):
            v = np.asarray(values, dtype=float)
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            offs = np.linspace(-0.18, 0.18, v.size) if v.size > 1 else np.zeros(1)
            ax.scatter(i + offs, v, s=14, color=_color(i, key), alpha=0.8, zorder=3)
            ax.plot([i - 0.3, i + 0.3], [v.mean(), v.mean()], color="k", lw=1.6, zorder=4)
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels([lab for lab, _ in series.values()], rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", color="0.9", zorder=0)
    fig.tight_layout()
    return fig


def curve_figure(columns: Sequence[tuple[str, Mapping[str, tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]]]],
                 ylabels: tuple[str, str] = ("training loss", "validation AUC")) -> Figure:
    """Learning curves: one column per ``(title, {key: (label, per-fold training loss, per-fold
    validation AUC)})`` (e.g. one column per recipe), training loss on top and validation AUC below;
    each fold a thin line, the mean over the folds still training at an epoch a thick one."""
    fig = _new((4.6 * max(1, len(columns)), 6.4))
    keys = list(dict.fromkeys(k for _, series in columns for k in series))  # one colour per method everywhere
    for c, (title, series) in enumerate(columns):
        for r in range(2):
            ax = fig.add_subplot(2, len(columns), r * len(columns) + c + 1)
            for key, item in series.items():
                label, curves = item[0], item[1 + r]
                color = _color(keys.index(key), key)
                longest = max((len(v) for v in curves), default=0)
                for v in curves:
                    ax.plot(np.arange(1, len(v) + 1), v, color=color, lw=0.6, alpha=0.35)
                if longest:
                    grid = np.full((len(curves), longest), np.nan)
                    for k, v in enumerate(curves):
                        grid[k, :len(v)] = v
                    with np.errstate(all="ignore"):
                        mean = np.nanmean(grid, axis=0)
                    ax.plot(np.arange(1, longest + 1), mean, color=color, lw=2.0, label=label)
            if r == 0:
                ax.set_title(title)
            ax.set_ylabel(ylabels[r])
            ax.set_xlabel("epoch")
            ax.grid(color="0.92")
            if r == 1:
                ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
