"""Class-conditioned memory banks C+ and C- (paper "The Momentum Memory"; official ``mkd.py``
``mem_pos``/``mem_neg`` VectorQuantize codebooks, ``core_utils.bootstrap_codebooks``).

Each bank holds n vectors of width S, stored un-normalised (as the official codebook parameter)
and L2-normalised wherever they are compared with unit-sphere features (alignment, attention).

Update modes (``MemoryBanks.mode``):

* ``gradient``: the released code. The banks are parameters; the only losses that reach them are
  the alignment terms of both modalities (Eq. 3) and the orthogonality regulariser. The
  attention path uses detached centres (the classifier never writes the memory) and the VQ
  commitment target is detached (it moves patch projections, not centroids). The optimizer's
  weight decay also applies to them, as in the official AdamW.
* ``ema`` (our extension, not in the released code): no gradient; after every optimizer step
  each centroid k of the slide's class bank with at least one assigned patch moves to
  c_k <- normalize(m c_k + (1 - m) mean_k), mean_k = mean of the normalised patch projections
  assigned to it (the commitment assignment), m = ``ema_decay``.
* ``fixed`` (Table 4): K-means initialised, then frozen.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 20, generator: torch.Generator | None = None,
                     fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Spherical K-means (core_utils.bootstrap_codebooks ``kmeans``): k random samples as initial
    centres, then ``iters`` rounds of argmax-cosine assignment and normalised-mean update; an
    empty cluster keeps its centre. With fewer than k samples the missing initial centres come
    from ``fallback`` (k, S). Returns (k, S) unit vectors."""
    x = F.normalize(x, dim=-1)
    m = x.shape[0]
    perm = torch.randperm(m, generator=generator)[:k].to(x.device)
    c = x[perm].clone()
    if c.shape[0] < k:
        if fallback is None:
            raise ValueError(f"spherical_kmeans: {m} samples for {k} centres and no fallback centres")
        c = torch.cat([c, F.normalize(fallback[c.shape[0]:k].to(x), dim=-1)], 0)
    for _ in range(iters):
        a = (x @ c.T).argmax(dim=1)  # (M,)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        counts = torch.bincount(a, minlength=k)
        c = torch.where((counts > 0).unsqueeze(1), F.normalize(sums, dim=-1), c)
    return F.normalize(c, dim=-1)


def orthogonality(bank: torch.Tensor) -> torch.Tensor:
    """sum_ij cos(c_i, c_j)^2 / K^2 - 1/K (vector-quantize-pytorch ``orthogonal_loss_fn``, eq. 2 of
    arXiv 2112.00384; l2norm with eps 1e-6). bank (K, S) -> scalar."""
    k = bank.shape[0]
    cn = F.normalize(bank, p=2, dim=-1, eps=1e-6)
    return (cn @ cn.T).pow(2).sum() / (k * k) - 1.0 / k


class MemoryBanks(nn.Module):
    """C+ (``pos``) and C- (``neg``), each (n, S)."""

    def __init__(self, n_memory: int, dim: int, mode: str = "gradient"):
        super().__init__()
        self.n_memory, self.dim, self.mode = n_memory, dim, mode
        self.pos = nn.Parameter(F.normalize(torch.randn(n_memory, dim), dim=-1))
        self.neg = nn.Parameter(F.normalize(torch.randn(n_memory, dim), dim=-1))
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for p in (self.pos, self.neg):
            p.requires_grad_(mode == "gradient")

    def bank(self, label: int) -> nn.Parameter:
        """The raw bank of a class: label 1 -> C+, label 0 -> C-."""
        return self.pos if int(label) == 1 else self.neg

    def centers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (C+, C-), each (n, S) (mkd.py ``F.normalize(codebook)``)."""
        return F.normalize(self.pos, p=2, dim=-1), F.normalize(self.neg, p=2, dim=-1)

    @staticmethod
    def assign(z: torch.Tensor, bank: torch.Tensor, how: str) -> torch.Tensor:
        """Nearest centroid of each row of z (N, S) -> (N,) long.

        ``raw``: Euclidean distance to the UN-normalised bank, as the vendored VQ does (argmin of
        ||c||^2 - 2 z.c, which orders like its cdist); ``normalized``: max cosine."""
        if how == "raw":
            return (bank.pow(2).sum(-1).unsqueeze(0) - 2.0 * (z @ bank.T)).argmin(dim=1)
        return (z @ F.normalize(bank, dim=-1).T).argmax(dim=1)

    @staticmethod
    def codes(bank: torch.Tensor, idx: torch.Tensor, how: str) -> torch.Tensor:
        """The commitment targets bank[idx] (raw) or normalize(bank)[idx], detached. (N, S)."""
        b = bank.detach()
        return (b if how == "raw" else F.normalize(b, dim=-1)).index_select(0, idx)

    @torch.no_grad()
    def set_banks(self, pos: torch.Tensor | None = None, neg: torch.Tensor | None = None) -> None:
        for p, v in ((self.pos, pos), (self.neg, neg)):
            if v is not None:
                p.copy_(F.normalize(v.to(p), dim=-1))

    @torch.no_grad()
    def ema_update(self, label: int, sums: torch.Tensor, counts: torch.Tensor, decay: float) -> None:
        """c_k <- normalize(decay c_k + (1 - decay) sums_k / counts_k) where counts_k > 0."""
        bank = self.bank(label)
        hit = counts > 0
        if not bool(hit.any()):
            return
        mean = sums[hit] / counts[hit].unsqueeze(1).to(sums)
        bank[hit] = F.normalize(decay * bank[hit] + (1.0 - decay) * mean.to(bank), dim=-1)


def sample_class_projections(bags: Iterable[Any], encode: Callable[[Any], torch.Tensor], per_class: int,
                             seed: int = 0) -> dict[int, torch.Tensor]:
    """Patch projections sampled uniformly without replacement from the training slides of each
    class (at most ``per_class`` per class; all of them when a class has fewer).

    The paper samples "10,000 random patches"; the released code instead takes every patch of
    whole slides drawn by its class-balanced sampler until both classes have >= 50,000. Only the
    sampled rows are kept, so memory is O(per_class x S). ``encode(bag) -> (N, S)``.
    """
    bags = list(bags)
    by_class: dict[int, list[int]] = {}
    for i, b in enumerate(bags):
        if getattr(b, "label", None) is None:
            continue
        by_class.setdefault(int(b.label), []).append(i)
    rng = np.random.default_rng(seed)
    rows: dict[int, dict[int, np.ndarray]] = {}
    for y, idx in sorted(by_class.items()):
        sizes = np.array([int(bags[i].features.shape[0]) for i in idx], dtype=np.int64)
        total = int(sizes.sum())
        take = np.sort(rng.choice(total, size=min(per_class, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        owner = np.searchsorted(starts, take, side="right") - 1
        rows[y] = {idx[o]: take[owner == o] - starts[o] for o in np.unique(owner)}
    needed: dict[int, list[tuple[int, np.ndarray]]] = {}
    for y, per_bag in rows.items():
        for i, r in per_bag.items():
            needed.setdefault(i, []).append((y, r))
    out: dict[int, list[torch.Tensor]] = {y: [] for y in rows}
    for i in sorted(needed):
        z = encode(bags[i])  # (N, S)
        for y, r in needed[i]:
            out[y].append(z[torch.as_tensor(r, device=z.device)])
    return {y: torch.cat(v, 0) for y, v in out.items() if v}
