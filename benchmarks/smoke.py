"""The smoke grid (``run --grids smoke``, issue #19 item 2): every method for one epoch on one fold,
timed and measured, at whatever scale the run uses (``--scale paper``: the basis of the GPU
budget in the README).

A smoke run trains one epoch only, so its AUCs mean nothing: it writes ``tables/smoke.{md,csv}``
(seconds per epoch and per step, evaluation seconds, peak memory of the job's process) and never
Tables 1-4.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.jobs import load_planned, read_plan

GRID = "smoke"


def is_smoke_run(run_dir: str | Path) -> bool:
    """Whether every planned job of the run belongs to the smoke grid."""
    try:
        entries = read_plan(Path(run_dir))
    except (FileNotFoundError, ValueError):
        return False
    return bool(entries) and all(e.get("grid") == GRID for e in entries)


def smoke_frame(run_dir: str | Path) -> pd.DataFrame:
    """One row per planned job: method, task, steps, seconds, memory, or why it has none."""
    rows: list[dict[str, Any]] = []
    for pj in load_planned(Path(run_dir)):
        e = pj.entry
        row: dict[str, Any] = {"method": e["method"], "task": e["task"], "fold": e["fold"]}
        if pj.data is None:
            row.update(status=pj.problem, detail=pj.detail)
        else:
            t = pj.data.get("timings", {})
            epochs = max(1, len(pj.data.get("curve", [])))
            steps = int(t.get("steps", 0))
            row.update(status="ok", stages_x_epochs=epochs, steps=steps, patches_mean=t.get("train_patches_mean"),
                       epoch_s=round(t.get("fit_s", 0.0) / epochs, 1),
                       step_s=round(t["fit_s"] / steps, 4) if steps else None,
                       eval_s=round(t.get("eval_s", 0.0), 1), mem_peak_gb=t.get("mem_peak_gb"),
                       mem_job_gb=(round(t["mem_peak_gb"] - t["mem_start_gb"], 3)
                                   if "mem_peak_gb" in t and "mem_start_gb" in t else None),
                       cuda_peak_gb=t.get("cuda_peak_gb"), device=(pj.data.get("env") or {}).get("cuda") or "cpu",
                       threads=(pj.data.get("env") or {}).get("threads"))
        rows.append(row)
    return pd.DataFrame(rows)


def write_smoke(run_dir: str | Path) -> dict[str, Path]:
    """``tables/smoke.md`` and ``smoke.csv``; returns {relative name: path}."""
    from tabulate import tabulate

    run = Path(run_dir)
    df = smoke_frame(run)
    tdir = run / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    cols = ["method", "task", "status", "stages_x_epochs", "steps", "patches_mean", "epoch_s", "step_s", "eval_s", "mem_peak_gb", "mem_job_gb",
            "cuda_peak_gb", "device", "threads", "detail"]
    shown = df[[c for c in cols if c in df.columns]].dropna(axis=1, how="all")
    header = {"stages_x_epochs": "epochs (all stages)", "patches_mean": "patches / bag", "epoch_s": "s / epoch", "step_s": "s / step", "eval_s": "eval s", "mem_peak_gb": "peak mem (GB)",
              "mem_job_gb": "job's own (GB)", "cuda_peak_gb": "GPU peak (GB)"}
    md = ("Smoke grid: one epoch per training stage on one fold, every method (AUCs of one epoch are "
          "meaningless and not shown). Peak memory: the job's process, private pages only (a memory-mapped "
          "feature store is shared page cache, not counted); job's own: above the process's level at the "
          "job's start.\n\n"
          + tabulate(shown.rename(columns=header), headers="keys", tablefmt="github", showindex=False,
                     missingval="") + "\n")
    out = {"tables/smoke.md": tdir / "smoke.md", "tables/smoke.csv": tdir / "smoke.csv"}
    out["tables/smoke.md"].write_text(md, encoding="utf-8")
    df.to_csv(out["tables/smoke.csv"], index=False)
    return out
