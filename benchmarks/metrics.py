"""Slide-level classification metrics: pure functions over (y_true, p_positive).

AUC, ACC and macro-F1 are the paper's metrics (Table 1); balanced accuracy and AUPRC are kept in
result files too. ACC/F1/BACC use a decision threshold: 0.5 by default (what the official code's
argmax does for two classes) or one chosen on the validation split (:func:`choose_threshold`),
never on the evaluated split.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def _check(y_true, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    q = np.asarray(p, dtype=float).ravel()
    if y.shape != q.shape:
        raise ValueError(f"y_true has {y.size} entries but p has {q.size}; pass one probability per slide")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{int((~np.isfinite(q)).sum())} predicted probabilities are NaN/Inf")
    if set(np.unique(y)) - {0, 1}:
        raise ValueError(f"binary metrics need labels in {{0, 1}}, got {sorted(set(np.unique(y)))}")
    return y, q


def binary_metrics(y_true, p, threshold: float = 0.5) -> dict[str, float]:
    """AUC, ACC, macro-F1, balanced accuracy, AUPRC. AUC/AUPRC are NaN when one class is absent."""
    y, q = _check(y_true, p)
    yhat = (q >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(skm.roc_auc_score(y, q)) if both else float("nan"),
        "acc": float(skm.accuracy_score(y, yhat)),
        "f1": float(skm.f1_score(y, yhat, average="macro", zero_division=0)),
        "bacc": float(skm.balanced_accuracy_score(y, yhat)) if both else float("nan"),
        "auprc": float(skm.average_precision_score(y, q)) if both else float("nan"),
    }


def choose_threshold(y_true, p, rule: str = "f1") -> float:
    """Threshold maximising macro-F1 ("f1", as the official MoMKD test.py) or Youden's J ("youden")
    on the given (validation) predictions. Falls back to 0.5 when one class is absent."""
    y, q = _check(y_true, p)
    if len(np.unique(y)) < 2:
        return 0.5
    cands = np.unique(q)
    if rule == "youden":
        fpr, tpr, thr = skm.roc_curve(y, q)
        t = float(thr[int(np.argmax(tpr - fpr))])
        return min(t, 1.0)
    if rule != "f1":
        raise ValueError(f"unknown threshold rule {rule!r}; use 'f1' or 'youden'")
    scores = [skm.f1_score(y, (q >= t).astype(int), average="macro", zero_division=0) for t in cands]
    return float(cands[int(np.argmax(scores))])
