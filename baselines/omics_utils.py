"""Omics pieces shared by the distillation baselines (TDC, MKD, G-HANet).

* :func:`snn_block` - the self-normalising block Linear-ELU-AlphaDropout (Klambauer et al. 2017)
  that MCAT/PORPOISE and the MKD code call ``SNN_Block`` (zqb77/MICCAI25
  ``models/model_utils/model_utils.py``).
* :func:`init_max_weights` - MKD's ``init_max_weights``: every exact ``nn.Linear`` gets
  N(0, 1/sqrt(fan_in)) weights and zero bias.
* :class:`GeneTokenizer` - the omics vector as a fixed number of tokens (MKD: 16 tokens).
* :class:`BilinearFusion` - PathomicFusion's gated bilinear fusion as shipped in the MKD code
  (``model_utils.BilinearFusion``), used by the multimodal teacher of MKD and TDC.
* :func:`gene_groups`, :func:`welch_pvalues`, :func:`select_genes_welch`,
  :func:`training_omics` - G-HANet's per-fold Welch t-test gene selection. It is fitted on the
  bags it is given and nothing else; the models call it from ``on_fit_start(train_bags)``, which
  the engine feeds the training part of the fold only, so no validation/test omics can reach it.

The omics arriving here are already z-scored per gene with statistics of the fold's training
cases (``benchmarks.data.omics.fold_omics``).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from baselines.layers import FastDropout


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------
def snn_block(in_dim: int, out_dim: int, dropout: float = 0.25) -> nn.Sequential:
    """Linear -> ELU -> AlphaDropout (MKD/MCAT ``SNN_Block``)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ELU(), nn.AlphaDropout(p=dropout))


def init_max_weights(module: nn.Module) -> None:
    """MKD ``init_max_weights``: N(0, 1/sqrt(fan_in)) weights, zero biases, exact ``nn.Linear`` only."""
    for m in module.modules():
        if type(m) is nn.Linear:
            std = 1.0 / math.sqrt(m.weight.size(1))
            with torch.no_grad():
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()


class GeneTokenizer(nn.Module):
    """(G,) omics -> (n_tokens, token_dim) tokens, zero-padded at the end.

    MKD reshapes its top-8192 genes to ``(-1, 512)``: 16 tokens of 512 genes
    (``models/snnmil.py``, ``online_kd.py``). With an arbitrary gene count G we keep the number of
    tokens and let the token width be ``ceil(G / n_tokens)``; the last token is zero-padded.
    """

    def __init__(self, n_genes: int, n_tokens: int = 16):
        super().__init__()
        if n_genes < 1 or n_tokens < 1:
            raise ValueError(f"GeneTokenizer: need n_genes >= 1 and n_tokens >= 1, got {n_genes}, {n_tokens}")
        self.n_genes = int(n_genes)
        self.n_tokens = int(n_tokens)
        self.token_dim = int(math.ceil(n_genes / n_tokens))

    def forward(self, omics: torch.Tensor, slide_id: str = "?") -> torch.Tensor:
        g = omics.reshape(-1)
        if g.numel() != self.n_genes:
            raise ValueError(f"slide {slide_id}: omics has {g.numel()} genes, the model was built for "
                             f"{self.n_genes}")
        pad = self.n_tokens * self.token_dim - self.n_genes
        if pad:
            g = torch.cat([g, g.new_zeros(pad)])
        return g.reshape(self.n_tokens, self.token_dim)  # (n_tokens, token_dim)


class BilinearFusion(nn.Module):
    """Gated bilinear fusion of two vectors (Chen et al., PathomicFusion, TMI 2020), MKD defaults.

    Follows ``BilinearFusion`` in zqb77/MICCAI25 ``models/model_utils/model_utils.py`` with
    ``skip=1, use_bilinear=1, gate1=1, gate2=1``: per modality h = ReLU(W_h v),
    z = Bilinear(v1, v2), o = Dropout(ReLU(W_o (sigmoid(z) * h))); then the outer product of
    [o1, 1] and [o2, 1], dropout, ``encoder1`` (-> 256) and ``encoder2`` over [., v1, v2] (-> mmhid).
    The official code appends the constant 1 with ``torch.cuda.FloatTensor``; here it has the
    input's dtype and device.
    """

    def __init__(self, dim1: int = 256, dim2: int = 256, scale_dim1: int = 8, scale_dim2: int = 8,
                 mmhid: int = 256, dropout: float = 0.25):
        super().__init__()
        d1, d2 = dim1 // scale_dim1, dim2 // scale_dim2
        self.linear_h1 = nn.Sequential(nn.Linear(dim1, d1), nn.ReLU())
        self.linear_z1 = nn.Bilinear(dim1, dim2, d1)
        self.linear_o1 = nn.Sequential(nn.Linear(d1, d1), nn.ReLU(), FastDropout(dropout))
        self.linear_h2 = nn.Sequential(nn.Linear(dim2, d2), nn.ReLU())
        self.linear_z2 = nn.Bilinear(dim1, dim2, d2)
        self.linear_o2 = nn.Sequential(nn.Linear(d2, d2), nn.ReLU(), FastDropout(dropout))
        self.post_fusion_dropout = FastDropout(dropout)
        self.encoder1 = nn.Sequential(nn.Linear((d1 + 1) * (d2 + 1), 256), nn.ReLU(), FastDropout(dropout))
        self.encoder2 = nn.Sequential(nn.Linear(256 + dim1 + dim2, mmhid), nn.ReLU(), FastDropout(dropout))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:  # (B, dim1), (B, dim2) -> (B, mmhid)
        # nn.Bilinear is not on autocast's cast lists: under bf16 autocast its inputs (outputs of autocast
        # Linears) are brought back to the weight dtype; a no-op in fp32
        a, b = v1.to(self.linear_z1.weight.dtype), v2.to(self.linear_z1.weight.dtype)
        o1 = self.linear_o1(torch.sigmoid(self.linear_z1(a, b)) * self.linear_h1(v1))
        o2 = self.linear_o2(torch.sigmoid(self.linear_z2(a, b)) * self.linear_h2(v2))
        o1 = torch.cat([o1, o1.new_ones(o1.shape[0], 1)], 1)
        o2 = torch.cat([o2, o2.new_ones(o2.shape[0], 1)], 1)
        o12 = torch.bmm(o1.unsqueeze(2), o2.unsqueeze(1)).flatten(start_dim=1)  # (B, (d1+1)(d2+1))
        out = self.encoder1(self.post_fusion_dropout(o12))
        return self.encoder2(torch.cat([out, v1, v2], 1))


