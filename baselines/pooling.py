"""The pooling floor: a linear classifier on the mean (or the max) of a slide's patch features.

No attention and no interaction between patches: the number every MIL method has to beat. A
method that does not clearly beat mean pooling has learned nothing a slide average does not hold
(on the simulated cohort, ``python -m benchmarks.simcheck`` prints the same floor as a logistic
regression). Mean and max pooling are the classic MIL pooling operators (Wang et al., Pattern
Recognition 2018, mi-Net; Ilse et al. 2018 Table 1) and the floor of torchmil's and Patho-Bench's
model zoos (torchmil ``MeanPoolMIL`` / ``MaxPoolMIL``; Patho-Bench's linear probe on mean-pooled
patch features). ``hidden_dim=0`` (default) is a linear head on the pooled features;
``hidden_dim>0`` embeds each patch first (Linear-ReLU-Dropout, mi-Net's instance layer).

``attention`` reports how each patch enters the pooled vector: ``1/N`` for the mean; for the max,
the share of feature dimensions whose maximum the patch holds (so heatmaps work for both).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.abmil import RECIPE as ABMIL_RECIPE
from baselines.layers import FastDropout
from momkd.contract import MILModel, Output, check_bag

POOLS = ("mean", "max")


@dataclass(frozen=True)
class PoolingConfig:
    hidden_dim: int = 0  # 0: linear head on the pooled patch features; > 0: one embedding layer first
    dropout: float = 0.0  # after the embedding layer (hidden_dim > 0)


class PoolingMIL(MILModel):
    def __init__(self, in_dim: int, n_classes: int = 2, pool: str = "mean", hidden_dim: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pooling: pool must be one of {POOLS}, got {pool!r}")
        if hidden_dim < 0:
            raise ValueError(f"pooling: hidden_dim must be >= 0, got {hidden_dim}")
        self.pool = pool
        self.embed = (nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), FastDropout(dropout))
                      if hidden_dim else nn.Identity())
        self.classifier = nn.Linear(hidden_dim or in_dim, n_classes)

    def forward(self, bag: Any) -> Output:
        check_bag(bag, f"{self.pool}_pool")
        h = self.embed(bag.features)  # (N, E)
        if self.pool == "mean":
            z = h.mean(dim=0, keepdim=True)
            weights = torch.full((h.shape[0],), 1.0 / h.shape[0], device=h.device, dtype=h.dtype)
        else:
            z, idx = h.max(dim=0, keepdim=True)
            weights = torch.bincount(idx[0], minlength=h.shape[0]).to(h.dtype) / h.shape[1]
        return Output(self.classifier(z), attention=weights.detach(), extras={"bag_feature": z})

    def forward_batch(self, features: torch.Tensor, mask: torch.Tensor) -> Output:
        """Padded path (benchmarks/batching.py): (B, N, D) features, (B, N) mask -> (B, C) logits;
        each row equals ``forward`` on that slide alone."""
        h = self.embed(features)
        m = mask.unsqueeze(-1).to(h.dtype)
        if self.pool == "mean":
            z = (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        else:
            z = h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(dim=1).values
        return Output(self.classifier(z), extras={"bag_feature": z})


def build_mean(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> PoolingMIL:
    return PoolingMIL(in_dim, n_classes, pool="mean", **hp)


def build_max(in_dim: int, omics_dim: int | None, n_classes: int, **hp: Any) -> PoolingMIL:
    return PoolingMIL(in_dim, n_classes, pool="max", **hp)


# No pooling floor has a training script of its own; it trains under the recipe of the attention
# baseline it is the floor of (ABMIL as CLAM trains it), so the gap between the two rows is the
# attention, not the optimiser.
RECIPE = dataclasses.replace(
    ABMIL_RECIPE,
    sources={k: f"ABMIL's recipe (no pooling-floor script): {v}" for k, v in ABMIL_RECIPE.sources.items()
             if k != "dropout"},
    notes="The floor borrows ABMIL's (CLAM's) recipe: Adam 2e-4, early stopping on the validation loss after "
          "epoch 50 with patience 20.")
