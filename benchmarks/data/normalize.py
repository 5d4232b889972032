"""Patch-feature standardisation fitted on a fold's training bags only (``ProtocolConfig.feature_norm``).

Foundation-model features (UNI, CONCH, ...) are used as they come in CLAM/STAMP/the official
MoMKD code, so the default is ``"none"``. Hand-made features such as the 708 UCSB patch features
(values 0..10,823 side by side with values below 1) are not on one scale; the MIL literature
normalised them with statistics of the whole data set (test bags included). ``"train_zscore"``
is the leak-free form: per-feature mean and standard deviation over every patch of the training
part (validation and test bags are never looked at), then the same affine map for all parts.
Each job holds one standardised copy of the bags it uses (cheap for these small data sets; with
whole-slide cohorts it doubles the features' memory per worker).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from benchmarks.protocol import FEATURE_NORMS


@dataclass
class FeatureScaler:
    """Per-feature z-scoring over the patches of the training bags (float64 accumulation)."""

    eps: float = 1e-6
    mean_: torch.Tensor | None = None
    std_: torch.Tensor | None = None

    def fit(self, bags: Sequence[Any]) -> "FeatureScaler":
        if not bags:
            raise ValueError("feature standardisation needs at least one training bag")
        dim = bags[0].features.shape[1]
        s = torch.zeros(dim, dtype=torch.float64)
        ss = torch.zeros(dim, dtype=torch.float64)
        n = 0
        for b in bags:  # streaming sums: no concatenation of the cohort
            f = b.features.detach().to("cpu", torch.float64)
            if f.shape[1] != dim:
                raise ValueError(f"slide {b.slide_id}: {f.shape[1]}-d features, the first training bag has {dim}")
            s += f.sum(0)
            ss += (f * f).sum(0)
            n += f.shape[0]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0)
        std = var.sqrt()
        std[std < self.eps] = 1.0  # constant features stay 0 after centring instead of blowing up
        self.mean_, self.std_ = mean.float(), std.float()
        return self

    def transform(self, bags: Sequence[Any]) -> list[Any]:
        """New bags with standardised features (same dtype as stored); graph caches are shared."""
        if self.mean_ is None:
            raise RuntimeError("FeatureScaler: call fit(training bags) before transform")
        out = []
        for b in bags:
            f = b.features
            out.append(b.with_features(((f.float() - self.mean_.to(f.device)) / self.std_.to(f.device)).to(f.dtype)))
        return out


def normalize_parts(how: str, train: Sequence[Any], *others: Sequence[Any],
                    fitted: list | None = None) -> tuple[list[Any], ...]:
    """``(train, *others)`` standardised with statistics of ``train`` only (``how="train_zscore"``),
    or unchanged (``"none"``). ``fitted`` receives the fitted scaler (saved with the model, so
    ``predict`` applies the same standardisation to new slides)."""
    if how not in FEATURE_NORMS:
        raise ValueError(f"unknown feature_norm {how!r}; choose from {FEATURE_NORMS}")
    if how == "none":
        return (list(train), *(list(o) for o in others))
    scaler = FeatureScaler().fit(train)
    if fitted is not None:
        fitted.append(scaler)
    return (scaler.transform(train), *(scaler.transform(o) for o in others))

