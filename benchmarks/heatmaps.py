"""Where each model looks: attention heatmaps of a finished run, and how well attention finds the
informative patches of the simulated cohort.

    python -m benchmarks heatmap --run DIR --slide SLIDE_ID [--methods abmil,momkd] [--out DIR]
    python -m benchmarks localise --run DIR [--methods ...]

``heatmap`` draws one panel per method: the slide's patches at their coordinates, coloured by the
attention of the run's saved fold models (mean over the folds x seeds of the slide's task); on the
simulated cohort a first panel shows the patches that carry the task's signal (the generator's
ground truth). PNG and PDF under ``<run>/heatmaps/``.

``localise`` (simulated runs only) scores, for every test slide of every fold, the fold model's
attention against the generator's informative-patch mask of the task: the AUC of attention as a
detector of informative patches (0.5: attention ignores them; 1: they get the highest weights).
It writes ``<run>/localisation.csv`` (one row per slide x model) and ``localisation.md`` (mean ±
std over slides per method and task). Mean pooling's uniform weights score 0.5 by construction.
Methods whose forward returns no per-patch weights are listed as such.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a finished run folder with saved models")
    if p.prog.endswith("heatmap"):
        p.add_argument("--slide", required=True, help="slide id")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every one with a model)")
    p.add_argument("--out", default=None, help="output folder (default: the run folder)")


def _summary(run: Path) -> dict[str, Any]:
    if not (run / "summary.json").is_file():
        raise FileNotFoundError(f"{run / 'summary.json'} not found: --run must be a finished run folder")
    return json.loads((run / "summary.json").read_text())


def _cohort(summary: dict[str, Any]):
    from benchmarks.data.cohort import CohortSource, load_cohort

    c = dict(summary["cohort"])
    c["label_maps"] = tuple((col, tuple((k, v) for k, v in m)) for col, m in c.get("label_maps", ()))
    return load_cohort(CohortSource(**c))


def _truth(summary: dict[str, Any]):
    """The simulated cohort's ground truth (``annotations``), or None for real data."""
    c = summary.get("cohort") or {}
    if c.get("kind") != "simulated":
        return None
    from benchmarks.data.simulated import simulate

    return simulate(c["scale"], seed=c["seed"])


def fold_models(run: Path, methods: list[str] | None) -> Iterator[tuple[dict, Any, Any]]:
    """(plan entry, model, scaler) for each planned default-variant job with a saved model."""
    from benchmarks.jobs import canonical_variant, load_planned
    from benchmarks.models import load_model

    for pj in load_planned(run):
        e = pj.entry
        if pj.data is None or not pj.data.get("model") or (methods and e["method"] not in methods):
            continue
        if canonical_variant(e["method"], e["variant"]) not in ("default", "full"):
            continue
        model, _, scaler = load_model(run / pj.data["model"]["file"])
        yield e, model, scaler


def attention_of(model: torch.nn.Module, bag: Any, scaler: Any) -> np.ndarray | None:
    """The model's per-patch weights for one slide, its features standardised as the run did
    (None when the model has none)."""
    from benchmarks.models import attention_of as weights

    return weights(model, scaler.transform([bag])[0] if scaler is not None else bag)


