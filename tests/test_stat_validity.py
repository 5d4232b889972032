"""The tables' tests keep their type-I error on simulated nulls (issue #18 item 4).

Two methods that are equal in distribution are compared many times through the reporter's own
code (``report._pairwise``); the fraction of p < 0.05 must stay near 0.05. Each model has a
persistent per-patient error (the same patient is hard for every fold model of a method), which
is what makes fold values on one shared external set dependent.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks import report, stats as st

CONTROL, OTHER = ("momkd", "full"), ("abmil", "default")


def _frames(rng: np.random.Generator, split: str, n_cases: int, slides_per_case: int, folds: int = 5):
    """Metrics and predictions of two null-equal methods. ``external``: every fold model scores
    every patient; ``test``: each patient is tested once, by its fold's model."""
    y_case = np.r_[np.ones(n_cases // 2, int), np.zeros(n_cases - n_cases // 2, int)]
    case_effect = rng.normal(0, 1.0, n_cases)                      # shared by all methods (difficulty)
    mparts, pparts = [], []
    for arm in (CONTROL, OTHER):
        method_case = rng.normal(0, 1.0, n_cases)                   # this method's persistent error
        for f in range(folds):
            cases = np.arange(n_cases) if split == "external" else np.flatnonzero(np.arange(n_cases) % folds == f)
            c = np.repeat(cases, slides_per_case)
            k = np.tile(np.arange(slides_per_case), len(cases))
            score = 0.8 * y_case[c] + case_effect[c] + method_case[c] + rng.normal(0, 0.5, c.size)
            p = 1 / (1 + np.exp(-score))
            pparts.append(pd.DataFrame({"method": arm[0], "variant": arm[1], "task": "odx", "split": split,
                                        "fold": f, "seed": 0, "slide_id": [f"C{i}-S{j}" for i, j in zip(c, k)],
                                        "case_id": [f"C{i}" for i in c], "y": y_case[c], "p": p}))
            mparts.append({"method": arm[0], "variant": arm[1], "task": "odx", "metric": "auc", "split": split,
                           "fold": f, "seed": 0, "value": st.auc_score(y_case[c], p),
                           "n_train": 4 * n_cases * slides_per_case / 5, "n_test": c.size})
    return (pd.DataFrame(mparts, columns=report.METRIC_COLUMNS),
            pd.concat(pparts, ignore_index=True)[report.PRED_COLUMNS])


def _rejections(split: str, n_cases: int, slides: int, reps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {"delong": [], "corrected_t_fold_values": [], "delong_per_slide": []}
    for _ in range(reps):
        metrics, preds = _frames(rng, split, n_cases, slides)
        ix = report._Index(metrics, preds)
        s = report._pairwise(ix, "t", CONTROL, [OTHER], [("odx", split, "auc")])
        hits["delong"].append(bool(s.loc[s["test"] == "delong", "p"].iloc[0] < 0.05))
        # what the suite did before: the corrected t-test on fold values / DeLong per slide
        a = metrics[metrics["method"] == CONTROL[0]].sort_values("fold")
        b = metrics[metrics["method"] == OTHER[0]].sort_values("fold")
        _, p = st.corrected_ttest(a["value"].to_numpy() - b["value"].to_numpy(), a["n_train"], a["n_test"])
        hits["corrected_t_fold_values"].append(p < 0.05)
        pa, pb = ix.pooled(CONTROL, "odx", split), ix.pooled(OTHER, "odx", split)
        m = pa.merge(pb, on="slide_id", suffixes=("_a", "_b"))
        hits["delong_per_slide"].append(st.delong_test(m["y_a"].to_numpy(int), m["p_a"], m["p_b"])[3] < 0.05)
    return {k: float(np.mean(v)) for k, v in hits.items()}


def test_external_delong_on_fold_averaged_patient_scores_keeps_its_level():
    rate = _rejections("external", n_cases=60, slides=1, reps=200, seed=0)
    assert 0.02 <= rate["delong"] <= 0.09, rate
    assert rate["corrected_t_fold_values"] > 0.12, rate            # the old test: far above 0.05


def test_patients_with_several_slides_are_tested_per_patient():
    rate = _rejections("test", n_cases=60, slides=3, reps=200, seed=1)
    assert 0.02 <= rate["delong"] <= 0.09, rate
    assert rate["delong_per_slide"] > 0.09, rate                   # slides of one patient are not independent