# ------------------------------------------------------------------------------------------
# G-HANet gene selection (fitted on training bags only)
# ------------------------------------------------------------------------------------------
def gene_groups(n_genes: int, n_groups: int) -> list[np.ndarray]:
    """Contiguous index groups of the G genes (``np.array_split``: the first G mod n groups get one
    more gene). G-HANet uses 6 biological signature groups; without signature annotations the
    genes are split into ``n_groups`` contiguous chunks (documented adaptation)."""
    if n_genes < n_groups:
        raise ValueError(f"need at least one gene per group: {n_genes} genes for {n_groups} groups")
    return [np.asarray(a, dtype=np.int64) for a in np.array_split(np.arange(n_genes), n_groups)]


def welch_pvalues(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-gene two-sided Welch t-test p-values between classes (``scipy.stats.ttest_ind``,
    ``equal_var=False``, as G-HANet ``utils/core_utils.py``).

    Two classes: class 1 vs class 0. More classes (an extension; G-HANet has high vs low risk): the
    smallest one-vs-rest p-value per gene. Genes that cannot be tested (constant, or a class with
    fewer than 2 samples) get NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(int).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"welch_pvalues: x must be (n, G) and y (n,), got {x.shape} and {y.shape}")
    classes = np.unique(y)
    if len(classes) < 2:
        return np.full(x.shape[1], np.nan)
    tested = [classes[1]] if len(classes) == 2 else list(classes)  # binary: class 1 vs class 0
    ps = []
    for c in tested:
        a, b = x[y == c], x[y != c]
        if len(a) < 2 or len(b) < 2:
            ps.append(np.full(x.shape[1], np.nan))
            continue
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant genes: NaN p-value, by design
            ps.append(np.asarray(stats.ttest_ind(a, b, axis=0, equal_var=False).pvalue, dtype=np.float64))
    best = np.where(np.isnan(np.vstack(ps)), np.inf, np.vstack(ps)).min(0)  # (G,)
    best[np.isinf(best)] = np.nan
    return best


def select_genes_welch(x: np.ndarray, y: np.ndarray, groups: Sequence[np.ndarray], alpha: float = 0.05,
                       min_per_group: int = 1) -> np.ndarray:
    """(G,) boolean mask: genes whose Welch p-value is < ``alpha`` (official: p < 0.05, no
    multiple-testing correction). A group with fewer than ``min_per_group`` significant genes keeps
    its ``min_per_group`` smallest p-values instead (NaN counts as 1), so no reconstruction head
    is empty (the official code would build ``Linear(512, 0)`` and a NaN loss)."""
    p = welch_pvalues(x, y)
    mask = np.zeros(p.shape[0], dtype=bool)
    p_sort = np.where(np.isnan(p), 1.0, p)
    for g in groups:
        sel = p_sort[g] < alpha
        if sel.sum() < min_per_group:
            keep = np.argsort(p_sort[g], kind="stable")[:min_per_group]
            sel = np.zeros(len(g), dtype=bool)
            sel[keep] = True
        mask[g] = sel
    return mask


def training_omics(bags: Sequence[Any], name: str = "model") -> tuple[np.ndarray, np.ndarray]:
    """Stack (omics, label) of the given bags: (n, G) float64 and (n,) int. Every bag must carry
    omics and a label (error names the slide)."""
    xs, ys = [], []
    for b in bags:
        sid = getattr(b, "slide_id", "?")
        if getattr(b, "omics", None) is None:
            raise ValueError(f"{name}: slide {sid}: training bag has no omics; this method needs omics "
                             "at training (registry needs 'omics_train')")
        if getattr(b, "label", None) is None:
            raise ValueError(f"{name}: slide {sid}: training bag has no label")
        xs.append(b.omics.detach().double().cpu().reshape(-1).numpy())
        ys.append(int(b.label))
    if not xs:
        raise ValueError(f"{name}: no training bags given")
    dims = {x.shape[0] for x in xs}
    if len(dims) > 1:
        raise ValueError(f"{name}: training omics have different lengths {sorted(dims)}")
    return np.vstack(xs), np.asarray(ys, dtype=int)
