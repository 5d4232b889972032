"""MoMKD loss terms (seed article Eq. 2, 3, 5; official ``utils/Mkd_train_utils.py``
``PrototypicalAlignmentLoss`` and the vendored ``VectorQuantize`` loss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from momkd.memory import MemoryBanks, orthogonality


def lse_aggregate(f: torch.Tensor, centers: torch.Tensor, tau_agg: float = 5.0) -> torch.Tensor:
    """Eq. 2: phi(F, C) = (1/tau) ln sum_j exp(tau F^T c_j). f (B, S), centers (n, S) -> (B,)."""
    return torch.logsumexp(tau_agg * (f @ centers.T), dim=1) / tau_agg


def memory_differential(f: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau_agg: float = 5.0) -> torch.Tensor:
    """Delta(F; C+, C-) = phi(F, C+) - phi(F, C-). (B,)"""
    return lse_aggregate(f, pos, tau_agg) - lse_aggregate(f, neg, tau_agg)


def alignment_loss(f: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, label: int, tau_agg: float = 5.0,
                   margin: float = 0.3, beta: float = 20.0) -> torch.Tensor:
    """Eq. 3: softplus(beta (margin - Delta)) for y = 1, softplus(beta (margin + Delta)) for y = 0,
    averaged over the B rows. Not divided by beta (as the code). ``F.softplus`` with its default
    threshold 20 (linear above), as ``PrototypicalAlignmentLoss``."""
    delta = memory_differential(f, pos, neg, tau_agg)
    sign = 1.0 if int(label) == 1 else -1.0
    return F.softplus(beta * (margin - sign * delta)).mean()


def commitment_loss(z: torch.Tensor, bank: torch.Tensor, how: str = "raw") -> tuple[torch.Tensor, torch.Tensor]:
    """VQ commitment: MSE(sg[nearest code], z) over all N x S entries; pulls the patch projections
    z (N, S) to their nearest centroid and gives the bank no gradient. Returns (loss, index (N,))."""
    idx = MemoryBanks.assign(z.detach(), bank.detach(), how)
    return F.mse_loss(z, MemoryBanks.codes(bank, idx, how)), idx


def memory_regulariser(z: torch.Tensor, bank: torch.Tensor, how: str = "raw", commit_weight: float = 1.0,
                       orth_weight: float = 10.0) -> dict[str, torch.Tensor]:
    """L_mem of the slide's class bank = commit_weight * commitment + orth_weight * orthogonality
    (the vendored VectorQuantize loss with commitment_weight 1, orthogonal_reg_weight 10)."""
    commit, idx = commitment_loss(z, bank, how)
    orth = orthogonality(bank)
    return {"mem": commit_weight * commit + orth_weight * orth, "mem_commit": commit, "mem_orth": orth,
            "vq_index": idx}


def reconstruction_loss(recon: torch.Tensor, omics: torch.Tensor) -> torch.Tensor:
    """L_mse = MSE(decoder(encoder(g)), g) (nn.MSELoss in mkd_train_loop)."""
    return F.mse_loss(recon, omics.reshape(recon.shape))
