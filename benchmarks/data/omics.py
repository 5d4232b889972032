"""Omics preprocessing fitted on the training part of a fold only (no test information leaks).

Z-scoring per gene with the training cases' mean and standard deviation (the official MoMKD
gene-selection step fits its ``StandardScaler`` on a training part too), then optionally the
top-``n_genes`` genes by ANOVA F on the training cases (``ProtocolConfig.omics_genes``; 768 as the
official code keeps, 0 = all). Method-specific gene
selection (e.g. G-HANet's Welch t-test) happens inside the model's ``on_fit_start``, which only
ever sees training bags.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class OmicsScaler:
    """Per-gene z-scoring. ``fit`` on training cases, ``transform`` anything."""

    log1p: bool = False  # log2(x + 1) first (raw expression); simulated omics are already on a log scale
    eps: float = 1e-6
    mean_: np.ndarray | None = None
    std_: np.ndarray | None = None
    fitted_cases_: tuple[str, ...] = ()

    def _pre(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.log2(np.clip(x, 0, None) + 1.0) if self.log1p else x

    def fit(self, table: pd.DataFrame) -> "OmicsScaler":
        x = self._pre(table.to_numpy())
        if x.shape[0] < 2:
            raise ValueError(f"omics z-scoring needs >= 2 training cases, got {x.shape[0]}")
        self.mean_ = x.mean(0)
        self.std_ = x.std(0)
        self.fitted_cases_ = tuple(map(str, table.index))
        return self

    def transform(self, table: pd.DataFrame) -> pd.DataFrame:
        if self.mean_ is None:
            raise RuntimeError("OmicsScaler: call fit(training omics) before transform")
        z = (self._pre(table.to_numpy()) - self.mean_) / (self.std_ + self.eps)
        return pd.DataFrame(z.astype(np.float32), index=table.index, columns=table.columns)


def select_genes(z: pd.DataFrame, labels: np.ndarray, n_genes: int) -> list[str]:
    """The ``n_genes`` genes with the largest ANOVA F between the training cases' classes
    (``sklearn.feature_selection.f_classif``), in table order. The official MoMKD code keeps the
    top 768 genes of an XGBoost importance ranking; a univariate F-test is the label-aware,
    deterministic stand-in, fitted on the fold's training cases only. Constant genes score 0."""
    from sklearn.feature_selection import f_classif

    if n_genes <= 0 or n_genes >= z.shape[1]:
        return list(z.columns)
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise ValueError("gene selection needs both classes among the training cases")
    with np.errstate(divide="ignore", invalid="ignore"):
        f, _ = f_classif(z.to_numpy(np.float64), y)
    f = np.nan_to_num(f, nan=0.0)
    keep = np.sort(np.argsort(-f, kind="stable")[:n_genes])
    return [z.columns[i] for i in keep]


def fold_omics(omics: pd.DataFrame, train_cases, log1p: bool = False, labels=None,
               n_genes: int = 0) -> tuple[pd.DataFrame, OmicsScaler]:
    """Z-scored omics of the training cases, with the scaler (and, with ``n_genes``, the gene
    selection on ``labels``, one per training case) fitted on exactly those cases."""
    cases = pd.Index(pd.unique(pd.Series(list(train_cases), dtype=str)))
    missing = cases.difference(omics.index)
    if len(missing):
        raise KeyError(f"omics missing for {len(missing)} training case(s), e.g. {list(missing[:5])}")
    sub = omics.loc[cases]
    scaler = OmicsScaler(log1p=log1p).fit(sub)
    z = scaler.transform(sub)
    if n_genes and n_genes < z.shape[1]:
        if labels is None:
            raise ValueError("gene selection (n_genes) needs the training cases' labels")
        per_case = pd.Series(list(labels), index=pd.Index(list(map(str, train_cases)))).groupby(level=0).first()
        z = z[select_genes(z, per_case.loc[cases].to_numpy(), n_genes)]
    return z, scaler


def omics_dim(n_available: int | None, n_genes: int) -> int | None:
    """Input width of the omics branch after the fold's gene selection."""
    if n_available is None:
        return None
    return min(n_available, n_genes) if n_genes else n_available
