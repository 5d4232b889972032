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

A linear probe needs standardised inputs (scikit-learn's ``StandardScaler`` before a logistic
regression): pooled patch features vary over scales far apart, and one slide per optimiser step
with a small learning rate leaves an unscaled linear head nearly untrained (measured on the
simulated cohort: HER2 AUC 44 without, where a standardised logistic regression reaches 82). With
``hidden_dim=0`` (``standardize=True``) the pooled vector is therefore z-scored with the mean and
std of the training bags' pooled vectors, fitted once in ``on_fit_start`` (training part only).

``init="logistic"`` (default, ``hidden_dim=0``) also starts the head from the logistic regression
that a linear probe is (scikit-learn ``LogisticRegression``, L2 with C = 1, balanced class weights,
L-BFGS, as Patho-Bench's linear-probe baseline fits it) on the training bags' standardised pooled
vectors; the recipe's epochs then train it like any other method. From a random start the shared
recipe (lr 5e-4, early stopping with patience 2) stopped some folds before the probe had learned
(HER2 fold AUCs 0.24-0.73 on the simulated cohort), which would make a floor too low to mean anything.
``init="random"`` keeps torch's initialisation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from baselines.abmil import RECIPE as ABMIL_RECIPE
from baselines.layers import FastDropout
from benchmarks.spec import MethodSpec
from momkd.contract import MILModel, Output, check_bag

POOLS = ("mean", "max")


@dataclass(frozen=True)
class PoolingConfig:
    hidden_dim: int = 0  # 0: linear head on the pooled patch features; > 0: one embedding layer first
    dropout: float = 0.0  # after the embedding layer (hidden_dim > 0)
    standardize: bool = True  # hidden_dim 0: z-score the pooled vector with training-bag statistics
    init: str = "logistic"  # hidden_dim 0: "logistic" (start from the fitted linear probe) | "random"


class PoolingMIL(MILModel):
    def __init__(self, in_dim: int, n_classes: int = 2, pool: str = "mean", hidden_dim: int = 0,
                 dropout: float = 0.0, standardize: bool = True, init: str = "logistic"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pooling: pool must be one of {POOLS}, got {pool!r}")
        if init not in ("logistic", "random"):
            raise ValueError(f"pooling: init must be 'logistic' or 'random', got {init!r}")
        self.logistic_init = init == "logistic" and not hidden_dim
        if hidden_dim < 0:
            raise ValueError(f"pooling: hidden_dim must be >= 0, got {hidden_dim}")
        self.pool = pool
        self.embed = (nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), FastDropout(dropout))
                      if hidden_dim else nn.Identity())
        self.classifier = nn.Linear(hidden_dim or in_dim, n_classes)
        self.standardize = bool(standardize and not hidden_dim)
        self.register_buffer("pool_mean", torch.zeros(in_dim))
        self.register_buffer("pool_std", torch.ones(in_dim))

    def _pool(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, E) -> (1, E), or (B, N, E) with a (B, N) mask -> (B, E)."""
        if mask is None:
            return h.mean(dim=0, keepdim=True) if self.pool == "mean" else h.max(dim=0, keepdim=True).values
        if self.pool == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return h.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(dim=1).values

    def _scale(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.pool_mean) / self.pool_std if self.standardize else z

    @torch.no_grad()
    def on_fit_start(self, train_bags: Any) -> None:
        """Fit the pooled-vector scaler, then (``init="logistic"``) the linear probe, on the training bags."""
        if not (self.standardize or self.logistic_init):
            return
        bags = list(train_bags)
        z = torch.cat([self._pool(b.features.to(self.pool_mean.device, self.pool_mean.dtype)) for b in bags])
        if self.standardize:
            self.pool_mean.copy_(z.mean(0))
            std = z.std(0, unbiased=False)
            self.pool_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))  # constant: centred only
        y = [int(b.label) for b in bags]
        if self.logistic_init and len(set(y)) > 1:
            self._fit_probe(self._scale(z).double().cpu().numpy(), y)

    def _fit_probe(self, x: Any, y: list[int]) -> None:
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x, y)
        coef = torch.as_tensor(lr.coef_, dtype=self.classifier.weight.dtype)
        bias = torch.as_tensor(lr.intercept_, dtype=self.classifier.bias.dtype)
        if self.classifier.out_features == 2 and coef.shape[0] == 1:  # one logit difference -> two logits
            coef, bias = torch.cat([-coef / 2, coef / 2]), torch.cat([-bias / 2, bias / 2])
        if coef.shape == self.classifier.weight.shape:
            self.classifier.weight.copy_(coef.to(self.classifier.weight.device))
            self.classifier.bias.copy_(bias.to(self.classifier.bias.device))

    def forward(self, bag: Any) -> Output:
        check_bag(bag, f"{self.pool}_pool")
        h = self.embed(bag.features)  # (N, E)
        if self.pool == "mean":
            z = h.mean(dim=0, keepdim=True)
            weights = torch.full((h.shape[0],), 1.0 / h.shape[0], device=h.device, dtype=h.dtype)
        else:
            z, idx = h.max(dim=0, keepdim=True)
            weights = torch.bincount(idx[0], minlength=h.shape[0]).to(h.dtype) / h.shape[1]
        return Output(self.classifier(self._scale(z)), attention=weights.detach(), extras={"bag_feature": z})

    def forward_batch(self, features: torch.Tensor, mask: torch.Tensor) -> Output:
        """Padded path (benchmarks/batching.py): (B, N, D) features, (B, N) mask -> (B, C) logits;
        each row equals ``forward`` on that slide alone."""
        z = self._pool(self.embed(features), mask)
        return Output(self.classifier(self._scale(z)), extras={"bag_feature": z})


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


SPECS = tuple(MethodSpec(
    f"{pool}pool", family="floor", display=f"{pool.title()} pooling", job_cost=0.3, build=builder,
    config=PoolingConfig, recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "dropout=0.0:0.5", "hidden_dim=0,64,128,256"),
    paper=f"{pool} pooling (Wang et al., Pattern Recognition 2018, mi-Net; Ilse et al. 2018)",
    code=f"no official code: baselines/pooling.py (torchmil {pool.title()}PoolMIL's role)",
    description=f"floor: linear probe on the {'mean' if pool == 'mean' else 'element-wise max'} patch feature")
    for pool, builder in (("mean", build_mean), ("max", build_max)))
