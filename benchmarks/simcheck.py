"""How hard are the simulated tasks? ``python -m benchmarks.simcheck --scale small``

Per task, with patient-grouped stratified 5-fold CV (scikit-learn ``StratifiedGroupKFold`` over
the labelled slides, groups = case_id), the test-fold AUC (mean +- std over folds) of:

* ``oracle``: the patient's latent molecular state itself (no fitting; the ceiling set by assay noise);
* ``omics LR``: logistic regression on the patient's omics vector (standardised on the training part);
* ``mean-pool LR``: logistic regression on the slide's mean patch feature (the simplest WSI baseline);
* ``informative-pool LR``: logistic regression on the mean over the task's ground-truth informative
  patches (an attention oracle: roughly what a MIL model could reach if it found the right patches).

Each LR picks its L2 strength on an inner patient-grouped 3-fold split of the training part only.
For tasks labelled at the external site, one more row trains on all internal labelled slides and
scores the external cohort. Target (issue 2): mean-pool LR about 0.65-0.85, omics LR above 0.9.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tabulate import tabulate
from threadpoolctl import threadpool_limits

from benchmarks.data.simulated import TASKS, TUMOUR, SimCohort, simulate, simulate_external

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # L2 strengths tried by the inner CV
MODELS = ("oracle", "omics LR", "mean-pool LR", "informative-pool LR")


def pooled_features(cohort: SimCohort) -> tuple[np.ndarray, np.ndarray]:
    """(S, D) mean patch feature per slide and (S, T, D) mean over each task's informative patches
    (falls back to the tumour patches, then all patches, when a slide has none)."""
    ids = list(cohort.manifest["slide_id"])
    d = cohort.config.feature_dim
    mean = np.zeros((len(ids), d))
    inf = np.zeros((len(ids), len(TASKS), d))
    for i, sid in enumerate(ids):
        x = np.asarray(cohort.features[sid], dtype=np.float64)
        ann = cohort.annotations(sid)
        mean[i] = x.mean(0)
        for t in range(len(TASKS)):
            mask = ann["informative"][:, t]
            if not mask.any():
                mask = ann["tissue"] == TUMOUR
            inf[i, t] = x[mask].mean(0) if mask.any() else mean[i]
    return mean, inf


def _fit_lr(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, c_grid: tuple[float, ...] = C_GRID):
    """Standardise + L2 logistic regression; C chosen by an inner patient-grouped 3-fold CV (AUC)
    on the training part only (a single C: fitted directly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UndefinedMetricWarning)  # tiny: an inner fold with one class
        if len(c_grid) == 1:
            lr = LogisticRegression(C=c_grid[0], max_iter=1000)
        else:
            inner = list(StratifiedGroupKFold(3, shuffle=True, random_state=seed).split(x, y, groups))
            lr = LogisticRegressionCV(Cs=list(c_grid), cv=inner, scoring="roc_auc", max_iter=1000)
        return make_pipeline(StandardScaler(), lr).fit(x, y)


def _inputs(cohort: SimCohort, mean: np.ndarray, inf: np.ndarray, t: int) -> dict[str, np.ndarray]:
    cases = cohort.manifest["case_id"].to_numpy()
    return {"oracle": cohort.latent.loc[cases, TASKS[t]].to_numpy()[:, None],
            "omics LR": cohort.omics.loc[cases].to_numpy(np.float64),
            "mean-pool LR": mean, "informative-pool LR": inf[:, t]}


def check(cohort: SimCohort, external: SimCohort | None = None, folds: int = 5, seed: int = 0,
          c_grid: tuple[float, ...] = C_GRID) -> pd.DataFrame:
    """One row per task (and per externally labelled task): slide counts and AUC mean/std per model."""
    mean, inf = pooled_features(cohort)
    ext = pooled_features(external) if external is not None else None
    rows = []
    for t, task in enumerate(TASKS):
        lab = cohort.manifest[task].notna().to_numpy()
        y = cohort.manifest[task].to_numpy(dtype=float, na_value=-1)[lab].astype(int)
        groups = cohort.manifest["case_id"].to_numpy()[lab]
        inputs = {k: v[lab] for k, v in _inputs(cohort, mean, inf, t).items()}
        aucs: dict[str, list[float]] = {m: [] for m in MODELS}
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        for train, test in splitter.split(inputs["oracle"], y, groups):
            for m in MODELS:
                if m == "oracle":
                    score = inputs[m][test, 0]
                else:
                    score = _fit_lr(inputs[m][train], y[train], groups[train], seed, c_grid).predict_proba(
                        inputs[m][test])[:, 1]
                aucs[m].append(roc_auc_score(y[test], score))
        row = {"task": task, "site": cohort.site, "slides (pos/neg)": f"{len(y)} ({y.sum()}/{len(y) - y.sum()})"}
        for m in MODELS:
            row[m] = f"{np.mean(aucs[m]):.3f} +- {np.std(aucs[m]):.3f}"
        rows.append(row)

        if external is not None and external.manifest[task].notna().any():
            elab = external.manifest[task].notna().to_numpy()
            ey = external.manifest[task].to_numpy(dtype=float, na_value=-1)[elab].astype(int)
            einputs = {k: v[elab] for k, v in _inputs(external, *ext, t).items()}
            row = {"task": task, "site": f"{external.site} (trained on {cohort.site})",
                   "slides (pos/neg)": f"{len(ey)} ({ey.sum()}/{len(ey) - ey.sum()})"}
            for m in MODELS:
                if m == "oracle":
                    score = einputs[m][:, 0]
                else:
                    score = _fit_lr(inputs[m], y, groups, seed, c_grid).predict_proba(einputs[m])[:, 1]
                row[m] = f"{roc_auc_score(ey, score):.3f}"
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--seed", type=int, default=0, help="cohort seed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-external", action="store_true", help="skip the external-site row")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    cohort = simulate(args.scale, seed=args.seed)
    external = None if args.no_external else simulate_external(args.scale, seed=args.seed)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    with threadpool_limits(1):  # many tiny BLAS calls: threads only add contention
        table = check(cohort, external, folds=args.folds, seed=args.seed)
    t_check = time.perf_counter() - t0
    m = cohort.manifest
    print(f"simulated cohort '{args.scale}' (seed {args.seed}): {m['case_id'].nunique()} patients, {len(m)} slides, "
          f"D={cohort.config.feature_dim}, {cohort.omics.shape[1]} genes; tables{' + slides' * (not cohort.config.lazy)} "
          f"generated in {t_gen:.2f} s, checks in {t_check:.1f} s")
    print(tabulate(table, headers="keys", tablefmt="github", showindex=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
