"""Learning curves of finished runs: training loss and validation AUC per epoch, per method.

    python -m benchmarks curves --run results/tcga_brca/sim-small --run results/tcga_brca/sim-small-official \
        --task her2 --methods abmil,tdc,mkd,ghanet --out results/curves

Reads the loss curve every job keeps (``jobs/*.json``: one row per stage x epoch) and writes
``curves.png`` / ``curves.pdf`` (one column per run folder, e.g. per recipe; for methods trained in
stages, TDC's teachers then student, the last stage is drawn) and ``curves.md``: per run and method
the epochs trained, the selected epoch, the training loss at the first and the last epoch, the best
and the selected validation AUC and the test AUC, means over folds. Nothing is trained.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.jobs import canonical_variant


def load_curves(run_dir: str | Path, task: str, methods: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """method -> one record per fold: the last stage's rows, best epoch and test AUC."""
    from benchmarks.jobs import load_planned

    out: dict[str, list[dict[str, Any]]] = {}
    for pj in load_planned(Path(run_dir)):  # the run's own jobs only
        e, d = pj.entry, pj.data
        if d is None:
            if pj.problem != "missing" or e.get("task") == task:
                print(f"warning: {pj.path}: planned job {pj.label} is {pj.problem}, skipped", file=sys.stderr)
            continue
        job = d.get("job", {})
        if e["task"] != task or e["variant"] != canonical_variant(e["method"], None):
            continue
        if methods and e["method"] not in methods:
            continue
        rows = d.get("curve") or []
        last = rows[-1]["stage"] if rows else None
        rows = [r for r in rows if r.get("stage") == last]
        out.setdefault(e["method"], []).append({
            "fold": e["fold"], "seed": e["seed"], "rows": rows, "best_epoch": d.get("best_epoch"),
            "test_auc": ((d.get("metrics") or {}).get("test") or {}).get("auc"),
            "recipe": job.get("recipe", "shared")})
    return out


def summary(curves: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    recs = []
    for m, folds in curves.items():
        rows = []
        for f in folds:
            loss = [r.get("train_total") for r in f["rows"]]
            auc = [r.get("val_auc", np.nan) for r in f["rows"]]
            be = f["best_epoch"] if f["best_epoch"] is not None and f["best_epoch"] >= 0 else len(auc) - 1
            rows.append({"epochs": len(f["rows"]), "selected": be + 1, "loss_first": loss[0] if loss else np.nan,
                         "loss_last": loss[-1] if loss else np.nan,
                         "val_auc_best": np.nanmax(auc) if np.isfinite(auc).any() else np.nan,
                         "val_auc_selected": auc[be] if 0 <= be < len(auc) else np.nan,
                         "test_auc": f["test_auc"] if f["test_auc"] is not None else np.nan})
        df = pd.DataFrame(rows)
        recs.append({"method": m, "folds": len(df), **{k: float(df[k].mean()) for k in df.columns}})
    return pd.DataFrame(recs)


def add_arguments(p) -> None:
    p.add_argument("--run", action="append", required=True, help="run folder (repeat: one column each)")
    p.add_argument("--task", default="her2")
    p.add_argument("--methods", default=None, help="comma-separated (default: every method of the runs)")
    p.add_argument("--out", default="results/curves", help="output folder")


def main(args) -> int:
    """Learning curves (training loss, validation AUC per epoch) of finished runs."""
    from benchmarks.figures import curve_figure, save
    from benchmarks.report import _method_order, method_name

    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    columns, lines = [], ["# Learning curves", ""]
    for run in args.run:
        curves = load_curves(run, args.task, methods)
        if not curves:
            raise ValueError(f"{run}: no finished job of task {args.task}"
                             + (f" for {', '.join(methods)}" if methods else ""))
        recipes = sorted({f["recipe"] for fs in curves.values() for f in fs})
        title = f"{Path(run).name} ({', '.join(recipes)} recipe)"
        order = _method_order(curves)
        columns.append((title, {m: (method_name(m),
                                    [np.array([r.get("train_total", np.nan) for r in f["rows"]], float) for f in curves[m]],
                                    [np.array([r.get("val_auc", np.nan) for r in f["rows"]], float) for f in curves[m]])
                                for m in order}))
        df = summary(curves).set_index("method").loc[order].reset_index()
        df["method"] = df["method"].map(method_name)
        lines += [f"## {title}, task {args.task}", "",
                  df.to_markdown(index=False, floatfmt=".3f"), ""]
    out = Path(args.out)
    paths = save(curve_figure(columns), out, "curves")
    lines += ["epochs: trained (early stopping included); selected: the checkpoint kept (1-based); loss: the "
              "training loss of the first and the last epoch; AUCs: means over folds. Multi-stage methods: "
              "the last stage (TDC's student)."]
    (out / "curves.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print((out / "curves.md").read_text())
    for p in paths:
        print(f"wrote {p}")
    return 0
