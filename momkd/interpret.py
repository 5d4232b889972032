"""Interpretability exports for a trained MoMKD (paper "What the Memory Actually Learned" and the
attention heatmaps of the inference section).

* :func:`patch_attention`: per-patch attention, affinity scores and nearest centroids of one slide.
* :func:`top_patches_per_centroid`: for every centroid of C+ and C-, the patches (slide, index,
  coords) most similar to it over a set of slides: the paper's memory figure.
* :func:`plot_attention_heatmap`: a PNG of attention over patch coordinates (matplotlib,
  imported only when called).

All functions run the WSI path only (no omics) in eval mode and restore the model's mode.
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from momkd.model import MoMKD


def _eval_forward(model: MoMKD, bag: Any):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            view = _WSIView(bag)
            return model(view)
    finally:
        model.train(was)


class _WSIView:
    """The bag's WSI attributes only (omics hidden), so the export is an inference run."""

    def __init__(self, bag: Any):
        self._bag = bag
        self.features, self.coords = bag.features, getattr(bag, "coords", None)
        self.slide_id, self.omics, self.label = getattr(bag, "slide_id", "?"), None, None

    @property
    def edge_index(self):
        return getattr(self._bag, "edge_index", None)

    @edge_index.setter
    def edge_index(self, value):
        try:
            self._bag.edge_index = value
        except AttributeError:
            pass


def patch_attention(model: MoMKD, bag: Any) -> dict[str, Any]:
    """One slide's per-patch export: ``slide_id``, ``coords`` (N, 2) or None, ``attention`` (N,),
    and with a memory ``score`` (Eq. 4), ``s_pos``/``s_neg`` (best cosine to C+/C-) and
    ``idx_pos``/``idx_neg`` (that centroid). Arrays are numpy."""
    out = _eval_forward(model, bag)
    coords = getattr(bag, "coords", None)
    rec: dict[str, Any] = {"slide_id": getattr(bag, "slide_id", "?"),
                           "coords": None if coords is None else coords.detach().cpu().numpy(),
                           "attention": out.attention.detach().cpu().numpy(),
                           "prob": torch.softmax(out.logits, -1)[0].detach().cpu().numpy()}
    for k in ("scores", "s_pos", "s_neg", "idx_pos", "idx_neg"):
        if k in out.extras:
            rec["score" if k == "scores" else k] = out.extras[k].detach().cpu().numpy()
    return rec


def top_patches_per_centroid(model: MoMKD, bags: Iterable[Any], top: int = 3) -> list[dict[str, Any]]:
    """For each centroid of C+ ("pos") and C- ("neg"), the ``top`` patches with the highest cosine
    similarity to it over ``bags``. One record per (bank, centroid, rank): ``bank``, ``centroid``,
    ``rank``, ``similarity``, ``slide_id``, ``patch`` (row index), ``x``, ``y`` (None without coords).
    Memory: O(centroids x top), slides are processed one at a time."""
    if not model.cfg.use_memory:
        raise ValueError("top_patches_per_centroid: this MoMKD variant has no memory (use_memory=False)")
    heaps: dict[tuple[str, int], list] = {}
    counter = 0
    for bag in bags:
        out = _eval_forward(model, bag)
        z = out.extras["patch_proj"]
        coords = getattr(bag, "coords", None)
        for bank, centers in (("pos", out.extras["pos_centers"]), ("neg", out.extras["neg_centers"])):
            sim = (z @ centers.T).detach().cpu()  # (N, K)
            k_top = min(top, sim.shape[0])
            vals, rows = sim.topk(k_top, dim=0)  # (k_top, K)
            for c in range(sim.shape[1]):
                h = heaps.setdefault((bank, c), [])
                for v, r in zip(vals[:, c].tolist(), rows[:, c].tolist()):
                    xy = (None, None) if coords is None else tuple(float(t) for t in coords[r].tolist())
                    item = (v, -counter, getattr(bag, "slide_id", "?"), r, xy)
                    counter += 1
                    if len(h) < top:
                        heapq.heappush(h, item)
                    elif item > h[0]:
                        heapq.heapreplace(h, item)
    records = []
    for (bank, c), h in sorted(heaps.items()):
        for rank, (v, _, sid, r, (x, y)) in enumerate(sorted(h, reverse=True)):
            records.append({"bank": bank, "centroid": c, "rank": rank, "similarity": v, "slide_id": sid,
                            "patch": r, "x": x, "y": y})
    return records


def plot_attention_heatmap(coords: Any, attention: Any, path: str | Path, patch_size: float | None = None,
                           title: str | None = None, cmap: str = "jet") -> Path:
    """Write a PNG heatmap: one square per patch at ``coords`` (N, 2), coloured by ``attention``
    (N,) (min-max scaled). ``patch_size`` defaults to the smallest non-zero coordinate step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    xy = np.asarray(coords.detach().cpu() if torch.is_tensor(coords) else coords, dtype=float).reshape(-1, 2)
    a = np.asarray(attention.detach().cpu() if torch.is_tensor(attention) else attention, dtype=float).reshape(-1)
    if xy.shape[0] != a.shape[0] or a.size == 0:
        raise ValueError(f"plot_attention_heatmap: {xy.shape[0]} coords for {a.shape[0]} attention values")
    if patch_size is None:
        steps = np.concatenate([np.diff(np.unique(xy[:, 0])), np.diff(np.unique(xy[:, 1]))])
        steps = steps[steps > 0]
        patch_size = float(steps.min()) if steps.size else 1.0
    span = a.max() - a.min()
    norm = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    fig, ax = plt.subplots(figsize=(6, 6))
    rects = [Rectangle((x, y), patch_size, patch_size) for x, y in xy]
    pc = PatchCollection(rects, cmap=cmap, edgecolor="none")
    pc.set_array(norm)
    ax.add_collection(pc)
    ax.set_xlim(xy[:, 0].min(), xy[:, 0].max() + patch_size)
    ax.set_ylim(xy[:, 1].max() + patch_size, xy[:, 1].min())  # image convention: y down
    ax.set_aspect("equal")
    ax.axis("off")
    fig.colorbar(pc, ax=ax, fraction=0.046, pad=0.04, label="attention (scaled)")
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