def localise(run: Path, methods: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Attention AUC against the informative patches, per test slide and fold model."""
    from sklearn.metrics import roc_auc_score

    from benchmarks.data.simulated import TASKS
    from benchmarks.protocol import load_splits
    from benchmarks.runner import split_path

    summary = _summary(run)
    truth = _truth(summary)
    if truth is None:
        raise ValueError(f"{run}: localisation needs the simulated cohort's ground truth; this run used "
                         f"{(summary.get('cohort') or {}).get('kind')} data (use `heatmap` to look at slides)")
    cohort = _cohort(summary)
    rows, without = [], set()
    for e, model, scaler in fold_models(run, methods):
        split = load_splits(split_path(run, e["task"], e["seed"]))[e["fold"]]
        t = TASKS.index(e["task"])
        for sid in split.test:
            a = attention_of(model, cohort.bag(sid).for_task(e["task"], with_omics=False), scaler)
            if a is None:
                without.add(e["method"])
                break
            mask = truth.annotations(sid)["informative"][:, t]
            if mask.all() or not mask.any():
                continue
            rows.append({"method": e["method"], "task": e["task"], "fold": e["fold"], "seed": e["seed"],
                         "slide_id": sid, "n_patches": len(a), "informative": int(mask.sum()),
                         "attention_auc": float(roc_auc_score(mask, a))})
    return pd.DataFrame(rows), sorted(without)


def localisation_table(df: pd.DataFrame, without: list[str]) -> str:
    from tabulate import tabulate

    from benchmarks.report import method_name, method_order

    cells = df.groupby(["method", "task"])["attention_auc"].agg(["mean", "std", "size"]).reset_index()
    tasks = [t for t in ("her2", "pr", "odx") if t in set(cells["task"])]
    order = method_order(set(cells["method"]))
    body = []
    for m in order:
        row = [method_name(m)]
        for t in tasks:
            c = cells[(cells.method == m) & (cells.task == t)]
            row.append(f"{100 * c['mean'].iat[0]:.1f} ± {100 * c['std'].iat[0]:.1f} (n={c['size'].iat[0]})"
                       if len(c) else "–")
        body.append(row)
    lines = ["**Attention localisation on the simulated cohort**", "",
             tabulate(body, headers=["Method"] + [f"{t.upper()} attention AUC" for t in tasks], tablefmt="github"), "",
             "AUC (%) of each test slide's attention (its fold model) as a detector of the patches that carry the "
             "task's signal (the generator's ground truth); mean ± std over test slides. 50: attention ignores "
             "the informative patches; mean pooling is 50 by construction."]
    if without:
        lines.append(f"No per-patch weights from: {', '.join(method_name(m) for m in without)}.")
    return "\n".join(lines) + "\n"


def draw(run: Path, slide: str, methods: list[str] | None, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.data.simulated import TASKS
    from benchmarks.report import method_name

    summary = _summary(run)
    cohort = _cohort(summary)
    if slide not in set(cohort.manifest["slide_id"]):
        raise ValueError(f"slide {slide!r} is not in the run's cohort ({len(cohort.manifest)} slides)")
    maps: dict[str, list[np.ndarray]] = {}
    task = None
    for e, model, scaler in fold_models(run, methods):
        bag = cohort.bag(slide).for_task(e["task"], with_omics=False)
        if task is None:
            task = e["task"]
        if e["task"] != task:
            continue
        a = attention_of(model, bag, scaler)
        if a is not None:
            maps.setdefault(e["method"], []).append(a)
    if not maps:
        raise ValueError(f"{run}: no saved model with per-patch attention{' among ' + str(methods) if methods else ''}")
    coords = cohort.bag(slide).coords
    if coords is None:
        raise ValueError(f"slide {slide}: no patch coordinates to draw on")
    xy = np.asarray(coords)
    truth = _truth(summary)
    panels = ([("informative patches (ground truth)", truth.annotations(slide)["informative"][:, TASKS.index(task)]
                .astype(float))] if truth is not None else [])
    panels += [(f"{method_name(m)} ({len(v)} fold model{'s' if len(v) > 1 else ''})", np.mean(v, axis=0))
               for m, v in maps.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=12, marker="s", cmap="viridis")
        ax.set_title(title, fontsize=8)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"{slide} ({task})", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{slide}_{task}.png", out / f"{slide}_{task}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths


def main(args) -> int:
    """heatmap: one slide's attention per method; localise: attention vs the simulated ground truth."""
    run = Path(args.run)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    out = Path(args.out) if args.out else run
    if args.command == "heatmap":
        paths = draw(run, args.slide, methods, out / "heatmaps" if not args.out else out)
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
        return 0
    df, without = localise(run, methods)
    if df.empty:
        raise ValueError(f"{run}: no test slide could be scored (no saved model with attention?)")
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "localisation.csv", index=False)
    text = localisation_table(df, without)
    (out / "localisation.md").write_text(text, encoding="utf-8")
    print(text)
    return 0
