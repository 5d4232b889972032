"""Apply a finished run's fold models to new slides.

    python -m benchmarks predict --run results/tcga_brca/my-run --data NEWDIR [--task her2]
                                 [--methods abmil,momkd] [--ensemble mean|none] [--attention] [--out DIR]

``NEWDIR`` has the layout of ``run --data`` (``manifest.csv`` with slide_id and case_id, label
columns optional; ``features/``). Every planned job of the run that finished with a saved model
(``<run>/models/``) scores every slide: ``predictions.csv`` (one row per slide x model: method,
variant, fold, seed, probability of the positive class, the fold's validation threshold and the
label when the manifest has one) and, with ``--ensemble mean``, ``ensemble.csv`` (the mean over a
method's fold models, the usual way to deploy cross-validated models). ``--attention`` writes each
slide's patch weights (mean over the fold models) with the patch coordinates, for heatmaps.

Refused with a clear message: a task the run did not train, features of another dimension than
the models saw, a run without saved models (``run --no-save-models``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a finished run folder (results/<suite>/<run>)")
    p.add_argument("--data", required=True, help="folder with manifest.csv and features/ (as run --data)")
    p.add_argument("--task", default=None, help="task to predict (default: the run's only task)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all the run trained)")
    p.add_argument("--ensemble", choices=("mean", "none"), default="mean",
                   help="mean: also average each method's fold models per slide (ensemble.csv)")
    p.add_argument("--attention", action="store_true", help="also write per-patch attention (mean over folds)")
    p.add_argument("--out", default=None, help="output folder (default <run>/predict/<data folder name>)")
    p.add_argument("--skip-bad-slides", action="store_true", help="drop unreadable slides instead of stopping")
    p.add_argument("--no-progress", action="store_true")


def _models(run: Path, task: str | None, methods: list[str] | None) -> tuple[str, list[tuple[Path, dict]]]:
    from benchmarks.jobs import load_planned

    planned = [pj for pj in load_planned(run) if pj.data is not None]
    if not planned:
        raise ValueError(f"{run}: no finished job in the run's plan; nothing to predict with")
    tasks = sorted({pj.entry["task"] for pj in planned})
    if task is None:
        if len(tasks) > 1:
            raise ValueError(f"{run} trained tasks {tasks}; choose one with --task")
        task = tasks[0]
    if task not in tasks:
        raise ValueError(f"{run} has no model for task {task!r}; it trained {tasks}")
    chosen = [pj for pj in planned if pj.entry["task"] == task and (not methods or pj.entry["method"] in methods)]
    if methods and not chosen:
        raise ValueError(f"{run}: no {task} model of {methods}; it trained "
                         f"{sorted({pj.entry['method'] for pj in planned if pj.entry['task'] == task})}")
    with_model = [(run / pj.data["model"]["file"], pj.entry) for pj in chosen if pj.data.get("model")]
    if not with_model:
        raise ValueError(f"{run}: its jobs kept no model (run with --no-save-models?); rerun with --force to save them")
    missing = [str(p) for p, _ in with_model if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} saved model file(s) are missing, e.g. {missing[0]}")
    return task, with_model


def main(args) -> int:
    """Apply every fold model of a finished run to new slides (probabilities, optional attention)."""
    from tqdm.auto import tqdm

    from benchmarks.data.cohort import load_cohort
    from benchmarks.engine import predict, select_device
    from benchmarks.models import attention_of, load_model
    from benchmarks.protocol import ProtocolConfig
    from benchmarks.runner import _sources, plan_sources
    from benchmarks.suites import load_suite

    run = Path(args.run)
    if not (run / "summary.json").is_file():
        raise FileNotFoundError(f"{run / 'summary.json'} not found: --run must be a finished run folder")
    summary = json.loads((run / "summary.json").read_text())
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    task, models = _models(run, args.task, methods)
    suite = load_suite(summary["suite"])
    args.feature_dtype, args.feature_store = None, False
    src, _, _ = _sources(suite, args)
    src, _, _ = plan_sources(src, None, args)
    # labels are optional on new slides: only the label columns the manifest has are read
    header = set(pd.read_csv(src.manifest, nrows=0).columns.str.strip())
    src = dataclasses.replace(src, label_maps=tuple((c, m) for c, m in src.label_maps if c in header))
    cohort = load_cohort(src)
    protocol = ProtocolConfig.from_dict(summary.get("protocol"))
    device = select_device(protocol)
    bags = [cohort.bag(s).for_task(task, with_omics=False) for s in cohort.manifest["slide_id"]]
    labels = {b.slide_id: b.label for b in bags}
    rows: list[dict[str, Any]] = []
    attention: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    for path, entry in tqdm(models, desc="fold models", unit="model", disable=args.no_progress):
        model, meta, scaler = load_model(path)
        if meta["in_dim"] != cohort.in_dim:
            raise ValueError(f"{args.data}: features are {cohort.in_dim}-d, the models of {run} were trained on "
                             f"{meta['in_dim']}-d features (another patch encoder?); extract them with the same "
                             "encoder as the training data")
        model.to(device)
        use = scaler.transform(bags) if scaler is not None else bags  # the run's training-part scaler
        p = predict(model, use, device, protocol)
        for b, pp in zip(use, p):
            rows.append({"slide_id": b.slide_id, "case_id": b.case_id, "task": task, "method": meta["method"],
                         "variant": meta["variant"], "fold": meta["fold"], "seed": meta["seed"], "p": float(pp),
                         "threshold": meta["threshold"], "label": labels[b.slide_id]})
        if args.attention:
            for b in use:
                a = attention_of(model, b.to(device) if device.type != "cpu" else b)
                if a is not None:
                    attention.setdefault((meta["method"], meta["variant"]), {}).setdefault(b.slide_id, []).append(a)
    out = Path(args.out) if args.out else run / "predict" / Path(args.data).name
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "predictions.csv", index=False)
    written = [out / "predictions.csv"]
    if args.ensemble == "mean":
        ens = (df.groupby(["slide_id", "case_id", "task", "method", "variant"], sort=False)
               .agg(p=("p", "mean"), p_std=("p", "std"), n_models=("p", "size"), threshold=("threshold", "mean"),
                    label=("label", "first")).reset_index())
        ens.to_csv(out / "ensemble.csv", index=False)
        written.append(out / "ensemble.csv")
    for (m, v), per_slide in attention.items():
        folder = out / "attention" / f"{m}_{v}"
        folder.mkdir(parents=True, exist_ok=True)
        for sid, maps in per_slide.items():
            coords = cohort.bag(sid).coords
            a = np.mean(maps, axis=0)
            table = pd.DataFrame({"patch": np.arange(len(a)), "attention": a})
            if coords is not None and len(coords) == len(a):
                xy = np.asarray(coords)
                table["x"], table["y"] = xy[:, 0], xy[:, 1]
            table.to_csv(folder / f"{sid}.csv", index=False)
        written.append(folder)
    print(f"{len(models)} fold model(s) x {len(bags)} slide(s) of {args.data} ({task}) -> "
          + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0
