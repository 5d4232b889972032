"""Omics preprocessing fitted on the training part of a fold only (no test information leaks).

Z-scoring per gene with the training cases' mean and standard deviation (the official MoMKD
gene-selection step fits its ``StandardScaler`` on a training part too). Method-specific gene
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


def fold_omics(omics: pd.DataFrame, train_cases, log1p: bool = False) -> tuple[pd.DataFrame, OmicsScaler]:
    """Z-scored omics of the training cases, with the scaler fitted on exactly those cases."""
    cases = pd.Index(pd.unique(pd.Series(list(train_cases), dtype=str)))
    missing = cases.difference(omics.index)
    if len(missing):
        raise KeyError(f"omics missing for {len(missing)} training case(s), e.g. {list(missing[:5])}")
    sub = omics.loc[cases]
    scaler = OmicsScaler(log1p=log1p).fit(sub)
    return scaler.transform(sub), scaler
